//! Kubernetes label selectors over DeviceCredential labels (matchLabels and
//! matchExpressions, ANDed).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// A compiled label selector. An empty selector matches every credential.
#[derive(Debug, Clone)]
pub struct Selector {
    equal: Vec<(String, String)>,
    expressions: Vec<Expression>,
}

#[derive(Debug, Clone)]
enum Expression {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
    /// An operator validation refused; never matches.
    Invalid,
}

impl Selector {
    pub fn new(selector: &LabelSelector) -> Self {
        let equal = selector
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let expressions = selector
            .match_expressions
            .iter()
            .flatten()
            .map(|e| {
                let values = e.values.clone().unwrap_or_default();
                match e.operator.as_str() {
                    "In" => Expression::In(e.key.clone(), values),
                    "NotIn" => Expression::NotIn(e.key.clone(), values),
                    "Exists" => Expression::Exists(e.key.clone()),
                    "DoesNotExist" => Expression::DoesNotExist(e.key.clone()),
                    _ => Expression::Invalid,
                }
            })
            .collect();
        Self { equal, expressions }
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.equal.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.expressions.iter().all(|e| match e {
                Expression::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
                Expression::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
                Expression::Exists(k) => labels.contains_key(k),
                Expression::DoesNotExist(k) => !labels.contains_key(k),
                Expression::Invalid => false,
            })
    }
}
