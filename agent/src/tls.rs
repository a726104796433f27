//! The agent's TLS: rustls with the ring provider, a server certificate, and client
//! certificates required and verified against the operator CA — only proxies (or operators)
//! holding a certificate from that CA can talk to an agent. Files are re-read when they
//! change; a broken new file keeps the old configuration in force.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {what}")]
    File {
        /// The file.
        path: String,
        /// What was wrong.
        what: String,
    },
    /// rustls refused the material.
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    /// The client CA could not be used.
    #[error("client CA: {0}")]
    Verifier(String),
}

fn file_err(path: &Path, what: impl ToString) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        what: what.to_string(),
    }
}

/// Reads every certificate of a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no CERTIFICATE block"));
    }
    Ok(certs)
}

/// Reads a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_err(path, e))
}

/// The ring crypto provider, explicitly, so no process-wide default is needed.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the server configuration: certificate chain and key, client certificates required
/// from `client_ca`, ALPN h2 and http/1.1.
pub fn server_config(cfg: &TlsConfig) -> Result<ServerConfig, TlsError> {
    let certs = load_certs(&cfg.cert)?;
    let key = load_key(&cfg.key)?;
    let mut roots = RootCertStore::empty();
    for ca in load_certs(&cfg.client_ca)? {
        roots.add(ca).map_err(|e| file_err(&cfg.client_ca, e))?;
    }
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The live TLS configuration, swapped atomically on reload; connections in flight keep the
/// configuration they started with.
pub struct Reloading {
    cfg: TlsConfig,
    current: ArcSwap<ServerConfig>,
    stamp: std::sync::Mutex<Vec<Option<SystemTime>>>,
}

impl Reloading {
    /// Loads the files once.
    pub fn new(cfg: TlsConfig) -> Result<Self, TlsError> {
        let config = server_config(&cfg)?;
        let stamp = std::sync::Mutex::new(stamps(&cfg));
        Ok(Reloading {
            cfg,
            current: ArcSwap::from_pointee(config),
            stamp,
        })
    }

    /// The configuration for a new connection.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// Reloads if any file's modification time changed. `Ok(true)` when a new configuration
    /// is in force, `Err` when the new files are broken (the old configuration stays).
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamps(&self.cfg);
        let mut last = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
        if *last == now {
            return Ok(false);
        }
        *last = now;
        let config = server_config(&self.cfg)?;
        self.current.store(Arc::new(config));
        Ok(true)
    }
}

fn stamps(cfg: &TlsConfig) -> Vec<Option<SystemTime>> {
    [&cfg.cert, &cfg.key, &cfg.client_ca]
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}
