//! CoAP over DTLS 1.2 (RFC 7252 9, port 5684) with `webrtc-dtls`: pre-shared keys from
//! DeviceCredentials (`spec.psk`) and, when the hub has an ECDSA P-256 or Ed25519
//! certificate, client certificates matched like the MQTT TLS listener's.
//!
//! `demux.rs` splits the UDP socket into one connection per peer and guards the DTLS stack
//! from what it would mishandle; this file chooses each peer's configuration (webrtc-dtls
//! takes a PSK or a certificate configuration per connection, not both: chosen by the cipher
//! suites of the first ClientHello), runs handshakes concurrently and keeps the sessions.

mod demux;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;

use futures_util::FutureExt;
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};
use webrtc_dtls::cipher_suite::CipherSuiteId;
use webrtc_dtls::config::{ClientAuthType, Config, ExtendedMasterSecretType};
use webrtc_dtls::conn::DTLSConn;
use webrtc_dtls::crypto::{Certificate, CryptoPrivateKey};

use demux::{Action, Demux, PeerConn};

use super::Gateway;
use crate::access::PeerCert;

/// A handshake not done within this is abandoned.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// A session with no datagram from its peer for this long is closed (the device handshakes
/// again). Long enough for an observing device answering only CON liveness checks.
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Handshakes of proven addresses (cookie echoed) in progress at most; beyond, further
/// peers are dropped until some finish.
const MAX_HANDSHAKES: usize = 256;
/// Sessions open at most; a new peer beyond is dropped (its handshake never starts).
const MAX_SESSIONS: usize = 100_000;

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
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(
        "the key in {0} cannot serve DTLS (webrtc-dtls signs with ECDSA P-256 or Ed25519 only, as PKCS#8)"
    )]
    UnsupportedKey(String),
}

impl CertSettings {
    /// From the TLS listener's files (PEM chain, PKCS#8 key, optional client CA bundle).
    pub fn load(files: &crate::tls::TlsFiles) -> Result<Self, DtlsError> {
        use rustls_pki_types::PrivateKeyDer;
        use rustls_pki_types::pem::PemObject;
        let certs = crate::tls::read_chain(&files.cert)?;
        let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
            DtlsError::Tls(crate::tls::TlsError::Read {
                path: files.key.clone(),
                reason: e.to_string(),
            })
        })?;
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
                Some(crate::tls::read_roots(ca)?)
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
    demux: Arc<Demux>,
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

/// Whether a peer offering `suites` gets the PSK configuration: unless the hub has a
/// certificate and the peer offers a suite that uses one (a PSK client offers none).
fn wants_psk(suites: &[u16], have_cert: bool) -> bool {
    !(have_cert
        && suites
            .iter()
            .any(|s| CERT_SUITES.iter().any(|c| *c as u16 == *s)))
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
    let demux = Demux::new(UdpSocket::bind(addr).await?, MAX_HANDSHAKES);
    info!(%addr, certificate = cert.is_some(), "CoAP gateway on DTLS");
    let configs = Arc::new(configs(&gw, cert));
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
            if !demux::records_ok(datagram) {
                gw.metrics.malformed.inc();
                continue;
            }
            let (hello, pending) = match demux.route(peer, datagram) {
                Action::Deliver => continue,
                Action::Drop { busy } => {
                    if busy {
                        gw.metrics.dtls_handshake("busy");
                    } else {
                        gw.metrics.malformed.inc();
                    }
                    continue;
                }
                Action::Open { hello, pending } => (hello, pending),
            };
            if sessions.peers.lock().len() >= MAX_SESSIONS {
                gw.metrics.dtls_handshake("busy");
                continue;
            }
            let (conn, established, replaced) = demux.open(peer, datagram, pending);
            let psk = wants_psk(&hello.suites, configs.cert.is_some());
            let span = info_span!("dtls", %peer);
            let (gw, sessions, configs) = (gw.clone(), sessions.clone(), configs.clone());
            tokio::spawn(
                async move {
                    let id = conn.id;
                    let session = AssertUnwindSafe(handshake(&gw, conn.clone(), &configs, psk))
                        .catch_unwind()
                        .await
                        .unwrap_or_else(|_| {
                            gw.metrics.dtls_handshake("failed");
                            warn!("the DTLS stack panicked on this peer's handshake");
                            None
                        });
                    let Some(s) = session else {
                        conn.release_slot();
                        conn.demux().remove(peer, id);
                        return;
                    };
                    established.store(true, Ordering::Relaxed);
                    conn.release_slot();
                    run_session(gw, sessions, s, replaced, peer, pending.then_some(id)).await;
                    conn.demux().remove(peer, id);
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
    // `conn` is closed (route forgotten) by the caller when this fails.
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
            return None;
        }
        Err(_) => {
            gw.metrics.dtls_handshake("timeout");
            debug!(psk, "DTLS handshake timed out");
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
        demux: conn.demux().clone(),
    })
}

/// Reads the session's datagrams into the gateway until the peer closes it, it fails, it
/// idles out or a new session of the same peer replaces it.
async fn run_session(
    gw: Arc<Gateway>,
    sessions: Arc<Sessions>,
    session: Session,
    replaced: Arc<Notify>,
    peer: SocketAddr,
    replaces: Option<u64>,
) {
    let conn = session.conn.clone();
    let demux = session.demux.clone();
    sessions.peers.lock().insert(peer, session);
    // The new session is in place before the one it replaces is told to go, so no request
    // of the peer finds neither.
    if let Some(id) = replaces {
        demux.promote(peer, id);
    }
    gw.metrics.dtls_sessions.inc();
    let mut buf = vec![0u8; super::MAX_DATAGRAM];
    let mut restarted = false;
    loop {
        let read = tokio::select! {
            r = conn.read(&mut buf, Some(IDLE_TIMEOUT)) => r,
            _ = replaced.notified() => {
                debug!("a new session of the peer replaced this one");
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
    // A replaced session's peer runs the new one already: no close_notify of the old (its
    // route is gone).
    if !restarted {
        let _ = conn.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_psk_only_hello_gets_psk_and_a_certificate_hello_gets_the_certificate() {
        assert!(wants_psk(&[0xc0a8, 0x00a8, 0x00ff], true));
        assert!(!wants_psk(&[0xc02b, 0xc0ae, 0x00ff], true));
        assert!(wants_psk(&[0xc0a8, 0xc02b], false));
        assert!(wants_psk(&[0xc02b], false));
    }
}
