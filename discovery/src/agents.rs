//! The `agents` source: the proxy watches every agent's `GET /v1/instances?watch` stream and
//! publishes the merged inventory of all of them.
//!
//! - **Which agents**: a static list ([`AgentsConfig::agents`]) plus, optionally, the agents a
//!   DNS name lists (SRV target + port, or A/AAAA at a configured port), re-resolved every
//!   `refresh` (sooner when the records' TTL is shorter). Agents that appear in DNS are
//!   watched; agents that disappear from it are dropped together with their instances (that is
//!   a change of the fleet, not a failure). A failed resolution keeps the current set.
//!   Resolution is behind the [`Resolve`] trait: [`HickoryResolver`] in production,
//!   [`StaticResolver`] for tests.
//! - **One long-lived stream per agent** over mTLS (the proxy's client certificate; the agent
//!   verified against the operator CA under the host part of its address, or
//!   `tls.server_name`). The first event is a snapshot that *replaces* the agent's slice;
//!   upserts and removes then patch it. Nothing arriving for `idle_timeout` (45 s: three
//!   missed heartbeats) counts as a broken stream.
//! - **Failures never wipe**: when a stream breaks, the agent's last known instances keep being
//!   served, the failure is recorded (`shared.fail("agent <addr>: <error>")`, and per agent in
//!   [`StatusHandle`]), and the watcher reconnects with bounded exponential backoff with jitter.
//!   The snapshot of the new stream replaces the slice, so whatever was removed while the
//!   stream was down disappears (level-triggered, no drift).
//! - **Publishing**: after every change the merged inventory of all agents is published.
//!   Changes are coalesced: a burst of events (e.g. a hundred agents' snapshots at start) causes
//!   as few merges as the publisher can keep up with, never a stale result. Nothing is
//!   published before the first snapshot from any agent, so a proxy that reaches no agent is
//!   not ready ([`Shared::ready`]). While any agent is failing, the inventory is published and
//!   the failures are then recorded again with [`Shared::fail`], because publishing clears
//!   the source error.
//! - **Nodes**: one [`Node`] per agent whose node id is known. The id is learned from the
//!   `node` field of the agent's instances (the watch stream carries nothing else): the first
//!   instance of a snapshot, or the latest upsert. It is remembered when the agent later has no
//!   instances; an agent that never reported an instance is left out of `nodes`. `agent` is the
//!   agent's `host:port`; `hostname` is the node id (an agent's default node id is its host
//!   name).
//! - **Conflicts**: an instance id (or node id) reported by two agents is served by neither
//!   until only one reports it — whichever were believed, a compromised node could take over
//!   another's instance — logged, and counted in [`crate::SourceStatus::conflicts`] (the
//!   proxy's `lookout_proxy_inventory_conflicting_{instances,nodes}`). The agent's own check of the tenant
//!   (`x-lookout-tenant`) holds whatever the inventory says.

pub mod config;
pub mod resolve;
pub mod stream;
pub mod tls;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

pub use config::{AgentAddr, AgentsConfig, BackoffConfig, ClientTlsConfig, DnsConfig, DnsKind};
pub use resolve::{HickoryResolver, Resolve, Resolved, StaticResolver};
pub use stream::StreamError;

use crate::inventory::{Conflicts, Inventory, Node, Shared};
use crate::model::{Instance, InstanceEvent};
use crate::naming::is_dns_label;

/// Most instances kept per agent; a stream exceeding it is treated as broken.
pub const MAX_INSTANCES_PER_AGENT: usize = 100_000;
/// Bound on one DNS resolution.
pub const DNS_TIMEOUT: Duration = Duration::from_secs(15);
/// Retry delay after a failed DNS resolution (or `refresh`, when shorter).
pub const DNS_RETRY: Duration = Duration::from_secs(5);
/// Most agent failures spelled out in the source error; the rest are counted.
const MAX_REPORTED_ERRORS: usize = 5;

/// Why a [`Watcher`] cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum AgentsError {
    /// The configuration has problems ([`AgentsConfig::problems`]).
    #[error("agents source configuration: {0}")]
    Config(String),
    /// The client TLS material is unusable.
    #[error("agents source: {0}")]
    Tls(#[from] tls::TlsError),
    /// DNS is configured but no resolver could be built.
    #[error("agents source DNS: {0}")]
    Dns(String),
}

/// How one agent is doing, for `/readyz` and operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentStatus {
    /// The agent's `host:port`.
    pub addr: String,
    /// Its node id, once learned from its instances.
    pub node: Option<String>,
    /// True while a watch stream is up and its snapshot was received.
    pub connected: bool,
    /// Instances currently held for it (kept while disconnected).
    pub instances: usize,
    /// When the last event (snapshot, upsert, remove) arrived.
    pub last_event: Option<SystemTime>,
    /// When anything, including a heartbeat, last arrived.
    pub last_seen: Option<SystemTime>,
    /// The most recent stream failure (kept after reconnecting; see `connected`).
    pub last_error: Option<String>,
}

