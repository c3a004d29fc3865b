//! Block-wise transfers (RFC 7959). Uploads (Block1) are reassembled per (peer, method,
//! path, Request-Tag) — never per token: libcoap sends a new token with every block — and
//! published once, when the last block arrives. Large responses go out in Block2 blocks
//! that the client fetches one by one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use coap_lite::{CoapOption, Packet};
use parking_lot::Mutex;

/// How long an unfinished upload is kept (RFC 7252 EXCHANGE_LIFETIME).
const LIFETIME: Duration = Duration::from_secs(247);
/// Unfinished uploads at most, over all peers.
const MAX_UPLOADS: usize = 10_000;
/// The block size of our responses (SZX 6: 1024 bytes, what fits a 1280-byte datagram).
pub const SZX: u8 = 6;
pub const BLOCK: usize = 1 << (SZX + 4);
/// Request-Tag (RFC 9175); coap-lite does not name it.
const REQUEST_TAG: u16 = 292;

/// A Block1/Block2 option value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub num: u32,
    pub more: bool,
    pub szx: u8,
}

impl Block {
    pub fn size(&self) -> usize {
        1 << (u32::from(self.szx) + 4)
    }

    pub fn decode(v: &[u8]) -> Option<Self> {
        if v.len() > 3 {
            return None;
        }
        let raw = v.iter().fold(0u32, |a, b| (a << 8) | u32::from(*b));
        let szx = u8::try_from(raw & 0x7).ok()?;
        if szx == 7 {
            return None; // reserved (BERT, TCP only)
        }
        Some(Self {
            num: raw >> 4,
            more: raw & 0x8 != 0,
            szx,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let raw = (self.num << 4) | (u32::from(self.more) << 3) | u32::from(self.szx);
        let bytes = raw.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count().min(3);
        bytes[skip..].to_vec()
    }
}

/// Encodes an unsigned option value in as few bytes as it needs.
pub fn uint(v: u32) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    bytes[skip..].to_vec()
}

/// The Block option `option` of a packet: `Ok(None)` when absent, `Err` when malformed.
pub fn option(p: &Packet, option: CoapOption) -> Result<Option<Block>, ()> {
    match p.get_first_option(option) {
        None => Ok(None),
        Some(v) => Block::decode(v).map(Some).ok_or(()),
    }
}

type Key = (SocketAddr, u8, String, Vec<u8>);

struct Upload {
    body: Vec<u8>,
    next: u32,
    at: Instant,
}

/// What an upload block led to.
pub enum Step {
    /// More blocks to come: answer 2.31 Continue.
    Continue,
    /// The whole body.
    Done(Vec<u8>),
    /// 4.08: a block out of order, or the upload expired.
    Incomplete,
    /// 4.13: the body would pass `max`.
    TooLarge,
}

#[derive(Default)]
pub struct Uploads {
    open: Mutex<HashMap<Key, Upload>>,
}

impl Uploads {
    /// Takes one Block1 block of a request.
    pub fn take(&self, peer: SocketAddr, p: &Packet, path: &str, block: Block, max: usize) -> Step {
        let tag = p
            .get_first_option(CoapOption::Unknown(REQUEST_TAG))
            .cloned()
            .unwrap_or_default();
        let key = (peer, u8::from(p.header.code), path.to_owned(), tag);
        let mut open = self.open.lock();
        let now = Instant::now();
        if block.num == 0 {
            if open.len() >= MAX_UPLOADS {
                open.retain(|_, u| now.duration_since(u.at) < LIFETIME);
            }
            open.insert(
                key.clone(),
                Upload {
                    body: Vec::new(),
                    next: 0,
                    at: now,
                },
            );
        }
        let Some(upload) = open.get_mut(&key) else {
            return Step::Incomplete;
        };
        // A block's offset is num × its size (the size may shrink mid-way, never grow).
        let offset = block.num as usize * block.size();
        if block.num != upload.next && offset != upload.body.len() {
            open.remove(&key);
            return Step::Incomplete;
        }
        if upload.body.len() + p.payload.len() > max {
            open.remove(&key);
            return Step::TooLarge;
        }
        upload.body.extend_from_slice(&p.payload);
        upload.at = now;
        upload.next = u32::try_from(upload.body.len() / block.size()).unwrap_or(u32::MAX);
        if block.more {
            return Step::Continue;
        }
        match open.remove(&key) {
            Some(u) => Step::Done(u.body),
            None => Step::Incomplete,
        }
    }

    pub fn sweep(&self) {
        let now = Instant::now();
        self.open
            .lock()
            .retain(|_, u| now.duration_since(u.at) < LIFETIME);
    }
}

/// The part of `body` that block `num` of size `szx` holds, and whether more follow.
pub fn slice(body: &[u8], num: u32, szx: u8) -> Option<(&[u8], Block)> {
    let size = 1usize << (u32::from(szx) + 4);
    let start = (num as usize).checked_mul(size)?;
    if start > body.len() || (start == body.len() && start != 0) {
        return None;
    }
    let end = (start + size).min(body.len());
    Some((
        &body[start..end],
        Block {
            num,
            more: end < body.len(),
            szx,
        },
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn block_values_round_trip() {
        for (num, more, szx) in [(0, true, 6), (5, false, 2), (1_048_575, true, 0)] {
            let b = Block { num, more, szx };
            assert_eq!(Block::decode(&b.encode()), Some(b));
        }
        assert_eq!(Block::decode(&[0x07]), None, "SZX 7 is reserved");
        assert_eq!(Block::decode(&[1, 2, 3, 4]), None);
    }

    #[test]
    fn slices_cover_the_body_once() {
        let body: Vec<u8> = (0..2500u32).map(|i| i as u8).collect();
        let mut out = Vec::new();
        let mut num = 0;
        loop {
            let (part, b) = slice(&body, num, 6).unwrap();
            out.extend_from_slice(part);
            if !b.more {
                break;
            }
            num += 1;
        }
        assert_eq!(out, body);
        assert!(slice(&body, 3, 6).is_none());
    }
}
