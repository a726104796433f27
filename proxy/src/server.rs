//! The HTTPS server: listeners, TLS with hot reload, tenants-file hot reload, connection
//! bounds, the admin listener, and the running [`Proxy`].
//!
//! - **TLS** (rustls, ring): the server certificate from `[tls]`, a client certificate
//!   requested but not required ([`crate::tls::AcceptAnyClientCert`]), ALPN `h2` and
//!   `http/1.1` (Prometheus's triton SD offers no ALPN and gets HTTP/1.1). The certificate,
//!   key and tenant CA are re-read when their modification times change; broken new files
//!   keep the old material in force (logged, counted in `lookout_proxy_tls_reload_failures`).
//!   Connections in flight keep the configuration they started with.
//! - **Tenants**: from the tenants file, re-read when it changes, and/or from etcd with
//!   `[tenants] etcd` (a [`Mirror`] of the tenants range: full read, then watch). Both are
//!   merged and validated together ([`crate::tenants::reload`]); a set with problems — a broken
//!   file, a bad etcd record, a tenant or credential in both — keeps the last good tenants
//!   (logged, counted in `lookout_proxy_tenants_reload_failures`). Rate limits follow, and
//!   open connections authenticate against the new set at their next request.
//! - **Bounds**: at most `limits.max_connections` open connections (more are closed at once),
//!   a TLS handshake deadline, a request-header deadline (for a connection's first request
//!   it runs from the end of the handshake, HTTP/1.1 or h2) and size bound (hyper answers 431
//!   to oversized headers).
//! - **Replicas**: with `[limits.replicas_dns]`, the tenant limits follow the replica count
//!   DNS lists ([`crate::limit::follow_replicas_dns`]); with the `etcd` inventory source the
//!   replica registers itself ([`crate::registration`]) and, unless `replicas` or
//!   `replicas_dns` is set, the count follows the live registered replicas
//!   ([`crate::limit::follow_replicas_etcd`]).
//! - **Requests** are handled by [`handler`] (the order of checks is documented there).
//! - **Admin listener**: plain HTTP (keep it on loopback): `GET /metrics` (OpenMetrics text of
//!   [`crate::telemetry::Telemetry`]) and `GET /healthz`.

mod bodies;
pub mod handler;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use lookout_discovery::agents::HickoryResolver;
use lookout_discovery::etcd::{EtcdConfig, EtcdSource, Keys, Mirror, MirrorStatus, Snapshot};
use lookout_discovery::Shared;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::config::{InventoryConfig, LimitsConfig, ProxyConfig, ServerTlsConfig};
use crate::host::{HostError, HostRules};
use crate::identity::TenantCa;
use crate::limit::{SourceLimiter, TenantLimiter};
use crate::telemetry::Telemetry;
pub use crate::tenants::reload::ReloadingTenants;
use crate::tenants::TenantsError;
use crate::upstream::{Upstream, UpstreamError};

use self::bodies::Bodies;
use self::handler::{Conn, State};

/// Why the TLS material could not be used.
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
    /// rustls refused the certificate or key.
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    /// The tenant CA could not be used.
    #[error("{0}")]
    TenantCa(String),
}

fn file_err(path: &Path, what: impl ToString) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        what: what.to_string(),
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no CERTIFICATE block"));
    }
    Ok(certs)
}

/// The listener's TLS material, built from `[tls]`: the rustls server configuration and the
/// tenant CA the identity layer checks chains against.
pub struct TlsMaterial {
    /// For new connections.
    pub server: Arc<ServerConfig>,
    /// The tenant CA ([`TenantCa::none`] when not configured).
    pub tenant_ca: Arc<TenantCa>,
}

