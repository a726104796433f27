//! lookout's per-node agent.
//!
//! It finds every container on the node (runc-family state, crun, cgroup path rules), reads
//! each one's kernel and filesystem stats from outside (cgroup v1/v2, procfs, statfs), and
//! serves a node_exporter view per container to lookout proxies over mTLS. It never enters
//! or execs in a container, and it bounds its own cost so it cannot hurt the node.
//!
//! The file tree is the architecture: `source/` finds containers, `registry` tracks them,
//! `cgroup/`, `process`, `netdev`, `mountinfo`, `filesystem`, `pressure`, `loadavg` read
//! the kernel, `snapshot` + `cache` collect under the node's budget, `render` +
//! `exposition` write the view, `server` + `tls` serve it; `registration` registers the
//! node and its containers in etcd when `[etcd]` is configured.

pub mod authorization;
pub mod cache;
pub mod cgroup;
pub mod config;
pub mod container;
pub mod exposition;
pub mod filesystem;
pub mod host;
pub mod kernel_file;
pub mod loadavg;
pub mod mountinfo;
pub mod namespaces;
pub mod netdev;
pub mod node;
pub mod pressure;
pub mod process;
pub mod registration;
pub mod registry;
pub mod render;
pub mod server;
pub mod snapshot;
pub mod source;
pub mod telemetry;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use lookout_discovery::etcd::RegistrarStatus;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::cache::Collector;
use crate::config::AgentConfig;
use crate::filesystem::Statfs;
use crate::host::Host;
use crate::registry::Registry;
use crate::server::Api;
use crate::source::{crun::CrunSource, rules::RuleSource, runc::RuncSource, Source};
use crate::telemetry::Telemetry;

/// Time a client has to finish the TLS handshake and send its request headers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// TLS material unusable.
    #[error("tls: {0}")]
    Tls(#[from] tls::TlsError),
    /// Host facts unreadable (wrong `roots.proc`?).
    #[error("host: {0}")]
    Host(#[from] kernel_file::KernelFileError),
    /// etcd registration could not start (`[etcd]`).
    #[error("etcd: {0}")]
    Etcd(String),
    /// Cannot listen.
    #[error("listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Error.
        source: std::io::Error,
    },
}

/// A running agent.
pub struct Agent {
    local_addr: SocketAddr,
    registry: Arc<Registry>,
    etcd: Option<watch::Receiver<RegistrarStatus>>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Agent {
    /// Starts the agent: first scan, background tasks, listener.
    pub async fn start(config: AgentConfig) -> Result<Agent, StartError> {
        let host = Arc::new(Host::probe(&config.roots)?);
        kernel_file::set_dir_budget(dir_fd_budget());
        let node_id = config.node_id.clone().unwrap_or_else(default_node_id);
        tracing::info!(node = %node_id, layout = ?host.layout, cpus = host.cpus, "agent starting");
        let sources: Vec<Box<dyn Source>> = vec![
            Box::new(RuncSource::new(config.discovery.runc_roots.clone())),
            Box::new(CrunSource::new(config.discovery.crun_roots.clone())),
            Box::new(RuleSource::new(config.effective_rules())),
        ];
        let registry = Arc::new(Registry::new(
            Arc::clone(&host),
            sources,
            config.labels.clone(),
            node_id.clone(),
        ));
        {
            let r = Arc::clone(&registry);
            let _ = tokio::task::spawn_blocking(move || r.rescan()).await;
        }
        let telemetry = Arc::new(Telemetry::new());
        let c = &config.collection;
        let collector = Collector::new(
            Arc::clone(&host),
            Statfs::new(c.statfs_timeout),
            c.cache_ttl,
            c.max_concurrent,
            Arc::clone(&telemetry),
        )
        .with_limits_ttl(c.limits_ttl);
        let tls = Arc::new(tls::Reloading::new(config.tls.clone())?);
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Listen {
                    addr: config.listen,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
        let api = Arc::new(Api {
            registry: Arc::clone(&registry),
            collector,
            telemetry: Arc::clone(&telemetry),
            node_id: node_id.clone(),
            default_timeout: c.default_timeout,
        });

        let (shutdown, rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tasks.spawn(Arc::clone(&registry).run(config.discovery.rescan_interval, rx.clone()));
        tasks.spawn(Arc::clone(&registry).sample_load(c.load_interval, rx.clone()));
        tasks.spawn(reload_tls(
            Arc::clone(&tls),
            config.tls.reload_interval,
            Arc::clone(&telemetry),
            rx.clone(),
        ));
        let etcd = match config.etcd.clone() {
            Some(etcd) => Some(
                registration::start(
                    etcd,
                    &node_id,
                    host_name(),
                    &registry,
                    &mut tasks,
                    rx.clone(),
                )
                .map_err(StartError::Etcd)?,
            ),
            None => None,
        };
        tasks.spawn(serve(listener, tls, api, c.max_connections, rx));
        tracing::info!(addr = %local_addr, "agent listening (mTLS)");
        Ok(Agent {
            local_addr,
            registry,
            etcd,
            shutdown,
            tasks,
        })
    }

    /// The address the agent listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The container registry (for tests and embedding).
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The etcd registration's status, when `[etcd]` is configured.
    pub fn etcd_status(&self) -> Option<&watch::Receiver<RegistrarStatus>> {
        self.etcd.as_ref()
    }

    /// Stops accepting, ends background tasks (revoking the etcd lease), waits for them.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// How many descriptors held cgroup and `/proc/<pid>` directories may use: the
/// `RLIMIT_NOFILE` soft limit, first raised to the hard limit (as Go's runtime does; systemd
/// starts services at 1024 soft, 524288 hard), less a reserve for connections, state-root
/// watches and everything else — half the limit, between 256 and 16,384.
fn dir_fd_budget() -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        let raised = rustix::process::Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => lim = getrlimit(Resource::Nofile),
            Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
        }
    }
    let soft = lim
        .current
        .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
    let reserve = (soft / 2).clamp(256, 16_384);
    let budget = soft.saturating_sub(reserve);
    tracing::info!(
        open_file_limit = soft,
        directory_budget = budget,
        "descriptor budget"
    );
    budget
}

/// The host name, lowercased, made a DNS label if it is not one.
pub fn default_node_id() -> String {
    lookout_discovery::instance_id_for(None, &host_name().to_ascii_lowercase())
}

/// The host name (the node's display name in etcd).
fn host_name() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

async fn reload_tls(
    tls: Arc<tls::Reloading>,
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

async fn serve(
    listener: TcpListener,
    tls: Arc<tls::Reloading>,
    api: Arc<Api>,
    max_connections: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
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
            tracing::warn!(%peer, "connection limit reached; closing");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
        let api = Arc::clone(&api);
        let mut stop = shutdown.clone();
        conns.spawn(async move {
            let _permit = permit;
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let service = hyper::service::service_fn(move |req| Arc::clone(&api).handle(req));
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT)
                .max_buf_size(64 * 1024);
            builder.http2().max_header_list_size(64 * 1024);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
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
