//! The ACL engine as a table: ACLs in YAML, a connection, and the verdicts expected.

use std::collections::BTreeMap;

use cmq_crds::kv::{StoredAcl, StoredCredential};
use cmq_crds::v1alpha1::TopicAclSpec;
use mqttbytes::QoS;

use super::acl::{AclSet, Identity, Verdicts};
use super::credentials::Credential;

fn acl(name: &str, yaml: &str) -> StoredAcl {
    let spec: TopicAclSpec = serde_yaml::from_str(yaml).expect("test ACL parses");
    spec.validate().expect("test ACL is valid");
    StoredAcl {
        namespace: "default".into(),
        name: name.into(),
        spec,
    }
}

fn credential(labels: &[(&str, &str)], attributes: &[(&str, &str)]) -> Credential {
    let map = |kv: &[(&str, &str)]| -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let spec = serde_yaml::from_str(&format!(
        "clusterRef: c\nusername: u\npassword: {{hash: '{}'}}\n",
        "$2b$04$abcdefghijklmnopqrstuuSlyGJHl1dXr1f8mKcjuVlBqP6iiYV7W"
    ))
    .expect("test credential parses");
    let mut stored = StoredCredential {
        namespace: "default".into(),
        name: "dev".into(),
        labels: map(labels),
        spec,
        psk_sealed: None,
    };
    stored.spec.attributes = map(attributes);
    Credential::new(stored, None)
}

const ALLOW: Verdicts = Verdicts {
    generation: 1,
    default_allow: true,
    deny_disconnect: false,
};
const DENY: Verdicts = Verdicts {
    generation: 1,
    default_allow: false,
    deny_disconnect: false,
};

