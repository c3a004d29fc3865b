//! CoAP over DTLS 1.2 (RFC 7252 9, port 5684) with `webrtc-dtls`: pre-shared keys from
//! DeviceCredentials (`spec.psk`) and, when the hub has an ECDSA P-256 or Ed25519
//! certificate, client certificates matched like the MQTT TLS listener's.
//!
//! The UDP socket is demultiplexed here, by peer address, into one `Conn` per peer that
//! webrtc-dtls drives. Not with webrtc-util's UDP listener: it never forgets a peer (its
//! `close` does nothing, so a peer whose session ended can never handshake again from that
//! address, and datagrams for it pile up unbounded) and its DTLS listener runs handshakes
//! one at a time inside `accept`. Here a new peer must open with a ClientHello, its
//! datagrams queue boundedly, handshakes run concurrently, and a closed session frees its
//! address. webrtc-dtls takes a PSK or a certificate configuration per connection, not both,
//! so the configuration is chosen by the cipher suites the first ClientHello offers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::UdpSocket;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span};
use webrtc_dtls::cipher_suite::CipherSuiteId;
use webrtc_dtls::config::{ClientAuthType, Config, ExtendedMasterSecretType};
use webrtc_dtls::conn::DTLSConn;
use webrtc_dtls::crypto::{Certificate, CryptoPrivateKey};
use webrtc_util::conn::Conn;

use super::Gateway;
use crate::access::PeerCert;

/// A handshake not done within this is abandoned.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// A session with no datagram from its peer for this long is closed (the device handshakes
/// again). Long enough for an observing device answering only CON liveness checks.
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Handshakes in progress at most; further new peers are dropped until some finish.
const MAX_HANDSHAKES: usize = 256;
/// Sessions open at most; a new peer beyond is dropped (its handshake never starts).
const MAX_SESSIONS: usize = 100_000;
/// DTLS content type of a handshake record.
const HANDSHAKE: u8 = 22;

const PSK_SUITES: [CipherSuiteId; 3] = [
    CipherSuiteId::Tls_Psk_With_Aes_128_Ccm_8,
    CipherSuiteId::Tls_Psk_With_Aes_128_Gcm_Sha256,
    CipherSuiteId::Tls_Psk_With_Aes_128_Ccm,
];

/// The certificate suites webrtc-dtls serves.
const CERT_SUITES: [CipherSuiteId; 6] = [
    CipherSuiteId::Tls_Ecdhe_Ecdsa_With_Aes_128_Ccm,
    CipherSuiteId::Tls_Ecdhe_Ecdsa_With_Aes_128_Ccm_8,
    CipherSuiteId::Tls_Ecdhe_Ecdsa_With_Aes_128_Gcm_Sha256,
    CipherSuiteId::Tls_Ecdhe_Rsa_With_Aes_128_Gcm_Sha256,
    CipherSuiteId::Tls_Ecdhe_Ecdsa_With_Aes_256_Cbc_Sha,
    CipherSuiteId::Tls_Ecdhe_Rsa_With_Aes_256_Cbc_Sha,
];

/// Who a DTLS peer proved to be in its handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerIdentity {
    /// The PSK identity (a DeviceCredential's `spec.psk.identity`).
    Psk(String),
    /// A client certificate, verified against the client CA bundle.
    Cert(PeerCert),
    /// A certificate session in which the client presented none.
    Anonymous,
}

/// The server's certificate side of DTLS.
#[derive(Clone)]
pub struct CertSettings {
    pub certificate: Certificate,
    /// CA bundle client certificates are verified against; `None`: none asked for.
    pub client_cas: Option<rustls::RootCertStore>,
    /// Whether a client must present a certificate (else verified when presented).
    pub require_client_cert: bool,
}

/// Why the DTLS certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum DtlsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error(
        "the key in {0} cannot serve DTLS (webrtc-dtls signs with ECDSA P-256 or Ed25519 only, as PKCS#8)"
    )]
    UnsupportedKey(String),
}

