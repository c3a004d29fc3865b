//! The desired children of an `MqttCluster`, built from its spec alone (pure; the unit
//! tests cover it): ServiceAccount, ConfigMap, hub Deployment, Service, dispatch
//! Deployment, a PodDisruptionBudget for each Deployment and, with autoscaling,
//! HorizontalPodAutoscalers.

use std::collections::BTreeMap;

use cmq_crds::kv::cluster_name;
use cmq_crds::v1alpha1::{MqttCluster, ServiceType};
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::autoscaling::v2::{
    HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricIdentifier, MetricSpec,
    MetricTarget, PodsMetricSource, ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, Lifecycle, LifecycleHandler, ObjectFieldSelector, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, SecurityContext, Service, ServiceAccount, ServicePort, SleepAction,
    Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use crate::error::Error;

/// The image when the spec names none: the operator's own version.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/cmq-io/cmq:", env!("CARGO_PKG_VERSION"));
/// How long a hub gets to drain on SIGTERM (its clients spread over the drain period).
const DRAIN_PERIOD_MS: i64 = 20_000;
const GRACE_SECONDS: i64 = 45;
const ADMIN_PORT: i32 = 9090;
/// The Secret key that holds the CoAP token key.
pub const COAP_SECRET_KEY: &str = "token-secret";

/// The Secret the operator makes once per cluster: the key every hub signs CoAP
/// connection tokens with, so any hub accepts a token another issued, and that seals
/// DeviceCredentials' pre-shared keys.
pub fn coap_secret_name(cluster: &str) -> String {
    format!("{cluster}-cmq-coap")
}

/// How long a dispatcher waits for its writes in flight on SIGTERM.
const DISPATCH_DRAIN_MS: i64 = 20_000;

/// Everything the operator applies for one cluster.
#[derive(Debug, Clone)]
pub struct Children {
    pub service_account: ServiceAccount,
    pub config: ConfigMap,
    pub hub: Deployment,
    pub service: Service,
    pub pdb: PodDisruptionBudget,
    pub hpa: Option<HorizontalPodAutoscaler>,
    pub dispatch: Deployment,
    pub dispatch_pdb: PodDisruptionBudget,
    pub dispatch_hpa: Option<HorizontalPodAutoscaler>,
}

fn labels(cluster: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "cmq".into()),
        ("app.kubernetes.io/instance".into(), cluster.into()),
        ("app.kubernetes.io/component".into(), component.into()),
        (
            "app.kubernetes.io/managed-by".into(),
            crate::FIELD_MANAGER.into(),
        ),
    ])
}

/// Checks what the children need (the schema and CEL rules cover the rest).
pub fn validate(c: &MqttCluster) -> Result<(), Error> {
    let nats = c
        .spec
        .nats
        .as_ref()
        .ok_or_else(|| Error::Invalid("spec.nats: the operator needs the NATS URL".into()))?;
    if nats.url.trim().is_empty() {
        return Err(Error::Invalid("spec.nats.url: must not be empty".into()));
    }
    if c.name_any().is_empty() {
        return Err(Error::Invalid("metadata.name: must be set".into()));
    }
    Ok(())
}

