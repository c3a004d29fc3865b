//! `MqttCluster`: one CMQ deployment: its NATS, hubs (listeners, limits, replicas,
//! autoscaling, Service), dispatchers, and auth defaults. Standalone mode reads the hub's
//! listeners, limits and auth; the operator reads all of it.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{AutoscalingSpec, DispatchSpec, MqttClusterStatus, NatsSpec, ServiceSpec};

/// Desired state of a CMQ cluster.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "cmq.io",
    version = "v1alpha1",
    kind = "MqttCluster",
    doc = "A CMQ deployment: MQTT hubs and dispatchers sharing their state over NATS JetStream.",
    namespaced,
    shortname = "mqc",
    status = "MqttClusterStatus",
    printcolumn = r#"{"name":"Hubs","type":"integer","jsonPath":".status.hubReadyReplicas"}"#,
    printcolumn = r#"{"name":"Dispatchers","type":"integer","jsonPath":".status.dispatchReadyReplicas"}"#,
    printcolumn = r#"{"name":"Connections","type":"integer","jsonPath":".status.connections"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MqttClusterSpec {
    /// The `cmq` container image of hubs and dispatchers (default: the operator's own
    /// version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The NATS JetStream the cluster keeps its state in. Required by the operator;
    /// standalone mode ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats: Option<NatsSpec>,
    /// Settings of the hub, the device-facing MQTT gateway.
    #[serde(default)]
    pub hub: HubSpec,
    /// The dispatchers: the rule engine behind ForwardRules.
    #[serde(default)]
    pub dispatch: DispatchSpec,
    /// Authentication and authorization defaults.
    #[serde(default)]
    pub auth: AuthSpec,
}

/// Who may connect without a credential, and what happens when no ACL rule matches.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// Whether clients that present no credential may connect: no username and no
    /// password (a client certificate that matches no DeviceCredential counts as none). An
    /// unknown username is refused (CONNACK 0x86 / 0x04) once any DeviceCredential exists.
    /// Default: true when the cluster has no DeviceCredential, false otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_anonymous: Option<bool>,
    /// The verdict when no TopicAcl rule matches a publish or subscribe (default: allow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_permission: Option<crate::v1alpha1::Permission>,
    /// What a denied publish does besides being dropped: `ignore` (MQTT 5 clients get
    /// PUBACK/PUBREC 0x87, 3.1.1 clients nothing) or `disconnect` (the connection is closed,
    /// MQTT 5 DISCONNECT 0x87). Default: ignore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny_action: Option<DenyAction>,
}

/// What a denied publish does to the connection.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DenyAction {
    Ignore,
    Disconnect,
}

/// Settings of the hub.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HubSpec {
    /// Hub pods (default 2). Ignored with `autoscaling`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,
    /// CPU and memory of each hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
    /// Horizontal autoscaling on CPU and, optionally, connections per hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
    /// The Service devices reach the hubs through.
    #[serde(default)]
    pub service: ServiceSpec,
    /// Network listeners devices connect to.
    #[serde(default)]
    pub listeners: ListenersSpec,
    /// Limits each hub enforces per connection and per hub.
    #[serde(default)]
    pub limits: LimitsSpec,
}

/// Network listeners. An omitted listener keeps its default; `enabled: false` turns it off.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListenersSpec {
    /// MQTT over plain TCP (default port 1883).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<ListenerSpec>,
    /// MQTT over WebSocket, path `/mqtt`, subprotocol `mqtt` (default port 8083).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub websocket: Option<ListenerSpec>,
    /// MQTT over TLS (default port 8883); runs when `tls` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtts: Option<ListenerSpec>,
    /// MQTT over secure WebSocket, path `/mqtt` (default port 8084); runs when `tls` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wss: Option<ListenerSpec>,
    /// CoAP over UDP (default port 5683): `/ps/{topic}` publish, observe and retained read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coap: Option<ListenerSpec>,
    /// CoAP over DTLS (conventionally port 5684); runs only when set. Devices prove who
    /// they are with a DeviceCredential's pre-shared key (`spec.psk`) or, when `tls` holds
    /// an ECDSA P-256 or Ed25519 key, with a client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coaps: Option<ListenerSpec>,
    /// The certificate of the TLS listeners and how they treat client certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
}

