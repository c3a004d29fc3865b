//! `MqttCluster` → its workloads: read → validate and build the children (pure, `build`) →
//! server-side apply each with owner references (drift in a child is repaired: every
//! change to one triggers a reconcile that applies it again) → status from the hub
//! Deployment and a NATS check.

pub(crate) mod build;

use std::sync::Arc;

use cmq_crds::v1alpha1::MqttCluster;
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span, warn};

use crate::context::Context;
use crate::error::Error;
use crate::registry::status_params;

use build::children;

/// Runs the controller until `shutdown`.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let client = ctx.client.clone();
    let cfg = || watcher::Config::default().labels("app.kubernetes.io/managed-by=cmq-operator");
    Controller::new(
        Api::<MqttCluster>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Deployment>::all(client.clone()), cfg())
    .owns(Api::<Service>::all(client.clone()), cfg())
    .owns(Api::<ConfigMap>::all(client.clone()), cfg())
    .owns(Api::<ServiceAccount>::all(client.clone()), cfg())
    .owns(Api::<PodDisruptionBudget>::all(client.clone()), cfg())
    .owns(Api::<HorizontalPodAutoscaler>::all(client), cfg())
    .graceful_shutdown_on(async move { shutdown.cancelled().await })
    .run(reconcile, error_policy, ctx)
    .for_each(|_| async {})
    .await;
}

async fn reconcile(c: Arc<MqttCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = c.namespace().unwrap_or_default();
    let span =
        info_span!("reconcile", kind = "MqttCluster", object = %format!("{ns}/{}", c.name_any()));
    async move {
        let result = reconcile_inner(&c, &ctx, &ns).await;
        ctx.metrics.reconciled("MqttCluster", result.as_ref().err());
        result
    }
    .instrument(span)
    .await
}

async fn reconcile_inner(c: &MqttCluster, ctx: &Context, ns: &str) -> Result<Action, Error> {
    let built = match children(c) {
        Ok(b) => b,
        Err(e) if !e.is_transient() => {
            // Waits for the next change of the spec; the condition says what to fix.
            set_status(
                ctx,
                c,
                ns,
                Observed::default(),
                vec![condition("Ready", false, "InvalidSpec", &e.to_string(), c)],
            )
            .await?;
            return Ok(Action::await_change());
        }
        Err(e) => return Err(e),
    };
    let client = ctx.client.clone();
    apply(
        &Api::<ServiceAccount>::namespaced(client.clone(), ns),
        &built.service_account,
    )
    .await?;
    apply(
        &Api::<ConfigMap>::namespaced(client.clone(), ns),
        &built.config,
    )
    .await?;
    ensure_coap_secret(c, &client, ns).await?;
    apply(
        &Api::<Deployment>::namespaced(client.clone(), ns),
        &built.hub,
    )
    .await?;
    apply(
        &Api::<Service>::namespaced(client.clone(), ns),
        &built.service,
    )
    .await?;
    apply(
        &Api::<PodDisruptionBudget>::namespaced(client.clone(), ns),
        &built.pdb,
    )
    .await?;
    apply(
        &Api::<Deployment>::namespaced(client.clone(), ns),
        &built.dispatch,
    )
    .await?;
    apply(
        &Api::<PodDisruptionBudget>::namespaced(client.clone(), ns),
        &built.dispatch_pdb,
    )
    .await?;
    let hpas = Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), ns);
    for (hpa, target) in [
        (&built.hpa, &built.hub),
        (&built.dispatch_hpa, &built.dispatch),
    ] {
        match hpa {
            Some(hpa) => apply(&hpas, hpa).await?,
            None => {
                let name = target.name_any();
                if hpas.get_opt(&name).await?.is_some() {
                    hpas.delete(&name, &DeleteParams::default()).await?;
                }
            }
        }
    }
    let deployments = Api::<Deployment>::namespaced(client, ns);
    let ready_of = |d: Option<Deployment>| {
        d.as_ref()
            .and_then(|d| d.status.as_ref())
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0)
    };
    let ready = ready_of(deployments.get_opt(&built.hub.name_any()).await?);
    let dispatch_ready = ready_of(deployments.get_opt(&built.dispatch.name_any()).await?);
    let dispatch_wanted = built
        .dispatch
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let nats_ok = match &c.spec.nats {
        Some(n) => ctx
            .nats
            .bucket(
                &n.url,
                &cmq_crds::kv::credentials_bucket(&cmq_crds::kv::cluster_name(ns, &c.name_any())),
                usize::from(n.stream_replicas.unwrap_or(1)),
            )
            .await
            .map(|_| ()),
        None => Err(Error::Invalid("spec.nats missing".into())),
    };
    let hub_available = ready > 0;
    let connections = match (&c.spec.nats, &nats_ok) {
        (Some(n), Ok(())) => ctx
            .nats
            .hub_connections(&n.url, &cmq_crds::kv::cluster_name(ns, &c.name_any()))
            .await
            .unwrap_or(None),
        _ => None,
    };
    let service = Api::<Service>::namespaced(ctx.client.clone(), ns)
        .get_opt(&built.service.name_any())
        .await?;
    let endpoints = build::endpoints(c, service.as_ref(), ns);
    let conditions = vec![
        condition(
            "HubAvailable",
            hub_available,
            if hub_available {
                "HubsReady"
            } else {
                "NoHubReady"
            },
            &format!("{ready} hub pod(s) ready"),
            c,
        ),
        if dispatch_wanted == 0 {
            condition(
                "DispatchAvailable",
                false,
                "ScaledToZero",
                "spec.dispatch.replicas is 0: ForwardRules are not run",
                c,
            )
        } else {
            condition(
                "DispatchAvailable",
                dispatch_ready > 0,
                if dispatch_ready > 0 {
                    "DispatchersReady"
                } else {
                    "NoDispatcherReady"
                },
                &format!("{dispatch_ready} dispatcher pod(s) ready"),
                c,
            )
        },
        match &nats_ok {
            Ok(()) => condition(
                "NatsConnected",
                true,
                "Connected",
                "the operator reached NATS JetStream",
                c,
            ),
            Err(e) => condition("NatsConnected", false, e.category(), &e.to_string(), c),
        },
        condition(
            "Ready",
            hub_available && nats_ok.is_ok(),
            if hub_available && nats_ok.is_ok() {
                "Ready"
            } else {
                "NotReady"
            },
            "hubs are ready and NATS is reachable when True",
            c,
        ),
    ];
    let observed = Observed {
        ready,
        dispatch_ready,
        connections,
        endpoints,
    };
    set_status(ctx, c, ns, observed, conditions).await?;
    // Pods come and go without touching the MqttCluster: look again now and then.
    Ok(Action::requeue(std::time::Duration::from_secs(15)))
}