/// The children of `c` (validated).
pub fn children(c: &MqttCluster) -> Result<Children, Error> {
    validate(c)?;
    let name = c.name_any();
    let ns = c.namespace().unwrap_or_else(|| "default".into());
    let owner = c
        .controller_owner_ref(&())
        .ok_or_else(|| Error::Invalid("metadata.uid: the object has no uid yet".into()))?;
    let meta = |child: String, component: &str| ObjectMeta {
        name: Some(child),
        namespace: Some(ns.clone()),
        labels: Some(labels(&name, component)),
        owner_references: Some(vec![owner.clone()]),
        ..ObjectMeta::default()
    };
    let sa_name = format!("{name}-cmq");
    let config_name = format!("{name}-cmq-config");
    let hub_name = format!("{name}-hub");
    // The hubs read listeners, limits and auth defaults from the same resource YAML that
    // standalone mode reads; NATS and workloads are the operator's business.
    let mut hub_view = c.clone();
    hub_view.metadata = ObjectMeta {
        name: Some(name.clone()),
        namespace: Some(ns.clone()),
        ..ObjectMeta::default()
    };
    hub_view.status = None;
    let cluster_yaml = serde_json::to_string_pretty(&hub_view)
        .map_err(|e| Error::Invalid(format!("spec: {e}")))?;
    let data = BTreeMap::from([("cluster.yaml".to_string(), cluster_yaml)]);
    let checksum = format!("{:x}", Sha256::digest(format!("{data:?}").as_bytes()));
    let config = ConfigMap {
        metadata: meta(config_name.clone(), "config"),
        data: Some(data),
        ..ConfigMap::default()
    };
    let hub = hub_deployment(
        c,
        meta(hub_name.clone(), "hub"),
        &sa_name,
        &config_name,
        &checksum,
        &ns,
    );
    let service = hub_service(c, meta(hub_name.clone(), "hub"));
    let pdb = disruption_budget(meta(hub_name.clone(), "hub"), labels(&name, "hub"));
    let hpa = c.spec.hub.autoscaling.as_ref().map(|a| {
        autoscaler(
            meta(hub_name.clone(), "hub"),
            &hub_name,
            a,
            a.target_connections_per_pod,
        )
    });
    let dispatch_name = format!("{name}-dispatch");
    let dispatch = dispatch_deployment(c, meta(dispatch_name.clone(), "dispatch"), &sa_name, &ns);
    let dispatch_pdb = disruption_budget(
        meta(dispatch_name.clone(), "dispatch"),
        labels(&name, "dispatch"),
    );
    let dispatch_hpa = c.spec.dispatch.autoscaling.as_ref().map(|a| {
        autoscaler(
            meta(dispatch_name.clone(), "dispatch"),
            &dispatch_name,
            a,
            None,
        )
    });
    Ok(Children {
        service_account: ServiceAccount {
            metadata: meta(sa_name, "hub"),
            automount_service_account_token: Some(false),
            ..ServiceAccount::default()
        },
        config,
        hub,
        service,
        pdb,
        hpa,
        dispatch,
        dispatch_pdb,
        dispatch_hpa,
    })
}

/// At most one pod of the Deployment down at a time for voluntary disruptions.
fn disruption_budget(
    metadata: ObjectMeta,
    selector: BTreeMap<String, String>,
) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata,
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector),
                match_expressions: None,
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

/// CPU, and connections per pod when set (a Pods metric from the hubs' `/metrics`).
fn autoscaler(
    metadata: ObjectMeta,
    target: &str,
    a: &cmq_crds::v1alpha1::AutoscalingSpec,
    connections_per_pod: Option<i64>,
) -> HorizontalPodAutoscaler {
    let mut metrics = vec![MetricSpec {
        type_: "Resource".into(),
        resource: Some(ResourceMetricSource {
            name: "cpu".into(),
            target: MetricTarget {
                type_: "Utilization".into(),
                average_utilization: Some(a.target_cpu_utilization_percentage.unwrap_or(70)),
                ..MetricTarget::default()
            },
        }),
        ..MetricSpec::default()
    }];
    if let Some(per_pod) = connections_per_pod {
        metrics.push(MetricSpec {
            type_: "Pods".into(),
            pods: Some(PodsMetricSource {
                metric: MetricIdentifier {
                    name: "cmq_hub_connections".into(),
                    selector: None,
                },
                target: MetricTarget {
                    type_: "AverageValue".into(),
                    average_value: Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                        per_pod.to_string(),
                    )),
                    ..MetricTarget::default()
                },
            }),
            ..MetricSpec::default()
        });
    }
    HorizontalPodAutoscaler {
        metadata,
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: k8s_openapi::api::autoscaling::v2::CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: target.into(),
            },
            min_replicas: Some(a.min_replicas),
            max_replicas: a.max_replicas,
            metrics: Some(metrics),
            behavior: None,
        }),
        ..HorizontalPodAutoscaler::default()
    }
}

fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(65532),
        run_as_group: Some(65532),
        ..PodSecurityContext::default()
    }
}

fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        ..SecurityContext::default()
    }
}

