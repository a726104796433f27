//! The set of live containers on this node: merged from every source, named uniquely, kept
//! current by inotify on the runtime state roots with a periodic full rescan as the safety
//! net, and published through a `watch` channel so readers always see one consistent set.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lookout_discovery::{instance_id_for, Instance, InstanceEvent};
use notify::Watcher;
use tokio::sync::{watch, Notify};

use crate::cache::Cached;
use crate::cgroup::CgroupDirs;
use crate::config::LabelKeys;
use crate::container::{self, Container};
use crate::host::Host;
use crate::kernel_file::Dir;
use crate::loadavg::{self, LoadAvg, TaskStates};
use crate::namespaces::{NamespaceIds, SharedWithHost};
use crate::source::{Discovered, Source};

/// A container plus the state the agent keeps for it between scrapes.
#[derive(Debug)]
pub struct Tracked {
    /// The container.
    pub container: Container,
    /// Its cgroup directories, held open for scrapes.
    pub dirs: CgroupDirs,
    /// Which of its namespaces are the host's (their collectors are withheld).
    pub shared: SharedWithHost,
    /// Its init's `/proc/<pid>`, held open: reads through it fail once that process is gone,
    /// even if the pid is reused. Not held only when the descriptor budget is spent; then
    /// every collection checks the start time first.
    pub proc: Dir,
    /// Load average and synthesised idle time; survive across scrapes.
    pub view: Mutex<ViewState>,
    /// The cached snapshot; the async lock makes concurrent scrapes share one collection.
    pub cache: tokio::sync::Mutex<Option<Cached>>,
    /// Slowly changing readings, refreshed by collections (under `cache`'s lock).
    pub slow: Mutex<Option<Slow>>,
}

impl Tracked {
    /// Starts tracking `c`, holding its directories open; `None` if its init process is no
    /// longer the one discovered (exited, or its pid reused, since the scan). `shared` says
    /// which of its namespaces are the host's.
    pub fn open(c: Container, host: &Host, shared: SharedWithHost) -> Option<Tracked> {
        let proc = Dir::open(host.pid_dir(c.pid));
        if proc.is_held() {
            let stat = crate::process::stat_in(&proc).ok()?;
            if stat.state == b'Z' || stat.start_ticks != c.start_ticks {
                return None;
            }
        } else {
            // Not held: gone already, or the descriptor budget is spent.
            crate::source::live_start(host, c.pid, Some(c.start_ticks))?;
        }
        Some(Tracked {
            shared,
            dirs: CgroupDirs::open(&c.cgroups),
            proc,
            container: c,
            view: Mutex::default(),
            cache: tokio::sync::Mutex::new(None),
            slow: Mutex::new(None),
        })
    }
}

/// Per-container state that only moves forward.
#[derive(Debug, Default, Clone, Copy)]
pub struct ViewState {
    /// Decaying load averages.
    pub load: LoadAvg,
    /// Task states at the last sample.
    pub tasks: TaskStates,
    /// Whether at least one load sample was taken.
    pub sampled: bool,
    /// The cgroup's CPU time when the task states were last read (see
    /// [`loadavg::unchanged_since`]).
    pub sampled_cpu_ns: Option<u64>,
    /// Samples answered without reading the task states, because nothing ran.
    pub quiet_samples: u64,
    /// Last synthesised idle seconds per virtual CPU (kept monotonic).
    pub idle_seconds: f64,
}

/// What collections reuse for `collection.limits_ttl`: limits and the mount list.
#[derive(Debug, Clone)]
pub struct Slow {
    /// When it was read.
    pub at: std::time::Instant,
    /// Effective limits and optional-file presence.
    pub limits: crate::cgroup::Limits,
    /// The mounts the view reports ([`crate::filesystem::reported`]), or why they could not
    /// be read.
    pub mounts: Result<Arc<Vec<Arc<crate::mountinfo::Mount>>>, String>,
}

/// One consistent view of the node's containers, keyed by instance id.
#[derive(Debug, Default)]
pub struct Inventory {
    /// Containers by instance id.
    pub containers: BTreeMap<String, Arc<Tracked>>,
}

impl Inventory {
    /// Instances, for listing.
    pub fn instances(&self) -> Vec<Instance> {
        self.containers
            .values()
            .map(|t| t.container.instance.clone())
            .collect()
    }

    /// The events that turn `old` into `self`.
    pub fn diff(&self, old: &Inventory) -> Vec<InstanceEvent> {
        let mut events: Vec<InstanceEvent> = old
            .containers
            .keys()
            .filter(|id| !self.containers.contains_key(*id))
            .map(|id| InstanceEvent::Remove { id: id.clone() })
            .collect();
        for (id, t) in &self.containers {
            let changed = old
                .containers
                .get(id)
                .is_none_or(|o| o.container.instance != t.container.instance);
            if changed {
                events.push(InstanceEvent::Upsert {
                    instance: t.container.instance.clone(),
                });
            }
        }
        events
    }
}