impl CertSettings {
    /// From the TLS listener's files (PEM chain, PKCS#8 key, optional client CA bundle).
    pub fn load(files: &crate::tls::TlsFiles) -> Result<Self, DtlsError> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let read = |path: &std::path::Path, e: &dyn std::fmt::Display| DtlsError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let certs = CertificateDer::pem_file_iter(&files.cert)
            .map_err(|e| read(&files.cert, &e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| read(&files.cert, &e))?;
        let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| read(&files.key, &e))?;
        let unsupported = || DtlsError::UnsupportedKey(files.key.display().to_string());
        let PrivateKeyDer::Pkcs8(pkcs8) = key else {
            return Err(unsupported());
        };
        let pair = rcgen::KeyPair::try_from(pkcs8.secret_pkcs8_der()).map_err(|_| unsupported())?;
        let private_key = CryptoPrivateKey::from_key_pair(&pair).map_err(|_| unsupported())?;
        if !matches!(
            private_key.kind,
            webrtc_dtls::crypto::CryptoPrivateKeyKind::Ecdsa256(_)
                | webrtc_dtls::crypto::CryptoPrivateKeyKind::Ed25519(_)
        ) {
            return Err(unsupported());
        }
        let client_cas = match (&files.client_ca, files.client_auth) {
            (Some(ca), mode) if mode != crate::tls::ClientAuthArg::None => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(ca).map_err(|e| read(ca, &e))? {
                    roots
                        .add(cert.map_err(|e| read(ca, &e))?)
                        .map_err(|e| read(ca, &e))?;
                }
                Some(roots)
            }
            _ => None,
        };
        Ok(Self {
            certificate: Certificate {
                certificate: certs,
                private_key,
            },
            client_cas,
            require_client_cert: files.client_auth == crate::tls::ClientAuthArg::Required,
        })
    }
}

/// The sessions of a DTLS listener, by peer address.
#[derive(Default)]
pub struct Sessions {
    peers: Mutex<HashMap<SocketAddr, Session>>,
}

#[derive(Clone)]
struct Session {
    conn: Arc<DTLSConn>,
    identity: Arc<PeerIdentity>,
}

impl Sessions {
    pub(crate) async fn send(&self, bytes: &[u8], peer: SocketAddr) {
        let conn = self.peers.lock().get(&peer).map(|s| s.conn.clone());
        match conn {
            Some(c) => {
                if let Err(e) = c.write(bytes, None).await {
                    debug!(%peer, error = %e, "DTLS send failed");
                }
            }
            None => debug!(%peer, "no DTLS session with this peer any more"),
        }
    }

    pub(crate) fn identity(&self, peer: SocketAddr) -> Option<Arc<PeerIdentity>> {
        self.peers.lock().get(&peer).map(|s| s.identity.clone())
    }
}

/// The cipher suites a ClientHello record offers, or `None` when `record` is not one.
fn offered_suites(record: &[u8]) -> Option<Vec<u16>> {
    // Record header 13 bytes, handshake header 12 (type 1 = ClientHello), then the body:
    // version 2, random 32, session id, cookie, cipher suites.
    if *record.first()? != HANDSHAKE || *record.get(13)? != 1 {
        return None;
    }
    let mut at = 13 + 12 + 2 + 32;
    at += 1 + usize::from(*record.get(at)?);
    at += 1 + usize::from(*record.get(at)?);
    let len = usize::from(u16::from_be_bytes([*record.get(at)?, *record.get(at + 1)?]));
    let list = record.get(at + 2..at + 2 + len)?;
    Some(
        list.chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect(),
    )
}

/// Whether a peer offering `suites` gets the PSK configuration: unless the hub has a
/// certificate and the peer offers a suite that uses one (a PSK client offers none).
fn wants_psk(suites: &[u16], have_cert: bool) -> bool {
    !(have_cert
        && suites
            .iter()
            .any(|s| CERT_SUITES.iter().any(|c| *c as u16 == *s)))
}