/// Creates the cluster's secret once (32 random bytes as hex): it signs CoAP tokens and
/// seals pre-shared keys; an existing one is kept,
/// so tokens stay valid across reconciles and operator restarts.
async fn ensure_coap_secret(c: &MqttCluster, client: &kube::Client, ns: &str) -> Result<(), Error> {
    let api = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), ns);
    let name = build::coap_secret_name(&c.name_any());
    if api.get_opt(&name).await?.is_some() {
        return Ok(());
    }
    // Text (64 hex digits), not raw bytes: hubs read it from an environment variable,
    // which must be valid UTF-8 without NULs.
    let key: Vec<u8> = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect::<String>()
        .into_bytes();
    let secret = k8s_openapi::api::core::v1::Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name),
            namespace: Some(ns.to_owned()),
            owner_references: c.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        data: Some(std::collections::BTreeMap::from([(
            build::COAP_SECRET_KEY.to_owned(),
            k8s_openapi::ByteString(key),
        )])),
        ..Default::default()
    };
    match api.create(&kube::api::PostParams::default(), &secret).await {
        Ok(_) => Ok(()),
        // Made meanwhile by another reconcile: fine.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// What a reconcile saw of the running cluster.
#[derive(Default)]
struct Observed {
    ready: i32,
    dispatch_ready: i32,
    connections: Option<i64>,
    endpoints: Vec<String>,
}

fn error_policy(c: Arc<MqttCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    let delay = ctx.backoff.failed(&ObjectRef::from_obj(&*c).erase());
    warn!(object = %c.name_any(), error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

async fn apply<K>(api: &Api<K>, obj: &K) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    api.patch(&obj.name_any(), &status_params(), &Patch::Apply(obj))
        .await?;
    Ok(())
}

fn condition(type_: &str, ok: bool, reason: &str, message: &str, c: &MqttCluster) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: c.meta().generation,
        last_transition_time: Time(Timestamp::now()),
    }
}

/// Writes the status when something in it changed (transition times kept per condition).
async fn set_status(
    ctx: &Context,
    c: &MqttCluster,
    ns: &str,
    observed: Observed,
    mut conditions: Vec<Condition>,
) -> Result<(), Error> {
    let old = c.status.clone().unwrap_or_default();
    for cond in &mut conditions {
        if let Some(o) = old.conditions.iter().find(|o| o.type_ == cond.type_)
            && o.status == cond.status
        {
            cond.last_transition_time = o.last_transition_time.clone();
        }
    }
    let Observed {
        ready,
        dispatch_ready,
        connections,
        endpoints,
    } = observed;
    let same =
        old.hub_ready_replicas == ready
            && old.connections == connections
            && old.endpoints == endpoints
            && old.dispatch_ready_replicas == dispatch_ready
            && old.observed_generation == c.meta().generation
            && old.conditions.len() == conditions.len()
            && old.conditions.iter().zip(&conditions).all(|(a, b)| {
                !crate::registry::condition_differs(Some(a), b) && a.type_ == b.type_
            });
    if same {
        return Ok(());
    }
    let status = serde_json::json!({
        "apiVersion": "cmq.io/v1alpha1",
        "kind": "MqttCluster",
        "status": {
            "observedGeneration": c.meta().generation,
            "hubReadyReplicas": ready,
            "dispatchReadyReplicas": dispatch_ready,
            "connections": connections,
            "endpoints": endpoints,
            "conditions": conditions,
        }
    });
    Api::<MqttCluster>::namespaced(ctx.client.clone(), ns)
        .patch_status(&c.name_any(), &status_params(), &Patch::Apply(status))
        .await?;
    ctx.backoff.succeeded(&ObjectRef::from_obj(c).erase());
    Ok(())
}