impl TlsMaterial {
    /// Reads the files and builds the configuration.
    pub fn load(cfg: &ServerTlsConfig) -> Result<TlsMaterial, TlsError> {
        let certs = load_certs(&cfg.cert)?;
        let key = PrivateKeyDer::from_pem_file(&cfg.key).map_err(|e| file_err(&cfg.key, e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = crate::tls::AcceptAnyClientCert::new(&provider);
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)?;
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let tenant_ca = match &cfg.tenant_ca {
            Some(path) => TenantCa::new(&load_certs(path)?).map_err(TlsError::TenantCa)?,
            None => TenantCa::none(),
        };
        Ok(TlsMaterial {
            server: Arc::new(server),
            tenant_ca: Arc::new(tenant_ca),
        })
    }
}

/// Modification times (and sizes) of a set of files: a change means "reload".
fn stamps(paths: &[&Path]) -> Vec<Option<(SystemTime, u64)>> {
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

/// The live TLS material, swapped atomically when the files change.
pub struct ReloadingTls {
    cfg: ServerTlsConfig,
    current: ArcSwap<TlsMaterial>,
    stamp: Mutex<Vec<Option<(SystemTime, u64)>>>,
}

impl ReloadingTls {
    /// Loads the files once.
    pub fn new(cfg: ServerTlsConfig) -> Result<Self, TlsError> {
        let stamp = Mutex::new(stamps(&Self::paths(&cfg)));
        let material = TlsMaterial::load(&cfg)?;
        Ok(ReloadingTls {
            cfg,
            current: ArcSwap::from_pointee(material),
            stamp,
        })
    }

    fn paths(cfg: &ServerTlsConfig) -> Vec<&Path> {
        let mut p = vec![cfg.cert.as_path(), cfg.key.as_path()];
        if let Some(ca) = &cfg.tenant_ca {
            p.push(ca.as_path());
        }
        p
    }

    /// The material in force.
    pub fn current(&self) -> Arc<TlsMaterial> {
        self.current.load_full()
    }

    /// Reloads if any file changed. `Ok(true)` when new material is in force, `Err` when
    /// the new files are broken (the old material stays).
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamps(&Self::paths(&self.cfg));
        let mut last = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
        if *last == now {
            return Ok(false);
        }
        *last = now;
        let material = TlsMaterial::load(&self.cfg)?;
        self.current.store(Arc::new(material));
        Ok(true)
    }
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// TLS material unusable.
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
    /// Tenants file unusable.
    #[error("{0}")]
    Tenants(#[from] TenantsError),
    /// `base_name`, `base_aliases` or `dns_suffix` is not a DNS name.
    #[error("host names: {0}")]
    Hosts(#[from] HostError),
    /// The upstream client could not be built.
    #[error("upstream: {0}")]
    Upstream(#[from] UpstreamError),
    /// The inventory source could not be built.
    #[error("inventory: {0}")]
    Inventory(String),
    /// The etcd mirror of the tenants could not be built.
    #[error("tenants.etcd: {0}")]
    TenantsEtcd(String),
    /// The resolver for `limits.replicas_dns` could not be built.
    #[error("limits.replicas_dns: {0}")]
    ReplicasDns(String),
    /// Cannot listen.
    #[error("listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Error.
        source: std::io::Error,
    },
}

/// A running proxy.
pub struct Proxy {
    local_addr: SocketAddr,
    admin_addr: SocketAddr,
    inventory: Arc<Shared>,
    telemetry: Arc<Telemetry>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Proxy {
    /// Loads TLS material and tenants, starts the inventory source, the reload loops and
    /// both listeners. The proxy answers at once; `/readyz` says 503 until the inventory
    /// source has published.
    pub async fn start(config: ProxyConfig) -> Result<Proxy, StartError> {
        let mut hosts = HostRules::new(&config.base_name, &config.dns_suffix)?
            .ip_literals_are_base(config.ip_literals_are_base);
        for alias in &config.base_aliases {
            hosts = hosts.with_base_alias(alias)?;
        }
        let tls = Arc::new(ReloadingTls::new(config.tls.clone())?);
        let tenants_etcd = config.tenants_etcd();
        let tenants = Arc::new(ReloadingTenants::new(
            config.tenants_file.clone(),
            tenants_etcd.is_some(),
        )?);
        let upstream = Upstream::new(&config.upstream.upstream_config())?
            .with_dns_server(config.upstream.dns_server)?;
        let replicas_dns = match &config.limits.replicas_dns {
            Some(dns) => Some((
                dns.clone(),
                HickoryResolver::new(dns.server).map_err(StartError::ReplicasDns)?,
            )),
            None => None,
        };
        let telemetry = Arc::new(Telemetry::new());
        let inventory = Shared::new();
        let (shutdown, rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut etcd = None;
        let etcd_tenants = match tenants_etcd {
            Some(e) => Some(EtcdTenants::start(e, &mut tasks, rx.clone())?),
            None => None,
        };

        match &config.inventory {
            InventoryConfig::Agents(a) => {
                let watcher = lookout_discovery::agents::Watcher::new(a.clone())
                    .map_err(|e| StartError::Inventory(e.to_string()))?;
                tasks.spawn(watcher.run(Arc::clone(&inventory), rx.clone()));
            }
            InventoryConfig::Etcd(e) => {
                let source = EtcdSource::new(e.clone()).map_err(StartError::Inventory)?;
                etcd = Some(source.status());
                tasks.spawn(source.run(Arc::clone(&inventory), rx.clone()));
                let id = crate::registration::replica_id();
                tracing::info!(replica = %id, "registering this proxy replica in etcd");
                crate::registration::start(e.clone(), &id, &mut tasks, rx.clone())
                    .map_err(StartError::Inventory)?;
            }
            InventoryConfig::File(f) => {
                tasks.spawn(lookout_discovery::file::watch(
                    f.path.clone(),
                    Arc::clone(&inventory),
                    f.reload_interval,
                    rx.clone(),
                ));
            }
        }

        let bind = |addr: SocketAddr| async move {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Listen { addr, source })?;
            let local = l
                .local_addr()
                .map_err(|source| StartError::Listen { addr, source })?;
            Ok::<_, StartError>((l, local))
        };
        let (listener, local_addr) = bind(config.listen).await?;
        let (admin, admin_addr) = bind(config.admin_listen).await?;

        let current_tenants = tenants.current();
        let state = Arc::new(State {
            hosts,
            tls: Arc::clone(&tls),
            tenants: Arc::clone(&tenants),
            tenant_limits: TenantLimiter::new(
                current_tenants.default_rate_limit(),
                current_tenants.rate_overrides(),
                config.limits.initial_replicas(),
            ),
            source_limits: SourceLimiter::new(config.limits.source),
            inventory: Arc::clone(&inventory),
            bodies: Bodies::default(),
            upstream,
            telemetry: Arc::clone(&telemetry),
            dns_suffix: config.dns_suffix.to_ascii_lowercase(),
            sd_port: config.sd_port.unwrap_or(local_addr.port()),
            scrape_timeout: config.upstream.scrape_timeout,
        });

        tasks.spawn(reload_tls(
            tls,
            config.tls.reload_interval,
            Arc::clone(&telemetry),
            rx.clone(),
        ));
        tasks.spawn(reload_tenants(
            Arc::clone(&state),
            config.tenants_reload_interval,
            etcd_tenants,
            rx.clone(),
        ));
        tasks.spawn(housekeeping(Arc::clone(&state), rx.clone()));
        telemetry
            .replicas
            .set(i64::from(state.tenant_limits.replicas()));
        if let Some((dns, resolver)) = replicas_dns {
            let (state, rx) = (Arc::clone(&state), rx.clone());
            tasks.spawn(async move {
                let (limits, telemetry) = (&state.tenant_limits, &state.telemetry);
                crate::limit::follow_replicas_dns(limits, &resolver, &dns, telemetry, rx).await;
            });
        }
        if let Some(status) = etcd.filter(|_| config.limits.follows_etcd(&config.inventory)) {
            let (state, rx) = (Arc::clone(&state), rx.clone());
            tasks.spawn(async move {
                let (limits, telemetry) = (&state.tenant_limits, &state.telemetry);
                crate::limit::follow_replicas_etcd(limits, status, telemetry, rx).await;
            });
        }
        tasks.spawn(serve(listener, state, config.limits.clone(), rx.clone()));
        tasks.spawn(serve_admin(
            admin,
            Arc::clone(&telemetry),
            Arc::clone(&inventory),
            rx,
        ));
        tracing::info!(addr = %local_addr, admin = %admin_addr, "proxy listening (TLS)");
        Ok(Proxy {
            local_addr,
            admin_addr,
            inventory,
            telemetry,
            shutdown,
            tasks,
        })
    }

    /// The tenants' HTTPS address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admin (own metrics) address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The inventory the proxy serves from.
    pub fn inventory(&self) -> &Arc<Shared> {
        &self.inventory
    }

    /// The proxy's own metrics.
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    /// Stops accepting, ends background tasks (connections get a few seconds to finish),
    /// waits for them.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

async fn reload_tls(
    tls: Arc<ReloadingTls>,
    every: Duration,
    telemetry: Arc<Telemetry>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        match tls.reload_if_changed() {
            Ok(true) => tracing::info!("TLS certificates reloaded"),
            Ok(false) => {}
            Err(e) => {
                telemetry.tls_reload_failures.inc();
                tracing::error!(error = %e, "TLS reload failed; keeping the previous certificates");
            }
        }
    }
}

/// The tenants of etcd, as a running [`Mirror`] delivers them.
struct EtcdTenants {
    keys: Keys,
    max_value_bytes: usize,
    snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    status: watch::Receiver<MirrorStatus>,
}

impl EtcdTenants {
    /// Starts mirroring the tenants range (a task in `tasks`, ending with `shutdown`).
    fn start(
        config: &EtcdConfig,
        tasks: &mut JoinSet<()>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<EtcdTenants, StartError> {
        let keys = Keys::new(config.prefix.clone());
        let (start, end) = keys.tenants_range();
        let mirror = Mirror::new(config.clone(), start, end).map_err(StartError::TenantsEtcd)?;
        let tenants = EtcdTenants {
            keys,
            max_value_bytes: config.max_value_bytes,
            snapshots: mirror.snapshots(),
            status: mirror.status(),
        };
        tasks.spawn(mirror.run(shutdown));
        Ok(tenants)
    }
}

/// Resolves when `rx` sees a new value; never when there is no `rx` or its sender is gone.
async fn next_change<T>(rx: Option<&mut watch::Receiver<T>>) {
    if let Some(rx) = rx {
        if rx.changed().await.is_ok() {
            return;
        }
    }
    std::future::pending::<()>().await;
}

/// Applies tenant changes: the file's (checked every `every`) and etcd's (as mirrored).
async fn reload_tenants(
    state: Arc<State>,
    every: Duration,
    etcd: Option<EtcdTenants>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (mut snapshots, mut status, decode) = match etcd {
        Some(e) => (
            Some(e.snapshots),
            Some(e.status),
            Some((e.keys, e.max_value_bytes)),
        ),
        None => (None, None, None),
    };
    loop {
        let (what, result) = tokio::select! {
            _ = tokio::time::sleep(every) => ("tenants file", state.tenants.reload_if_changed()),
            _ = next_change(snapshots.as_mut()) => {
                let snapshot = snapshots.as_mut().and_then(|s| s.borrow_and_update().clone());
                let (Some(snapshot), Some((keys, max))) = (snapshot, &decode) else {
                    continue;
                };
                let source = crate::tenants::etcd::decode(keys, &snapshot, *max);
                tracing::debug!(revision = snapshot.revision, "tenants in etcd changed");
                ("etcd", state.tenants.set_etcd(source).map(Some))
            }
            _ = next_change(status.as_mut()) => {
                if let Some(s) = status.as_mut().map(|s| s.borrow_and_update().clone()) {
                    state.telemetry.tenants_etcd_up.set(i64::from(s.connected));
                    state.tenants.set_etcd_error(s.last_error);
                }
                continue;
            }
            _ = shutdown.changed() => return,
        };
        match result {
            Ok(Some(t)) => {
                state
                    .tenant_limits
                    .set_limits(t.default_rate_limit(), t.rate_overrides());
                tracing::info!(
                    tenants = t.tenants().len(),
                    changed = what,
                    "tenants reloaded"
                );
            }
            Ok(None) => {}
            Err(e) => {
                state.telemetry.tenants_reload_failures.inc();
                tracing::error!(error = %e, changed = what, "tenants rejected; keeping the previous tenants");
            }
        }
    }
}

/// Bounds the rate limiters' memory: forgets keys whose state is back to full.
async fn housekeeping(state: Arc<State>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            _ = shutdown.changed() => return,
        }
        state.tenant_limits.housekeeping();
        state.source_limits.housekeeping();
    }
}

async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    limits: LimitsConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut conns = JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            state.telemetry.connections_refused.inc();
            tracing::warn!(%peer, "connection limit reached; closing");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&state.tls.current().server));
        let state = Arc::clone(&state);
        let limits = limits.clone();
        let mut stop = shutdown.clone();
        conns.spawn(async move {
            let _permit = permit;
            state.telemetry.connections.inc();
            let _gauge = ConnGauge(Arc::clone(&state.telemetry));
            let stream =
                match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            let conn = {
                let (_, session) = stream.get_ref();
                Arc::new(Conn::new(
                    peer,
                    session.server_name().map(str::to_owned),
                    session
                        .peer_certificates()
                        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                        .unwrap_or_default(),
                ))
            };
            // hyper's header deadline starts only once the protocol is known, which the
            // auto builder learns from the first bytes, and HTTP/2 has none: a client silent
            // after the handshake would hold its slot forever. So the first request must
            // reach the service within `header_read_timeout` of the handshake, whatever the
            // protocol, and later ones within `idle_timeout` of the one before (hyper's own
            // deadline bounds the headers of later HTTP/1.1 requests once they start).
            let activity = Arc::new(Activity::new());
            let service = {
                let activity = Arc::clone(&activity);
                hyper::service::service_fn(move |req| {
                    activity.request_started();
                    let state = Arc::clone(&state);
                    let conn = Arc::clone(&conn);
                    async move { Ok::<_, Infallible>(state.handle(&conn, req).await) }
                })
            };
            let idle = activity.idle(limits.header_read_timeout, limits.idle_timeout);
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(limits.max_header_bytes);
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                first = idle => {
                    if first {
                        tracing::debug!(%peer, "no request within the header deadline; closing");
                    } else {
                        // Requests in flight finish (their bodies are bounded by the scrape
                        // deadline); no new one is taken.
                        tracing::debug!(%peer, "connection idle; closing");
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(IDLE_DRAIN, conn).await;
                    }
                }
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
        while conns.try_join_next().is_some() {}
    }
    conns.shutdown().await;
}

/// How long an idle connection's requests in flight may still run after it is told to close.
const IDLE_DRAIN: Duration = Duration::from_secs(130);

/// When the last request on a connection started.
struct Activity {
    last: std::sync::Mutex<Option<tokio::time::Instant>>,
    start: tokio::time::Instant,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            last: std::sync::Mutex::new(None),
            start: tokio::time::Instant::now(),
        }
    }

    fn request_started(&self) {
        *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(tokio::time::Instant::now());
    }

    /// Resolves once no request has started for `first` after the handshake (`true`), or
    /// for `idle` after the last request started (`false`).
    async fn idle(&self, first: Duration, idle: Duration) -> bool {
        loop {
            let last = *self
                .last
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let due = match last {
                None => self.start + first,
                Some(t) => t + idle,
            };
            if tokio::time::Instant::now() >= due {
                return last.is_none();
            }
            tokio::time::sleep_until(due).await;
        }
    }
}

