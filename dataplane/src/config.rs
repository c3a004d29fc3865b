//! Hub settings: command-line flags (each with an environment variable), merged with the
//! `MqttCluster` found in `--manifests`, where a flag given explicitly wins.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use cmq_crds::v1alpha1::MqttCluster;
use cmq_topic::TopicLimits;

/// Listener and limit flags of the hub.
#[derive(Args, Debug, Clone)]
pub struct HubArgs {
    /// MQTT over TCP listen address ("off" disables it).
    #[arg(long, env = "CMQ_MQTT_LISTEN", default_value = "0.0.0.0:1883")]
    pub mqtt_listen: String,
    /// MQTT over WebSocket listen address, path /mqtt ("off" disables it).
    #[arg(long, env = "CMQ_WS_LISTEN", default_value = "0.0.0.0:8083")]
    pub ws_listen: String,
    /// Admin HTTP address: /metrics, /healthz, /readyz ("off" disables it).
    #[arg(long, env = "CMQ_ADMIN_LISTEN", default_value = "0.0.0.0:9090")]
    pub admin_listen: String,
    /// CoAP over UDP listen address ("off" disables it).
    #[arg(long, env = "CMQ_COAP_LISTEN", default_value = "0.0.0.0:5683")]
    pub coap_listen: String,
    /// CoAP over DTLS listen address, e.g. 0.0.0.0:5684 ("off", the default, disables it):
    /// pre-shared keys of DeviceCredentials, and client certificates when --tls-cert has an
    /// ECDSA P-256 or Ed25519 key.
    #[arg(long, env = "CMQ_COAPS_LISTEN", default_value = "off")]
    pub coaps_listen: String,
    /// Key that signs CoAP connection tokens (and seals pre-shared keys in cluster mode); the same on every hub of a cluster, so any
    /// hub accepts a token another issued (default: random, this hub only).
    #[arg(long, env = "CMQ_COAP_TOKEN_SECRET", hide_env_values = true)]
    pub coap_token_secret: Option<String>,
    /// Folder of resource YAML files: MqttCluster (listeners, limits, auth defaults),
    /// DeviceCredential, TopicAcl and the Secrets credentials refer to.
    #[arg(long, env = "CMQ_MANIFESTS")]
    pub manifests: Option<PathBuf>,
    /// How often the manifests folder is checked for changes, in milliseconds (0: never;
    /// credentials and ACLs are reloaded, listeners and limits need a restart).
    #[arg(long, env = "CMQ_MANIFESTS_RELOAD_MS", default_value_t = 2000)]
    pub manifests_reload_ms: u64,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
    /// Most concurrent connections; further CONNECTs get CONNACK 0x97 / 0x03.
    #[arg(long, env = "CMQ_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Largest packet accepted, in bytes (DISCONNECT 0x95 above it).
    #[arg(long, env = "CMQ_MAX_PACKET_SIZE")]
    pub max_packet_size: Option<usize>,
    /// In-flight QoS 1/2 messages per direction and connection (MQTT 5 receive maximum).
    #[arg(long, env = "CMQ_RECEIVE_MAXIMUM")]
    pub receive_maximum: Option<u16>,
    /// Messages queued per session before QoS 0, then newer messages, are dropped.
    #[arg(long, env = "CMQ_MAX_QUEUED_MESSAGES")]
    pub max_queued_messages: Option<usize>,
    /// Longest topic name or filter, in bytes.
    #[arg(long, env = "CMQ_MAX_TOPIC_LENGTH")]
    pub max_topic_length: Option<usize>,
    /// Most levels in a topic name or filter.
    #[arg(long, env = "CMQ_MAX_TOPIC_LEVELS")]
    pub max_topic_levels: Option<usize>,
    /// Most subscriptions per session.
    #[arg(long, env = "CMQ_MAX_SUBSCRIPTIONS")]
    pub max_subscriptions: Option<usize>,
    /// How long a new socket may take to send CONNECT, in milliseconds.
    #[arg(long, env = "CMQ_CONNECT_TIMEOUT_MS")]
    pub connect_timeout_ms: Option<u64>,
    /// Keep-alive imposed on MQTT 5 clients, in seconds (server keep-alive).
    #[arg(long, env = "CMQ_SERVER_KEEP_ALIVE")]
    pub server_keep_alive: Option<u16>,
    /// Topic aliases a client may use towards the hub.
    #[arg(long, env = "CMQ_TOPIC_ALIAS_MAXIMUM")]
    pub topic_alias_maximum: Option<u16>,
    /// Longest session expiry granted, in seconds.
    #[arg(long, env = "CMQ_MAX_SESSION_EXPIRY")]
    pub max_session_expiry: Option<u32>,
    /// How long a publisher waits for room in a connected subscriber's full queue before
    /// the QoS 1/2 delivery is dropped and counted, in milliseconds.
    #[arg(long, env = "CMQ_MAX_PUBLISH_WAIT_MS")]
    pub max_publish_wait_ms: Option<u64>,
    /// How long SIGTERM waits for connections to close, in milliseconds.
    #[arg(long, env = "CMQ_DRAIN_TIMEOUT_MS", default_value_t = 10_000)]
    pub drain_timeout_ms: u64,
    /// How long a QoS 1/2 publish waits for `sync` ForwardRules' sinks before it is
    /// refused (MQTT 5 0x97), in milliseconds.
    #[arg(long, env = "CMQ_SYNC_TIMEOUT_MS", default_value_t = 5_000)]
    pub sync_timeout_ms: u64,
    /// On SIGTERM, spread the disconnects of the hub's clients evenly over this period (in
    /// milliseconds), so they reconnect to other hubs gradually rather than all at once.
    #[arg(long, env = "CMQ_DRAIN_PERIOD_MS", default_value_t = 0)]
    pub drain_period_ms: u64,
    /// Server reference for MQTT 5 clients disconnected by a drain: they get DISCONNECT
    /// 0x9C (use another server) with it instead of 0x8B (server shutting down).
    #[arg(long, env = "CMQ_SERVER_REFERENCE")]
    pub server_reference: Option<String>,
}

