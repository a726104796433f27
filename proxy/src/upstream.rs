//! Connections from the proxy to agents: mTLS with the proxy's client certificate, pooled
//! keep-alive HTTP/1.1, bounded in time, bodies streamed.
//!
//! # Pooling
//!
//! hyper-util's pooled client (`client-legacy`) is not among the workspace's features, so
//! the pool is a small one of our own over `hyper::client::conn::http1`:
//!
//! - per agent (the `host:port` string as given), a LIFO list of idle connections — each a
//!   ready `SendRequest` whose connection task runs on the runtime;
//! - a request takes the most recently used idle connection, skipping (and closing) any that
//!   is closed, not ready, or idle for `idle_timeout` or longer; if none is left it opens a
//!   new one;
//! - after the response headers are returned, a small task waits until that connection is
//!   ready again — which in HTTP/1.1 means the caller has read the whole body — and puts it
//!   back. If the body is dropped part-way or either side asked for `Connection: close`, the
//!   connection closes and is not returned;
//! - a returned connection is closed when it has been idle for `idle_timeout` (a timer per
//!   idle connection) or when the agent closes it; at most [`MAX_IDLE_PER_AGENT`] idle
//!   connections are kept per agent and an agent with none has no entry, so the pool never
//!   grows beyond what concurrent traffic needs. In-use connections are not capped here:
//!   their number is the number of concurrent requests, which the server bounds.
//!
//! Because a connection goes back only after its body has been read, back-to-back requests
//! to one agent can open a second connection when the next request arrives before the
//! returning task has run (microseconds); scrapes seconds apart always reuse one.
//!
//! # Retry rule
//!
//! A request is retried **once**, on a **fresh** connection, only when it failed on a
//! **reused** pooled connection **before any response headers arrived**, and either the
//! request was never handed to the connection (it was already closed), or the connection
//! was closed or reset with no response (the keep-alive race: the agent closed an idle
//! connection as we reused it). Requests are `GET`s of side-effect-free agent endpoints, so
//! repeating one is safe. Nothing else is retried: not a failure on a fresh connection, not
//! a timeout, not an HTTP error status (a 404 or 503 from the agent is a response, returned
//! as is), and never after response headers arrived.
//!
//! # Time bounds
//!
//! TCP connect + TLS handshake + HTTP handshake are bounded by `connect_timeout`; exceeding
//! it is [`UpstreamError::Unreachable`]. The whole call — pool checkout, any connect, the
//! retry, up to the response headers — is bounded by `deadline`; exceeding it is
//! [`UpstreamError::Timeout`] (so a deadline shorter than `connect_timeout` wins). The body
//! is not buffered: it streams as the agent writes it (the agent bounds its own answer by
//! `x-prometheus-scrape-timeout-seconds`), and the caller may cut it off with
//! [`DeadlineBody`].
//!
//! # Headers and compression
//!
//! See [`forwarded_headers`]: only [`ALLOWED_HEADERS`] are forwarded, `Host` is set to the agent,
//! hop-by-hop response headers are removed, and compression is negotiated once, end to end
//! — the proxy never re-compresses.

mod deadline;
mod headers;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HOST;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, HeaderValue, Request, Response, Uri, Version};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use lookout_discovery::agents::resolve::RecordKind;
use lookout_discovery::agents::HickoryResolver;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use tokio::net::TcpStream;
use tokio::task::AbortHandle;
use tokio_rustls::TlsConnector;

pub use deadline::{BodyDeadline, BoxError, DeadlineBody};
pub use headers::{forwarded_headers, strip_hop_by_hop, ALLOWED_HEADERS, HOP_BY_HOP_HEADERS};

/// At most this many idle connections are kept per agent; more are closed when released.
/// 64, like nginx's `keepalive 64` per worker: below the peak concurrency of a busy proxy,
/// every burst paid new mTLS handshakes on both sides (16 cost 7–16 % of scrapes a new
/// connection at 32 in flight, `deploy/bench/README.md`). The agent's own cap
/// (`collection.max_connections`, 256) bounds what all proxies together may hold.
pub const MAX_IDLE_PER_AGENT: usize = 64;