/// What the last scan refused to track, for logs and the agent's own metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refused {
    /// Processes claimed by disagreeing state files (served to nobody).
    pub conflicts: usize,
    /// Claimed processes that are in all of the host's namespaces.
    pub host_processes: usize,
}

/// The claims to track, one per process, and how many processes were contested.
struct Settled {
    claims: Vec<Discovered>,
    conflicts: usize,
}

/// One claim per process: see [`Registry::rescan`]. Order (the sources' order) is kept.
fn settle_claims(found: Vec<Discovered>) -> Settled {
    let is_state = |d: &Discovered| !d.source.starts_with("cgroup-rule:");
    let mut state_claims: HashMap<u32, Vec<&Discovered>> = HashMap::new();
    for d in found.iter().filter(|d| is_state(d)) {
        state_claims.entry(d.pid).or_default().push(d);
    }
    let contested: HashSet<u32> = state_claims
        .iter()
        .filter(|(_, claims)| claims.iter().any(|c| !same_claim(c, claims[0])))
        .map(|(pid, _)| *pid)
        .collect();
    let mut seen = HashSet::new();
    let claims = found
        .into_iter()
        .filter(|d| !contested.contains(&d.pid) && seen.insert(d.pid))
        .collect();
    Settled {
        claims,
        conflicts: contested.len(),
    }
}

/// Whether two claims say the same about a process, whichever state-file runtime made them.
fn same_claim(a: &Discovered, b: &Discovered) -> bool {
    (
        &a.runtime_id,
        a.start_ticks,
        &a.cgroups,
        &a.rootfs,
        &a.hostname,
        &a.labels,
    ) == (
        &b.runtime_id,
        b.start_ticks,
        &b.cgroups,
        &b.rootfs,
        &b.hostname,
        &b.labels,
    )
}

/// Finds and tracks containers.
pub struct Registry {
    host: Arc<Host>,
    sources: Vec<Box<dyn Source>>,
    keys: LabelKeys,
    node: String,
    current: watch::Sender<Arc<Inventory>>,
    wake: Arc<Notify>,
    refused: Mutex<Refused>,
}

impl Registry {
    /// A registry over these sources; call [`Registry::rescan`] or [`Registry::run`] to fill it.
    pub fn new(
        host: Arc<Host>,
        sources: Vec<Box<dyn Source>>,
        keys: LabelKeys,
        node: String,
    ) -> Self {
        Registry {
            host,
            sources,
            keys,
            node,
            current: watch::Sender::new(Arc::default()),
            wake: Arc::new(Notify::new()),
            refused: Default::default(),
        }
    }

    /// The current inventory.
    pub fn inventory(&self) -> Arc<Inventory> {
        self.current.borrow().clone()
    }