/// Authentication and authorization flags; each wins over the manifests' `spec.auth`.
#[derive(Args, Debug, Clone)]
pub struct AuthArgs {
    /// Whether clients without a credential may connect (default: only while no
    /// DeviceCredential exists).
    #[arg(long, env = "CMQ_ALLOW_ANONYMOUS")]
    pub allow_anonymous: Option<bool>,
    /// Verdict when no TopicAcl rule matches (default: allow).
    #[arg(long, env = "CMQ_DEFAULT_PERMISSION", value_enum)]
    pub default_permission: Option<PermissionArg>,
    /// What a denied publish does: ignore (dropped; MQTT 5 gets reason 0x87) or disconnect.
    #[arg(long, env = "CMQ_DENY_ACTION", value_enum)]
    pub deny_action: Option<DenyActionArg>,
    /// Failed authentications from one address or client id before further attempts are
    /// refused for the rest of the window (0: no limit).
    #[arg(long, env = "CMQ_AUTH_FAILURE_LIMIT", default_value_t = 5)]
    pub auth_failure_limit: u32,
    /// The window of --auth-failure-limit, in seconds.
    #[arg(long, env = "CMQ_AUTH_FAILURE_WINDOW_SECS", default_value_t = 60)]
    pub auth_failure_window_secs: u64,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum PermissionArg {
    Allow,
    Deny,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum DenyActionArg {
    Ignore,
    Disconnect,
}

impl AuthArgs {
    pub fn flags(&self) -> crate::access::AuthFlags {
        use cmq_crds::v1alpha1::{DenyAction, Permission};
        crate::access::AuthFlags {
            allow_anonymous: self.allow_anonymous,
            default_permission: self.default_permission.map(|p| match p {
                PermissionArg::Allow => Permission::Allow,
                PermissionArg::Deny => Permission::Deny,
            }),
            deny_action: self.deny_action.map(|d| match d {
                DenyActionArg::Ignore => DenyAction::Ignore,
                DenyActionArg::Disconnect => DenyAction::Disconnect,
            }),
            failure_limit: self.auth_failure_limit,
            failure_window: Duration::from_secs(self.auth_failure_window_secs.max(1)),
        }
    }
}

/// Limits every connection of the hub enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub max_packet_size: usize,
    pub receive_maximum: u16,
    pub max_queued_messages: usize,
    pub topic: TopicLimits,
    pub max_subscriptions: usize,
    pub connect_timeout: Duration,
    pub server_keep_alive: Option<u16>,
    pub topic_alias_maximum: u16,
    pub max_session_expiry: u32,
    /// How long a publisher waits for room in a connected subscriber's full queue before
    /// the QoS 1/2 delivery is dropped.
    pub max_publish_wait: Duration,
    /// Period over which a drain spreads the disconnects.
    pub drain_period: Duration,
    /// Server reference sent with DISCONNECT 0x9C on drain (MQTT 5).
    pub server_reference: Option<String>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1_000_000,
            max_packet_size: 1024 * 1024,
            receive_maximum: 128,
            max_queued_messages: 1000,
            topic: TopicLimits {
                max_length: 1024,
                max_levels: 32,
            },
            max_subscriptions: 100,
            connect_timeout: Duration::from_secs(10),
            server_keep_alive: None,
            topic_alias_maximum: 64,
            max_session_expiry: 7 * 24 * 3600,
            max_publish_wait: Duration::from_secs(5),
            drain_period: Duration::ZERO,
            server_reference: None,
        }
    }
}

