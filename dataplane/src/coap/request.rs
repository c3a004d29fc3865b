//! Reading a CoAP request and writing responses.

use std::collections::HashMap;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};

/// What the resources need of a request.
pub struct Request {
    pub method: RequestType,
    pub path: Vec<String>,
    pub query: HashMap<String, String>,
    /// Observe option: 0 register, 1 deregister.
    pub observe: Option<u32>,
    pub token: Vec<u8>,
    pub mid: u16,
    pub confirmable: bool,
    pub payload: Vec<u8>,
    /// The block asked for (Block2), if any.
    pub block2_num: Option<u32>,
}

/// Why a request cannot be read.
pub struct BadRequest(pub &'static str);

/// Long and short query names (EMQX's).
fn canonical(key: &str) -> &str {
    match key {
        "c" => "clientid",
        "u" => "username",
        "p" => "password",
        "t" => "token",
        "q" => "qos",
        "r" => "retain",
        other => other,
    }
}

impl Request {
    pub fn parse(packet: Packet) -> Result<Self, BadRequest> {
        let MessageClass::Request(method) = packet.header.code else {
            return Err(BadRequest("not a request"));
        };
        // Unknown critical (odd-numbered) options must be refused (RFC 7252 5.4.1).
        for (number, _) in packet.options() {
            let known = matches!(
                number,
                1 | 3
                    | 4
                    | 5
                    | 6
                    | 7
                    | 8
                    | 11
                    | 12
                    | 14
                    | 15
                    | 17
                    | 20
                    | 23
                    | 27
                    | 28
                    | 35
                    | 39
                    | 60
                    | 258
                    | 292
            );
            if !known && number % 2 == 1 {
                return Err(BadRequest("unknown critical option"));
            }
        }
        let text = |v: &Vec<u8>| {
            String::from_utf8(v.clone()).map_err(|_| BadRequest("option is not UTF-8"))
        };
        let mut path = Vec::new();
        if let Some(segments) = packet.get_option(CoapOption::UriPath) {
            for s in segments {
                path.push(text(s)?);
            }
        }
        let mut query = HashMap::new();
        if let Some(items) = packet.get_option(CoapOption::UriQuery) {
            for q in items {
                let q = text(q)?;
                let (k, v) = q.split_once('=').unwrap_or((q.as_str(), ""));
                query.insert(canonical(k).to_owned(), v.to_owned());
            }
        }
        let observe = match packet.get_first_option(CoapOption::Observe) {
            Some(v) if v.len() <= 3 => Some(v.iter().fold(0u32, |a, b| (a << 8) | u32::from(*b))),
            Some(_) => return Err(BadRequest("invalid observe value")),
            None => None,
        };
        Ok(Self {
            method,
            path,
            query,
            observe,
            token: packet.get_token().to_vec(),
            mid: packet.header.message_id,
            confirmable: packet.header.get_type() == MessageType::Confirmable,
            block2_num: packet
                .get_first_option(CoapOption::Block2)
                .and_then(|v| super::block::Block::decode(v))
                .map(|b| b.num),
            payload: packet.payload,
        })
    }

    /// A copy without the payload (for a variant of the query).
    pub fn shallow(&self) -> Self {
        Self {
            method: self.method,
            path: self.path.clone(),
            query: self.query.clone(),
            observe: self.observe,
            token: self.token.clone(),
            mid: self.mid,
            confirmable: self.confirmable,
            payload: Vec::new(),
            block2_num: self.block2_num,
        }
    }

    pub fn param(&self, key: &str) -> Option<&str> {
        self.query.get(key).map(String::as_str)
    }
}

/// A response: piggybacked in the ACK of a confirmable request, else a NON with `mid`.
pub fn response(
    confirmable: bool,
    request_mid: u16,
    new_mid: u16,
    token: &[u8],
    code: ResponseType,
) -> Packet {
    let mut p = Packet::new();
    if confirmable {
        p.header.set_type(MessageType::Acknowledgement);
        p.header.message_id = request_mid;
    } else {
        p.header.set_type(MessageType::NonConfirmable);
        p.header.message_id = new_mid;
    }
    p.header.code = MessageClass::Response(code);
    p.set_token(token.to_vec());
    p
}

/// Encodes a packet (our own packets always encode; an empty vector otherwise).
pub fn encode(p: &Packet) -> Vec<u8> {
    p.to_bytes_unlimited().unwrap_or_default()
}

/// An RST for message `mid`.
pub fn reset(mid: u16) -> Vec<u8> {
    let mut p = Packet::new();
    p.header.set_type(MessageType::Reset);
    p.header.code = MessageClass::Empty;
    p.header.message_id = mid;
    encode(&p)
}

/// A piggybacked response turned into a separate one: a CON with message id `mid`.
pub fn separate(piggybacked: &[u8], mid: u16) -> Option<Vec<u8>> {
    let mut p = Packet::from_bytes(piggybacked).ok()?;
    if p.header.get_type() != MessageType::Acknowledgement {
        return None; // sent already (an observation's answer)
    }
    p.header.set_type(MessageType::Confirmable);
    p.header.message_id = mid;
    Some(encode(&p))
}

/// An empty ACK for message `mid` (the response follows separately).
pub fn empty_ack(mid: u16) -> Vec<u8> {
    let mut p = Packet::new();
    p.header.set_type(MessageType::Acknowledgement);
    p.header.code = MessageClass::Empty;
    p.header.message_id = mid;
    encode(&p)
}

/// "2.05" style text of a response code, for metrics.
pub fn code_text(code: ResponseType) -> String {
    MessageClass::Response(code).to_string()
}