    /// What the last scan refused to track.
    pub fn refused(&self) -> Refused {
        *self.refused.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Subscribes to inventory changes.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Inventory>> {
        self.current.subscribe()
    }

    /// Asks for a rescan soon (e.g. a scrape found its container gone).
    pub fn poke(&self) {
        self.wake.notify_one();
    }

    /// Scans every source once and publishes the result if anything changed. Blocking I/O:
    /// call from a blocking context.
    ///
    /// Claims on one process are settled before anything is tracked: identical claims (one
    /// state root listed twice) count once; claims by state files (runc, crun) that disagree
    /// — a copy of another container's state with another tenant label — are served to
    /// nobody, since either could be the forgery; a cgroup rule's claim on a process a state
    /// file claims yields to it. A process in all of the host's namespaces is never tracked.
    pub fn rescan(&self) {
        let old = self.inventory();
        let mut next = Inventory::default();
        let found: Vec<Discovered> = self
            .sources
            .iter()
            .flat_map(|s| s.scan(&self.host))
            .collect();
        let settled = settle_claims(found);
        let mut refused = Refused {
            conflicts: settled.conflicts,
            host_processes: 0,
        };
        for found in settled.claims {
            let Some(mut c) = container::from_discovered(found, &self.keys, &self.node) else {
                continue;
            };
            if next.containers.contains_key(&c.instance.id) {
                let derived = instance_id_for(None, &c.instance.runtime_id);
                tracing::warn!(id = %c.instance.id, runtime_id = %c.instance.runtime_id, fallback = %derived, "instance id taken; using the derived id");
                if next.containers.contains_key(&derived) {
                    continue;
                }
                c.instance.id = derived;
            }
            let tracked = match old.containers.get(&c.instance.id) {
                Some(t) if t.container == c => Arc::clone(t),
                _ => {
                    let shared = SharedWithHost::between(
                        &NamespaceIds::of(&self.host.pid_dir(c.pid)),
                        &self.host.namespaces,
                    );
                    // pid 1 is the host's init, whether or not its links can be read.
                    if shared.all || c.pid == 1 {
                        refused.host_processes += 1;
                        continue;
                    }
                    match Tracked::open(c, &self.host, shared) {
                        Some(t) => Arc::new(t),
                        None => continue,
                    }
                }
            };
            next.containers
                .insert(tracked.container.instance.id.clone(), tracked);
        }
        let before = std::mem::replace(
            &mut *self.refused.lock().unwrap_or_else(|e| e.into_inner()),
            refused,
        );
        if refused != before && (refused.conflicts > 0 || refused.host_processes > 0) {
            tracing::warn!(
                conflicting_claims = refused.conflicts,
                host_processes = refused.host_processes,
                "discovery refused processes: conflicting state files claim one process, or a claimed process is the host's"
            );
        }
        let same = next.containers.len() == old.containers.len()
            && next
                .containers
                .iter()
                .zip(old.containers.iter())
                .all(|((a, ta), (b, tb))| a == b && Arc::ptr_eq(ta, tb));
        if !same {
            tracing::info!(containers = next.containers.len(), "inventory changed");
            self.current.send_replace(Arc::new(next));
        }
    }

    /// Keeps the inventory current until `shutdown` fires: inotify on the sources' state
    /// roots (debounced), a full rescan every `every`, and roots that appear later are
    /// watched from the next rescan on.
    pub async fn run(self: Arc<Self>, every: Duration, mut shutdown: watch::Receiver<bool>) {
        let wake = Arc::clone(&self.wake);
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if res.is_ok() {
                wake.notify_one();
            }
        })
        .map_err(|e| tracing::warn!(error = %e, "inotify unavailable; relying on rescans"))
        .ok();
        let mut watched: HashSet<PathBuf> = HashSet::new();
        loop {
            if let Some(w) = watcher.as_mut() {
                for dir in self.sources.iter().flat_map(|s| s.watch_dirs()) {
                    if !watched.contains(&dir) && dir.is_dir() {
                        match w.watch(&dir, notify::RecursiveMode::Recursive) {
                            Ok(()) => {
                                watched.insert(dir);
                            }
                            Err(e) => {
                                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch")
                            }
                        }
                    }
                }
                watched.retain(|d| d.is_dir());
            }
            let me = Arc::clone(&self);
            if let Err(e) = tokio::task::spawn_blocking(move || me.rescan()).await {
                tracing::error!(error = %e, "rescan failed");
            }
            tokio::select! {
                _ = self.wake.notified() => {
                    // Debounce: a container start writes several files in a burst.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Samples task states of every container every `every` for the load averages.
    pub async fn sample_load(
        self: Arc<Self>,
        every: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let exp = loadavg::decay_factors(every);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let inv = self.inventory();
            let host = Arc::clone(&self.host);
            let _ = tokio::task::spawn_blocking(move || {
                for t in inv.containers.values() {
                    let Some(dir) = t.dirs.tasks_dir(host.layout) else {
                        continue;
                    };
                    let cpu_ns = loadavg::cpu_time_ns(&t.dirs, host.layout);
                    {
                        let mut v = t.view.lock().unwrap_or_else(|e| e.into_inner());
                        if v.sampled && loadavg::unchanged_since(&v.tasks, v.sampled_cpu_ns, cpu_ns)
                        {
                            v.load.update(0, exp);
                            v.quiet_samples += 1;
                            continue;
                        }
                    }
                    let Ok(states) = loadavg::sample(dir, host.layout, &host.proc) else {
                        continue;
                    };
                    let mut v = t.view.lock().unwrap_or_else(|e| e.into_inner());
                    v.load.update(states.running + states.blocked, exp);
                    v.tasks = states;
                    v.sampled = true;
                    v.sampled_cpu_ns = cpu_ns;
                }
            })
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::CgroupPaths;

    fn claim(source: &str, pid: u32, id: &str, tenant: &str) -> Discovered {
        Discovered {
            runtime_id: id.into(),
            pid,
            start_ticks: 7,
            cgroups: CgroupPaths::default(),
            rootfs: None,
            hostname: None,
            labels: [("lookout.tenant".to_string(), tenant.to_string())].into(),
            source: source.into(),
        }
    }

    fn pids(s: &Settled) -> Vec<(u32, String)> {
        s.claims
            .iter()
            .map(|d| (d.pid, d.runtime_id.clone()))
            .collect()
    }

    #[test]
    fn disagreeing_state_files_on_one_process_are_served_to_nobody() {
        let s = settle_claims(vec![
            claim("runc", 10, "web", "acme"),
            // A copy of web's state under another id and tenant.
            claim("runc", 10, "evil", "globex"),
            claim("runc", 20, "db", "acme"),
            // The same root listed twice: identical claims count once.
            claim("runc", 20, "db", "acme"),
            // A rule's claim on a process a state file claims yields to the state file.
            claim("cgroup-rule:nspawn", 20, "machine-db", "other"),
            claim("cgroup-rule:nspawn", 30, "machine", "initech"),
        ]);
        assert_eq!(
            pids(&s),
            [(20, "db".to_string()), (30, "machine".to_string())]
        );
        assert_eq!(s.conflicts, 1);
        // Also across state-file runtimes (runc and crun).
        let s = settle_claims(vec![
            claim("runc", 10, "web", "acme"),
            claim("crun", 10, "web", "globex"),
        ]);
        assert!(s.claims.is_empty());
        assert_eq!(s.conflicts, 1);
    }
}
