//! The proxy-side `etcd` source: a full read of the prefix, then a watch from that revision
//! on, published into [`Shared`]; any break (compaction, cancellation, a lost stream or
//! connection) starts over with a fresh full read that *replaces* the view — level-triggered,
//! so the inventory never drifts from etcd.
//!
//! - **Full read**: paginated (`PAGE` keys per request) at one fixed revision, so the pages
//!   form one consistent snapshot however long the read takes; a compaction during the read
//!   fails it and it starts over.
//! - **Watch**: from the read's revision + 1 over the whole prefix. Each watch response is
//!   applied, together with any responses already waiting, then published once.
//! - **Failures**: while etcd is unreachable the last inventory stays in force and the failure
//!   is recorded ([`Shared::fail`], and [`EtcdStatus::last_error`]) so `/readyz` and metrics
//!   say so; attempts repeat with backoff, and the first full read that succeeds publishes
//!   whatever changed meanwhile. Nothing is published before the first full read, so a proxy
//!   that never reached etcd is not ready.
//! - **Bounds**: values over `max_value_bytes`, values that do not decode or contradict their
//!   key, and instances beyond `max_instances` are skipped — logged and counted in
//!   [`EtcdStatus::skipped`] — never fatal. A skipped overwrite removes the key's previous
//!   value (the key no longer holds a valid record).
//! - **What is served**: instances whose `nodes/<node>` key is absent are *not* served
//!   (counted in [`EtcdStatus::orphans`]): without the node key there is no agent address to
//!   route to, and a node key only goes missing when its lease lapsed or during the moment
//!   between a registrar's write batches. An instance id registered under two nodes is served
//!   from the node whose id sorts first (warned).
//! - **Proxies**: the live `proxies/<id>` keys are counted in [`EtcdStatus::proxies`], for the
//!   replica count that divides cluster-wide rate limits. Tenant keys are not read here.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use etcd_client::{Client, EventType, GetOptions, WatchOptions, WatchResponse};
use tokio::sync::watch;

use super::client::{bounded, connect, EtcdError, MAX_MESSAGE_BYTES};
use super::config::EtcdConfig;
use super::follow::{next_batch, End};
use super::keys::{self, Key, Keys, Malformed, ProxyRecord};
use crate::agents::Backoff;
use crate::inventory::{Inventory, Node, Shared};
use crate::model::Instance;

/// Keys per page of a full read.
const PAGE: i64 = 1000;

/// How the source is doing, for `/readyz`, metrics and the replica count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdStatus {
    /// True while a watch is established on top of a successful full read.
    pub connected: bool,
    /// The etcd revision the published inventory reflects (0: nothing read yet).
    pub revision: i64,
    /// Nodes in the published inventory.
    pub nodes: usize,
    /// Instances in the published inventory.
    pub instances: usize,
    /// Instance keys not served because their node key is absent.
    pub orphans: usize,
    /// Live proxy replicas (`proxies/<id>` keys) as last read.
    pub proxies: usize,
    /// Values skipped since start: malformed, oversized, or beyond `max_instances`.
    pub skipped: u64,
    /// Full reads done since start (the first, then one per recovery).
    pub full_reads: u64,
    /// The current failure, if etcd is unreachable or the watch broke and has not recovered.
    pub last_error: Option<String>,
}

/// Called with the revision of each full read before the watch starts (tests).
type AfterRead = Arc<dyn Fn(i64) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The `etcd` inventory source. Build with [`EtcdSource::new`], keep [`EtcdSource::status`],
/// then [`EtcdSource::run`] it.
pub struct EtcdSource {
    config: EtcdConfig,
    keys: Keys,
    status: watch::Sender<EtcdStatus>,
    after_read: Option<AfterRead>,
}

impl EtcdSource {
    /// Checks the configuration ([`EtcdConfig::problems`]).
    pub fn new(config: EtcdConfig) -> Result<EtcdSource, String> {
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(EtcdSource {
            keys: Keys::new(config.prefix.clone()),
            config,
            status: watch::Sender::new(EtcdStatus::default()),
            after_read: None,
        })
    }

    /// The source's status, live while it runs; `changed()` fires on every update.
    pub fn status(&self) -> watch::Receiver<EtcdStatus> {
        self.status.subscribe()
    }

