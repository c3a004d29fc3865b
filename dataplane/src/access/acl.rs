//! The topic ACL engine. TopicAcls are compiled once per change into an [`AclSet`]; at
//! CONNECT (and after each change) the set is resolved for one connection into a
//! [`ConnAcl`]: only the rules that apply to it, templates filled in. Checking a publish or a
//! subscription then walks that short list without allocating.

use cmq_crds::kv::StoredAcl;
use cmq_crds::template::{TopicTemplate, Var};
use cmq_crds::v1alpha1::{AclAction, Permission};
use mqttbytes::QoS;

use super::glob::Glob;
use super::selector::Selector;

/// Who a connection is, as far as ACLs are concerned.
#[derive(Debug, Clone, Default)]
pub struct Identity<'a> {
    pub client_id: &'a str,
    /// Only a username a credential verified.
    pub username: Option<&'a str>,
    pub cert_cn: Option<&'a str>,
    /// The credential's labels and attributes; `None` for anonymous connections.
    pub credential: Option<&'a super::credentials::Credential>,
}

impl Identity<'_> {
    fn value(&self, var: &Var) -> Option<&str> {
        match var {
            Var::ClientId => Some(self.client_id),
            Var::Username => self.username,
            Var::CertCn => self.cert_cn,
            Var::Attr(name) => self
                .credential
                .and_then(|c| c.attributes.get(name).map(String::as_str)),
        }
    }
}

/// Every TopicAcl of the cluster, compiled and in evaluation order.
#[derive(Debug, Default)]
pub struct AclSet {
    acls: Vec<CompiledAcl>,
}

#[derive(Debug)]
struct CompiledAcl {
    priority: i32,
    key: String,
    all: bool,
    anonymous: bool,
    client_ids: Vec<Glob>,
    usernames: Vec<String>,
    selector: Option<Selector>,
    rules: Vec<CompiledRule>,
}

#[derive(Debug)]
struct CompiledRule {
    publish: bool,
    subscribe: bool,
    topics: Vec<TopicTemplate>,
    qos_mask: u8,
    retain: Option<bool>,
    allow: bool,
}

impl AclSet {
    /// Compiles validated ACLs (see `TopicAclSpec::validate`); a filter that does not parse
    /// is skipped (validation reports it before this point).
    pub fn compile<'a>(acls: impl IntoIterator<Item = &'a StoredAcl>) -> Self {
        let mut compiled: Vec<CompiledAcl> = acls.into_iter().map(compile_acl).collect();
        compiled.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.key.cmp(&b.key)));
        Self { acls: compiled }
    }

    /// Number of TopicAcls.
    pub fn len(&self) -> usize {
        self.acls.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.acls.is_empty()
    }

    /// The rules that apply to one connection, templates resolved, in evaluation order.
    pub fn resolve(&self, who: &Identity<'_>, verdicts: Verdicts) -> ConnAcl {
        let mut rules = Vec::new();
        for acl in self.acls.iter().filter(|a| a.applies(who)) {
            for rule in &acl.rules {
                let filters: Vec<Filter> = rule
                    .topics
                    .iter()
                    .filter_map(|t| t.render_with(|v| who.value(v)))
                    .map(Filter::new)
                    .collect();
                if filters.is_empty() {
                    // Every template lacked a value: the rule cannot match this connection.
                    continue;
                }
                rules.push(ResolvedRule {
                    publish: rule.publish,
                    subscribe: rule.subscribe,
                    filters: filters.into_boxed_slice(),
                    qos_mask: rule.qos_mask,
                    retain: rule.retain,
                    allow: rule.allow,
                });
            }
        }
        ConnAcl {
            rules: rules.into_boxed_slice(),
            verdicts,
        }
    }
}

impl CompiledAcl {
    fn applies(&self, who: &Identity<'_>) -> bool {
        if self.all {
            return true;
        }
        if self.anonymous && who.credential.is_none() {
            return true;
        }
        if self.client_ids.iter().any(|g| g.matches(who.client_id)) {
            return true;
        }
        if let Some(u) = who.username
            && self.usernames.iter().any(|n| n == u)
        {
            return true;
        }
        match (&self.selector, who.credential) {
            (Some(sel), Some(cred)) => sel.matches(&cred.labels),
            _ => false,
        }
    }
}

fn compile_acl(acl: &StoredAcl) -> CompiledAcl {
    let spec = &acl.spec;
    let rules = spec
        .rules
        .iter()
        .map(|r| CompiledRule {
            publish: matches!(r.action, AclAction::Publish | AclAction::All),
            subscribe: matches!(r.action, AclAction::Subscribe | AclAction::All),
            topics: r
                .topics
                .iter()
                .filter_map(|t| TopicTemplate::parse(t).ok())
                .collect(),
            qos_mask: if r.qos.is_empty() {
                0b111
            } else {
                r.qos
                    .iter()
                    .filter(|q| **q <= 2)
                    .fold(0, |m, q| m | (1 << q))
            },
            retain: r.retain,
            allow: r.permission == Permission::Allow,
        })
        .collect();
    CompiledAcl {
        priority: spec.priority,
        key: format!("{}/{}", acl.namespace, acl.name),
        all: spec.applies_to.all,
        anonymous: spec.applies_to.anonymous,
        client_ids: spec
            .applies_to
            .client_ids
            .iter()
            .map(|g| Glob::new(g))
            .collect(),
        usernames: spec.applies_to.usernames.clone(),
        selector: spec
            .applies_to
            .credential_selector
            .as_ref()
            .map(Selector::new),
        rules,
    }
}