/// A cheap, cloneable view of the watcher's per-agent state, usable after
/// [`Watcher::run`] took the watcher.
#[derive(Clone)]
pub struct StatusHandle {
    inner: Arc<Inner>,
}

impl StatusHandle {
    /// Every watched agent, in address order.
    pub fn agents(&self) -> Vec<AgentStatus> {
        let st = self.inner.lock();
        st.agents.iter().map(|(a, s)| s.status(a)).collect()
    }

    /// One agent by its `host:port`.
    pub fn agent(&self, addr: &str) -> Option<AgentStatus> {
        let st = self.inner.lock();
        st.agents
            .iter()
            .find(|(a, _)| a.to_string() == addr)
            .map(|(a, s)| s.status(a))
    }

    /// The last DNS resolution error, while resolution is failing.
    pub fn dns_error(&self) -> Option<String> {
        self.inner.lock().dns_error.clone()
    }

    /// True when every watched agent is connected (and there is at least one).
    pub fn all_connected(&self) -> bool {
        let st = self.inner.lock();
        !st.agents.is_empty() && st.agents.values().all(|s| s.connected)
    }
}

/// Watches every agent and publishes the merged inventory. Build with [`Watcher::new`], keep
/// a [`Watcher::status`] handle, then [`Watcher::run`] it.
pub struct Watcher {
    config: AgentsConfig,
    tls: Arc<tls::Reloading>,
    resolver: Option<Arc<dyn Resolve>>,
    inner: Arc<Inner>,
}

impl Watcher {
    /// Checks the configuration, loads the TLS material and, when DNS is configured, builds
    /// the system resolver.
    pub fn new(config: AgentsConfig) -> Result<Watcher, AgentsError> {
        let resolver: Option<Arc<dyn Resolve>> = match &config.dns {
            Some(_) => Some(Arc::new(
                HickoryResolver::from_system().map_err(AgentsError::Dns)?,
            )),
            None => None,
        };
        Watcher::build(config, resolver)
    }

    /// Like [`Watcher::new`] but resolving `dns` with `resolver` (tests, embedders).
    pub fn with_resolver(
        config: AgentsConfig,
        resolver: Arc<dyn Resolve>,
    ) -> Result<Watcher, AgentsError> {
        Watcher::build(config, Some(resolver))
    }

    fn build(
        config: AgentsConfig,
        resolver: Option<Arc<dyn Resolve>>,
    ) -> Result<Watcher, AgentsError> {
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(AgentsError::Config(problems.join("; ")));
        }
        let tls = Arc::new(tls::Reloading::new(config.tls.clone())?);
        // Statically listed agents show in the status from the start (not yet connected).
        let inner = Arc::new(Inner::default());
        inner
            .lock()
            .agents
            .extend(config.agents.iter().map(|a| (a.clone(), Slice::default())));
        Ok(Watcher {
            config,
            tls,
            resolver,
            inner,
        })
    }

    /// Per-agent status, live while the watcher runs.
    pub fn status(&self) -> StatusHandle {
        StatusHandle {
            inner: Arc::clone(&self.inner),
        }
    }

    /// Watches until `shutdown` turns true (or its sender is dropped), then stops every
    /// stream and returns. The inventory last published stays in `shared`.
    pub async fn run(self, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
        let Watcher {
            config,
            tls,
            resolver,
            inner,
        } = self;
        if *shutdown.borrow_and_update() {
            return;
        }
        let ctx = Arc::new(Ctx {
            tls,
            server_name: config.tls.server_name.clone(),
            connect_timeout: config.connect_timeout,
            idle_timeout: config.idle_timeout,
            backoff: config.backoff,
        });
        let mut agents = Agents {
            tasks: JoinSet::new(),
            running: BTreeMap::new(),
            by_task: HashMap::new(),
            inner: Arc::clone(&inner),
            ctx,
        };
        let (dns_tx, mut dns_rx) = watch::channel::<Option<Resolved>>(None);
        let _dns_task = match (config.dns.clone(), resolver) {
            (Some(dns), Some(resolver)) => Some(AbortOnDrop(tokio::spawn(dns_loop(
                resolver,
                dns,
                Arc::clone(&inner),
                dns_tx,
            )))),
            _ => {
                drop(dns_tx);
                None
            }
        };
        let mut dns_live = _dns_task.is_some();
        agents.reconcile(resolve::wanted(&config.agents, None));
        let mut publisher = Publisher::default();
        loop {
            tokio::select! {
                r = shutdown.changed() => {
                    if r.is_err() || *shutdown.borrow_and_update() {
                        break;
                    }
                }
                _ = inner.changed.notified() => publisher.publish(&inner, &shared),
                r = dns_rx.changed(), if dns_live => {
                    if r.is_err() {
                        dns_live = false;
                        continue;
                    }
                    let answer = dns_rx.borrow_and_update().clone();
                    agents.reconcile(resolve::wanted(&config.agents, answer.as_ref()));
                }
                Some(ended) = agents.tasks.join_next_with_id() => agents.ended(ended),
            }
        }
        agents.tasks.shutdown().await;
        tracing::info!("agents source stopped");
    }
}

