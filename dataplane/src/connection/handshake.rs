//! CONNECT → CONNACK: protocol detection, client identifier, limits, authentication,
//! session claim.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use mqttbytes::v5::{ConnAck, ConnAckProperties, Connect, ConnectReturnCode, Packet};
use tracing::{debug, info, warn};

use super::Transport;
use crate::access::{AuthError, PeerCert};
use crate::broker::{Broker, Claim, ConnectionSlot, Will};
use crate::codec::{self, ConnectError, ProtocolVersion};

/// A connection that has been accepted: its session is claimed and CONNACK is queued.
pub struct Accepted<'a> {
    /// The connection's place under the hub's connection limit.
    pub slot: ConnectionSlot<'a>,
    pub version: ProtocolVersion,
    pub client_id: Arc<str>,
    pub claim: Claim,
    pub will: Option<Will>,
    /// Who the client is, and its ACL.
    pub access: Box<super::ConnAccess>,
    /// Effective keep-alive (0 = none).
    pub keep_alive: u16,
    /// Whether CONNECT asked for session expiry 0 (DISCONNECT may then not raise it).
    pub connect_expiry_zero: bool,
    pub client_receive_maximum: u16,
    pub client_max_packet_size: usize,
    pub client_topic_alias_maximum: u16,
    /// Bytes read after CONNECT.
    pub leftover: BytesMut,
    /// CONNACK, encoded.
    pub out: BytesMut,
}

/// How the handshake ended without a session.
#[derive(Debug)]
pub enum Refused {
    /// Socket closed or timed out before a CONNECT arrived.
    NoConnect(&'static str),
    /// The first packet was invalid; close without CONNACK.
    Invalid(ConnectError),
    /// A CONNACK with an error code was (to be) sent.
    Rejected {
        code: ConnectReturnCode,
        out: BytesMut,
    },
}

/// Reads CONNECT within the connect timeout and accepts or refuses the client.
pub async fn handshake<'a>(
    broker: &'a Arc<Broker>,
    transport: &mut Transport,
    ip: std::net::IpAddr,
) -> Result<Accepted<'a>, Refused> {
    let cert = transport.peer_cert();
    let timeout = broker.limits.connect_timeout;
    let mut buf = BytesMut::new();
    let (version, connect) =
        match tokio::time::timeout(timeout, read_connect(broker, transport, &mut buf)).await {
            Err(_) => return Err(Refused::NoConnect("connect_timeout")),
            Ok(r) => r?,
        };
    accept(broker, version, connect, buf, ip, cert).await
}

async fn read_connect(
    broker: &Broker,
    transport: &mut Transport,
    buf: &mut BytesMut,
) -> Result<(ProtocolVersion, Connect), Refused> {
    loop {
        match codec::decode_connect(buf, broker.limits.max_packet_size) {
            Ok(Some(c)) => return Ok(c),
            Ok(None) => {}
            Err(ConnectError::UnsupportedProtocol { name, level }) => {
                // MQTT 5 asks for 0x84; older clients understand 3.1.1's 0x01.
                let version = if level == 5 {
                    ProtocolVersion::V5
                } else {
                    ProtocolVersion::V311
                };
                debug!(name, level, "unsupported protocol version");
                let code = ConnectReturnCode::UnsupportedProtocolVersion;
                return Err(Refused::Rejected {
                    code,
                    out: connack(version, code, false, None),
                });
            }
            Err(e) => return Err(Refused::Invalid(e)),
        }
        match transport.read_up_to(buf, 512).await {
            Ok(0) | Err(_) => return Err(Refused::NoConnect("closed_before_connect")),
            Ok(_) => {}
        }
    }
}

fn connack(
    version: ProtocolVersion,
    code: ConnectReturnCode,
    session_present: bool,
    properties: Option<ConnAckProperties>,
) -> BytesMut {
    let mut out = BytesMut::new();
    let ack = ConnAck {
        session_present,
        code,
        properties,
    };
    // Encoding a CONNACK of bounded size cannot fail.
    let _ = codec::encode_packet(&Packet::ConnAck(ack), version, &mut out);
    out
}