/// The rules of one connection, as of one registry generation.
#[derive(Debug, Default)]
pub struct ConnAcl {
    rules: Box<[ResolvedRule]>,
    pub verdicts: Verdicts,
}

/// What applies besides the rules.
#[derive(Debug, Clone, Copy, Default)]
pub struct Verdicts {
    /// The registry generation the ACL was resolved at.
    pub generation: u64,
    /// The verdict when no rule matches.
    pub default_allow: bool,
    /// A denied publish closes the connection.
    pub deny_disconnect: bool,
}

#[derive(Debug)]
struct ResolvedRule {
    publish: bool,
    subscribe: bool,
    filters: Box<[Filter]>,
    qos_mask: u8,
    retain: Option<bool>,
    allow: bool,
}

/// A resolved filter and the length of its literal start: a topic (or a subscription a
/// rule covers) must begin with it, and one comparison of bytes rules most filters out
/// before the level-by-level match runs.
#[derive(Debug)]
struct Filter {
    text: Box<str>,
    prefix: usize,
}

impl Filter {
    fn new(text: String) -> Self {
        let mut prefix = text.find(['+', '#']).unwrap_or(text.len());
        // `a/#` also matches `a`: the separator before `#` is not required.
        if text[prefix..].starts_with('#') && text[..prefix].ends_with('/') {
            prefix -= 1;
        }
        Self {
            text: text.into_boxed_str(),
            prefix,
        }
    }

    fn literal_start(&self) -> &[u8] {
        &self.text.as_bytes()[..self.prefix]
    }

    fn matches(&self, topic: &str) -> bool {
        topic.as_bytes().starts_with(self.literal_start()) && cmq_topic::matches(&self.text, topic)
    }

    fn covers(&self, filter: &str) -> bool {
        filter.as_bytes().starts_with(self.literal_start()) && cmq_topic::covers(&self.text, filter)
    }
}

fn qos_bit(qos: QoS) -> u8 {
    1 << (qos as u8)
}

impl ConnAcl {
    /// No rule: the verdicts' default decides everything.
    pub fn empty(verdicts: Verdicts) -> Self {
        Self {
            rules: Box::new([]),
            verdicts,
        }
    }

    /// Whether no rule and an allow default: checks can be skipped.
    pub fn is_allow_all(&self) -> bool {
        self.rules.is_empty() && self.verdicts.default_allow
    }

    /// Whether the connection may publish to `topic`.
    pub fn may_publish(&self, topic: &str, qos: QoS, retain: bool) -> bool {
        let bit = qos_bit(qos);
        for rule in self.rules.iter() {
            if !rule.publish || rule.qos_mask & bit == 0 || rule.retain.is_some_and(|r| r != retain)
            {
                continue;
            }
            if rule.filters.iter().any(|f| f.matches(topic)) {
                return rule.allow;
            }
        }
        self.verdicts.default_allow
    }

    /// Whether the connection may subscribe to `filter` (without any `$share/group/`
    /// prefix) at `qos`. An allow rule matches when it covers the filter, a deny rule when it
    /// overlaps it: `deny secret/#` then `allow #` refuses a subscription to `#` (it would
    /// receive secrets) and allows `public/#`.
    pub fn may_subscribe(&self, filter: &str, qos: QoS) -> bool {
        let bit = qos_bit(qos);
        for rule in self.rules.iter() {
            if !rule.subscribe || rule.qos_mask & bit == 0 {
                continue;
            }
            // An allow rule must cover the whole subscription; a deny rule refuses any
            // subscription that could receive a topic it denies.
            let hit = if rule.allow {
                rule.filters.iter().any(|f| f.covers(filter))
            } else {
                rule.filters
                    .iter()
                    .any(|f| cmq_topic::intersects(&f.text, filter))
            };
            if hit {
                return rule.allow;
            }
        }
        self.verdicts.default_allow
    }
}

#[cfg(test)]
mod filter_tests {
    use proptest::prelude::*;

    use super::Filter;

    fn levels(choices: &'static [&'static str], max: usize) -> impl Strategy<Value = String> {
        proptest::collection::vec(proptest::sample::select(choices), 1..max)
            .prop_map(|l| l.join("/"))
    }

    proptest! {
        /// The literal-start shortcut never changes a verdict.
        #[test]
        fn shortcut_agrees_with_the_reference(
            filter in levels(&["a", "b", "ab", "", "+", "$s"], 5),
            tail in proptest::bool::ANY,
            topic in levels(&["a", "b", "ab", "", "$s"], 6),
            sub in levels(&["a", "b", "", "+", "$s"], 5),
        ) {
            let filter = if tail { format!("{filter}/#") } else { filter };
            let f = Filter::new(filter.clone());
            prop_assert_eq!(f.matches(&topic), cmq_topic::matches(&filter, &topic));
            prop_assert_eq!(f.covers(&sub), cmq_topic::covers(&filter, &sub));
        }
    }
}