/// Where the hub listens.
#[derive(Debug, Clone)]
pub struct Listeners {
    pub mqtt: Option<SocketAddr>,
    pub websocket: Option<SocketAddr>,
    /// TLS listeners: only when a certificate is configured.
    pub mqtts: Option<SocketAddr>,
    pub wss: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    /// CoAP over UDP.
    pub coap: Option<SocketAddr>,
    /// CoAP over DTLS.
    pub coaps: Option<SocketAddr>,
}

/// Invalid settings, reported at start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid listen address {value:?} for {flag}: {reason}")]
    Address {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error("invalid limit {name}: {reason}")]
    Limit {
        name: &'static str,
        reason: &'static str,
    },
}

pub fn parse_listen(flag: &'static str, value: &str) -> Result<Option<SocketAddr>, ConfigError> {
    if value.eq_ignore_ascii_case("off") || value.is_empty() {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|e: std::net::AddrParseError| ConfigError::Address {
            flag,
            value: value.to_owned(),
            reason: e.to_string(),
        })
}

impl HubArgs {
    /// Resolves listeners and limits: flag, else manifest, else default.
    pub fn resolve(
        &self,
        cluster: Option<&MqttCluster>,
    ) -> Result<(Listeners, Limits), ConfigError> {
        let spec = cluster.map(|c| &c.spec.hub);
        let mut listeners = Listeners {
            mqtt: parse_listen("--mqtt-listen", &self.mqtt_listen)?,
            websocket: parse_listen("--ws-listen", &self.ws_listen)?,
            mqtts: parse_listen("--mqtts-listen", &self.tls.mqtts_listen)?,
            wss: parse_listen("--wss-listen", &self.tls.wss_listen)?,
            admin: parse_listen("--admin-listen", &self.admin_listen)?,
            coap: parse_listen("--coap-listen", &self.coap_listen)?,
            coaps: parse_listen("--coaps-listen", &self.coaps_listen)?,
        };
        if let Some(l) = spec.map(|s| &s.listeners) {
            apply_listener(
                &mut listeners.mqtt,
                l.mqtt.as_ref(),
                &self.mqtt_listen,
                "0.0.0.0:1883",
            );
            apply_listener(
                &mut listeners.websocket,
                l.websocket.as_ref(),
                &self.ws_listen,
                "0.0.0.0:8083",
            );
            apply_listener(
                &mut listeners.mqtts,
                l.mqtts.as_ref(),
                &self.tls.mqtts_listen,
                "0.0.0.0:8883",
            );
            apply_listener(
                &mut listeners.wss,
                l.wss.as_ref(),
                &self.tls.wss_listen,
                "0.0.0.0:8084",
            );
            apply_listener(
                &mut listeners.coap,
                l.coap.as_ref(),
                &self.coap_listen,
                "0.0.0.0:5683",
            );
            apply_listener(
                &mut listeners.coaps,
                l.coaps.as_ref(),
                &self.coaps_listen,
                "off",
            );
        }
        if self.tls.tls_cert.is_none() || self.tls.tls_key.is_none() {
            listeners.mqtts = None;
            listeners.wss = None;
        }
        let m = spec.map(|s| s.limits.clone()).unwrap_or_default();
        let d = Limits::default();
        let limits = Limits {
            max_connections: self
                .max_connections
                .or(m.max_connections.map(|v| v as usize))
                .unwrap_or(d.max_connections),
            max_packet_size: self
                .max_packet_size
                .or(m.max_packet_size.map(|v| v as usize))
                .unwrap_or(d.max_packet_size),
            receive_maximum: self
                .receive_maximum
                .or(m.receive_maximum)
                .unwrap_or(d.receive_maximum),
            max_queued_messages: self
                .max_queued_messages
                .or(m.max_queued_messages.map(|v| v as usize))
                .unwrap_or(d.max_queued_messages),
            topic: TopicLimits {
                max_length: self
                    .max_topic_length
                    .or(m.max_topic_length.map(|v| v as usize))
                    .unwrap_or(d.topic.max_length),
                max_levels: self
                    .max_topic_levels
                    .or(m.max_topic_levels.map(|v| v as usize))
                    .unwrap_or(d.topic.max_levels),
            },
            max_subscriptions: self
                .max_subscriptions
                .or(m.max_subscriptions.map(|v| v as usize))
                .unwrap_or(d.max_subscriptions),
            connect_timeout: self
                .connect_timeout_ms
                .or(m.connect_timeout_ms)
                .map(Duration::from_millis)
                .unwrap_or(d.connect_timeout),
            server_keep_alive: self.server_keep_alive.or(m.server_keep_alive),
            topic_alias_maximum: self
                .topic_alias_maximum
                .or(m.topic_alias_maximum)
                .unwrap_or(d.topic_alias_maximum),
            max_session_expiry: self
                .max_session_expiry
                .or(m.max_session_expiry)
                .unwrap_or(d.max_session_expiry),
            max_publish_wait: self
                .max_publish_wait_ms
                .map(Duration::from_millis)
                .unwrap_or(d.max_publish_wait),
            drain_period: Duration::from_millis(self.drain_period_ms),
            server_reference: self.server_reference.clone().filter(|r| !r.is_empty()),
        };
        validate(&limits)?;
        Ok((listeners, limits))
    }
}

/// A manifest listener applies unless the flag was changed from its default.
fn apply_listener(
    slot: &mut Option<SocketAddr>,
    spec: Option<&cmq_crds::v1alpha1::ListenerSpec>,
    flag_value: &str,
    default: &str,
) {
    let Some(spec) = spec else { return };
    if flag_value != default {
        return;
    }
    *slot = spec
        .enabled
        .then(|| SocketAddr::from(([0, 0, 0, 0], spec.port)));
}

fn validate(l: &Limits) -> Result<(), ConfigError> {
    let bad = |name, reason| Err(ConfigError::Limit { name, reason });
    if l.max_packet_size < 64 || l.max_packet_size > 268_435_460 {
        return bad("max-packet-size", "must be between 64 and 268435460 bytes");
    }
    if l.receive_maximum == 0 {
        return bad("receive-maximum", "must be at least 1");
    }
    if l.max_queued_messages == 0 {
        return bad("max-queued-messages", "must be at least 1");
    }
    if l.topic.max_length == 0 || l.topic.max_levels == 0 {
        return bad("max-topic-length/levels", "must be at least 1");
    }
    if l.max_connections == 0 {
        return bad("max-connections", "must be at least 1");
    }
    Ok(())
}