/// Whether `record` opens a new handshake: a ClientHello in epoch 0.
fn is_new_hello(record: &[u8]) -> bool {
    record.get(3..5) == Some(&[0, 0]) && offered_suites(record).is_some()
}

/// Datagrams queued per peer before the DTLS stack reads them; beyond, they are dropped
/// (UDP: the peer retransmits).
const PEER_QUEUE: usize = 32;

/// The listener's socket and where each peer's datagrams go.
struct Demux {
    socket: Arc<UdpSocket>,
    routes: Mutex<HashMap<SocketAddr, Route>>,
    next_id: std::sync::atomic::AtomicU64,
}

#[derive(Clone)]
struct Route {
    id: u64,
    tx: mpsc::Sender<Vec<u8>>,
    /// Set once the handshake is done (then a new ClientHello means the peer restarted).
    established: Arc<AtomicBool>,
    /// Signalled when the peer starts a new handshake.
    restart: Arc<Notify>,
}

impl Demux {
    /// Forgets the peer's route if it is still `id`'s.
    fn remove(&self, peer: SocketAddr, id: u64) {
        let mut routes = self.routes.lock();
        if routes.get(&peer).is_some_and(|r| r.id == id) {
            routes.remove(&peer);
        }
    }
}

/// One peer's datagrams, as the connection webrtc-dtls reads and writes.
struct PeerConn {
    demux: Arc<Demux>,
    peer: SocketAddr,
    id: u64,
    rx: tokio::sync::Mutex<mpsc::Receiver<Vec<u8>>>,
}

#[async_trait]
impl Conn for PeerConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(())
    }
    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        let d = self
            .rx
            .lock()
            .await
            .recv()
            .await
            .ok_or(webrtc_util::Error::ErrUseClosedNetworkConn)?;
        let n = d.len().min(buf.len());
        buf[..n].copy_from_slice(&d[..n]);
        Ok(n)
    }
    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        Ok((self.recv(buf).await?, self.peer))
    }
    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        Ok(self.demux.socket.send_to(buf, self.peer).await?)
    }
    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        Ok(self.demux.socket.send_to(buf, target).await?)
    }
    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.demux.socket.local_addr()?)
    }
    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.peer)
    }
    async fn close(&self) -> webrtc_util::Result<()> {
        self.demux.remove(self.peer, self.id);
        self.rx.lock().await.close();
        Ok(())
    }
    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// The two configurations a peer may get.
struct Configs {
    psk: Config,
    cert: Option<Config>,
}

fn configs(gw: &Arc<Gateway>, cert: Option<CertSettings>) -> Configs {
    let access = gw.broker.access.clone();
    let psk = Config {
        psk: Some(Arc::new(move |identity: &[u8]| {
            access
                .psk_key(identity)
                .map(|k| k.to_vec())
                .ok_or(webrtc_dtls::Error::ErrIdentityNoPsk)
        })),
        psk_identity_hint: Some(b"cmq".to_vec()),
        cipher_suites: PSK_SUITES.to_vec(),
        extended_master_secret: ExtendedMasterSecretType::Request,
        ..Default::default()
    };
    let cert = cert.map(|c| {
        let client_auth = match (&c.client_cas, c.require_client_cert) {
            (None, _) => ClientAuthType::NoClientCert,
            (Some(_), true) => ClientAuthType::RequireAndVerifyClientCert,
            (Some(_), false) => ClientAuthType::VerifyClientCertIfGiven,
        };
        Config {
            certificates: vec![c.certificate],
            client_auth,
            client_cas: c.client_cas.unwrap_or_else(rustls::RootCertStore::empty),
            extended_master_secret: ExtendedMasterSecretType::Request,
            ..Default::default()
        }
    });
    Configs { psk, cert }
}

