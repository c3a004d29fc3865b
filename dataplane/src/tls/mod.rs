//! TLS for the `mqtts` and `wss` listeners (rustls with the ring provider): the server
//! certificate, the client-certificate policy, and reloading both from their files when
//! they change (Kubernetes updates mounted Secrets in place), without touching connections
//! already established.

mod identity;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::Args;
use parking_lot::{Mutex, RwLock};
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use identity::peer_cert;

use crate::access::AccessMetrics;

/// TLS listener flags.
#[derive(Args, Debug, Clone)]
pub struct TlsArgs {
    /// MQTT over TLS listen address ("off" disables it); runs when --tls-cert and
    /// --tls-key are set.
    #[arg(long, env = "CMQ_MQTTS_LISTEN", default_value = "0.0.0.0:8883")]
    pub mqtts_listen: String,
    /// MQTT over secure WebSocket listen address, path /mqtt ("off" disables it); runs
    /// when --tls-cert and --tls-key are set.
    #[arg(long, env = "CMQ_WSS_LISTEN", default_value = "0.0.0.0:8084")]
    pub wss_listen: String,
    /// Server certificate chain (PEM), leaf first.
    #[arg(long, env = "CMQ_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Private key of the server certificate (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "CMQ_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA bundle (PEM) that client certificates are verified against.
    #[arg(long, env = "CMQ_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Whether clients present a certificate: none, optional (verified when presented) or
    /// required.
    #[arg(long, env = "CMQ_TLS_CLIENT_AUTH", value_enum, default_value = "none")]
    pub tls_client_auth: ClientAuthArg,
    /// How often the certificate, key and CA files are checked for changes, in
    /// milliseconds (0: never).
    #[arg(long, env = "CMQ_TLS_RELOAD_MS", default_value_t = 5000)]
    pub tls_reload_ms: u64,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthArg {
    None,
    Optional,
    Required,
}

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("--tls-client-auth {0:?} needs --tls-client-ca")]
    NoClientCa(ClientAuthArg),
    #[error("invalid TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("invalid client CA bundle: {0}")]
    Verifier(String),
}

/// The files a TLS configuration is built from.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    pub client_auth: ClientAuthArg,
    pub reload: Duration,
}

impl TlsArgs {
    /// The TLS files, when a certificate and key are configured.
    pub fn files(&self) -> Result<Option<TlsFiles>, TlsError> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        if self.tls_client_auth != ClientAuthArg::None && self.tls_client_ca.is_none() {
            return Err(TlsError::NoClientCa(self.tls_client_auth));
        }
        Ok(Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: self.tls_client_ca.clone(),
            client_auth: self.tls_client_auth,
            reload: Duration::from_millis(self.tls_reload_ms),
        }))
    }
}

fn read_err(path: &std::path::Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::Read {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

/// The certificate chain (PEM) in `path`, leaf first.
pub fn read_chain(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_err(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The CA bundle (PEM) in `path`, as trust roots.
pub fn read_roots(path: &std::path::Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| read_err(path, e))? {
        roots
            .add(cert.map_err(|e| read_err(path, e))?)
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
    }
    Ok(roots)
}

/// Builds a server configuration from the files as they are now.
pub fn build(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let certs = read_chain(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| read_err(&files.key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match (&files.client_ca, files.client_auth) {
        (_, ClientAuthArg::None) => builder.with_no_client_auth(),
        (None, mode) => return Err(TlsError::NoClientCa(mode)),
        (Some(ca), mode) => {
            let roots = read_roots(ca)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if mode == ClientAuthArg::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| TlsError::Verifier(e.to_string()))?,
            )
        }
    };
    Ok(builder.with_single_cert(certs, key)?)
}

/// The TLS configuration in force, replaced when its files change.
pub struct TlsSource {
    files: TlsFiles,
    current: RwLock<TlsAcceptor>,
    stamps: Mutex<Vec<Option<(SystemTime, u64)>>>,
}

impl TlsSource {
    /// Loads the configuration; fails when the files are unusable.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let stamps = stamps(&files);
        let config = build(&files)?;
        Ok(Arc::new(Self {
            files,
            current: RwLock::new(TlsAcceptor::from(Arc::new(config))),
            stamps: Mutex::new(stamps),
        }))
    }

    /// The acceptor for a new connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.current.read().clone()
    }

    /// Reloads when a file changed; a broken new state is logged and the old one kept.
    pub fn reload_if_changed(&self, metrics: &AccessMetrics) {
        let now = stamps(&self.files);
        if *self.stamps.lock() == now {
            return;
        }
        match build(&self.files) {
            Ok(config) => {
                *self.current.write() = TlsAcceptor::from(Arc::new(config));
                *self.stamps.lock() = now;
                metrics.tls_reload("ok");
                info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                // Often a Secret caught mid-update (certificate without its new key): the
                // next poll retries, because the stamps are left as they were.
                metrics.tls_reload("failed");
                warn!(error = %e, "TLS files changed but cannot be used; keeping the previous certificate");
            }
        }
    }

    /// Polls the files until `shutdown`.
    pub async fn watch(self: Arc<Self>, metrics: AccessMetrics, shutdown: CancellationToken) {
        if self.files.reload.is_zero() {
            return;
        }
        let mut tick = tokio::time::interval(self.files.reload);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => self.reload_if_changed(&metrics),
            }
        }
    }
}

/// Modification time and length of each file (following symlinks, as Kubernetes swaps a
/// mounted Secret's `..data` link).
fn stamps(files: &TlsFiles) -> Vec<Option<(SystemTime, u64)>> {
    [
        Some(&files.cert),
        Some(&files.key),
        files.client_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    })
    .collect()
}
