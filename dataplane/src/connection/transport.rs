//! The byte stream under an MQTT connection: plain TCP, TLS, or a WebSocket (plain or over
//! TLS) carrying MQTT in binary frames.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::io::poll_read_buf;

/// Bytes read per wake-up at most; the buffer is allocated only once data is readable, so
/// an idle connection holds no read buffer.
const READ_CHUNK: usize = 16 * 1024;

/// A connection's transport.
pub enum Transport {
    Tcp(TcpStream),
    WebSocket(Box<WebSocketStream<TcpStream>>),
    /// Boxed: a TLS session's state is large, and plain connections should not pay for it.
    Tls(Box<TlsStream<TcpStream>>),
    WebSocketTls(Box<WebSocketStream<TlsStream<TcpStream>>>),
    /// An in-process pipe, for tests and fuzzing of the whole connection state machine.
    Memory(tokio::io::DuplexStream),
}

impl Transport {
    /// Label for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Tcp(_) => "tcp",
            Self::WebSocket(_) => "websocket",
            Self::Tls(_) => "tls",
            Self::WebSocketTls(_) => "websocket_tls",
            Self::Memory(_) => "memory",
        }
    }

    /// The identity in the client's certificate, on TLS transports where it presented one
    /// (rustls verified it against the CA bundle during the handshake).
    pub fn peer_cert(&self) -> Option<crate::access::PeerCert> {
        match self {
            Self::Tls(stream) => crate::tls::peer_cert(stream.get_ref().1.peer_certificates()),
            Self::WebSocketTls(ws) => {
                crate::tls::peer_cert(ws.get_ref().get_ref().1.peer_certificates())
            }
            Self::Tcp(_) | Self::WebSocket(_) | Self::Memory(_) => None,
        }
    }

    /// Appends whatever is available to `buf`; 0 means the peer closed. Cancel-safe.
    pub async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        self.read_up_to(buf, READ_CHUNK).await
    }

    /// Like `read`, reserving only `chunk` bytes: a CONNECT is small, and a large buffer
    /// per handshake inflates the memory of a connection storm.
    pub async fn read_up_to(&mut self, buf: &mut BytesMut, chunk: usize) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_read_up_to(cx, buf, chunk)).await
    }

    /// `read` as a poll: a connection waits for input without a future of its own.
    pub fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        self.poll_read_up_to(cx, buf, READ_CHUNK)
    }

    fn poll_read_up_to(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        chunk: usize,
    ) -> Poll<io::Result<usize>> {
        match self {
            Self::Tcp(stream) => loop {
                // Readiness first, the buffer only once there is something to read: an idle
                // connection holds no read buffer.
                ready!(stream.poll_read_ready(cx))?;
                buf.reserve(chunk);
                match stream.try_read_buf(buf) {
                    Ok(n) => return Poll::Ready(Ok(n)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        // Readiness was stale (it stays set until a read would block): don't
                        // park an idle connection holding the buffer reserved for nothing.
                        if buf.is_empty() {
                            *buf = BytesMut::new();
                        }
                        continue;
                    }
                    Err(e) => return Poll::Ready(Err(e)),
                }
            },
            Self::Memory(pipe) => {
                buf.reserve(chunk);
                poll_read_buf(Pin::new(pipe), cx, buf)
            }
            Self::Tls(stream) => {
                buf.reserve(chunk);
                poll_read_buf(Pin::new(&mut **stream), cx, buf)
            }
            Self::WebSocket(ws) => poll_read_ws(ws, cx, buf),
            Self::WebSocketTls(ws) => poll_read_ws(ws, cx, buf),
        }
    }

    /// Writes what the socket takes now without waiting (plain TCP only; 0 elsewhere), so
    /// the usual flush needs no future of its own.
    pub fn write_now(&mut self, data: &[u8]) -> io::Result<usize> {
        let Self::Tcp(stream) = self else {
            return Ok(0);
        };
        let mut written = 0;
        while written < data.len() {
            match stream.try_write(&data[written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(written)
    }

    /// Whether this is plain TCP (writes can be made without a future, `write_now`).
    pub fn is_tcp(&self) -> bool {
        matches!(self, Self::Tcp(_))
    }

    /// Writes some of `data` (plain TCP: cancel-safe, nothing is written unless it returns);
    /// other transports write all of it.
    pub async fn write_some(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(stream) => stream.write(data).await,
            _ => self.write_all(data).await.map(|()| data.len()),
        }
    }

    /// Writes all of `data`.
    pub async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Self::Tcp(stream) => stream.write_all(data).await,
            Self::Memory(pipe) => pipe.write_all(data).await,
            Self::Tls(stream) => {
                stream.write_all(data).await?;
                // rustls buffers records until flushed.
                stream.flush().await
            }
            Self::WebSocket(ws) => ws
                .send(WsMessage::Binary(Bytes::copy_from_slice(data)))
                .await
                .map_err(io::Error::other),
            Self::WebSocketTls(ws) => ws
                .send(WsMessage::Binary(Bytes::copy_from_slice(data)))
                .await
                .map_err(io::Error::other),
        }
    }

    /// Closes the transport (best effort).
    pub async fn close(&mut self) {
        match self {
            Self::Tcp(stream) => {
                let _ = stream.shutdown().await;
            }
            Self::Memory(pipe) => {
                let _ = pipe.shutdown().await;
            }
            Self::Tls(stream) => {
                let _ = stream.shutdown().await;
            }
            Self::WebSocket(ws) => {
                let _ = SinkExt::close(&mut **ws).await;
            }
            Self::WebSocketTls(ws) => {
                let _ = SinkExt::close(&mut **ws).await;
            }
        }
    }
}

/// Appends the payload of the next binary frame to `buf`; 0 when the peer closed.
fn poll_read_ws<S>(
    ws: &mut WebSocketStream<S>,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match ready!(ws.poll_next_unpin(cx)) {
            None | Some(Ok(WsMessage::Close(_))) => return Poll::Ready(Ok(0)),
            Some(Ok(WsMessage::Binary(data))) => {
                if data.is_empty() {
                    continue;
                }
                buf.extend_from_slice(&data);
                return Poll::Ready(Ok(data.len()));
            }
            // Control frames are answered by tungstenite itself.
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => {}
            Some(Ok(WsMessage::Text(_))) => {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "MQTT over WebSocket must use binary frames",
                )));
            }
            Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
        }
    }
}