async fn accept<'a>(
    broker: &'a Arc<Broker>,
    version: ProtocolVersion,
    connect: Connect,
    leftover: BytesMut,
    ip: std::net::IpAddr,
    cert: Option<PeerCert>,
) -> Result<Accepted<'a>, Refused> {
    let limits = &broker.limits;
    let reject = |code| {
        Err(Refused::Rejected {
            code,
            out: connack(version, code, false, None),
        })
    };
    let props = connect.properties.clone();
    let mut assigned = None;
    let client_id: Arc<str> = if connect.client_id.is_empty() {
        // 3.1.1 allows an empty id only with a clean session; 3.1 never.
        if version == ProtocolVersion::V31 || (!version.is_v5() && !connect.clean_session) {
            return reject(ConnectReturnCode::ClientIdentifierNotValid);
        }
        let id = format!("cmq-{:016x}", rand::random::<u64>());
        if version.is_v5() {
            assigned = Some(id.clone());
        }
        Arc::from(id)
    } else {
        Arc::from(connect.client_id.as_str())
    };
    if let Some(will) = &connect.last_will
        && cmq_topic::validate_name(&will.topic, &limits.topic).is_err()
    {
        return reject(ConnectReturnCode::TopicNameInvalid);
    }
    if props
        .as_ref()
        .is_some_and(|p| p.authentication_method.is_some())
    {
        return reject(ConnectReturnCode::BadAuthenticationMethod);
    }
    let Some(slot) = broker.acquire_connection() else {
        info!(client_id = %client_id, "refusing connection: connection limit reached");
        return reject(ConnectReturnCode::QuotaExceeded);
    };
    // Authenticated before the session is claimed: a client that fails must not take over
    // (and so disconnect) the session of the device it pretends to be.
    let (username, password) = match &connect.login {
        Some(l) => (
            Some(l.username.as_str()).filter(|u| !u.is_empty()),
            Some(l.password.as_bytes()).filter(|p| !p.is_empty()),
        ),
        None => (None, None),
    };
    let mut principal = match broker
        .access
        .authenticate(ip, client_id.clone(), username, password, cert)
        .await
    {
        Ok(p) => p,
        Err(e) => {
            info!(client_id = %client_id, username, reason = ?e, "authentication failed");
            return reject(match (e, version.is_v5()) {
                (AuthError::BadCredentials, true) => ConnectReturnCode::BadUserNamePassword,
                (AuthError::NotAuthorized, true) => ConnectReturnCode::NotAuthorized,
                (AuthError::RateLimited, true) => ConnectReturnCode::ConnectionRateExceeded,
                // Encoded as 3.1.1's 0x04 "bad user name or password".
                (AuthError::BadCredentials, false) => ConnectReturnCode::BadUserNamePassword,
                // Encoded as 3.1.1's 0x05 "not authorized".
                (_, false) => ConnectReturnCode::NotAuthorized,
            });
        }
    };
    let grant = match broker.access.grant(&mut principal) {
        Ok(g) => g,
        // The registry changed between the two calls; the client may retry.
        Err(_) => return reject(ConnectReturnCode::NotAuthorized),
    };
    let requested_expiry = match (&props, version) {
        (Some(p), ProtocolVersion::V5) => p.session_expiry_interval.unwrap_or(0),
        (None, ProtocolVersion::V5) => 0,
        _ if connect.clean_session => 0,
        _ => u32::MAX,
    };
    let expiry = requested_expiry.min(limits.max_session_expiry);
    let mut claim = match broker
        .claim_session(&client_id, connect.clean_session)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            info!(client_id = %client_id, error = %e, "refusing connection");
            let code = match e {
                crate::broker::ClaimError::State(_) => ConnectReturnCode::ServerUnavailable,
                _ => ConnectReturnCode::ServerBusy,
            };
            return reject(code);
        }
    };
    claim.state.expiry_interval = expiry;
    let will = connect.last_will.map(Will::from_connect).filter(|w| {
        let allowed = grant.may_publish(&w.topic, w.qos, w.retain);
        if !allowed {
            // Refusing the connection would punish the device for its will alone; the will
            // is dropped (and counted) as a denied publish would be.
            broker.metrics.access.denied_publish.inc();
            info!(client_id = %client_id, topic = %w.topic, "will topic denied by the ACL; the will is dropped");
        }
        allowed
    });
    if let Err(e) = broker
        .state
        .sessions
        .announce(&client_id, will.as_ref())
        .await
    {
        // The connection works; only a crash of this hub would lose its will.
        warn!(client_id = %client_id, error = %e, "could not record the connection in the cluster");
    }
    let keep_alive = match (version, limits.server_keep_alive) {
        (ProtocolVersion::V5, Some(server)) => server,
        _ => connect.keep_alive,
    };
    let properties = version.is_v5().then(|| {
        let mut p = ConnAckProperties::new();
        p.receive_max = Some(limits.receive_maximum);
        p.max_packet_size = u32::try_from(limits.max_packet_size).ok();
        p.topic_alias_max = Some(limits.topic_alias_maximum);
        p.retain_available = Some(1);
        p.wildcard_subscription_available = Some(1);
        p.subscription_identifiers_available = Some(1);
        p.shared_subscription_available = Some(1);
        p.assigned_client_identifier = assigned;
        if expiry != requested_expiry {
            p.session_expiry_interval = Some(expiry);
        }
        if keep_alive != connect.keep_alive {
            p.server_keep_alive = Some(keep_alive);
        }
        p
    });
    let out = connack(
        version,
        ConnectReturnCode::Success,
        claim.present,
        properties,
    );
    let p = props.as_ref();
    Ok(Accepted {
        slot,
        version,
        client_id,
        will,
        keep_alive,
        connect_expiry_zero: requested_expiry == 0,
        client_receive_maximum: p.and_then(|p| p.receive_maximum).unwrap_or(u16::MAX).max(1),
        client_max_packet_size: p
            .and_then(|p| p.max_packet_size)
            .map_or(usize::MAX, |v| v as usize),
        client_topic_alias_maximum: p.and_then(|p| p.topic_alias_max).unwrap_or(0),
        access: Box::new(super::ConnAccess {
            username: principal.username().map(std::sync::Arc::from),
            principal,
            grant,
        }),
        claim,
        leftover,
        out,
    })
}

/// How long a closing connection may take to flush its last packet.
pub const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);
