//! Connection setup: TCP connect (optionally from one of several loopback
//! source addresses), CONNECT/CONNACK and SUBSCRIBE/SUBACK via mqttbytes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::BytesMut;
use mqttbytes::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::codec::MAX_PACKET;

/// Everything needed to open one MQTT session.
#[derive(Debug, Clone)]
pub struct ConnCfg {
    /// Connection i goes to `addrs[i % len]`.
    pub addrs: Vec<SocketAddr>,
    /// Not 0: persistent sessions (MQTT 5 session expiry; 3.1.1 clean session off).
    pub session_expiry: u32,
    pub v5: bool,
    pub keep_alive: u16,
    /// If more than 1: bind connection i to 127.0.0.(1 + i % n) before connecting, to get
    /// n times the ephemeral port range of distinct 4-tuples on loopback.
    pub source_addrs: u8,
    /// Timeout for TCP connect + CONNACK (and SUBACK).
    pub timeout: Duration,
    pub login: Option<(String, String)>,
}

/// An established MQTT session.
pub struct Session {
    pub stream: TcpStream,
    /// Bytes read past the CONNACK/SUBACK (normally empty).
    pub rbuf: BytesMut,
    /// v5 CONNACK Receive Maximum (limit on our unacked QoS 1/2 publishes).
    pub receive_max: Option<u16>,
}

