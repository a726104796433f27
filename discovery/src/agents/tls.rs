//! The proxy's client TLS configuration for talking to agents: its certificate from the
//! operator CA, and agents verified against that CA. Files are re-read when they change
//! (checked before each connection attempt); a bad rotation keeps the previous material.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::config::ClientTlsConfig;

/// Why the client TLS material is unusable.
#[derive(Debug, thiserror::Error)]
#[error("tls {what} {path}: {reason}")]
pub struct TlsError {
    /// Which file (`cert`, `key`, `ca`) or step.
    pub what: &'static str,
    /// Its path.
    pub path: String,
    /// What went wrong.
    pub reason: String,
}

/// Loads the client configuration (ring provider, safe default protocol versions).
pub fn load(cfg: &ClientTlsConfig) -> Result<Arc<ClientConfig>, TlsError> {
    let err = |what: &'static str, path: &Path, reason: String| TlsError {
        what,
        path: path.display().to_string(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    let cas = CertificateDer::pem_file_iter(&cfg.ca)
        .map_err(|e| err("ca", &cfg.ca, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err("ca", &cfg.ca, e.to_string()))?;
    if cas.is_empty() {
        return Err(err("ca", &cfg.ca, "no certificate in file".into()));
    }
    for c in cas {
        roots
            .add(c)
            .map_err(|e| err("ca", &cfg.ca, e.to_string()))?;
    }
    let chain = CertificateDer::pem_file_iter(&cfg.cert)
        .map_err(|e| err("cert", &cfg.cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err("cert", &cfg.cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(err("cert", &cfg.cert, "no certificate in file".into()));
    }
    let key =
        PrivateKeyDer::from_pem_file(&cfg.key).map_err(|e| err("key", &cfg.key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err("versions", &cfg.cert, e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| err("cert", &cfg.cert, e.to_string()))?;
    Ok(Arc::new(config))
}

/// Client TLS material that follows its files.
#[derive(Debug)]
pub struct Reloading {
    cfg: ClientTlsConfig,
    current: Mutex<(Arc<ClientConfig>, [Option<SystemTime>; 3])>,
}

impl Reloading {
    /// Loads the files once; fails if they are unusable now.
    pub fn new(cfg: ClientTlsConfig) -> Result<Reloading, TlsError> {
        let config = load(&cfg)?;
        let stamps = stamps(&cfg);
        Ok(Reloading {
            cfg,
            current: Mutex::new((config, stamps)),
        })
    }

    /// The configuration to use for a new connection: reloaded first if any file changed.
    pub fn current(&self) -> Arc<ClientConfig> {
        let now = stamps(&self.cfg);
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if now != cur.1 {
            match load(&self.cfg) {
                Ok(c) => {
                    tracing::info!("agents source: client TLS material reloaded");
                    *cur = (c, now);
                }
                Err(e) => {
                    // Remember the stamps so a broken file is reported once, not per attempt.
                    cur.1 = now;
                    tracing::error!(error = %e, "agents source: TLS reload failed; keeping the previous material");
                }
            }
        }
        Arc::clone(&cur.0)
    }
}

fn stamps(cfg: &ClientTlsConfig) -> [Option<SystemTime>; 3] {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    [m(&cfg.cert), m(&cfg.key), m(&cfg.ca)]
}
