//! CoAP publish load for `bench/coap_rate.sh`: `DEVICES` UDP sockets (each a device) send
//! `POST /ps/load/<n>` for `SECONDS`: CON (one outstanding request per device, as NSTART 1
//! allows) or NON (a window of `WINDOW` unanswered requests per device; NON requests get
//! NON 2.04 responses). Prints one JSON line: requests answered per second.
//!
//! `cargo run --release -p cmq --example coap_load -- 127.0.0.1:5683 con 64 10 [WINDOW]`
//!
//! Modes `dtls-con` and `dtls-non` do the same over DTLS (a session per device, PSK identity
//! `load`, key `load-key`, TLS_PSK_WITH_AES_128_CCM_8); the handshakes are not timed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use tokio::net::UdpSocket;
use webrtc_dtls::cipher_suite::CipherSuiteId;
use webrtc_dtls::config::Config;
use webrtc_dtls::conn::DTLSConn;

/// A device's link to the hub: a plain UDP socket or a DTLS session.
enum Link {
    Udp(UdpSocket),
    Dtls(Box<DTLSConn>),
}

impl Link {
    async fn open(target: SocketAddr, dtls: bool) -> anyhow::Result<Self> {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        socket.connect(target).await?;
        if !dtls {
            return Ok(Self::Udp(socket));
        }
        let config = Config {
            psk: Some(Arc::new(|_hint: &[u8]| Ok(b"load-key".to_vec()))),
            psk_identity_hint: Some(b"load".to_vec()),
            cipher_suites: vec![CipherSuiteId::Tls_Psk_With_Aes_128_Ccm_8],
            ..Default::default()
        };
        let conn = DTLSConn::new(Arc::new(socket), config, true, None).await?;
        Ok(Self::Dtls(Box::new(conn)))
    }

    async fn send(&self, bytes: &[u8]) {
        let _ = match self {
            Self::Udp(s) => s.send(bytes).await.map_err(|e| e.to_string()),
            Self::Dtls(c) => c.write(bytes, None).await.map_err(|e| e.to_string()),
        };
    }

    async fn recv(&self, buf: &mut [u8]) -> Option<usize> {
        match self {
            Self::Udp(s) => s.recv(buf).await.ok(),
            Self::Dtls(c) => c.read(buf, None).await.ok(),
        }
    }
}

fn request(mid: u16, confirmable: bool, device: usize) -> Vec<u8> {
    let mut p = Packet::new();
    p.header.set_type(if confirmable {
        MessageType::Confirmable
    } else {
        MessageType::NonConfirmable
    });
    p.header.code = MessageClass::Request(RequestType::Post);
    p.header.message_id = mid;
    p.set_token(mid.to_be_bytes().to_vec());
    p.add_option(CoapOption::UriPath, b"ps".to_vec());
    p.add_option(CoapOption::UriPath, b"load".to_vec());
    p.add_option(CoapOption::UriPath, device.to_string().into_bytes());
    p.payload = b"{\"t\":21.5,\"h\":40}".to_vec();
    p.to_bytes().unwrap_or_default()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, target, mode, devices, seconds, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: coap_load ADDR con|non|dtls-con|dtls-non DEVICES SECONDS [WINDOW]");
    };
    let target: SocketAddr = target.parse()?;
    let dtls = mode.starts_with("dtls-");
    let confirmable = mode.ends_with("con");
    let devices: usize = devices.parse()?;
    let run = Duration::from_secs_f64(seconds.parse()?);
    let window: usize = rest.first().map_or(Ok(16), |w| w.parse())?;
    let answered = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut links = Vec::new();
    for _ in 0..devices {
        links.push(Link::open(target, dtls).await?);
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (d, socket) in links.into_iter().enumerate() {
        let (answered, errors) = (answered.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 1500];
            let mut mid: u16 = rand::random();
            let outstanding = if confirmable { 1 } else { window };
            for _ in 0..outstanding {
                mid = mid.wrapping_add(1);
                let _ = socket.send(&request(mid, confirmable, d)).await;
            }
            while start.elapsed() < run {
                let Ok(Some(n)) =
                    tokio::time::timeout(Duration::from_millis(500), socket.recv(&mut buf)).await
                else {
                    // Lost (or the hub too slow): send another to keep the window full.
                    mid = mid.wrapping_add(1);
                    let _ = socket.send(&request(mid, confirmable, d)).await;
                    continue;
                };
                match Packet::from_bytes(&buf[..n]) {
                    Ok(p) if p.header.code == MessageClass::Response(ResponseType::Changed) => {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                mid = mid.wrapping_add(1);
                let _ = socket.send(&request(mid, confirmable, d)).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let secs = start.elapsed().as_secs_f64();
    let n = answered.load(Ordering::Relaxed);
    println!(
        "{{\"mode\": \"{mode}\", \"devices\": {devices}, \"answered\": {n}, \"errors\": {}, \"seconds\": {secs:.2}, \"per_s\": {:.0}}}",
        errors.load(Ordering::Relaxed),
        n as f64 / secs
    );
    Ok(())
}