/// Dispatchers: stateless; a SIGTERM stops taking messages and waits for the writes in
/// flight (what is not acknowledged by then comes again to another dispatcher).
fn dispatch_deployment(c: &MqttCluster, metadata: ObjectMeta, sa: &str, ns: &str) -> Deployment {
    let name = c.name_any();
    let nats = c.spec.nats.clone().unwrap_or_default();
    let envs = vec![
        env("CMQ_NATS_URL", nats.url),
        env("CMQ_CLUSTER", cluster_name(ns, &name)),
        env(
            "CMQ_STREAM_REPLICAS",
            nats.stream_replicas.unwrap_or(1).to_string(),
        ),
        env("CMQ_MESSAGE_SHARDS", nats.shards.unwrap_or(4).to_string()),
        env("CMQ_ADMIN_LISTEN", format!("0.0.0.0:{ADMIN_PORT}")),
        env("CMQ_DRAIN_TIMEOUT_MS", DISPATCH_DRAIN_MS.to_string()),
        EnvVar {
            name: "CMQ_DISPATCHER_ID".into(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    api_version: None,
                }),
                ..EnvVarSource::default()
            }),
        },
    ];
    let selector_labels = labels(&name, "dispatch");
    let container = Container {
        name: "dispatch".into(),
        image: Some(c.spec.image.clone().unwrap_or_else(|| DEFAULT_IMAGE.into())),
        args: Some(vec!["dispatch".into()]),
        env: Some(envs),
        ports: Some(vec![port("admin", ADMIN_PORT)]),
        resources: c.spec.dispatch.resources.clone(),
        liveness_probe: Some(http_probe("/healthz", 10)),
        readiness_probe: Some(http_probe("/readyz", 5)),
        security_context: Some(container_security()),
        ..Container::default()
    };
    Deployment {
        metadata,
        spec: Some(DeploymentSpec {
            replicas: match c.spec.dispatch.autoscaling {
                Some(_) => None,
                None => Some(c.spec.dispatch.replicas.unwrap_or(1)),
            },
            selector: LabelSelector {
                match_labels: Some(selector_labels.clone()),
                match_expressions: None,
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(selector_labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(sa.into()),
                    termination_grace_period_seconds: Some(DISPATCH_DRAIN_MS / 1000 + 10),
                    security_context: Some(pod_security()),
                    containers: vec![container],
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

fn http_probe(path: &str, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(ADMIN_PORT),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

fn hub_deployment(
    c: &MqttCluster,
    metadata: ObjectMeta,
    sa: &str,
    config: &str,
    checksum: &str,
    ns: &str,
) -> Deployment {
    let name = c.name_any();
    let nats = c.spec.nats.clone().unwrap_or_default();
    let mut envs = vec![
        env("CMQ_NATS_URL", nats.url),
        env("CMQ_CLUSTER", cluster_name(ns, &name)),
        env(
            "CMQ_STREAM_REPLICAS",
            nats.stream_replicas.unwrap_or(1).to_string(),
        ),
        env("CMQ_MESSAGE_SHARDS", nats.shards.unwrap_or(4).to_string()),
        env("CMQ_MANIFESTS", "/etc/cmq"),
        env("CMQ_DRAIN_PERIOD_MS", DRAIN_PERIOD_MS.to_string()),
        env(
            "CMQ_DRAIN_TIMEOUT_MS",
            (DRAIN_PERIOD_MS + 10_000).to_string(),
        ),
        EnvVar {
            name: "CMQ_COAP_TOKEN_SECRET".into(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(k8s_openapi::api::core::v1::SecretKeySelector {
                    name: coap_secret_name(&name),
                    key: COAP_SECRET_KEY.into(),
                    optional: Some(true),
                }),
                ..EnvVarSource::default()
            }),
        },
        EnvVar {
            name: "CMQ_HUB_ID".into(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    api_version: None,
                }),
                ..EnvVarSource::default()
            }),
        },
    ];
    let mut ports = vec![
        port("mqtt", 1883),
        port("ws", 8083),
        port("admin", ADMIN_PORT),
    ];
    if coap_enabled(c) {
        ports.push(ContainerPort {
            protocol: Some("UDP".into()),
            ..port("coap", coap_port(c))
        });
    }
    if let Some(p) = coaps_port(c) {
        ports.push(ContainerPort {
            protocol: Some("UDP".into()),
            ..port("coaps", p)
        });
    }
    let mut volumes = vec![Volume {
        name: "config".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: config.into(),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: "config".into(),
        mount_path: "/etc/cmq".into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }];
    if let Some(tls) = c.spec.hub.listeners.tls.as_ref()
        && let Some(secret) = &tls.secret_name
    {
        ports.extend([port("mqtts", 8883), port("wss", 8084)]);
        envs.extend([
            env("CMQ_TLS_CERT", "/etc/cmq-tls/tls.crt"),
            env("CMQ_TLS_KEY", "/etc/cmq-tls/tls.key"),
        ]);
        volumes.push(secret_volume("tls", secret));
        mounts.push(mount("tls", "/etc/cmq-tls"));
        if let Some(ca) = &tls.client_ca_secret_name {
            envs.push(env("CMQ_TLS_CLIENT_CA", "/etc/cmq-client-ca/ca.crt"));
            volumes.push(secret_volume("client-ca", ca));
            mounts.push(mount("client-ca", "/etc/cmq-client-ca"));
        }
        if let Some(mode) = tls.client_auth {
            let mode = format!("{mode:?}").to_lowercase();
            envs.push(env("CMQ_TLS_CLIENT_AUTH", mode));
        }
    }
    let selector_labels = labels(&name, "hub");
    let container = Container {
        name: "hub".into(),
        image: Some(c.spec.image.clone().unwrap_or_else(|| DEFAULT_IMAGE.into())),
        args: Some(vec!["hub".into()]),
        env: Some(envs),
        ports: Some(ports),
        resources: c.spec.hub.resources.clone(),
        liveness_probe: Some(http_probe("/healthz", 10)),
        readiness_probe: Some(http_probe("/readyz", 5)),
        // Lets the Service drop the pod before the hub starts draining its clients.
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction { seconds: 5 }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        security_context: Some(container_security()),
        volume_mounts: Some(mounts),
        ..Container::default()
    };
    Deployment {
        metadata,
        spec: Some(DeploymentSpec {
            replicas: match c.spec.hub.autoscaling {
                // The HPA owns the replica count.
                Some(_) => None,
                None => Some(c.spec.hub.replicas.unwrap_or(2)),
            },
            selector: LabelSelector {
                match_labels: Some(selector_labels.clone()),
                match_expressions: None,
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(selector_labels),
                    annotations: Some(BTreeMap::from([(
                        "cmq.io/config-checksum".into(),
                        checksum.into(),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(sa.into()),
                    termination_grace_period_seconds: Some(GRACE_SECONDS),
                    security_context: Some(pod_security()),
                    containers: vec![container],
                    volumes: Some(volumes),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

fn secret_volume(name: &str, secret: &str) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(k8s_openapi::api::core::v1::SecretVolumeSource {
            secret_name: Some(secret.into()),
            ..Default::default()
        }),
        ..Volume::default()
    }
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

/// Where devices connect: the load balancer's addresses, else the Service's DNS name.
pub fn endpoints(c: &MqttCluster, service: Option<&Service>, ns: &str) -> Vec<String> {
    let mut hosts: Vec<String> = service
        .and_then(|s| s.status.as_ref())
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|ingress| {
            ingress
                .iter()
                .filter_map(|i| i.hostname.clone().or_else(|| i.ip.clone()))
                .collect()
        })
        .unwrap_or_default();
    if hosts.is_empty() {
        hosts.push(format!("{}-hub.{ns}.svc", c.name_any()));
    }
    let tls = c
        .spec
        .hub
        .listeners
        .tls
        .as_ref()
        .is_some_and(|t| t.secret_name.is_some());
    let mut out = Vec::new();
    for h in &hosts {
        out.push(format!("mqtt://{h}:1883"));
        out.push(format!("ws://{h}:8083/mqtt"));
        if tls {
            out.push(format!("mqtts://{h}:8883"));
            out.push(format!("wss://{h}:8084/mqtt"));
        }
        if coap_enabled(c) {
            out.push(format!("coap://{h}:{}", coap_port(c)));
        }
        if let Some(p) = coaps_port(c) {
            out.push(format!("coaps://{h}:{p}"));
        }
    }
    out
}

/// The CoAP listener runs unless the spec turns it off.
fn coap_enabled(c: &MqttCluster) -> bool {
    c.spec.hub.listeners.coap.as_ref().is_none_or(|l| l.enabled)
}

/// The port of the hubs' CoAP over DTLS listener, when the spec turns it on.
fn coaps_port(c: &MqttCluster) -> Option<i32> {
    c.spec
        .hub
        .listeners
        .coaps
        .as_ref()
        .filter(|l| l.enabled)
        .map(|l| i32::from(l.port))
}

/// The port the hubs' CoAP listener uses.
fn coap_port(c: &MqttCluster) -> i32 {
    c.spec
        .hub
        .listeners
        .coap
        .as_ref()
        .map_or(5683, |l| i32::from(l.port))
}

fn hub_service(c: &MqttCluster, mut metadata: ObjectMeta) -> Service {
    let svc = &c.spec.hub.service;
    if !svc.annotations.is_empty() {
        metadata.annotations = Some(svc.annotations.clone());
    }
    let sp = |name: &str, port: i32| ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    };
    let mut ports = vec![sp("mqtt", 1883), sp("ws", 8083)];
    if coap_enabled(c) {
        // TCP and UDP on one load balancer (mixed protocols, Kubernetes >= 1.26).
        ports.push(ServicePort {
            protocol: Some("UDP".into()),
            ..sp("coap", 5683)
        });
    }
    if coaps_port(c).is_some() {
        ports.push(ServicePort {
            protocol: Some("UDP".into()),
            ..sp("coaps", 5684)
        });
    }
    if c.spec
        .hub
        .listeners
        .tls
        .as_ref()
        .is_some_and(|t| t.secret_name.is_some())
    {
        ports.extend([sp("mqtts", 8883), sp("wss", 8084)]);
    }
    let type_ = match svc.r#type.unwrap_or(ServiceType::LoadBalancer) {
        ServiceType::ClusterIP => "ClusterIP",
        ServiceType::NodePort => "NodePort",
        ServiceType::LoadBalancer => "LoadBalancer",
    };
    Service {
        metadata,
        spec: Some(k8s_openapi::api::core::v1::ServiceSpec {
            type_: Some(type_.into()),
            selector: Some(labels(&c.name_any(), "hub")),
            ports: Some(ports),
            // MQTT sessions are long-lived TCP connections; the load balancer must keep a
            // client's address visible to the hubs (failure limiter, logs).
            external_traffic_policy: (type_ != "ClusterIP").then(|| "Local".into()),
            ..Default::default()
        }),
        ..Service::default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cluster(json: &str) -> MqttCluster {
        let mut c: MqttCluster = serde_json::from_str(json).unwrap();
        c.metadata.uid = Some("uid-1".into());
        c
    }

    fn service_ports(ch: &Children) -> Vec<i32> {
        let spec = ch.service.spec.as_ref().unwrap();
        spec.ports.iter().flatten().map(|p| p.port).collect()
    }

    const BASE: &str = r#"{"apiVersion":"cmq.io/v1alpha1","kind":"MqttCluster",
        "metadata":{"name":"demo","namespace":"iot"},
        "spec":{"nats":{"url":"nats://nats:4222","streamReplicas":3}}}"#;

    #[test]
    fn builds_owned_children_with_probes_and_env() {
        let c = cluster(BASE);
        let ch = children(&c).unwrap();
        let owner = &ch.hub.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("MqttCluster", Some(true))
        );
        let spec = ch.hub.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(2));
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(
            pod.security_context.as_ref().unwrap().run_as_non_root,
            Some(true)
        );
        let hub = &pod.containers[0];
        let env: BTreeMap<_, _> = hub
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e.value.clone().unwrap_or_default()))
            .collect();
        assert_eq!(env["CMQ_CLUSTER"], "iot_demo");
        assert_eq!(env["CMQ_STREAM_REPLICAS"], "3");
        assert_eq!(
            hub.readiness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/readyz")
        );
        assert!(ch.hpa.is_none());
        assert_eq!(service_ports(&ch), vec![1883, 8083, 5683]);
    }

    #[test]
    fn tls_autoscaling_and_config_checksum() {
        let with = BASE.replace(
            r#""streamReplicas":3}"#,
            r#""streamReplicas":3},"hub":{"autoscaling":{"minReplicas":2,"maxReplicas":6,"targetConnectionsPerPod":50000},
               "listeners":{"tls":{"secretName":"hub-tls","clientAuth":"optional","clientCaSecretName":"ca"},"coaps":{"port":5684}},
               "limits":{"maxConnections":100000}}"#,
        );
        let c = cluster(&with);
        let ch = children(&c).unwrap();
        assert_eq!(
            ch.hub.spec.as_ref().unwrap().replicas,
            None,
            "the HPA owns replicas"
        );
        let hpa = ch.hpa.clone().unwrap().spec.unwrap();
        assert_eq!((hpa.min_replicas, hpa.max_replicas), (Some(2), 6));
        assert_eq!(hpa.metrics.unwrap().len(), 2);
        assert_eq!(service_ports(&ch), vec![1883, 8083, 5683, 5684, 8883, 8084]);
        let eps = endpoints(&c, None, "iot");
        assert!(
            eps.contains(&"coaps://demo-hub.iot.svc:5684".to_owned()),
            "{eps:?}"
        );
        let sum = |ch: &Children| {
            ch.hub
                .spec
                .as_ref()
                .unwrap()
                .template
                .metadata
                .as_ref()
                .unwrap()
                .annotations
                .as_ref()
                .unwrap()["cmq.io/config-checksum"]
                .clone()
        };
        let other = cluster(&with.replace("100000", "200000"));
        assert_ne!(sum(&children(&c).unwrap()), sum(&children(&other).unwrap()));
    }

    #[test]
    fn refuses_a_cluster_without_nats() {
        let c = cluster(&BASE.replace(
            r#""nats":{"url":"nats://nats:4222","streamReplicas":3}"#,
            "",
        ));
        assert!(matches!(children(&c), Err(Error::Invalid(_))));
    }
}