/// How the proxy reaches agents.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The proxy's client certificate (from the operator CA).
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// The operator CA that issued the agents' server certificates.
    pub ca: PathBuf,
    /// TCP connect + TLS handshake bound.
    pub connect_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub idle_timeout: Duration,
}

/// Why an upstream request failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Could not connect (refused, reset, TLS failure): the node is unreachable.
    #[error("agent unreachable: {0}")]
    Unreachable(String),
    /// No response headers before the deadline.
    #[error("agent did not answer in time")]
    Timeout,
    /// The agent answered something that is not HTTP.
    #[error("agent protocol error: {0}")]
    Protocol(String),
}

/// A pooled, keep-alive mTLS client to agents.
pub struct Upstream {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("connect_timeout", &self.inner.connect_timeout)
            .field("idle_timeout", &self.inner.idle_timeout)
            .field("idle_connections", &self.idle_connections())
            .finish()
    }
}

/// What the pool and its background tasks share.
struct Inner {
    tls: TlsConnector,
    /// Resolves agent addresses that are names (hickory, cached by TTL); built on first use
    /// from the system configuration unless [`Upstream::with_dns_server`] named a server.
    resolver: std::sync::OnceLock<Result<HickoryResolver, String>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// Idle connections per agent, most recently used last.
    idle: Mutex<HashMap<String, Vec<Idle>>>,
    next_id: AtomicU64,
    opened: AtomicU64,
    reused: AtomicU64,
    retried: AtomicU64,
}

/// One HTTP/1.1 connection to an agent: its request handle and its driver task, which is
/// aborted (closing the socket) when this is dropped.
struct Conn {
    id: u64,
    send: http1::SendRequest<Empty<Bytes>>,
    task: AbortHandle,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A pooled connection and when it became idle.
struct Idle {
    conn: Conn,
    since: Instant,
}

/// Where an agent is: what to dial, what name its certificate must carry.
struct Target {
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    host_header: HeaderValue,
}

/// The default agent port, used when `agent` has none.
const DEFAULT_AGENT_PORT: u16 = 9164;

impl Target {
    fn parse(agent: &str) -> Result<Target, UpstreamError> {
        let bad = |why: &str| UpstreamError::Unreachable(format!("{agent:?}: {why}"));
        let authority =
            Authority::from_str(agent).map_err(|_| bad("not a host:port agent address"))?;
        if agent.contains('@') {
            return Err(bad("not a host:port agent address"));
        }
        let host = authority.host();
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if bare.is_empty() {
            return Err(bad("no host"));
        }
        let server_name = match bare.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(bare.to_string())
                .map_err(|_| bad("host is not a DNS name or IP address"))?,
        };
        let host_header =
            HeaderValue::from_str(authority.as_str()).map_err(|_| bad("not a valid Host"))?;
        Ok(Target {
            host: bare.to_string(),
            port: authority.port_u16().unwrap_or(DEFAULT_AGENT_PORT),
            server_name,
            host_header,
        })
    }
}

