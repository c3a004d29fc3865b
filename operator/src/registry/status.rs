//! The `Synced` condition: built (pure), and written only when it changes, so a status
//! write never triggers a reconcile that writes it again.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;

use super::{RegistryObject, status_params, status_patch};
use crate::error::Error;

/// The condition for the outcome of a sync.
pub fn synced(outcome: &Result<String, Error>, generation: Option<i64>) -> Condition {
    let (status, reason, message) = match outcome {
        Ok(bucket) => (
            "True",
            "Synced".to_owned(),
            format!("stored in NATS KV bucket {bucket}"),
        ),
        Err(e) => ("False", e.category().to_owned(), e.to_string()),
    };
    Condition {
        type_: "Synced".into(),
        status: status.into(),
        reason,
        message,
        observed_generation: generation,
        last_transition_time: Time(Timestamp::now()),
    }
}

/// Whether `new` says something `old` does not (the transition time aside).
pub fn differs(old: Option<&Condition>, new: &Condition) -> bool {
    old.is_none_or(|o| {
        o.status != new.status
            || o.reason != new.reason
            || o.message != new.message
            || o.observed_generation != new.observed_generation
    })
}

/// Writes the status when a condition or an observed field changed; returns whether a
/// condition did (for Events). `observed`: other status fields (an object).
pub async fn patch_if_changed<K: RegistryObject>(
    api: &Api<K>,
    obj: &K,
    conditions: &[Condition],
    mut new: Vec<Condition>,
    observed: Option<serde_json::Value>,
) -> Result<bool, Error> {
    let mut changed = false;
    for condition in &mut new {
        let old = conditions.iter().find(|c| c.type_ == condition.type_);
        changed |= differs(old, condition);
        if let Some(o) = old
            && o.status == condition.status
        {
            // The transition time moves only when the status does.
            condition.last_transition_time = o.last_transition_time.clone();
        }
    }
    let current = serde_json::to_value(obj).ok();
    let fields_changed = observed
        .as_ref()
        .and_then(|o| o.as_object())
        .is_some_and(|fields| {
            fields.iter().any(|(k, v)| {
                current
                    .as_ref()
                    .and_then(|c| c.get("status"))
                    .and_then(|s| s.get(k))
                    != Some(v)
            })
        });
    if !changed && !fields_changed {
        return Ok(false);
    }
    let mut status = serde_json::json!({
        "observedGeneration": obj.meta().generation,
        "conditions": new,
    });
    if let (Some(fields), Some(out)) = (
        observed.as_ref().and_then(|o| o.as_object()),
        status.as_object_mut(),
    ) {
        for (k, v) in fields {
            out.insert(k.clone(), v.clone());
        }
    }
    api.patch_status(
        &obj.name_any(),
        &status_params(),
        &status_patch::<K>(status),
    )
    .await?;
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_meaningful_changes_count() {
        let ok = synced(&Ok("b".into()), Some(1));
        assert!(differs(None, &ok));
        let mut later = synced(&Ok("b".into()), Some(1));
        later.last_transition_time = Time(Timestamp::UNIX_EPOCH);
        assert!(!differs(Some(&ok), &later));
        assert!(differs(Some(&ok), &synced(&Ok("b".into()), Some(2))));
        let failed = synced(&Err(Error::Invalid("spec.x: bad".into())), Some(2));
        assert_eq!(
            (failed.status.as_str(), failed.reason.as_str()),
            ("False", "Invalid")
        );
        assert!(differs(Some(&ok), &failed));
    }
}
