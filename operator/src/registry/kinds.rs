//! The registry kinds: how each is encoded for the KV (and, for ForwardRule, its `Valid`
//! condition and the dispatchers' counts).

use cmq_crds::v1alpha1::{DeviceCredential, ForwardRule, PskSource, RuleCounters, TopicAcl};
use cmq_crds::{kv, seal};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;

use super::RegistryObject;
use crate::cluster::build::{COAP_SECRET_KEY, coap_secret_name};
use crate::context::Context;
use crate::error::Error;

impl RegistryObject for DeviceCredential {
    const KIND: &'static str = "DeviceCredential";

    fn cluster_ref(&self) -> &str {
        &self.spec.cluster_ref
    }

    fn bucket(cluster: &str) -> String {
        kv::credentials_bucket(cluster)
    }

    fn secret_names(&self) -> Vec<String> {
        let password = self
            .spec
            .password
            .as_ref()
            .and_then(|p| p.secret_ref.as_ref())
            .map(|r| r.name.clone());
        // A pre-shared key is sealed with the cluster's secret too: a replaced one re-seals.
        let psk = self.spec.psk.as_ref().into_iter().flat_map(|p| {
            [
                p.secret_ref.name.clone(),
                coap_secret_name(&self.spec.cluster_ref),
            ]
        });
        password.into_iter().chain(psk).collect()
    }

    fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }

    async fn encode(&self, ctx: &Context, current: Option<&[u8]>) -> Result<Vec<u8>, Error> {
        self.spec
            .validate()
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let hash = match self
            .spec
            .password
            .as_ref()
            .and_then(|p| p.secret_ref.as_ref())
        {
            None => None,
            Some(r) => {
                let ns = self.namespace().unwrap_or_default();
                let plain = secret_value(ctx, &ns, &r.name, &r.key).await?;
                let _permit = ctx
                    .hashing
                    .acquire()
                    .await
                    .map_err(|e| Error::Invalid(format!("hashing stopped: {e}")))?;
                Some(hash_of(plain, current).await?)
            }
        };
        let sealed = match &self.spec.psk {
            None => None,
            Some(p) => Some(sealed_psk(self, ctx, p, current).await?),
        };
        kv::encode_credential(self, hash.as_deref(), sealed.as_deref())
            .map_err(|e| Error::Invalid(e.to_string()))
    }
}

/// The credential's pre-shared key sealed with its cluster's secret: the current entry's
/// when it still opens to the same key (an unchanged Secret leaves the entry untouched),
/// else a new seal.
async fn sealed_psk(
    cred: &DeviceCredential,
    ctx: &Context,
    psk: &PskSource,
    current: Option<&[u8]>,
) -> Result<String, Error> {
    let ns = cred.namespace().unwrap_or_default();
    let key = secret_value(ctx, &ns, &psk.secret_ref.name, &psk.secret_ref.key).await?;
    let cluster_secret = secret_value(
        ctx,
        &ns,
        &coap_secret_name(&cred.spec.cluster_ref),
        COAP_SECRET_KEY,
    )
    .await?;
    let entry = kv::entry_key(&ns, &cred.name_any());
    let existing = current
        .and_then(|c| kv::decode_credential(c).ok())
        .and_then(|c| c.psk_sealed);
    if let Some(s) = existing
        && seal::open(&cluster_secret, &entry, &psk.identity, &s).is_ok_and(|k| k == key)
    {
        return Ok(s);
    }
    seal::seal(&cluster_secret, &entry, &psk.identity, &key)
        .map_err(|e| Error::Invalid(format!("spec.psk: {e}")))
}

/// The bytes of key `key` of Secret `ns/name`.
async fn secret_value(ctx: &Context, ns: &str, name: &str, key: &str) -> Result<Vec<u8>, Error> {
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .get_opt(name)
        .await?
        .ok_or_else(|| Error::Secret(format!("Secret {ns}/{name} not found")))?;
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| v.0.clone())
        .ok_or_else(|| Error::Secret(format!("Secret {ns}/{name} has no key {key:?}")))
}

/// The argon2id hash for `plain`: the one in the current entry when it still verifies
/// (so an unchanged Secret leaves the entry untouched), else a new one. Off the async
/// threads: argon2 takes tens of milliseconds of CPU.
async fn hash_of(plain: Vec<u8>, current: Option<&[u8]>) -> Result<String, Error> {
    let existing = current
        .and_then(|c| kv::decode_credential(c).ok())
        .and_then(|c| c.spec.password.and_then(|p| p.hash));
    tokio::task::spawn_blocking(move || {
        if let Some(h) = existing
            && cmq_crds::argon::verify(&plain, &h)
        {
            return Ok(h);
        }
        kv::hash_password(&plain).map_err(|e| Error::Invalid(e.to_string()))
    })
    .await
    .map_err(|e| Error::Invalid(format!("hashing failed: {e}")))?
}

impl RegistryObject for TopicAcl {
    const KIND: &'static str = "TopicAcl";

    fn cluster_ref(&self) -> &str {
        &self.spec.cluster_ref
    }

    fn bucket(cluster: &str) -> String {
        kv::acl_bucket(cluster)
    }

    fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }

    async fn encode(&self, _ctx: &Context, _current: Option<&[u8]>) -> Result<Vec<u8>, Error> {
        kv::encode_acl(self).map_err(|e| Error::Invalid(e.to_string()))
    }
}

impl RegistryObject for ForwardRule {
    const KIND: &'static str = "ForwardRule";

    fn cluster_ref(&self) -> &str {
        &self.spec.cluster_ref
    }

    fn bucket(cluster: &str) -> String {
        kv::rules_bucket(cluster)
    }

    fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }

    async fn encode(&self, _ctx: &Context, _current: Option<&[u8]>) -> Result<Vec<u8>, Error> {
        // An invalid statement is stored too: the dispatchers skip it, and the `Valid`
        // condition says where it is wrong.
        kv::encode_rule(self).map_err(|e| Error::Invalid(e.to_string()))
    }

    fn extra_conditions(&self, generation: Option<i64>) -> Vec<Condition> {
        let (status, reason, message) = match cmq_rules::Rule::parse(&self.spec.sql) {
            Ok(rule) => (
                "True",
                "Parsed",
                format!("selects from {}", rule.sources().join(", ")),
            ),
            Err(e) => ("False", "SqlError", format!("spec.sql: {e}")),
        };
        vec![Condition {
            type_: "Valid".into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: generation,
            last_transition_time: Time(Timestamp::now()),
        }]
    }

    fn report_bucket(cluster: &str) -> Option<String> {
        Some(format!("cmq_{cluster}_rule_status"))
    }

    fn observed(&self, reports: &[Vec<u8>]) -> Option<serde_json::Value> {
        let mut counters = RuleCounters::default();
        let mut dispatchers = 0;
        for report in reports {
            let Ok(r) = serde_json::from_slice::<DispatcherReport>(report) else {
                continue;
            };
            dispatchers += 1;
            counters.matched += r.matched;
            counters.forwarded += r.forwarded;
            counters.failed += r.failed;
            counters.dropped += r.dropped;
        }
        Some(serde_json::json!({ "counters": counters, "dispatchers": dispatchers }))
    }
}

/// What one dispatcher reports on one rule (`cmq::dispatch::cluster::report`).
#[derive(serde::Deserialize)]
struct DispatcherReport {
    #[serde(default)]
    matched: u64,
    #[serde(default)]
    forwarded: u64,
    #[serde(default)]
    failed: u64,
    #[serde(default)]
    dropped: u64,
}