/// TLS settings shared by the `mqtts` and `wss` listeners. In Kubernetes the Secrets are
/// mounted into the hub pods and re-read when they change; standalone mode takes the file
/// flags (`--tls-cert`, `--tls-key`, `--tls-client-ca`) instead.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// A `kubernetes.io/tls` Secret with the server certificate chain and key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// A Secret whose `ca.crt` holds the CA bundle client certificates are checked against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_secret_name: Option<String>,
    /// Whether clients present a certificate: `none` (not asked), `optional` (checked when
    /// presented) or `required`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<ClientAuth>,
}

/// Client certificate policy of a TLS listener.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ClientAuth {
    None,
    Optional,
    Required,
}

/// One listener.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListenerSpec {
    /// Whether the listener runs.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// TCP port to listen on.
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
}

fn default_true() -> bool {
    true
}

/// Limits. Every field is optional; an omitted one keeps the hub's built-in default.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LimitsSpec {
    /// Most concurrent connections per hub; further CONNECTs get CONNACK 0x97 (MQTT 5) or
    /// 0x03 (3.1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_connections: Option<u32>,
    /// Largest MQTT packet accepted, in bytes; a larger one gets DISCONNECT 0x95.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 64, max = 268435455))]
    pub max_packet_size: Option<u32>,
    /// Receive maximum: QoS 1/2 publishes a client may have unacknowledged towards the hub,
    /// and the most the hub keeps in flight towards a client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub receive_maximum: Option<u16>,
    /// Messages queued per session (online or offline) before QoS 0 and then newer messages
    /// are dropped and counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_queued_messages: Option<u32>,
    /// Longest topic name or filter, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub max_topic_length: Option<u32>,
    /// Most levels (`/`-separated parts) in a topic name or filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_topic_levels: Option<u32>,
    /// Most subscriptions one session may hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_subscriptions: Option<u32>,
    /// How long a new socket may take to send CONNECT, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub connect_timeout_ms: Option<u64>,
    /// Keep-alive the hub imposes on clients (MQTT 5 server keep-alive), in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_keep_alive: Option<u16>,
    /// Topic aliases a client may use towards the hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_alias_maximum: Option<u16>,
    /// Longest session expiry interval the hub grants, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_session_expiry: Option<u32>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_listener_and_limits_from_yaml() {
        let yaml = r#"
apiVersion: cmq.io/v1alpha1
kind: MqttCluster
metadata: { name: demo, namespace: iot }
spec:
  hub:
    listeners:
      mqtt: { port: 1884 }
      websocket: { enabled: false, port: 8084 }
    limits: { maxConnections: 10, maxPacketSize: 4096 }
"#;
        let c: MqttCluster = serde_yaml::from_str(yaml).unwrap();
        let hub = &c.spec.hub;
        assert_eq!(
            hub.listeners.mqtt.as_ref().map(|l| (l.enabled, l.port)),
            Some((true, 1884))
        );
        assert_eq!(
            hub.listeners.websocket.as_ref().map(|l| l.enabled),
            Some(false)
        );
        assert_eq!(hub.limits.max_connections, Some(10));
        assert_eq!(hub.limits.max_packet_size, Some(4096));
        assert_eq!(hub.limits.receive_maximum, None);
    }

    #[test]
    fn unknown_kind_fields_fail_clearly() {
        let yaml = "spec: { hub: { limits: { maxConnections: -1 } } }";
        let err = serde_yaml::from_str::<MqttCluster>(yaml).unwrap_err();
        assert!(err.to_string().contains("maxConnections") || err.location().is_some());
    }
}