#[derive(Clone, Copy)]
enum Check {
    Pub(&'static str, u8, bool),
    Sub(&'static str, u8),
}

fn run(acls: &[StoredAcl], who: &Identity<'_>, verdicts: Verdicts, cases: &[(Check, bool)]) {
    let set = AclSet::compile(acls);
    let conn = set.resolve(who, verdicts);
    for (check, want) in cases {
        let qos = |q: u8| match q {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        };
        let (got, what) = match *check {
            Check::Pub(t, q, r) => (
                conn.may_publish(t, qos(q), r),
                format!("publish {t} q{q} r{r}"),
            ),
            Check::Sub(f, q) => (conn.may_subscribe(f, qos(q)), format!("subscribe {f} q{q}")),
        };
        assert_eq!(got, *want, "{what} for {}", who.client_id);
    }
}

#[test]
fn templates_priority_and_first_match() {
    let acls = [
        acl(
            "own",
            r##"
clusterRef: c
priority: 10
appliesTo: {all: true}
rules:
  - {action: all, topics: ["devices/${clientid}/#"], permission: allow}
  - {action: publish, topics: ["users/${username}/out"], permission: allow}
  - {action: subscribe, topics: ["sites/${attr.site}/+"], qos: [0, 1], permission: allow}
  - {action: publish, topics: ["certs/${cert.cn}"], permission: allow}
"##,
        ),
        acl(
            "guard",
            r##"
clusterRef: c
priority: 20
appliesTo: {all: true}
rules:
  - {action: all, topics: ["devices/+/admin/#"], permission: deny}
  - {action: publish, topics: ["alerts/#"], retain: true, permission: deny}
"##,
        ),
        acl(
            "rest",
            r##"
clusterRef: c
appliesTo: {all: true}
rules:
  - {action: publish, topics: ["alerts/#"], permission: allow}
  - {action: all, topics: ["#"], permission: deny}
"##,
        ),
    ];
    let cred = credential(&[], &[("site", "paris")]);
    let who = Identity {
        client_id: "d1",
        username: Some("alice"),
        cert_cn: Some("cn1"),
        credential: Some(&cred),
    };
    use Check::*;
    run(
        &acls,
        &who,
        ALLOW,
        &[
            (Pub("devices/d1/temp", 1, false), true),
            (Pub("devices/d1", 0, false), true),
            (Pub("devices/d2/temp", 1, false), false),
            // A higher-priority deny wins over the device's own subtree.
            (Pub("devices/d1/admin/reboot", 1, false), false),
            (Sub("devices/d1/#", 1), false), // overlaps the denied admin subtree
            (Sub("devices/d1/+", 2), false), // would receive devices/d1/admin
            (Sub("devices/d1/temp", 2), true),
            (Pub("users/alice/out", 0, false), true),
            (Pub("users/bob/out", 0, false), false),
            (Sub("sites/paris/+", 1), true),
            (Sub("sites/paris/+", 2), false), // QoS condition
            (Sub("sites/paris/#", 0), false), // not covered by sites/paris/+
            (Sub("sites/lyon/x", 0), false),
            (Pub("certs/cn1", 1, false), true),
            (Pub("alerts/fire", 1, false), true),
            (Pub("alerts/fire", 1, true), false), // retain condition
            (Sub("#", 0), false),
        ],
    );
}

#[test]
fn missing_or_dangerous_template_values_never_match() {
    let acls = [acl(
        "own",
        r##"
clusterRef: c
appliesTo: {all: true}
rules:
  - {action: all, topics: ["u/${username}/#", "c/${clientid}/#", "a/${attr.zone}"], permission: allow}
"##,
    )];
    use Check::*;
    // Anonymous: no username (an unverified one is never passed in), no attributes.
    let anon = Identity {
        client_id: "x/+",
        ..Identity::default()
    };
    run(
        &acls,
        &anon,
        DENY,
        &[
            (Pub("u/alice/t", 0, false), false),
            (Pub("c/x/+/t", 0, false), false),
            (Pub("a/z", 0, false), false),
        ],
    );
    let plain = Identity {
        client_id: "dev",
        ..Identity::default()
    };
    run(&acls, &plain, DENY, &[(Pub("c/dev/t", 0, false), true)]);
}

#[test]
fn applies_to_selects_connections() {
    let acls = [
        acl(
            "by-label",
            r##"
clusterRef: c
priority: 5
appliesTo:
  credentialSelector:
    matchLabels: {fleet: a}
    matchExpressions: [{key: tier, operator: NotIn, values: [test]}]
rules: [{action: all, topics: ["fleet/a/#"], permission: allow}]
"##,
        ),
        acl(
            "by-client",
            r##"
clusterRef: c
appliesTo: {clientIds: ["gw-*"], usernames: ["ops"]}
rules: [{action: subscribe, topics: ["#"], permission: allow}]
"##,
        ),
        acl(
            "anonymous",
            r##"
clusterRef: c
appliesTo: {anonymous: true}
rules: [{action: publish, topics: ["public/#"], permission: allow}]
"##,
        ),
    ];
    use Check::*;
    let fleet_a = credential(&[("fleet", "a")], &[]);
    let fleet_a_test = credential(&[("fleet", "a"), ("tier", "test")], &[]);
    let labelled = |c| Identity {
        client_id: "d",
        username: Some("u"),
        cert_cn: None,
        credential: Some(c),
    };
    run(
        &acls,
        &labelled(&fleet_a),
        DENY,
        &[(Pub("fleet/a/x", 0, false), true)],
    );
    run(
        &acls,
        &labelled(&fleet_a_test),
        DENY,
        &[(Pub("fleet/a/x", 0, false), false)],
    );
    let gw = Identity {
        client_id: "gw-7",
        ..Identity::default()
    };
    run(
        &acls,
        &gw,
        DENY,
        &[
            (Sub("anything/#", 0), true),
            (Pub("public/x", 0, false), true),
        ],
    );
    let ops = Identity {
        client_id: "z",
        username: Some("ops"),
        cert_cn: None,
        credential: Some(&fleet_a_test),
    };
    run(
        &acls,
        &ops,
        DENY,
        &[(Sub("x", 0), true), (Pub("public/x", 0, false), false)],
    );
}