pub fn qos_of(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

async fn tcp_connect(cfg: &ConnCfg, idx: usize) -> anyhow::Result<TcpStream> {
    let addr = cfg.addrs[idx % cfg.addrs.len().max(1)];
    let stream = if cfg.source_addrs > 1 && addr.ip().is_loopback() && addr.is_ipv4() {
        let socket = TcpSocket::new_v4()?;
        let last = 1 + (idx % cfg.source_addrs as usize) as u8;
        socket.bind(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)),
            0,
        ))?;
        socket.connect(addr).await?
    } else {
        TcpStream::connect(addr).await?
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Reads until one complete packet is buffered and decodes it with mqttbytes.
async fn read_packet_v4(
    stream: &mut TcpStream,
    rbuf: &mut BytesMut,
) -> anyhow::Result<mqttbytes::v4::Packet> {
    loop {
        match mqttbytes::v4::read(rbuf, MAX_PACKET) {
            Ok(p) => return Ok(p),
            Err(mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(e) => bail!("decode error: {e:?}"),
        }
        if stream.read_buf(rbuf).await? == 0 {
            bail!("connection closed by broker");
        }
    }
}

async fn read_packet_v5(
    stream: &mut TcpStream,
    rbuf: &mut BytesMut,
) -> anyhow::Result<mqttbytes::v5::Packet> {
    loop {
        match mqttbytes::v5::read(rbuf, MAX_PACKET) {
            Ok(p) => return Ok(p),
            Err(mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(e) => bail!("decode error: {e:?}"),
        }
        if stream.read_buf(rbuf).await? == 0 {
            bail!("connection closed by broker");
        }
    }
}

/// TCP connect + CONNECT (clean session) + wait for a successful CONNACK.
pub async fn connect(cfg: &ConnCfg, client_id: &str, idx: usize) -> anyhow::Result<Session> {
    tokio::time::timeout(cfg.timeout, connect_inner(cfg, client_id, idx))
        .await
        .map_err(|_| anyhow!("connect timed out after {:?}", cfg.timeout))?
}

async fn connect_inner(cfg: &ConnCfg, client_id: &str, idx: usize) -> anyhow::Result<Session> {
    let mut stream = tcp_connect(cfg, idx).await.context("tcp connect")?;
    let mut wbuf = BytesMut::with_capacity(64 + client_id.len());
    let mut rbuf = BytesMut::with_capacity(256);
    if cfg.v5 {
        let mut c = mqttbytes::v5::Connect::new(client_id);
        c.keep_alive = cfg.keep_alive;
        c.clean_session = true;
        if cfg.session_expiry > 0 {
            c.properties = Some(mqttbytes::v5::ConnectProperties {
                session_expiry_interval: Some(cfg.session_expiry),
                receive_maximum: None,
                max_packet_size: None,
                topic_alias_max: None,
                request_response_info: None,
                request_problem_info: None,
                user_properties: Vec::new(),
                authentication_method: None,
                authentication_data: None,
            });
        }
        if let Some((u, p)) = &cfg.login {
            c.set_login(u.as_str(), p.as_str());
        }
        c.write(&mut wbuf)
            .map_err(|e| anyhow!("encode connect: {e:?}"))?;
        stream.write_all(&wbuf).await?;
        match read_packet_v5(&mut stream, &mut rbuf).await? {
            mqttbytes::v5::Packet::ConnAck(ack) => {
                if ack.code != mqttbytes::v5::ConnectReturnCode::Success {
                    bail!("connection refused: {:?}", ack.code);
                }
                let receive_max = ack.properties.and_then(|p| p.receive_max);
                Ok(Session {
                    stream,
                    rbuf,
                    receive_max,
                })
            }
            other => bail!("expected CONNACK, got {other:?}"),
        }
    } else {
        let mut c = mqttbytes::v4::Connect::new(client_id);
        c.keep_alive = cfg.keep_alive;
        c.clean_session = cfg.session_expiry == 0;
        if let Some((u, p)) = &cfg.login {
            c.set_login(u.as_str(), p.as_str());
        }
        c.write(&mut wbuf)
            .map_err(|e| anyhow!("encode connect: {e:?}"))?;
        stream.write_all(&wbuf).await?;
        match read_packet_v4(&mut stream, &mut rbuf).await? {
            mqttbytes::v4::Packet::ConnAck(ack) => {
                if ack.code != mqttbytes::v4::ConnectReturnCode::Success {
                    bail!("connection refused: {:?}", ack.code);
                }
                Ok(Session {
                    stream,
                    rbuf,
                    receive_max: None,
                })
            }
            other => bail!("expected CONNACK, got {other:?}"),
        }
    }
}

/// SUBSCRIBE to one filter and wait for a successful SUBACK.
pub async fn subscribe(
    cfg: &ConnCfg,
    sess: &mut Session,
    filter: &str,
    qos: u8,
) -> anyhow::Result<()> {
    tokio::time::timeout(cfg.timeout, subscribe_inner(cfg, sess, filter, qos))
        .await
        .map_err(|_| anyhow!("subscribe timed out after {:?}", cfg.timeout))?
}

async fn subscribe_inner(
    cfg: &ConnCfg,
    sess: &mut Session,
    filter: &str,
    qos: u8,
) -> anyhow::Result<()> {
    let mut wbuf = BytesMut::with_capacity(64 + filter.len());
    if cfg.v5 {
        let mut s = mqttbytes::v5::Subscribe::new(filter, qos_of(qos));
        s.pkid = 1;
        s.write(&mut wbuf)
            .map_err(|e| anyhow!("encode subscribe: {e:?}"))?;
        sess.stream.write_all(&wbuf).await?;
        match read_packet_v5(&mut sess.stream, &mut sess.rbuf).await? {
            mqttbytes::v5::Packet::SubAck(ack) => {
                for rc in &ack.return_codes {
                    if (*rc as u8) >= 0x80 {
                        bail!("subscription to {filter} refused: {rc:?}");
                    }
                }
                Ok(())
            }
            other => bail!("expected SUBACK, got {other:?}"),
        }
    } else {
        let mut s = mqttbytes::v4::Subscribe::new(filter, qos_of(qos));
        s.pkid = 1;
        s.write(&mut wbuf)
            .map_err(|e| anyhow!("encode subscribe: {e:?}"))?;
        sess.stream.write_all(&wbuf).await?;
        match read_packet_v4(&mut sess.stream, &mut sess.rbuf).await? {
            mqttbytes::v4::Packet::SubAck(ack) => {
                for rc in &ack.return_codes {
                    if matches!(rc, mqttbytes::v4::SubscribeReasonCode::Failure) {
                        bail!("subscription to {filter} refused");
                    }
                }
                Ok(())
            }
            other => bail!("expected SUBACK, got {other:?}"),
        }
    }
}