/// What every agent task needs.
struct Ctx {
    tls: Arc<tls::Reloading>,
    server_name: Option<String>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    backoff: BackoffConfig,
}

/// The running agent tasks.
struct Agents {
    tasks: JoinSet<()>,
    running: BTreeMap<AgentAddr, tokio::task::AbortHandle>,
    by_task: HashMap<tokio::task::Id, AgentAddr>,
    inner: Arc<Inner>,
    ctx: Arc<Ctx>,
}

impl Agents {
    /// Starts watching agents that are wanted and not watched, stops those no longer wanted.
    fn reconcile(&mut self, wanted: BTreeSet<AgentAddr>) {
        let current: BTreeSet<AgentAddr> = self.running.keys().cloned().collect();
        let (added, removed) = resolve::diff(&current, &wanted);
        for addr in &removed {
            tracing::info!(agent = %addr, "agents source: agent no longer listed; dropping it");
            if let Some(h) = self.running.remove(addr) {
                h.abort();
            }
            self.inner.lock().agents.remove(addr);
        }
        for addr in added {
            tracing::info!(agent = %addr, "agents source: watching agent");
            self.inner.lock().agents.entry(addr.clone()).or_default();
            self.spawn(addr);
        }
        if !removed.is_empty() {
            self.inner.changed.notify_one();
        }
    }

    fn spawn(&mut self, addr: AgentAddr) {
        let h = self.tasks.spawn(watch_agent(
            Arc::clone(&self.inner),
            addr.clone(),
            Arc::clone(&self.ctx),
        ));
        self.by_task.insert(h.id(), addr.clone());
        self.running.insert(addr, h);
    }

    /// A task ended: aborted on removal (nothing to do) or panicked (restart it).
    fn ended(&mut self, ended: Result<(tokio::task::Id, ()), tokio::task::JoinError>) {
        let (id, panicked) = match &ended {
            Ok((id, ())) => (*id, false),
            Err(e) => (e.id(), e.is_panic()),
        };
        let Some(addr) = self.by_task.remove(&id) else {
            return;
        };
        let current = self.running.get(&addr).is_some_and(|h| h.id() == id);
        if current {
            self.running.remove(&addr);
            tracing::error!(agent = %addr, panicked, "agents source: agent task ended; restarting it");
            self.spawn(addr);
        }
    }
}

/// Resolves DNS forever, sending each new agent set.
async fn dns_loop(
    resolver: Arc<dyn Resolve>,
    dns: DnsConfig,
    inner: Arc<Inner>,
    tx: watch::Sender<Option<Resolved>>,
) {
    loop {
        let result = match tokio::time::timeout(DNS_TIMEOUT, resolver.resolve(&dns)).await {
            Ok(r) => r,
            Err(_) => Err(format!("{} timed out after {DNS_TIMEOUT:?}", dns.name)),
        };
        let wait = match result {
            Ok(answer) => {
                inner.set_dns_error(None);
                let wait = resolve::next_refresh(dns.refresh, answer.ttl);
                tx.send_if_modified(|cur| {
                    let changed = cur.as_ref().map(|c| &c.agents) != Some(&answer.agents);
                    *cur = Some(answer);
                    changed
                });
                wait
            }
            Err(e) => {
                tracing::warn!(error = %e, "agents source: DNS resolution failed; keeping the current agents");
                inner.set_dns_error(Some(e));
                dns.refresh.min(DNS_RETRY)
            }
        };
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(wait).await;
    }
}