/// Decrements the open-connections gauge when a connection task ends, however it ends.
struct ConnGauge(Arc<Telemetry>);

impl Drop for ConnGauge {
    fn drop(&mut self) {
        self.0.connections.dec();
    }
}

/// The admin listener: `GET /metrics` and `GET /healthz`, plain HTTP/1.1.
async fn serve_admin(
    listener: TcpListener,
    telemetry: Arc<Telemetry>,
    inventory: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        let tcp = tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        // The admin listener is for the operator's own Prometheus; a handful of
        // connections is plenty.
        if conns.len() >= 64 {
            continue;
        }
        let telemetry = Arc::clone(&telemetry);
        let inventory = Arc::clone(&inventory);
        conns.spawn(async move {
            let service = hyper::service::service_fn(move |req: http::Request<_>| {
                let telemetry = Arc::clone(&telemetry);
                let inventory = Arc::clone(&inventory);
                async move {
                    let resp = match req.uri().path() {
                        "/metrics" => {
                            telemetry.observe_inventory(&inventory);
                            admin_response(
                                200,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                telemetry.encode(),
                            )
                        }
                        "/healthz" => {
                            admin_response(200, "text/plain; charset=utf-8", "ok\n".into())
                        }
                        _ => admin_response(404, "text/plain; charset=utf-8", "not found\n".into()),
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10));
            let _ = tokio::time::timeout(
                Duration::from_secs(300),
                builder.serve_connection(TokioIo::new(tcp), service),
            )
            .await;
        });
        while conns.try_join_next().is_some() {}
    }
    conns.shutdown().await;
}

fn admin_response(status: u16, content_type: &str, body: String) -> http::Response<Full<Bytes>> {
    let mut resp = http::Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_is_idle_after_the_first_or_the_idle_deadline() {
        let first = Duration::from_millis(200);
        let idle = Duration::from_millis(400);
        let margin = Duration::from_secs(3);

        let a = Activity::new();
        let t = tokio::time::Instant::now();
        assert!(a.idle(first, idle).await, "no request: the first deadline");
        assert!(t.elapsed() >= first && t.elapsed() < first + margin);

        // Requests keep it alive; once they stop, it is idle `idle` after the last one.
        let a = Arc::new(Activity::new());
        let watch = tokio::spawn({
            let a = Arc::clone(&a);
            async move { a.idle(first, idle).await }
        });
        for _ in 0..4 {
            a.request_started();
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        assert!(!watch.is_finished(), "requests every 150 ms keep it open");
        let last = tokio::time::Instant::now() - Duration::from_millis(150);
        let was_first = watch.await.expect("join");
        assert!(!was_first);
        assert!(last.elapsed() >= idle - Duration::from_millis(10));
        assert!(last.elapsed() < idle + margin);
    }
}
