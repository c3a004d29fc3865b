//! The resources: `/ps/{topic}` (publish, observe, retained read) and `/.well-known/core`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use coap_lite::{CoapOption, ContentFormat, MessageClass, Packet, RequestType, ResponseType};
use mqttbytes::QoS;
use tracing::debug;

use super::Gateway;
use super::block::{self, Block, Step};
use super::dtls::PeerIdentity;
use super::request::{self, Request};
use crate::access::{Access, AuthError, Principal};
use crate::broker::{Message, Origin};

/// Who sent a request, and what they may do.
pub struct Client {
    pub client_id: Arc<str>,
    pub username: Option<Arc<str>>,
    /// The DeviceCredential that matched (`namespace/name`), empty for anonymous.
    pub credential: String,
    pub grant: crate::access::Grant,
}

fn method_label(m: RequestType) -> &'static str {
    match m {
        RequestType::Get => "GET",
        RequestType::Post => "POST",
        RequestType::Put => "PUT",
        RequestType::Delete => "DELETE",
        RequestType::Fetch => "FETCH",
        RequestType::Patch => "PATCH",
        RequestType::IPatch => "iPATCH",
        RequestType::UnKnown => "unknown",
    }
}

/// Handles one request; returns the response bytes (empty: already sent or none), the
/// method and the response code for the metrics.
pub async fn handle(
    gw: &Arc<Gateway>,
    mut packet: Packet,
    peer: SocketAddr,
) -> (Arc<Vec<u8>>, &'static str, String) {
    let confirmable = packet.header.get_type() == coap_lite::MessageType::Confirmable;
    let mid = packet.header.message_id;
    let token = packet.get_token().to_vec();
    let label = match packet.header.code {
        MessageClass::Request(m) => method_label(m),
        _ => "unknown",
    };
    let reply = |code: ResponseType, options: Vec<(CoapOption, Vec<u8>)>| {
        let mut p = request::response(confirmable, mid, gw.next_mid(), &token, code);
        for (o, v) in options {
            p.add_option(o, v);
        }
        (
            Arc::new(request::encode(&p)),
            label,
            request::code_text(code),
        )
    };
    let (Ok(block1), Ok(block2)) = (
        block::option(&packet, CoapOption::Block1),
        block::option(&packet, CoapOption::Block2),
    ) else {
        return reply(ResponseType::BadOption, Vec::new());
    };
    // Uploads: the body is published once, with its last block.
    let mut last_block1 = None;
    if let (Some(b), MessageClass::Request(RequestType::Post | RequestType::Put)) =
        (block1, packet.header.code)
    {
        let path = packet
            .get_option(CoapOption::UriPath)
            .map(|segments| {
                segments
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .unwrap_or_default();
        let max = gw.broker.limits.max_packet_size;
        match gw.uploads.take(peer, &packet, &path, b, max) {
            Step::Continue => {
                gw.metrics.blocks.inc();
                let echo = Block { more: true, ..b };
                return reply(
                    ResponseType::Continue,
                    vec![(CoapOption::Block1, echo.encode())],
                );
            }
            Step::Done(body) => {
                gw.metrics.blocks.inc();
                packet.payload = body;
                last_block1 = Some(b);
            }
            Step::Incomplete => return reply(ResponseType::RequestEntityIncomplete, Vec::new()),
            Step::TooLarge => {
                let size = u32::try_from(max).unwrap_or(u32::MAX);
                return reply(
                    ResponseType::RequestEntityTooLarge,
                    vec![(CoapOption::Size1, block::uint(size))],
                );
            }
        }
    }
    let req = match Request::parse(packet) {
        Ok(r) => r,
        Err(e) => {
            debug!(%peer, reason = e.0, "bad CoAP request");
            let code = if e.0 == "unknown critical option" {
                ResponseType::BadOption
            } else {
                ResponseType::BadRequest
            };
            let mut p = request::response(confirmable, mid, gw.next_mid(), &token, code);
            p.payload = e.0.as_bytes().to_vec();
            return (
                Arc::new(request::encode(&p)),
                "unknown",
                request::code_text(code),
            );
        }
    };
    let method = method_label(req.method);
    let (code, payload, sent) = route(gw, &req, peer).await;
    if let Some(bytes) = sent {
        return (Arc::new(bytes), method, request::code_text(code));
    }
    let mut p = request::response(req.confirmable, req.mid, gw.next_mid(), &req.token, code);
    if let Some(b) = last_block1 {
        p.add_option(CoapOption::Block1, b.encode());
    }
    if let Some((body, format)) = payload {
        if let Some(f) = format {
            p.set_content_format(f);
        }
        // Larger than one block, or the client asks for a block: Block2.
        if body.len() > block::BLOCK || block2.is_some() {
            let (num, szx) = block2.map_or((0, block::SZX), |b| (b.num, b.szx.min(block::SZX)));
            let Some((part, b)) = block::slice(&body, num, szx) else {
                let code = ResponseType::BadOption;
                let p =
                    request::response(req.confirmable, req.mid, gw.next_mid(), &req.token, code);
                return (
                    Arc::new(request::encode(&p)),
                    method,
                    request::code_text(code),
                );
            };
            if num == 0 {
                p.add_option(
                    CoapOption::Size2,
                    block::uint(u32::try_from(body.len()).unwrap_or(u32::MAX)),
                );
            }
            p.add_option(CoapOption::Block2, b.encode());
            p.payload = part.to_vec();
            gw.metrics.blocks.inc();
        } else {
            p.payload = body;
        }
    }
    (
        Arc::new(request::encode(&p)),
        method,
        request::code_text(code),
    )
}

type Outcome = (
    ResponseType,
    Option<(Vec<u8>, Option<ContentFormat>)>,
    Option<Vec<u8>>,
);

fn answer(code: ResponseType) -> Outcome {
    (code, None, None)
}

fn answer_text(code: ResponseType, text: &str) -> Outcome {
    (code, Some((text.as_bytes().to_vec(), None)), None)
}

async fn route(gw: &Arc<Gateway>, req: &Request, peer: SocketAddr) -> Outcome {
    let path: Vec<&str> = req.path.iter().map(String::as_str).collect();
    match path.as_slice() {
        [".well-known", "core"] if req.method == RequestType::Get => (
            ResponseType::Content,
            Some((
                b"</ps>;rt=\"core.ps\";obs".to_vec(),
                Some(ContentFormat::ApplicationLinkFormat),
            )),
            None,
        ),
        ["mqtt", "connection"] => connection(gw, req, peer).await,
        ["ps", rest @ ..] if !rest.is_empty() => {
            let topic = rest.join("/");
            let client = match authenticate(gw, req, peer).await {
                Ok(c) => c,
                Err(code) => return answer(code),
            };
            match (req.method, req.observe) {
                (RequestType::Post | RequestType::Put, _) => publish(gw, req, &client, topic).await,
                (RequestType::Get, Some(0)) => {
                    super::observer::register(gw, req, peer, client, topic).await
                }
                (RequestType::Get, Some(1)) => {
                    super::observer::deregister(gw, req, peer, &client, &topic).await
                }
                (RequestType::Get, None) => {
                    // The rest of a large notification (RFC 7959 2.6), else the retained.
                    match req
                        .block2_num
                        .filter(|n| *n > 0)
                        .and_then(|_| gw.observers.large(peer, &topic))
                    {
                        Some(body) => (ResponseType::Content, Some((body.to_vec(), None)), None),
                        None => retained(gw, &client, &topic).await,
                    }
                }
                (RequestType::Get, Some(_)) => {
                    answer_text(ResponseType::BadRequest, "invalid observe value")
                }
                _ => answer(ResponseType::MethodNotAllowed),
            }
        }
        _ => answer(ResponseType::NotFound),
    }
}

/// `/mqtt/connection` (EMQX's connection mode): POST authenticates and returns a token
/// (2.01), PUT with `clientid` + `token` is the heartbeat (2.04, a renewed token), DELETE
/// closes: the client's observations end (2.02).
async fn connection(gw: &Arc<Gateway>, req: &Request, peer: SocketAddr) -> Outcome {
    let Some(client_id) = req.param("clientid").filter(|c| !c.is_empty()) else {
        return answer_text(ResponseType::BadRequest, "clientid is required");
    };
    match req.method {
        RequestType::Post => {
            let mut query: HashMap<String, String> = req.query.clone();
            query.remove("token");
            let fresh = Request {
                query,
                ..req.shallow()
            };
            match authenticate(gw, &fresh, peer).await {
                Ok(c) => {
                    let t = gw
                        .tokens
                        .issue(&c.client_id, &c.credential, c.username.as_deref());
                    (ResponseType::Created, Some((t.into_bytes(), None)), None)
                }
                Err(code) => answer(code),
            }
        }
        RequestType::Put | RequestType::Delete => {
            if req.param("token").is_none() {
                return answer_text(ResponseType::BadRequest, "token is required");
            }
            let c = match authenticate(gw, req, peer).await {
                Ok(c) => c,
                Err(code) => return answer(code),
            };
            if req.method == RequestType::Put {
                let t = gw
                    .tokens
                    .issue(&c.client_id, &c.credential, c.username.as_deref());
                return (ResponseType::Changed, Some((t.into_bytes(), None)), None);
            }
            super::observer::end_client(gw, &c.client_id).await;
            debug!(client_id, "CoAP connection closed");
            answer(ResponseType::Deleted)
        }
        _ => answer(ResponseType::MethodNotAllowed),
    }
}

/// The client of a request: a connection token (`clientid` + `token`), or the `clientid`,
/// `username` and `password` query parameters (the client id defaults to one made of the
/// peer's address).
async fn authenticate(
    gw: &Gateway,
    req: &Request,
    peer: SocketAddr,
) -> Result<Client, ResponseType> {
    match gw.dtls_identity(peer) {
        Some(identity) => return authenticate_dtls(gw, req, peer, &identity).await,
        // A DTLS peer whose session just went: nothing proven, no fallback to query
        // credentials.
        None if gw.is_dtls() => return Err(ResponseType::Unauthorized),
        None => {}
    }
    let client_id: Arc<str> = match req.param("clientid") {
        Some(c) if !c.is_empty() => Arc::from(c),
        _ => Arc::from(format!("coap-{}-{}", peer.ip(), peer.port())),
    };
    if let Some(token) = req.param("token") {
        let claims = gw
            .tokens
            .verify(&client_id, token)
            .ok_or(ResponseType::Unauthorized)?;
        let access = &gw.broker.access;
        let mut principal = access
            .resume(
                client_id.clone(),
                claims.username.as_deref(),
                &claims.credential,
            )
            .map_err(|_| ResponseType::Unauthorized)?;
        let grant = access
            .grant(&mut principal)
            .map_err(|_| ResponseType::Unauthorized)?;
        return Ok(Client {
            client_id,
            username: claims.username.map(Arc::from),
            credential: claims.credential,
            grant,
        });
    }
    let username = req.param("username").filter(|u| !u.is_empty());
    let password = req
        .param("password")
        .filter(|p| !p.is_empty())
        .map(str::as_bytes);
    let access = &gw.broker.access;
    let principal = match access
        .authenticate(peer.ip(), client_id.clone(), username, password, None)
        .await
    {
        Ok(p) => p,
        Err(AuthError::RateLimited) => return Err(ResponseType::TooManyRequests),
        Err(e) => {
            debug!(client_id = %client_id, reason = ?e, "CoAP authentication failed");
            return Err(ResponseType::Unauthorized);
        }
    };
    granted(access, principal)
}

/// The client of a request over DTLS: who the handshake proved. A PSK identity is the
/// client id unless `clientid` names another the credential admits; a certificate is
/// checked like an MQTT TLS client's (its CN is the default client id). Passwords and
/// tokens are not needed (and not looked at).
async fn authenticate_dtls(
    gw: &Gateway,
    req: &Request,
    peer: SocketAddr,
    identity: &PeerIdentity,
) -> Result<Client, ResponseType> {
    let access = &gw.broker.access;
    let asked_id = req
        .param("clientid")
        .filter(|c| !c.is_empty())
        .map(Arc::from);
    let username = req.param("username").filter(|u| !u.is_empty());
    let result = match identity {
        PeerIdentity::Psk(id) => access.authenticate_psk(id, asked_id),
        PeerIdentity::Cert(cert) => {
            let client_id = asked_id
                .or_else(|| cert.common_name.as_deref().map(Arc::from))
                .unwrap_or_else(|| Arc::from(format!("coap-{}-{}", peer.ip(), peer.port())));
            let password = req.param("password").map(str::as_bytes);
            access
                .authenticate(peer.ip(), client_id, username, password, Some(cert.clone()))
                .await
        }
        PeerIdentity::Anonymous => {
            let client_id = asked_id
                .unwrap_or_else(|| Arc::from(format!("coap-{}-{}", peer.ip(), peer.port())));
            let password = req.param("password").map(str::as_bytes);
            access
                .authenticate(peer.ip(), client_id, username, password, None)
                .await
        }
    };
    let principal = match result {
        Ok(p) => p,
        Err(AuthError::RateLimited) => return Err(ResponseType::TooManyRequests),
        Err(e) => {
            debug!(%peer, reason = ?e, "CoAP DTLS client refused");
            return Err(ResponseType::Unauthorized);
        }
    };
    granted(access, principal)
}

/// The client an authenticated principal is, with its ACL under the registry in force.
fn granted(access: &Access, mut principal: Principal) -> Result<Client, ResponseType> {
    let grant = access
        .grant(&mut principal)
        .map_err(|_| ResponseType::Unauthorized)?;
    Ok(Client {
        client_id: principal.client_id.clone(),
        username: principal.username().map(Arc::from),
        credential: principal
            .credential
            .as_ref()
            .map(|c| c.key.to_string())
            .unwrap_or_default(),
        grant,
    })
}

fn qos_of(req: &Request) -> Result<QoS, ()> {
    match req.param("qos") {
        None => Ok(if req.confirmable {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        }),
        Some("0") => Ok(QoS::AtMostOnce),
        Some("1") => Ok(QoS::AtLeastOnce),
        Some("2") => Ok(QoS::ExactlyOnce),
        Some(_) => Err(()),
    }
}

/// `POST|PUT /ps/{topic}`: 2.04 once the hub accepted the message (stored, in a cluster).
async fn publish(gw: &Gateway, req: &Request, client: &Client, topic: String) -> Outcome {
    let broker = &gw.broker;
    if let Err(e) = cmq_topic::validate_name(&topic, &broker.limits.topic) {
        return answer_text(ResponseType::BadRequest, &format!("invalid topic: {e}"));
    }
    let Ok(qos) = qos_of(req) else {
        return answer_text(ResponseType::BadRequest, "qos must be 0, 1 or 2");
    };
    let retain = matches!(req.param("retain"), Some("true" | "1"));
    if req.payload.len() > broker.limits.max_packet_size {
        return answer(ResponseType::RequestEntityTooLarge);
    }
    if !client.grant.is_allow_all() && !client.grant.may_publish(&topic, qos, retain) {
        broker.metrics.access.denied_publish.inc();
        return answer(ResponseType::Forbidden);
    }
    let message = Arc::new(Message {
        topic: Arc::from(topic),
        payload: Bytes::from(req.payload.clone()),
        qos,
        retain,
        properties: None,
        expires_at: None,
        origin: Some(Origin {
            session: 0,
            client_id: client.client_id.clone(),
            username: client.username.clone(),
        }),
        stored: None,
        rule: None,
    });
    broker.metrics.received[qos as usize].inc();
    if qos != QoS::AtMostOnce
        && let Some(f) = broker.forwarder()
        && f.gates(&message.topic)
        && let Err(reason) = f.gate(message.clone()).await
    {
        debug!(reason, "a sync rule cannot take the CoAP publish");
        return answer_text(ResponseType::ServiceUnavailable, &reason);
    }
    let result = if qos != QoS::AtMostOnce && broker.state.bus.stores_messages() {
        match broker.publish_stored(message).await {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        }
    } else {
        broker.publish(message).await.map(|_| ())
    };
    match result {
        Ok(()) => answer(ResponseType::Changed),
        Err(e) => {
            debug!(error = %e, "CoAP publish not accepted");
            answer(ResponseType::ServiceUnavailable)
        }
    }
}

/// `GET /ps/{topic}` without Observe: the topic's retained message.
async fn retained(gw: &Gateway, client: &Client, topic: &str) -> Outcome {
    let broker = &gw.broker;
    if cmq_topic::validate_name(topic, &broker.limits.topic).is_err() {
        return answer_text(ResponseType::BadRequest, "a retained read names one topic");
    }
    if !client.grant.is_allow_all() && !client.grant.may_subscribe(topic, QoS::AtMostOnce) {
        broker.metrics.access.denied_subscribe.inc();
        return answer(ResponseType::Forbidden);
    }
    match broker.state.retained.matching(topic).await {
        Ok(found) => {
            let now = std::time::Instant::now();
            match found.into_iter().find(|m| !m.expired(now)) {
                Some(m) => (
                    ResponseType::Content,
                    Some((m.payload.to_vec(), None)),
                    None,
                ),
                None => answer(ResponseType::NotFound),
            }
        }
        Err(e) => {
            debug!(error = %e, "retained read failed");
            answer(ResponseType::ServiceUnavailable)
        }
    }
}