/// Serves DTLS on `addr` until `stop`.
pub async fn serve(
    gw: Arc<Gateway>,
    sessions: Arc<Sessions>,
    addr: SocketAddr,
    cert: Option<CertSettings>,
    stop: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    // webrtc-dtls builds its client-certificate verifier with rustls' process-wide
    // provider; the hub uses ring everywhere.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let socket = Arc::new(UdpSocket::bind(addr).await?);
    info!(%addr, certificate = cert.is_some(), "CoAP gateway on DTLS");
    let demux = Arc::new(Demux {
        socket,
        routes: Mutex::new(HashMap::new()),
        next_id: std::sync::atomic::AtomicU64::new(0),
    });
    let configs = Arc::new(configs(&gw, cert));
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    Ok(tokio::spawn(async move {
        let mut buf = vec![0u8; super::MAX_DATAGRAM];
        loop {
            let (n, peer) = tokio::select! {
                _ = stop.cancelled() => break,
                r = demux.socket.recv_from(&mut buf) => match r {
                    Ok(r) => r,
                    Err(e) => {
                        debug!(error = %e, "DTLS receive failed");
                        continue;
                    }
                },
            };
            let datagram = &buf[..n];
            let known = demux.routes.lock().get(&peer).cloned();
            if let Some(route) = known {
                if !(route.established.load(Ordering::Relaxed) && is_new_hello(datagram)) {
                    // Full: dropped, the peer retransmits.
                    let _ = route.tx.try_send(datagram.to_vec());
                    continue;
                }
                // The device started over (rebooted, same address): the old session ends
                // and this ClientHello opens a new one (RFC 6347 4.2.8).
                route.restart.notify_one();
                demux.remove(peer, route.id);
            }
            // A new peer must open with a ClientHello; anything else is dropped.
            let Some(suites) = offered_suites(datagram) else {
                gw.metrics.malformed.inc();
                continue;
            };
            let full = sessions.peers.lock().len() >= MAX_SESSIONS;
            let permit = handshakes.clone().try_acquire_owned();
            let (Ok(permit), false) = (permit, full) else {
                gw.metrics.dtls_handshake("busy");
                continue;
            };
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            let _ = tx.try_send(datagram.to_vec());
            let (established, restart) =
                (Arc::new(AtomicBool::new(false)), Arc::new(Notify::new()));
            let id = demux.next_id.fetch_add(1, Ordering::Relaxed);
            // The route alone holds the sender: once it is forgotten, the peer's
            // connection reads its end and the DTLS stack's tasks stop.
            let route = Route {
                id,
                tx,
                established: established.clone(),
                restart: restart.clone(),
            };
            demux.routes.lock().insert(peer, route);
            let conn = Arc::new(PeerConn {
                demux: demux.clone(),
                peer,
                id,
                rx: tokio::sync::Mutex::new(rx),
            });
            let psk = wants_psk(&suites, configs.cert.is_some());
            let span = info_span!("dtls", %peer);
            let (gw, sessions, configs) = (gw.clone(), sessions.clone(), configs.clone());
            tokio::spawn(
                async move {
                    let session = handshake(&gw, conn, &configs, psk).await;
                    drop(permit);
                    if let Some(s) = session {
                        established.store(true, Ordering::Relaxed);
                        run_session(gw, sessions, s, restart, peer).await;
                    }
                }
                .instrument(span),
            );
        }
        let open: Vec<Session> = sessions.peers.lock().drain().map(|(_, s)| s).collect();
        for s in open {
            let _ = s.conn.close().await;
        }
    }))
}

async fn handshake(
    gw: &Arc<Gateway>,
    conn: Arc<PeerConn>,
    configs: &Configs,
    psk: bool,
) -> Option<Session> {
    let config = match (&configs.cert, psk) {
        (Some(c), false) => c.clone(),
        _ => configs.psk.clone(),
    };
    let done = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        DTLSConn::new(conn.clone(), config, false, None),
    )
    .await;
    let dtls = match done {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => {
            gw.metrics.dtls_handshake("failed");
            debug!(error = %e, psk, "DTLS handshake failed");
            let _ = conn.close().await;
            return None;
        }
        Err(_) => {
            gw.metrics.dtls_handshake("timeout");
            debug!(psk, "DTLS handshake timed out");
            let _ = conn.close().await;
            return None;
        }
    };
    let state = dtls.connection_state().await;
    let identity = if psk {
        PeerIdentity::Psk(String::from_utf8_lossy(&state.identity_hint).into_owned())
    } else {
        let chain: Vec<rustls_pki_types::CertificateDer<'_>> = state
            .peer_certificates
            .iter()
            .map(|c| rustls_pki_types::CertificateDer::from(c.as_slice()))
            .collect();
        match crate::tls::peer_cert((!chain.is_empty()).then_some(chain.as_slice())) {
            Some(c) => PeerIdentity::Cert(c),
            None => PeerIdentity::Anonymous,
        }
    };
    gw.metrics.dtls_handshake("ok");
    debug!(?identity, "DTLS session established");
    Some(Session {
        conn: Arc::new(dtls),
        identity: Arc::new(identity),
    })
}