/// Loads the proxy's client identity and the operator CA into a rustls client config
/// (ring provider, HTTP/1.1 by ALPN).
fn client_config(cfg: &UpstreamConfig) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    let cas = CertificateDer::pem_file_iter(&cfg.ca)
        .map_err(|e| format!("operator CA {}: {e}", cfg.ca.display()))?;
    for ca in cas {
        let ca = ca.map_err(|e| format!("operator CA {}: {e}", cfg.ca.display()))?;
        roots
            .add(ca)
            .map_err(|e| format!("operator CA {}: {e}", cfg.ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "operator CA {}: no certificate in it",
            cfg.ca.display()
        ));
    }
    let certs = CertificateDer::pem_file_iter(&cfg.cert)
        .map_err(|e| format!("client certificate {}: {e}", cfg.cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("client certificate {}: {e}", cfg.cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "client certificate {}: no certificate in it",
            cfg.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.key)
        .map_err(|e| format!("client key {}: {e}", cfg.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| format!("client certificate and key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// An hyper error as an [`UpstreamError`]: unparseable answers are protocol errors,
/// everything else (closed, reset, aborted) means the agent is not reachable now.
fn map_hyper(agent: &str, e: &hyper::Error) -> UpstreamError {
    if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
        UpstreamError::Protocol(format!("{agent}: {e}"))
    } else {
        UpstreamError::Unreachable(format!("{agent}: {e}"))
    }
}

/// True if `e` on a reused connection means it was closed or reset before any response
/// headers: the keep-alive race, safe to retry for a GET.
fn closed_before_response(e: &hyper::Error) -> bool {
    if e.is_canceled() || e.is_closed() || e.is_incomplete_message() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return matches!(
                io.kind(),
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
            );
        }
        source = s.source();
    }
    false
}

impl Inner {
    fn idle(&self) -> MutexGuard<'_, HashMap<String, Vec<Idle>>> {
        // A panic while holding the lock leaves the map consistent (plain inserts and
        // removes), so a poisoned lock is used as is.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn usable(&self, idle: &Idle, now: Instant) -> bool {
        now.saturating_duration_since(idle.since) < self.idle_timeout
            && !idle.conn.send.is_closed()
            && idle.conn.send.is_ready()
    }

    /// The most recently used usable idle connection to `key`; closes stale ones.
    fn checkout(&self, key: &str) -> Option<Conn> {
        let now = Instant::now();
        let mut map = self.idle();
        let list = map.get_mut(key)?;
        let mut found = None;
        while let Some(idle) = list.pop() {
            if self.usable(&idle, now) {
                found = Some(idle.conn);
                break;
            }
        }
        list.retain(|i| self.usable(i, now));
        if list.is_empty() {
            map.remove(key);
        }
        found
    }

    /// Puts an idle, ready connection back; false (and closed) when the agent already has
    /// [`MAX_IDLE_PER_AGENT`] idle ones.
    fn put(&self, key: &str, conn: Conn) -> bool {
        let mut map = self.idle();
        let list = map.entry(key.to_string()).or_default();
        if list.len() >= MAX_IDLE_PER_AGENT {
            return false;
        }
        list.push(Idle {
            conn,
            since: Instant::now(),
        });
        true
    }

    /// Closes the idle connection `id` of `key` if it is still in the pool.
    fn expire(&self, key: &str, id: u64) {
        let mut map = self.idle();
        if let Some(list) = map.get_mut(key) {
            list.retain(|i| i.conn.id != id);
            if list.is_empty() {
                map.remove(key);
            }
        }
    }

    /// Returns `conn` to the pool once its current exchange is over (the body read), then
    /// closes it after `idle_timeout` unless it was taken again.
    fn release(self: &Arc<Self>, key: &str, mut conn: Conn) {
        let pool: Weak<Inner> = Arc::downgrade(self);
        let key = key.to_string();
        let idle_timeout = self.idle_timeout;
        tokio::spawn(async move {
            if conn.send.ready().await.is_err() {
                return; // closed: body dropped early, `Connection: close`, or the agent left
            }
            let id = conn.id;
            match pool.upgrade() {
                Some(p) if p.put(&key, conn) => {}
                _ => return,
            }
            tokio::time::sleep(idle_timeout).await;
            if let Some(p) = pool.upgrade() {
                p.expire(&key, id);
            }
        });
    }

    /// The addresses of `target`: itself for an IP literal, else its A (or, when it has
    /// none, AAAA) records through hickory-resolver, whose cache honours the records' TTL.
    async fn addresses(
        &self,
        agent: &str,
        target: &Target,
    ) -> Result<Vec<SocketAddr>, UpstreamError> {
        if let Ok(ip) = target.host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, target.port)]);
        }
        let unreachable = |e: String| UpstreamError::Unreachable(format!("{agent}: DNS: {e}"));
        let resolver = self
            .resolver
            .get_or_init(|| HickoryResolver::new(None))
            .as_ref()
            .map_err(|e| unreachable(e.clone()))?;
        let mut last = String::new();
        for kind in [RecordKind::A, RecordKind::Aaaa] {
            match resolver.targets(&target.host, kind, None).await {
                Ok(t) => {
                    let found: Vec<SocketAddr> = t
                        .targets
                        .iter()
                        .filter_map(|a| a.parse::<IpAddr>().ok())
                        .map(|ip| SocketAddr::new(ip, target.port))
                        .collect();
                    if !found.is_empty() {
                        return Ok(found);
                    }
                }
                Err(e) => last = e,
            }
        }
        Err(unreachable(last))
    }

    /// TCP connect (each resolved address in turn), TLS handshake (verifying the agent
    /// against the operator CA and presenting the proxy's certificate), HTTP/1.1 handshake —
    /// within `connect_timeout`.
    async fn connect(&self, agent: &str, target: &Target) -> Result<Conn, UpstreamError> {
        let attempt = async {
            let mut tcp = Err(UpstreamError::Unreachable(format!("{agent}: no address")));
            for addr in self.addresses(agent, target).await? {
                tcp = TcpStream::connect(addr).await.map_err(|e| {
                    UpstreamError::Unreachable(format!("{agent}: connect {addr}: {e}"))
                });
                if tcp.is_ok() {
                    break;
                }
            }
            let tcp = tcp?;
            self.opened.fetch_add(1, Ordering::Relaxed);
            let _ = tcp.set_nodelay(true);
            let tls = self
                .tls
                .connect(target.server_name.clone(), tcp)
                .await
                .map_err(|e| UpstreamError::Unreachable(format!("{agent}: TLS: {e}")))?;
            let (send, conn) = http1::Builder::new()
                .handshake::<_, Empty<Bytes>>(TokioIo::new(tls))
                .await
                .map_err(|e| map_hyper(agent, &e))?;
            let agent_name = agent.to_string();
            let task = tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(agent = %agent_name, error = %e, "agent connection ended");
                }
            });
            Ok(Conn {
                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                send,
                task: task.abort_handle(),
            })
        };
        match tokio::time::timeout(self.connect_timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Unreachable(format!(
                "{agent}: no connection within {:?}",
                self.connect_timeout
            ))),
        }
    }

    /// One exchange, pooled, with the retry rule of the module documentation.
    async fn exchange(
        self: &Arc<Self>,
        agent: &str,
        target: &Target,
        make: impl Fn() -> Request<Empty<Bytes>>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        if let Some(mut conn) = self.checkout(agent) {
            self.reused.fetch_add(1, Ordering::Relaxed);
            match conn.send.try_send_request(make()).await {
                Ok(resp) => {
                    self.release(agent, conn);
                    return Ok(resp);
                }
                Err(mut e) => {
                    let unsent = e.take_message().is_some();
                    let e = e.into_error();
                    if !(unsent || closed_before_response(&e)) {
                        return Err(map_hyper(agent, &e));
                    }
                    tracing::debug!(%agent, error = %e, unsent, "pooled connection failed; retrying once on a new one");
                    self.retried.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let mut conn = self.connect(agent, target).await?;
        match conn.send.send_request(make()).await {
            Ok(resp) => {
                self.release(agent, conn);
                Ok(resp)
            }
            Err(e) => Err(map_hyper(agent, &e)),
        }
    }
}

impl Upstream {
    /// Loads the client identity and CA.
    ///
    /// A missing or unreadable certificate, key or CA is reported as
    /// [`UpstreamError::Unreachable`] (without an identity no agent can be reached), with
    /// the file and the reason in the message.
    pub fn new(cfg: &UpstreamConfig) -> Result<Upstream, UpstreamError> {
        let config = client_config(cfg).map_err(|e| {
            UpstreamError::Unreachable(format!("cannot load the agent client identity: {e}"))
        })?;
        Ok(Upstream {
            inner: Arc::new(Inner {
                tls: TlsConnector::from(Arc::new(config)),
                resolver: std::sync::OnceLock::new(),
                connect_timeout: cfg.connect_timeout,
                idle_timeout: cfg.idle_timeout,
                idle: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
                opened: AtomicU64::new(0),
                reused: AtomicU64::new(0),
                retried: AtomicU64::new(0),
            }),
        })
    }

    /// `GET path_and_query` on the agent at `agent` (`host:port`), forwarding only the
    /// request headers an agent may see, with response headers due within `deadline`; the
    /// body streams.
    ///
    /// `agent` is `host:port` (`[v6]:port` for IPv6; the port defaults to 9164); the agent's
    /// certificate must be issued by the operator CA for that host (an IP SAN for an IP
    /// literal). Any HTTP status the agent answers (404, 503, …) is returned as a response,
    /// not an error; hop-by-hop response headers are removed, `content-encoding` is kept.
    /// A `path_and_query` that is not an origin-form target (`/…`) is a
    /// [`UpstreamError::Protocol`] error, sent nowhere.
    pub async fn get(
        &self,
        agent: &str,
        path_and_query: &str,
        headers: &HeaderMap,
        deadline: Duration,
    ) -> Result<Response<Incoming>, UpstreamError> {
        self.get_as(agent, path_and_query, headers, HeaderMap::new(), deadline)
            .await
    }

    /// [`Upstream::get`], with headers the proxy itself asserts to the agent (the tenant it
    /// authorized: [`lookout_discovery::TENANT_HEADER`]) added after the client's headers
    /// were filtered, so they replace anything of the same name, and no client can set them.
    pub async fn get_as(
        &self,
        agent: &str,
        path_and_query: &str,
        headers: &HeaderMap,
        asserted: HeaderMap,
        deadline: Duration,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let target = Target::parse(agent)?;
        if !path_and_query.starts_with('/') {
            return Err(UpstreamError::Protocol(format!(
                "request target {path_and_query:?} is not a path"
            )));
        }
        let uri = PathAndQuery::from_str(path_and_query)
            .map(Uri::from)
            .map_err(|e| {
                UpstreamError::Protocol(format!("request target {path_and_query:?}: {e}"))
            })?;
        let mut forwarded = forwarded_headers(headers);
        for (name, value) in asserted {
            if let Some(name) = name {
                forwarded.insert(name, value);
            }
        }
        forwarded.insert(HOST, target.host_header.clone());
        let make = || {
            let mut req = Request::new(Empty::<Bytes>::new());
            *req.uri_mut() = uri.clone();
            *req.version_mut() = Version::HTTP_11;
            *req.headers_mut() = forwarded.clone();
            req
        };
        let exchange = self.inner.exchange(agent, &target, make);
        let mut resp = match tokio::time::timeout(deadline, exchange).await {
            Ok(r) => r?,
            Err(_) => return Err(UpstreamError::Timeout),
        };
        strip_hop_by_hop(resp.headers_mut());
        Ok(resp)
    }

    /// Resolves agent names by asking `server` only (tests, split-horizon DNS) instead of
    /// the system's name servers; `None` keeps the system's.
    pub fn with_dns_server(self, server: Option<SocketAddr>) -> Result<Upstream, UpstreamError> {
        if server.is_some() {
            let r = HickoryResolver::new(server)
                .map_err(|e| UpstreamError::Unreachable(format!("DNS resolver: {e}")))?;
            let _ = self.inner.resolver.set(Ok(r));
        }
        Ok(self)
    }

    /// TCP connections opened to agents since creation (successful connects, whether or not
    /// the TLS handshake then succeeded).
    pub fn connections_opened(&self) -> u64 {
        self.inner.opened.load(Ordering::Relaxed)
    }

    /// Requests sent on a pooled (reused) connection since creation.
    pub fn connections_reused(&self) -> u64 {
        self.inner.reused.load(Ordering::Relaxed)
    }

    /// Requests retried on a fresh connection after a reused one failed (see the module's
    /// retry rule).
    pub fn retries(&self) -> u64 {
        self.inner.retried.load(Ordering::Relaxed)
    }

    /// Idle connections in the pool now, over all agents (expired ones may linger until
    /// their timer or the next request to that agent removes them).
    pub fn idle_connections(&self) -> usize {
        self.inner.idle().values().map(Vec::len).sum()
    }
}