    /// Test seam: `hook(revision)` runs after each full read and before the watch from
    /// `revision + 1` is created — so a test can write and compact in exactly that gap and
    /// prove that a watch whose start was compacted recovers by reading again.
    #[doc(hidden)]
    pub fn after_full_read<F, Fut>(mut self, hook: F) -> EtcdSource
    where
        F: Fn(i64) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.after_read = Some(Arc::new(move |rev| Box::pin(hook(rev))));
        self
    }

    /// Follows etcd until `shutdown` turns true (or its sender is dropped). The inventory last
    /// published stays in `shared`.
    pub async fn run(self, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(self.config.backoff);
        let mut client: Option<Client> = None;
        let mut skipped = 0u64;
        loop {
            if *shutdown.borrow_and_update() {
                break;
            }
            let end = tokio::select! {
                end = self.follow(&mut client, &shared, &mut backoff, &mut skipped) => end,
                r = shutdown.changed() => {
                    if r.is_err() || *shutdown.borrow_and_update() {
                        break;
                    }
                    continue;
                }
            };
            let delay = match end {
                End::Compacted(rev) => {
                    tracing::info!(
                        compacted = rev,
                        "etcd source: watch start was compacted; reading everything again"
                    );
                    self.status.send_modify(|s| s.connected = false);
                    self.config.backoff.min
                }
                End::Failed(e) => {
                    let msg = format!("etcd: {e}");
                    tracing::warn!(error = %e, "etcd source: failed; keeping the last inventory");
                    shared.fail(msg.clone());
                    self.status.send_modify(|s| {
                        s.connected = false;
                        s.last_error = Some(msg);
                    });
                    backoff.next_delay()
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                r = shutdown.changed() => {
                    if r.is_err() {
                        break;
                    }
                }
            }
        }
        tracing::info!("etcd source stopped");
    }

    /// One full read and the watch after it, until something breaks.
    async fn follow(
        &self,
        client: &mut Option<Client>,
        shared: &Shared,
        backoff: &mut Backoff,
        skipped: &mut u64,
    ) -> End {
        let c = match client {
            Some(c) => c.clone(),
            None => match connect(&self.config).await {
                Ok(c) => client.insert(c).clone(),
                Err(e) => return e.into(),
            },
        };
        let mut view = View::default();
        let revision = match self.full_read(&c, &mut view, skipped).await {
            Ok(r) => r,
            Err(e) => return e.into(),
        };
        if let Some(hook) = &self.after_read {
            hook(revision).await;
        }
        view.publish(shared, &self.status, revision, *skipped);
        self.status.send_modify(|s| s.full_reads += 1);
        let prefix = self.keys.prefix().as_bytes().to_vec();
        let opts = WatchOptions::new()
            .with_range(keys::prefix_end(&prefix))
            .with_start_revision(revision + 1);
        let mut watch_client = c
            .watch_client()
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let watching = watch_client.watch(prefix, Some(opts));
        let mut stream = match bounded("watch", self.config.request_timeout, watching).await {
            Ok(s) => s,
            Err(e) => return e.into(),
        };
        let mut revision = revision;
        loop {
            let mut dirty = false;
            let applied = next_batch(&mut stream, |resp| {
                if resp.created() {
                    backoff.reset();
                    self.status.send_modify(|s| {
                        s.connected = true;
                        s.last_error = None;
                    });
                }
                dirty |= self.apply(&mut view, resp, skipped);
                if let Some(h) = resp.header() {
                    revision = revision.max(h.revision());
                }
            })
            .await;
            if let Err(end) = applied {
                return end;
            }
            if dirty {
                view.publish(shared, &self.status, revision, *skipped);
            } else {
                let proxies = view.proxies.len();
                let skipped = *skipped;
                self.status.send_if_modified(|s| {
                    let changed =
                        (s.revision, s.proxies, s.skipped) != (revision, proxies, skipped);
                    (s.revision, s.proxies, s.skipped) = (revision, proxies, skipped);
                    changed
                });
            }
        }
    }

    /// Reads every key under the prefix into `view`, at one revision; returns it.
    async fn full_read(
        &self,
        c: &Client,
        view: &mut View,
        skipped: &mut u64,
    ) -> Result<i64, EtcdError> {
        let mut kv = c.kv_client().max_decoding_message_size(MAX_MESSAGE_BYTES);
        let end = keys::prefix_end(self.keys.prefix().as_bytes());
        let mut from = self.keys.prefix().as_bytes().to_vec();
        let mut revision = 0;
        loop {
            let mut opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if revision > 0 {
                opts = opts.with_revision(revision);
            }
            let page = bounded(
                "full read",
                self.config.request_timeout,
                kv.get(from.clone(), Some(opts)),
            )
            .await?;
            if revision == 0 {
                revision = page.header().map_or(0, |h| h.revision());
                if revision <= 0 {
                    return Err(EtcdError::Protocol("read without a revision".into()));
                }
            }
            for kv in page.kvs() {
                if let Err(e) = view.put(&self.keys, &self.config, kv.key(), kv.value()) {
                    self.skip(kv.key(), &e, skipped);
                }
            }
            match page.kvs().last() {
                Some(last) if page.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        Ok(revision)
    }

    /// Applies one watch response; true when nodes or instances changed.
    fn apply(&self, view: &mut View, resp: &WatchResponse, skipped: &mut u64) -> bool {
        let mut dirty = false;
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            match ev.event_type() {
                EventType::Put => match view.put(&self.keys, &self.config, kv.key(), kv.value()) {
                    Ok(d) => dirty |= d,
                    Err(e) => {
                        self.skip(kv.key(), &e, skipped);
                        dirty |= view.delete(&self.keys, kv.key());
                    }
                },
                EventType::Delete => dirty |= view.delete(&self.keys, kv.key()),
            }
        }
        dirty
    }

    fn skip(&self, key: &[u8], e: &Malformed, skipped: &mut u64) {
        *skipped += 1;
        tracing::warn!(key = %String::from_utf8_lossy(key), error = %e, "etcd source: skipping a value");
    }
}

/// Everything read from etcd, by key, and the inventory served from it, kept in step
/// change by change: a publish clones the served inventory (pointers, see
/// [`crate::inventory`]) and re-elects only the instance ids touched since the last one.
#[derive(Default)]
struct View {
    nodes: BTreeMap<String, Arc<Node>>,
    /// By (node, id).
    instances: BTreeMap<(String, String), Arc<Instance>>,
    /// The same keys as (id, node): the nodes registering one id are adjacent, so the one
    /// to serve it from is found without a scan.
    homes: BTreeSet<(String, String)>,
    /// Instance keys per node id, so orphans are counted per node, not per instance.
    per_node: HashMap<String, usize>,
    proxies: BTreeMap<String, ProxyRecord>,
    /// The inventory served: `instances` less orphans and contested ids.
    served: Inventory,
    /// Instance ids whose keys changed since the last publish.
    dirty_ids: BTreeSet<String>,
    /// Node ids whose keys changed since the last publish.
    dirty_nodes: BTreeSet<String>,
    /// Instance ids registered under more than one present node: served by none.
    contested: BTreeSet<String>,
    /// `contested.len()` when it was last logged.
    contested_logged: usize,
}

impl View {
    /// Stores one key's value; true when nodes or instances changed.
    fn put(
        &mut self,
        keys: &Keys,
        cfg: &EtcdConfig,
        key: &[u8],
        value: &[u8],
    ) -> Result<bool, Malformed> {
        let max = cfg.max_value_bytes;
        match keys.parse(key) {
            Key::Node(id) => {
                let node = keys::decode_node(id, value, max)?;
                if self.nodes.get(id).is_some_and(|n| **n == node) {
                    return Ok(false);
                }
                self.nodes.insert(id.to_string(), Arc::new(node));
                self.dirty_nodes.insert(id.to_string());
                Ok(true)
            }
            Key::Instance { node, id } => {
                let i = keys::decode_instance(node, id, value, max)?;
                let k = (node.to_string(), id.to_string());
                let old = self.instances.get(&k);
                if old.is_none() && self.instances.len() >= cfg.max_instances {
                    return Err(Malformed::Invalid(format!(
                        "over max_instances ({})",
                        cfg.max_instances
                    )));
                }
                if old.is_some_and(|o| **o == i) {
                    return Ok(false);
                }
                if self.instances.insert(k, Arc::new(i)).is_none() {
                    self.homes.insert((id.to_string(), node.to_string()));
                    *self.per_node.entry(node.to_string()).or_default() += 1;
                }
                self.dirty_ids.insert(id.to_string());
                Ok(true)
            }
            Key::Proxy(id) => {
                let p = keys::decode_proxy(id, value, max)?;
                self.proxies.insert(id.to_string(), p);
                Ok(false)
            }
            Key::Tenant(_) | Key::TenantsConfig(_) | Key::Other => Ok(false),
        }
    }

    /// Forgets one key; true when nodes or instances changed.
    fn delete(&mut self, keys: &Keys, key: &[u8]) -> bool {
        match keys.parse(key) {
            Key::Node(id) => {
                let removed = self.nodes.remove(id).is_some();
                if removed {
                    self.dirty_nodes.insert(id.to_string());
                }
                removed
            }
            Key::Instance { node, id } => {
                let k = (node.to_string(), id.to_string());
                if self.instances.remove(&k).is_none() {
                    return false;
                }
                self.homes.remove(&(k.1, k.0));
                if let Some(n) = self.per_node.get_mut(node) {
                    *n -= 1;
                    if *n == 0 {
                        self.per_node.remove(node);
                    }
                }
                self.dirty_ids.insert(id.to_string());
                true
            }
            Key::Proxy(id) => {
                self.proxies.remove(id);
                false
            }
            Key::Tenant(_) | Key::TenantsConfig(_) | Key::Other => false,
        }
    }

    /// Brings `served` in step with the keys changed since the last call; returns the
    /// number of orphaned instances (their node key is absent).
    fn sync(&mut self) -> usize {
        for node in std::mem::take(&mut self.dirty_nodes) {
            match self.nodes.get(&node) {
                Some(n) => self.served.insert_node(Arc::clone(n)),
                None => self.served.remove_node(&node),
            };
            // The node's presence decides whether its instances are served.
            let from = (node.clone(), String::new());
            for ((n, id), _) in self.instances.range(from..) {
                if *n != node {
                    break;
                }
                self.dirty_ids.insert(id.clone());
            }
        }
        for id in std::mem::take(&mut self.dirty_ids) {
            self.elect(&id);
        }
        let placed: usize = self
            .per_node
            .iter()
            .filter(|(node, _)| self.nodes.contains_key(*node))
            .map(|(_, n)| n)
            .sum();
        let orphans = self.instances.len() - placed;
        if self.contested.len() != self.contested_logged {
            self.contested_logged = self.contested.len();
            if !self.contested.is_empty() {
                tracing::warn!(
                    instances = self.contested.len(),
                    ids = ?self.contested.iter().take(10).collect::<Vec<_>>(),
                    "etcd source: instance ids registered under more than one node; served to nobody until one node registers each"
                );
            }
        }
        orphans
    }

    /// Serves `id` from the one node that registers it and whose node key is present, or
    /// not at all: an id registered under two live nodes is served by neither (a node could
    /// lie about another's instance), and counted until only one registers it.
    fn elect(&mut self, id: &str) {
        let from = (id.to_string(), String::new());
        let mut homes = self
            .homes
            .range(from..)
            .take_while(|(i, _)| i == id)
            .filter(|(_, node)| self.nodes.contains_key(node));
        let (first, second) = (homes.next(), homes.next());
        let winner = match (first, second) {
            (Some((i, node)), None) => self.instances.get(&(node.clone(), i.clone())),
            _ => None,
        };
        if second.is_some() {
            self.contested.insert(id.to_string());
        } else {
            self.contested.remove(id);
        }
        match winner {
            Some(i) => {
                self.served.insert_instance(Arc::clone(i));
            }
            None => {
                self.served.remove_instance(id);
            }
        }
    }

    /// Publishes the inventory and updates the status.
    fn publish(
        &mut self,
        shared: &Shared,
        status: &watch::Sender<EtcdStatus>,
        revision: i64,
        skipped: u64,
    ) {
        let orphans = self.sync();
        let inv = self.served.clone();
        let (nodes, instances) = (inv.node_count(), inv.instance_count());
        shared.publish(inv);
        shared.set_conflicts(crate::Conflicts {
            instances: self.contested.len(),
            nodes: 0,
        });
        status.send_modify(|s| {
            s.revision = revision;
            s.nodes = nodes;
            s.instances = instances;
            s.orphans = orphans;
            s.proxies = self.proxies.len();
            s.skipped = skipped;
            s.last_error = None;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(node: &str, id: &str) -> Vec<u8> {
        let i = Instance {
            id: id.into(),
            runtime_id: id.into(),
            generation: String::new(),
            node: node.into(),
            tenant: Some("acme".into()),
            alias: format!("{id} on {node}"),
            groups: vec![],
            image: None,
            source: "runc".into(),
            labels: BTreeMap::new(),
        };
        serde_json::to_vec(&i).unwrap_or_default()
    }

    fn node(id: &str) -> Vec<u8> {
        let n = Node {
            id: id.into(),
            agent: format!("{id}:9164"),
            hostname: id.into(),
        };
        serde_json::to_vec(&n).unwrap_or_default()
    }

    struct Fixture {
        keys: Keys,
        cfg: EtcdConfig,
        view: View,
    }

    impl Fixture {
        fn new() -> Fixture {
            Fixture {
                keys: Keys::new("/t/"),
                cfg: EtcdConfig::new(vec!["http://127.0.0.1:1".into()]),
                view: View::default(),
            }
        }
        fn put(&mut self, key: String, value: Vec<u8>) {
            let changed = self.view.put(&self.keys, &self.cfg, key.as_bytes(), &value);
            assert!(matches!(changed, Ok(true)), "{key}: {changed:?}");
        }
        fn delete(&mut self, key: String) {
            assert!(self.view.delete(&self.keys, key.as_bytes()), "{key}");
        }
        /// Syncs; returns (orphans, id → the node it is served from).
        fn served(&mut self) -> (usize, Vec<(String, String)>) {
            let orphans = self.view.sync();
            let placed = self
                .view
                .served
                .instances()
                .map(|i| (i.id.clone(), i.node.clone()))
                .collect();
            (orphans, placed)
        }
    }

    fn placed(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    /// The incremental publish elects what a rebuild from scratch would: instances of
    /// absent nodes are orphans, an id under two present nodes is served by neither (and
    /// counted), and each change re-elects only what it touches.
    #[test]
    fn incremental_sync_matches_the_rules() {
        let mut f = Fixture::new();
        let k = f.keys.clone();
        f.put(k.node("n2"), node("n2"));
        f.put(k.instance("n2", "x"), inst("n2", "x"));
        f.put(k.instance("n2", "y"), inst("n2", "y"));
        f.put(k.instance("n1", "x"), inst("n1", "x"));
        // n1's node key is not there yet: its copy of x is an orphan.
        assert_eq!(f.served(), (1, placed(&[("x", "n2"), ("y", "n2")])));

        f.put(k.node("n1"), node("n1"));
        assert_eq!(f.served(), (0, placed(&[("y", "n2")])), "x is contested");
        assert_eq!(f.view.contested.len(), 1);
        assert_eq!(f.view.served.node_count(), 2);

        // Same value again: nothing to do.
        let same = f
            .view
            .put(&f.keys, &f.cfg, k.node("n1").as_bytes(), &node("n1"));
        assert!(matches!(same, Ok(false)));

        // n1 goes: x is n2's alone again; n1's keys are orphans.
        f.delete(k.node("n1"));
        assert_eq!(f.served(), (1, placed(&[("x", "n2"), ("y", "n2")])));
        assert!(f.view.contested.is_empty());
        assert!(f.view.served.node("n1").is_none());

        // n2's x goes: with n1 absent, nobody serves x.
        f.delete(k.instance("n2", "x"));
        assert_eq!(f.served(), (1, placed(&[("y", "n2")])));

        // n1 returns: x is back, from n1.
        f.put(k.node("n1"), node("n1"));
        assert_eq!(f.served(), (0, placed(&[("x", "n1"), ("y", "n2")])));

        // A changed value replaces the served instance.
        let mut changed: Instance =
            serde_json::from_slice(&inst("n1", "x")).unwrap_or_else(|e| panic!("{e}"));
        changed.alias = "renamed".into();
        f.put(
            k.instance("n1", "x"),
            serde_json::to_vec(&changed).unwrap_or_default(),
        );
        f.served();
        assert_eq!(
            f.view.served.instance("x").map(|i| i.alias.as_str()),
            Some("renamed")
        );
        assert_eq!(f.view.served.owned_by("acme").count(), 2);
    }
}
