//! `TopicAcl`: where devices may publish and subscribe.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::FieldError;
use crate::template::TopicTemplate;

/// Rules for a set of devices. The hub evaluates the TopicAcls that apply to a connection by
/// descending priority (then by namespace/name), and each one's rules in order: the first
/// rule that matches decides. When none matches, the cluster's default verdict applies.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "cmq.io",
    version = "v1alpha1",
    kind = "TopicAcl",
    doc = "Where a set of devices may publish and subscribe in an MqttCluster.",
    namespaced,
    shortname = "tacl",
    status = "TopicAclStatus",
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".spec.clusterRef"}"#,
    printcolumn = r#"{"name":"Priority","type":"integer","jsonPath":".spec.priority"}"#,
    printcolumn = r#"{"name":"Synced","type":"string","jsonPath":".status.conditions[?(@.type==\"Synced\")].status"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TopicAclSpec {
    /// Name of the `MqttCluster` (same namespace) these rules belong to.
    #[schemars(length(min = 1, max = 253))]
    pub cluster_ref: String,
    /// Higher priorities are evaluated first.
    #[serde(default)]
    pub priority: i32,
    /// Which connections the rules apply to. A connection is covered when any of the
    /// listed conditions holds.
    pub applies_to: AppliesTo,
    /// Rules, evaluated in order; the first match decides.
    #[schemars(length(min = 1, max = 1000))]
    pub rules: Vec<AclRule>,
}

/// Which connections a TopicAcl covers.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("(has(self.all) && self.all) || (has(self.anonymous) && self.anonymous) || (has(self.clientIds) && size(self.clientIds) > 0) || (has(self.usernames) && size(self.usernames) > 0) || has(self.credentialSelector)").message("set all, anonymous, clientIds, usernames or credentialSelector"))]
#[serde(rename_all = "camelCase")]
pub struct AppliesTo {
    /// Every connection, authenticated or anonymous.
    #[serde(default)]
    pub all: bool,
    /// Connections with one of these client ids (`*` and `?` globs allowed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_ids: Vec<String>,
    /// Connections with one of these usernames (exact).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usernames: Vec<String>,
    /// Connections authenticated by a DeviceCredential whose labels match this selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_selector: Option<LabelSelector>,
    /// Connections with no credential (allowed only when the cluster admits anonymous
    /// clients).
    #[serde(default)]
    pub anonymous: bool,
}

/// One rule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("!has(self.retain) || self.action != 'subscribe'").message("retain applies to publish rules only"))]
#[serde(rename_all = "camelCase")]
pub struct AclRule {
    /// What the rule is about.
    pub action: AclAction,
    /// Topic filters, with templates `${clientid}`, `${username}`, `${attr.NAME}` and
    /// `${cert.cn}` (a rule whose template has no value for a connection, or whose value
    /// contains `/`, `+` or `#`, does not match it). For publish a filter matches the topic
    /// name. For subscribe, an allow rule must cover the whole subscription filter (`a/#`
    /// covers `a/+/b`, not `#`) and a deny rule matches any subscription that overlaps it
    /// (`deny secret/#` refuses a subscription to `#`).
    #[schemars(length(min = 1, max = 100))]
    pub topics: Vec<String>,
    /// QoS levels the rule matches (default: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(q, q <= 2)").message("QoS is 0, 1 or 2"))]
    #[schemars(length(max = 3))]
    pub qos: Vec<u8>,
    /// Publish only: match only retained (`true`) or only non-retained (`false`) messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain: Option<bool>,
    /// What a match decides.
    pub permission: Permission,
}

/// What an ACL rule is about.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AclAction {
    Publish,
    Subscribe,
    All,
}

/// Allow or deny.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Permission {
    Allow,
    Deny,
}

/// Observed state of a TopicAcl, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopicAclStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Synced`: whether the rules are in the cluster's shared state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl TopicAclSpec {
    /// Checks what the schema cannot: filters and templates, QoS values, selectors.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.cluster_ref.is_empty() {
            return Err(FieldError::new("spec.clusterRef", "must not be empty"));
        }
        let a = &self.applies_to;
        if !a.all
            && !a.anonymous
            && a.client_ids.is_empty()
            && a.usernames.is_empty()
            && a.credential_selector.is_none()
        {
            return Err(FieldError::new(
                "spec.appliesTo",
                "set all, anonymous, clientIds, usernames or credentialSelector",
            ));
        }
        if let Some(sel) = &a.credential_selector {
            for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
                let field = format!("spec.appliesTo.credentialSelector.matchExpressions[{i}]");
                match e.operator.as_str() {
                    "In" | "NotIn" if e.values.as_ref().is_none_or(Vec::is_empty) => {
                        return Err(FieldError::new(field, "In and NotIn need values"));
                    }
                    "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
                    other => {
                        return Err(FieldError::new(
                            field,
                            format!("unknown operator {other:?} (In, NotIn, Exists, DoesNotExist)"),
                        ));
                    }
                }
            }
        }
        if self.rules.is_empty() {
            return Err(FieldError::new("spec.rules", "at least one rule is needed"));
        }
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.topics.is_empty() {
                return Err(FieldError::new(
                    format!("spec.rules[{i}].topics"),
                    "at least one topic filter is needed",
                ));
            }
            for (j, topic) in rule.topics.iter().enumerate() {
                TopicTemplate::parse(topic).map_err(|reason| {
                    FieldError::new(format!("spec.rules[{i}].topics[{j}]"), reason)
                })?;
            }
            if let Some(q) = rule.qos.iter().find(|q| **q > 2) {
                return Err(FieldError::new(
                    format!("spec.rules[{i}].qos"),
                    format!("QoS {q} does not exist (0, 1 or 2)"),
                ));
            }
            if rule.retain.is_some() && rule.action == AclAction::Subscribe {
                return Err(FieldError::new(
                    format!("spec.rules[{i}].retain"),
                    "retain applies to publish rules only",
                ));
            }
        }
        Ok(())
    }
}
