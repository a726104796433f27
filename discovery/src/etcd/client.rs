//! Connecting to etcd (endpoints, TLS, keep-alive) and the bounds every call runs under.
//!
//! The connection is lazy and self-healing (tonic's balanced channel): building a client never
//! waits for etcd, and a client outlives etcd restarts. Every unary call is bounded by
//! `request_timeout` here rather than by tonic's per-request timeout, which would also cut
//! long-lived watch and keep-alive streams. HTTP/2 keep-alive pings detect a dead peer on
//! those streams.

use std::future::Future;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use super::config::EtcdConfig;

/// Largest gRPC message accepted from etcd: one page of a full read or one watch response.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// HTTP/2 keep-alive ping interval on the connection to etcd.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// Why talking to etcd failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// The TLS files could not be read.
    #[error("tls {path}: {error}")]
    TlsFile {
        /// The file.
        path: String,
        /// The I/O error.
        error: std::io::Error,
    },
    /// etcd-client refused the configuration or a call failed.
    #[error("{0}")]
    Client(#[from] etcd_client::Error),
    /// A call did not finish within `request_timeout`.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// Which call.
        what: &'static str,
        /// The bound.
        after: Duration,
    },
    /// etcd answered something lookout cannot go on from.
    #[error("{0}")]
    Protocol(String),
}

/// Builds a client for `cfg` (no I/O beyond reading the TLS files).
pub async fn connect(cfg: &EtcdConfig) -> Result<Client, EtcdError> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(cfg.connect_timeout)
        .with_keep_alive(KEEPALIVE_INTERVAL, cfg.request_timeout)
        .with_require_leader(true);
    if let Some(tls) = &cfg.tls {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|error| EtcdError::TlsFile {
                path: p.display().to_string(),
                error,
            })
        };
        let mut t = TlsOptions::new().ca_certificate(Certificate::from_pem(read(&tls.ca)?));
        if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
            t = t.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        if let Some(name) = &tls.server_name {
            t = t.domain_name(name.clone());
        }
        opts = opts.with_tls(t);
    }
    let connecting = Client::connect(cfg.endpoints.clone(), Some(opts));
    bounded("connect", cfg.connect_timeout, connecting).await
}

/// Runs one etcd call under `after`.
pub async fn bounded<T>(
    what: &'static str,
    after: Duration,
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, EtcdError> {
    match tokio::time::timeout(after, call).await {
        Ok(r) => r.map_err(EtcdError::from),
        Err(_) => Err(EtcdError::Timeout { what, after }),
    }
}