/// Reads the session's datagrams into the gateway until the peer closes it, it fails, it
/// idles out or the peer starts a new handshake.
async fn run_session(
    gw: Arc<Gateway>,
    sessions: Arc<Sessions>,
    session: Session,
    restart: Arc<Notify>,
    peer: SocketAddr,
) {
    let conn = session.conn.clone();
    sessions.peers.lock().insert(peer, session);
    gw.metrics.dtls_sessions.inc();
    let mut buf = vec![0u8; super::MAX_DATAGRAM];
    let mut restarted = false;
    loop {
        let read = tokio::select! {
            r = conn.read(&mut buf, Some(IDLE_TIMEOUT)) => r,
            _ = restart.notified() => {
                debug!("the peer started a new handshake: session ended");
                restarted = true;
                break;
            }
        };
        match read {
            Ok(n) => gw.datagram(&buf[..n], peer),
            Err(e) => {
                debug!(error = %e, "DTLS session ended");
                break;
            }
        }
    }
    gw.metrics.dtls_sessions.dec();
    {
        let mut peers = sessions.peers.lock();
        if peers
            .get(&peer)
            .is_some_and(|s| Arc::ptr_eq(&s.conn, &conn))
        {
            peers.remove(&peer);
        }
    }
    // A restarted peer is mid-handshake: an alert of the old session would only confuse
    // it, and its route is gone already.
    if !restarted {
        let _ = conn.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello record with the given suites (no session id, no cookie).
    fn hello(suites: &[u16]) -> Vec<u8> {
        let mut r = vec![HANDSHAKE, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        r.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        r.extend_from_slice(&[0xfe, 0xfd]);
        r.extend_from_slice(&[7; 32]);
        r.extend_from_slice(&[0, 0]);
        let len = u16::try_from(suites.len() * 2).unwrap_or(0);
        r.extend_from_slice(&len.to_be_bytes());
        for s in suites {
            r.extend_from_slice(&s.to_be_bytes());
        }
        r
    }

    #[test]
    fn reads_the_offered_suites_and_refuses_other_records() {
        assert_eq!(
            offered_suites(&hello(&[0xc0a8, 0x00ff])),
            Some(vec![0xc0a8, 0x00ff])
        );
        assert_eq!(offered_suites(&[23, 0xfe, 0xfd]), None);
        assert_eq!(offered_suites(&hello(&[0xc0a8])[..40]), None);
        assert_eq!(offered_suites(&[]), None);
    }

    #[test]
    fn only_an_epoch_0_client_hello_is_a_new_handshake() {
        let h = hello(&[0xc0a8]);
        assert!(is_new_hello(&h));
        let mut later = h.clone();
        later[4] = 1;
        assert!(!is_new_hello(&later));
        assert!(!is_new_hello(&[23, 0xfe, 0xfd, 0, 0]));
    }

    #[test]
    fn a_psk_only_hello_gets_psk_and_a_certificate_hello_gets_the_certificate() {
        assert!(wants_psk(&[0xc0a8, 0x00a8, 0x00ff], true));
        assert!(!wants_psk(&[0xc02b, 0xc0ae, 0x00ff], true));
        assert!(wants_psk(&[0xc0a8, 0xc02b], false));
        assert!(wants_psk(&[0xc02b], false));
    }
}
