//! Per-message authorization cost with a large registry: 10 000 DeviceCredentials and
//! 1 000 ACL rules. `cargo bench -p cmq --bench acl`.
//!
//! Layout: 100 fleets (credential label `fleet`), one TopicAcl per fleet with 9 rules, plus
//! one TopicAcl for everyone with 100 templated rules: 1 000 rules, of which a connection
//! resolves the 109 that apply to it. A worst case puts all 1 000 rules on everyone.

use std::collections::BTreeMap;
use std::hint::black_box;

use cmq::access::{AclSet, Credential, CredentialIndex, Identity, Presented, Verdicts};
use cmq_crds::kv::{StoredAcl, StoredCredential};
use cmq_crds::v1alpha1::{
    AclAction, AclRule, AppliesTo, DeviceCredentialSpec, PasswordSource, Permission, TopicAclSpec,
};
use criterion::{Criterion, criterion_group, criterion_main};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use mqttbytes::QoS;

const HASH: &str = "$2b$04$abcdefghijklmnopqrstuuSlyGJHl1dXr1f8mKcjuVlBqP6iiYV7W";

fn rule(action: AclAction, topic: String, permission: Permission) -> AclRule {
    AclRule {
        action,
        topics: vec![topic],
        qos: Vec::new(),
        retain: None,
        permission,
    }
}

fn stored_acl(
    name: String,
    priority: i32,
    applies_to: AppliesTo,
    rules: Vec<AclRule>,
) -> StoredAcl {
    StoredAcl {
        namespace: "default".into(),
        name,
        spec: TopicAclSpec {
            cluster_ref: "c".into(),
            priority,
            applies_to,
            rules,
        },
    }
}

fn fleet_acls() -> Vec<StoredAcl> {
    let mut acls = Vec::new();
    for f in 0..100 {
        let selector = LabelSelector {
            match_labels: Some(BTreeMap::from([("fleet".to_string(), format!("f{f}"))])),
            match_expressions: None,
        };
        let rules = (0..9)
            .map(|j| {
                rule(
                    AclAction::All,
                    format!("fleets/f{f}/area{j}/+/telemetry/#"),
                    Permission::Allow,
                )
            })
            .collect();
        let applies = AppliesTo {
            credential_selector: Some(selector),
            ..AppliesTo::default()
        };
        acls.push(stored_acl(format!("fleet-{f}"), 10, applies, rules));
    }
    let global = (0..100)
        .map(|j| {
            let permission = if j == 99 {
                Permission::Deny
            } else {
                Permission::Allow
            };
            let topic = if j == 99 {
                "#".to_string()
            } else {
                format!("devices/${{clientid}}/channel{j}/#")
            };
            rule(AclAction::All, topic, permission)
        })
        .collect();
    let everyone = AppliesTo {
        all: true,
        ..AppliesTo::default()
    };
    acls.push(stored_acl("global".into(), 0, everyone, global));
    acls
}

fn credentials() -> Vec<Credential> {
    (0..10_000)
        .map(|i| {
            Credential::new(
                StoredCredential {
                    namespace: "default".into(),
                    name: format!("dev{i}"),
                    labels: BTreeMap::from([("fleet".to_string(), format!("f{}", i % 100))]),
                    spec: DeviceCredentialSpec {
                        cluster_ref: "c".into(),
                        username: Some(format!("dev{i}")),
                        password: Some(PasswordSource {
                            secret_ref: None,
                            hash: Some(HASH.into()),
                        }),
                        ..DeviceCredentialSpec::default()
                    },
                    psk_sealed: None,
                },
                None,
            )
        })
        .collect()
}

const VERDICTS: Verdicts = Verdicts {
    generation: 1,
    default_allow: false,
    deny_disconnect: false,
};

fn bench(c: &mut Criterion) {
    let index = CredentialIndex::new(credentials());
    let acls = fleet_acls();
    let rules: usize = acls.iter().map(|a| a.spec.rules.len()).sum();
    assert_eq!((index.len(), rules), (10_000, 1_000));
    let set = AclSet::compile(&acls);
    let presented = Presented {
        client_id: "dev4242",
        username: Some("dev4242"),
        cert: None,
    };
    let cred = index.matching(&presented).pop().expect("credential found");
    let who = Identity {
        client_id: "dev4242",
        username: Some("dev4242"),
        cert_cn: None,
        credential: Some(&cred),
    };
    let conn = set.resolve(&who, VERDICTS);
    assert!(conn.may_publish("devices/dev4242/channel0/x", QoS::AtLeastOnce, false));
    assert!(conn.may_publish("fleets/f42/area8/z/telemetry/t", QoS::AtLeastOnce, false));
    assert!(!conn.may_publish("fleets/f41/area0/z/telemetry/t", QoS::AtLeastOnce, false));

    let mut g = c.benchmark_group("acl_10k_credentials_1k_rules");
    g.bench_function("publish_first_rule", |b| {
        b.iter(|| {
            conn.may_publish(
                black_box("devices/dev4242/channel0/temp"),
                QoS::AtLeastOnce,
                false,
            )
        })
    });
    g.bench_function("publish_fleet_rule_9_of_109", |b| {
        b.iter(|| {
            conn.may_publish(
                black_box("fleets/f42/area8/z/telemetry/t"),
                QoS::AtLeastOnce,
                false,
            )
        })
    });
    g.bench_function("publish_denied_last_rule", |b| {
        b.iter(|| conn.may_publish(black_box("other/topic/x"), QoS::AtLeastOnce, false))
    });
    g.bench_function("subscribe_checked", |b| {
        b.iter(|| conn.may_subscribe(black_box("devices/dev4242/channel7/+"), QoS::AtLeastOnce))
    });
    g.bench_function("resolve_at_connect", |b| {
        b.iter(|| set.resolve(black_box(&who), VERDICTS))
    });
    g.bench_function("credential_lookup", |b| {
        b.iter(|| index.matching(black_box(&presented)))
    });
    g.finish();

    // Worst case: every one of the 1 000 rules applies to every connection, and the topic
    // matches none of them.
    let flat: Vec<StoredAcl> = fleet_acls()
        .into_iter()
        .map(|mut a| {
            a.spec.applies_to = AppliesTo {
                all: true,
                ..AppliesTo::default()
            };
            a
        })
        .collect();
    let flat_set = AclSet::compile(&flat);
    let flat_conn = flat_set.resolve(&who, VERDICTS);
    let mut g = c.benchmark_group("acl_worst_case_1k_rules_apply");
    g.bench_function("publish_scans_1000_rules", |b| {
        b.iter(|| flat_conn.may_publish(black_box("other/topic/x"), QoS::AtLeastOnce, false))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