/// Watches one agent forever: stream, and on failure backoff and reconnect.
async fn watch_agent(inner: Arc<Inner>, addr: AgentAddr, ctx: Arc<Ctx>) {
    let mut backoff = Backoff::new(ctx.backoff);
    let mut last_logged: Option<String> = None;
    loop {
        let err = watch_once(&inner, &addr, &ctx, &mut backoff).await;
        let msg = err.to_string();
        if last_logged.as_deref() != Some(msg.as_str()) {
            tracing::warn!(agent = %addr, error = %msg, "agent watch stream broken; keeping its last known instances");
        } else {
            tracing::debug!(agent = %addr, error = %msg, "agent still unreachable");
        }
        inner.failed(&addr, msg.clone());
        last_logged = Some(msg);
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// One stream, until it breaks; returns why.
async fn watch_once(
    inner: &Inner,
    addr: &AgentAddr,
    ctx: &Ctx,
    backoff: &mut Backoff,
) -> StreamError {
    let opened = stream::open(
        addr,
        ctx.tls.current(),
        ctx.server_name.as_deref(),
        ctx.connect_timeout,
        ctx.idle_timeout,
    )
    .await;
    let mut s = match opened {
        Ok(s) => s,
        Err(e) => return e,
    };
    let mut snapshot_seen = false;
    loop {
        match s.next().await {
            Err(e) => return e,
            Ok(stream::Item::Heartbeat) => inner.heartbeat(addr),
            Ok(stream::Item::Event(ev)) => {
                let is_snapshot = matches!(*ev, InstanceEvent::Snapshot { .. });
                if !snapshot_seen && !is_snapshot {
                    return StreamError::Protocol("first event is not a snapshot");
                }
                if let Err(e) = inner.apply(addr, *ev) {
                    return e;
                }
                if is_snapshot {
                    snapshot_seen = true;
                    backoff.reset();
                    tracing::debug!(agent = %addr, "agent watch stream (re)established");
                }
            }
        }
    }
}

/// The state shared between agent tasks, the publisher and status readers.
#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Default)]
struct State {
    agents: BTreeMap<AgentAddr, Slice>,
    dns_error: Option<String>,
    /// Some agent delivered a snapshot at least once: the inventory may be published.
    ready: bool,
}

/// One agent's part of the inventory and its health.
#[derive(Default)]
struct Slice {
    instances: BTreeMap<String, Arc<Instance>>,
    node: Option<String>,
    connected: bool,
    last_event: Option<SystemTime>,
    last_seen: Option<SystemTime>,
    last_error: Option<String>,
}

impl Slice {
    fn status(&self, addr: &AgentAddr) -> AgentStatus {
        AgentStatus {
            addr: addr.to_string(),
            node: self.node.clone(),
            connected: self.connected,
            instances: self.instances.len(),
            last_event: self.last_event,
            last_seen: self.last_seen,
            last_error: self.last_error.clone(),
        }
    }

    /// Failing now: disconnected after an error.
    fn current_error(&self) -> Option<&str> {
        if self.connected {
            None
        } else {
            self.last_error.as_deref()
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies one event to `addr`'s slice.
    fn apply(&self, addr: &AgentAddr, ev: InstanceEvent) -> Result<(), StreamError> {
        let now = SystemTime::now();
        {
            let mut st = self.lock();
            let st = &mut *st;
            // The agent was dropped (DNS) while this event was in flight.
            let Some(slice) = st.agents.get_mut(addr) else {
                return Ok(());
            };
            match ev {
                InstanceEvent::Snapshot { node, instances } => {
                    if instances.len() > MAX_INSTANCES_PER_AGENT {
                        return Err(StreamError::Protocol("snapshot exceeds the instance limit"));
                    }
                    let fresh: BTreeMap<String, Arc<Instance>> = instances
                        .into_iter()
                        .filter(|i| valid(addr, i))
                        .map(|i| (i.id.clone(), Arc::new(i)))
                        .collect();
                    match node.filter(|n| crate::is_dns_label(n)) {
                        Some(n) => slice.node = Some(n),
                        None => {
                            if let Some(first) = fresh.values().next() {
                                slice.node = Some(first.node.clone());
                            }
                        }
                    }
                    slice.instances = fresh;
                    slice.connected = true;
                    st.ready = true;
                }
                InstanceEvent::Upsert { instance } => {
                    if !valid(addr, &instance) {
                        return Ok(());
                    }
                    if slice.instances.len() >= MAX_INSTANCES_PER_AGENT
                        && !slice.instances.contains_key(&instance.id)
                    {
                        return Err(StreamError::Protocol("agent exceeds the instance limit"));
                    }
                    slice.node = Some(instance.node.clone());
                    slice
                        .instances
                        .insert(instance.id.clone(), Arc::new(instance));
                }
                InstanceEvent::Remove { id } => {
                    slice.instances.remove(&id);
                }
            }
            slice.last_event = Some(now);
            slice.last_seen = Some(now);
        }
        self.changed.notify_one();
        Ok(())
    }

    fn heartbeat(&self, addr: &AgentAddr) {
        if let Some(s) = self.lock().agents.get_mut(addr) {
            s.last_seen = Some(SystemTime::now());
        }
    }

    fn failed(&self, addr: &AgentAddr, error: String) {
        if let Some(s) = self.lock().agents.get_mut(addr) {
            s.connected = false;
            s.last_error = Some(error);
        }
        self.changed.notify_one();
    }

    fn set_dns_error(&self, error: Option<String>) {
        let changed = {
            let mut st = self.lock();
            let changed = st.dns_error != error;
            st.dns_error = error;
            changed
        };
        if changed {
            self.changed.notify_one();
        }
    }

    /// Brings `inv` in step with the merge of every agent's slice; returns whether it
    /// changed, the current failures, and whether publishing is allowed yet.
    ///
    /// Only what differs is written, so instances, tenants' maps and their stamps that did
    /// not change stay shared with the inventories published before
    /// ([`crate::inventory`]). The merge is O(instances) pointer work under the state lock.
    fn merge_into(&self, inv: &mut Inventory) -> Merged {
        let st = self.lock();
        let total = st.agents.values().map(|s| s.instances.len()).sum();
        let mut instances: HashMap<&str, &Arc<Instance>> = HashMap::with_capacity(total);
        let mut nodes: BTreeMap<&str, &AgentAddr> = BTreeMap::new();
        // Ids claimed by two agents are served by neither: believing either could hand a
        // lying agent another node's instance (or route another node's name to it).
        let mut contested_ids: BTreeSet<&str> = BTreeSet::new();
        let mut contested_nodes: BTreeSet<&str> = BTreeSet::new();
        let mut errors = Vec::new();
        for (addr, slice) in &st.agents {
            for (id, i) in &slice.instances {
                if instances.insert(id, i).is_some() {
                    contested_ids.insert(id);
                }
            }
            if let Some(node) = &slice.node {
                if nodes.insert(node, addr).is_some() {
                    contested_nodes.insert(node);
                }
            }
            if let Some(e) = slice.current_error() {
                errors.push(format!("agent {addr}: {e}"));
            }
        }
        for id in &contested_ids {
            instances.remove(id);
        }
        for node in &contested_nodes {
            nodes.remove(node);
        }
        if let Some(e) = &st.dns_error {
            errors.push(format!("dns: {e}"));
        }
        let conflicts = Conflicts {
            instances: contested_ids.len(),
            nodes: contested_nodes.len(),
        };
        let contested: Vec<String> = contested_ids
            .iter()
            .chain(contested_nodes.iter())
            .take(10)
            .map(|s| s.to_string())
            .collect();

        let gone: Vec<String> = inv
            .instances_any_order()
            .filter(|i| !instances.contains_key(i.id.as_str()))
            .map(|i| i.id.clone())
            .collect();
        let mut changed = !gone.is_empty();
        for id in &gone {
            inv.remove_instance(id);
        }
        for i in instances.values() {
            let same = inv
                .instance(&i.id)
                .is_some_and(|old| Arc::ptr_eq(old, i) || **old == ***i);
            if !same {
                inv.insert_instance(Arc::clone(i));
                changed = true;
            }
        }
        let gone: Vec<String> = inv
            .nodes()
            .filter(|n| !nodes.contains_key(n.id.as_str()))
            .map(|n| n.id.clone())
            .collect();
        changed |= !gone.is_empty();
        for id in &gone {
            inv.remove_node(id);
        }
        for (node, addr) in nodes {
            let agent = addr.to_string();
            let same = inv
                .node(node)
                .is_some_and(|n| n.agent == agent && n.hostname == node);
            if !same {
                inv.insert_node(Node {
                    id: node.to_string(),
                    agent,
                    hostname: node.to_string(),
                });
                changed = true;
            }
        }
        Merged {
            changed,
            errors,
            ready: st.ready,
            conflicts,
            contested,
        }
    }

    /// The merged inventory, built afresh (tests).
    #[cfg(test)]
    fn merge(&self) -> (Inventory, Vec<String>, bool) {
        let mut inv = Inventory::default();
        let m = self.merge_into(&mut inv);
        (inv, m.errors, m.ready)
    }
}

/// What [`Inner::merge_into`] found.
struct Merged {
    /// The inventory changed.
    changed: bool,
    /// The current failures.
    errors: Vec<String>,
    /// Publishing is allowed (a snapshot arrived).
    ready: bool,
    /// Ids claimed by more than one agent, served by none.
    conflicts: Conflicts,
    /// The first few of those ids, for the log.
    contested: Vec<String>,
}

/// Skips instances whose id is not routable (an agent bug; logged).
fn valid(addr: &AgentAddr, i: &Instance) -> bool {
    let ok = is_dns_label(&i.id) && is_dns_label(&i.node);
    if !ok {
        tracing::warn!(agent = %addr, id = %i.id, node = %i.node, "agents source: ignoring an instance whose id or node is not a DNS label");
    }
    ok
}

/// Publishes merged inventories and keeps the source error in step.
#[derive(Default)]
struct Publisher {
    /// The merged inventory, edited in place and published by clone.
    current: Inventory,
    /// `current` changed since it was last published.
    pending: bool,
    /// Something was published.
    published: bool,
    last_errors: Vec<String>,
    last_conflicts: Conflicts,
}

impl Publisher {
    fn publish(&mut self, inner: &Inner, shared: &Shared) {
        let Merged {
            changed,
            errors,
            ready,
            conflicts,
            contested,
        } = inner.merge_into(&mut self.current);
        if conflicts != self.last_conflicts && conflicts != Conflicts::default() {
            tracing::warn!(
                instances = conflicts.instances,
                nodes = conflicts.nodes,
                ids = ?contested,
                "agents source: ids claimed by more than one agent; served to nobody until one agent claims each"
            );
        }
        self.last_conflicts = conflicts.clone();
        shared.set_conflicts(conflicts);
        self.pending |= changed;
        let recovered = !self.last_errors.is_empty() && errors.is_empty();
        let mut published = false;
        if ready && (self.pending || !self.published || recovered) {
            shared.publish(self.current.clone());
            self.pending = false;
            self.published = true;
            published = true;
        }
        // `publish` clears the source error: record current failures again after it.
        if !errors.is_empty() && (published || errors != self.last_errors) {
            shared.fail(summary(&errors));
        }
        self.last_errors = errors;
    }
}

fn summary(errors: &[String]) -> String {
    let mut s = errors
        .iter()
        .take(MAX_REPORTED_ERRORS)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if errors.len() > MAX_REPORTED_ERRORS {
        s.push_str(&format!(
            "; and {} more",
            errors.len() - MAX_REPORTED_ERRORS
        ));
    }
    s
}

/// Exponential backoff with jitter (each delay is 50–100 % of the exponential step, never
/// below `min`).
pub(crate) struct Backoff {
    cfg: BackoffConfig,
    attempt: u32,
    random: std::collections::hash_map::RandomState,
}

impl Backoff {
    pub(crate) fn new(cfg: BackoffConfig) -> Backoff {
        Backoff {
            cfg,
            attempt: 0,
            random: std::collections::hash_map::RandomState::new(),
        }
    }

    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let step = self
            .cfg
            .min
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.cfg.max);
        self.attempt = self.attempt.saturating_add(1);
        let r = (self.random.hash_one(self.attempt) >> 11) as f64 / (1u64 << 53) as f64;
        step.mul_f64(0.5 + 0.5 * r).max(self.cfg.min)
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(id: &str, node: &str) -> Instance {
        Instance {
            id: id.into(),
            runtime_id: id.into(),
            generation: String::new(),
            node: node.into(),
            tenant: Some("acme".into()),
            alias: id.into(),
            groups: vec![],
            image: None,
            source: "runc".into(),
            labels: BTreeMap::new(),
        }
    }

    fn ids(inv: &Inventory) -> Vec<String> {
        inv.instances().map(|i| i.id.clone()).collect()
    }

    fn agent(inv: &Inventory, node: &str) -> String {
        inv.node(node).map(|n| n.agent.clone()).unwrap_or_default()
    }

    fn addr(s: &str) -> AgentAddr {
        s.parse().expect("address")
    }

    fn with_agents(addrs: &[&str]) -> Inner {
        let inner = Inner::default();
        for a in addrs {
            inner.lock().agents.insert(addr(a), Slice::default());
        }
        inner
    }

    /// A lying agent (valid certificate, compromised node) claims the genuine node's
    /// instance and node id: neither claim is served until the lie stops.
    #[test]
    fn ids_claimed_by_two_agents_are_served_by_neither() {
        let inner = with_agents(&["a:1", "b:1"]);
        let shared = Shared::new();
        let mut p = Publisher::default();
        let snap = |node: &str, v: Vec<Instance>| InstanceEvent::Snapshot {
            node: Some(node.into()),
            instances: v,
        };
        inner
            .apply(
                &addr("b:1"),
                snap("nb", vec![inst("theirs", "nb"), inst("b-only", "nb")]),
            )
            .expect("apply");
        // "a:1" sorts first: under the old rule its claim won.
        inner
            .apply(
                &addr("a:1"),
                snap("na", vec![inst("theirs", "nb"), inst("a-only", "na")]),
            )
            .expect("apply");
        p.publish(&inner, &shared);
        let inv = shared.load();
        assert_eq!(
            ids(&inv),
            ["a-only", "b-only"],
            "the contested id is served by no one"
        );
        assert_eq!(
            shared.status().conflicts,
            Conflicts {
                instances: 1,
                nodes: 0
            }
        );

        // The liar also claims the genuine node's id: that node is routed to nobody either.
        inner
            .apply(&addr("a:1"), snap("nb", vec![inst("a-only", "nb")]))
            .expect("apply");
        p.publish(&inner, &shared);
        let inv = shared.load();
        assert!(
            inv.node("nb").is_none(),
            "a contested node id is not routed"
        );
        assert_eq!(shared.status().conflicts.nodes, 1);

        // The lie stops: the genuine claims are served again and the count clears.
        inner
            .apply(&addr("a:1"), snap("na", vec![inst("a-only", "na")]))
            .expect("apply");
        p.publish(&inner, &shared);
        let inv = shared.load();
        assert_eq!(ids(&inv), ["a-only", "b-only", "theirs"]);
        assert_eq!(agent(&inv, "nb"), "b:1");
        assert_eq!(inv.instance("theirs").map(|i| i.node.as_str()), Some("nb"));
        assert_eq!(shared.status().conflicts, Conflicts::default());
    }

    #[test]
    fn snapshot_replaces_failures_keep_and_nodes_are_learned() {
        let inner = with_agents(&["a:1", "b:1"]);
        let shared = Shared::new();
        let mut p = Publisher::default();
        p.publish(&inner, &shared);
        assert!(!shared.ready(), "nothing published before a snapshot");

        let snap = |v: Vec<Instance>| InstanceEvent::Snapshot {
            node: None,
            instances: v,
        };
        inner
            .apply(&addr("a:1"), snap(vec![inst("x", "na"), inst("y", "na")]))
            .expect("apply");
        inner
            .apply(&addr("b:1"), snap(vec![inst("z", "nb")]))
            .expect("apply");
        p.publish(&inner, &shared);
        let inv = shared.load();
        assert_eq!(ids(&inv), ["x", "y", "z"]);
        assert_eq!(agent(&inv, "na"), "a:1");
        assert_eq!(agent(&inv, "nb"), "b:1");

        // b breaks: its instances stay, the failure is recorded after publishing.
        inner.failed(&addr("b:1"), "connect: refused".into());
        inner
            .apply(&addr("a:1"), InstanceEvent::Remove { id: "y".into() })
            .expect("apply");
        p.publish(&inner, &shared);
        let inv = shared.load();
        assert_eq!(ids(&inv), ["x", "z"]);
        assert_eq!(
            shared.status().last_error.as_deref(),
            Some("agent b:1: connect: refused")
        );

        // b comes back with a different set: its slice is replaced, the error cleared.
        inner
            .apply(&addr("b:1"), snap(vec![inst("w", "nb")]))
            .expect("apply");
        p.publish(&inner, &shared);
        let inv = shared.load();
        assert_eq!(ids(&inv), ["w", "x"]);
        assert_eq!(shared.status().last_error, None);

        // An agent with no instances left keeps its learned node.
        inner.apply(&addr("a:1"), snap(vec![])).expect("apply");
        p.publish(&inner, &shared);
        assert!(shared.load().node("na").is_some());

        // An agent that names its node is known before it has any instance; a name that is
        // not a DNS label is ignored.
        let inner = with_agents(&["c:1", "d:1"]);
        let named = |n: &str| InstanceEvent::Snapshot {
            node: Some(n.into()),
            instances: vec![],
        };
        inner
            .apply(&addr("c:1"), named("empty-node"))
            .expect("apply");
        inner.apply(&addr("d:1"), named("Bad Name")).expect("apply");
        let (inv, _, _) = inner.merge();
        let nodes: Vec<_> = inv.nodes().map(|n| n.id.as_str()).collect();
        assert_eq!(nodes, ["empty-node"]);
        assert_eq!(agent(&inv, "empty-node"), "c:1");
    }

    /// A merge writes only what differs: an agent resending the same snapshot publishes
    /// nothing, and a change on one agent leaves the other tenant's instances and stamp
    /// as they were (so its cached discovery bodies stay valid).
    #[test]
    fn merging_keeps_what_did_not_change() {
        let inner = with_agents(&["a:1", "b:1"]);
        let shared = Shared::new();
        let mut p = Publisher::default();
        let snap = |v: Vec<Instance>| InstanceEvent::Snapshot {
            node: None,
            instances: v,
        };
        let mut g = inst("g", "nb");
        g.tenant = Some("globex".into());
        inner
            .apply(&addr("a:1"), snap(vec![inst("x", "na")]))
            .expect("apply");
        inner
            .apply(&addr("b:1"), snap(vec![g.clone()]))
            .expect("apply");
        p.publish(&inner, &shared);
        let before = shared.load();
        let stamp = |inv: &Inventory, t: &str| inv.tenant(t).map(|t| t.stamp());

        inner.apply(&addr("b:1"), snap(vec![g])).expect("apply");
        p.publish(&inner, &shared);
        assert!(Arc::ptr_eq(&before, &shared.load()), "nothing to publish");

        inner
            .apply(
                &addr("a:1"),
                InstanceEvent::Upsert {
                    instance: inst("y", "na"),
                },
            )
            .expect("apply");
        p.publish(&inner, &shared);
        let after = shared.load();
        assert_eq!(ids(&after), ["g", "x", "y"]);
        assert_eq!(stamp(&after, "globex"), stamp(&before, "globex"));
        assert_ne!(stamp(&after, "acme"), stamp(&before, "acme"));
        let same_g = match (before.instance("g"), after.instance("g")) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        assert!(same_g, "the unchanged instance is shared, not copied");
    }

    #[test]
    fn bad_streams_are_refused() {
        let inner = with_agents(&["a:1"]);
        let bad = inst("Not_A_Label", "na");
        inner
            .apply(&addr("a:1"), InstanceEvent::Upsert { instance: bad })
            .expect("skipped, not fatal");
        assert_eq!(inner.merge().0.instance_count(), 0);
        let many = (0..=MAX_INSTANCES_PER_AGENT)
            .map(|n| inst(&format!("i{n}"), "na"))
            .collect();
        assert!(inner
            .apply(
                &addr("a:1"),
                InstanceEvent::Snapshot {
                    node: None,
                    instances: many
                }
            )
            .is_err());
    }

    #[test]
    fn backoff_grows_bounded_and_resets() {
        let cfg = BackoffConfig {
            min: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let mut b = Backoff::new(cfg);
        let delays: Vec<_> = (0..10).map(|_| b.next_delay()).collect();
        assert!(
            delays.iter().all(|d| *d >= cfg.min && *d <= cfg.max),
            "{delays:?}"
        );
        assert!(delays[9] >= Duration::from_millis(500), "{delays:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    /// A fake agent that answers the watch with a snapshot and then goes silent (no
    /// heartbeats, connection held open): the watcher must call the peer dead after
    /// `idle_timeout`, keep the instances, and reconnect.
    #[tokio::test]
    async fn a_silent_peer_is_detected_and_its_instances_kept() {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let dir = tempfile::tempdir().expect("tempdir");
        let ca_key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = p.self_signed(&ca_key).expect("ca");
        let leaf = |server: bool| {
            let key = KeyPair::generate().expect("key");
            let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
            p.subject_alt_names
                .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
            p.extended_key_usages = vec![if server {
                rcgen::ExtendedKeyUsagePurpose::ServerAuth
            } else {
                rcgen::ExtendedKeyUsagePurpose::ClientAuth
            }];
            (p.signed_by(&key, &ca, &ca_key).expect("sign"), key)
        };
        let (server_cert, server_key) = leaf(true);
        let (client_cert, client_key) = leaf(false);
        let w = |n: &str, t: String| std::fs::write(dir.path().join(n), t).expect("write");
        w("ca.pem", ca.pem());
        w("c.pem", client_cert.pem());
        w("k.pem", client_key.serialize_pem());

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone()).expect("root");
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&provider),
        )
        .build()
        .expect("verifier");
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![CertificateDer::from(server_cert.der().to_vec())],
                PrivateKeyDer::try_from(server_key.serialize_der()).expect("key der"),
            )
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let accepts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&accepts);
        let fake = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let snapshot = serde_json::to_string(&InstanceEvent::Snapshot {
                    node: None,
                    instances: vec![inst("quiet", "fake-node")],
                })
                .expect("json")
                    + "\n";
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n\
                            transfer-encoding: chunked\r\n\r\n";
                let chunk = format!("{:x}\r\n{snapshot}\r\n", snapshot.len());
                let _ = tls.write_all(head.as_bytes()).await;
                let _ = tls.write_all(chunk.as_bytes()).await;
                let _ = tls.flush().await;
                held.push(tls); // then silence, connection open
            }
        });

        let cfg = AgentsConfig::parse(&format!(
            "agents = [\"127.0.0.1:{port}\"]\nidle_timeout = \"300ms\"\n\
             backoff = {{ min = \"50ms\", max = \"100ms\" }}\n\
             [tls]\ncert = \"{d}/c.pem\"\nkey = \"{d}/k.pem\"\nca = \"{d}/ca.pem\"\n",
            d = dir.path().display()
        ))
        .expect("config");
        let watcher = Watcher::new(cfg).expect("watcher");
        let status = watcher.status();
        let shared = Shared::new();
        let (stop, rx) = watch::channel(false);
        let run = tokio::spawn(watcher.run(Arc::clone(&shared), rx));

        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let idle = status.agents().iter().any(|s| {
                s.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("peer presumed dead"))
            });
            if idle && accepts.load(std::sync::atomic::Ordering::SeqCst) >= 2 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "silent peer not detected and reconnected within 10 s: {:?}",
                status.agents()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(shared.load().instance("quiet").is_some(), "instances kept");
        assert_eq!(
            agent(&shared.load(), "fake-node"),
            format!("127.0.0.1:{port}")
        );

        let _ = stop.send(true);
        tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .expect("watcher stops")
            .expect("no panic");
        fake.abort();
    }

    #[test]
    fn many_errors_are_summarised() {
        let errors: Vec<String> = (0..8).map(|n| format!("agent a{n}:1: down")).collect();
        let s = summary(&errors);
        assert!(s.starts_with("agent a0:1: down; "), "{s}");
        assert!(s.ends_with("; and 3 more"), "{s}");
    }
}
