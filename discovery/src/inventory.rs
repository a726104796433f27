//! The proxy's view of the fleet: every instance and node, held behind an atomic swap so a
//! request always sees one consistent inventory while sources replace it.
//!
//! Sources (agents, etcd, file) keep an [`Inventory`], change it instance by instance, and
//! [`Shared::publish`] a clone of it; when a source fails it reports [`Shared::fail`] and the
//! last good inventory keeps being served — readiness and metrics say how stale it is.
//!
//! # Why it is built from shared pieces
//!
//! At fleet scale (100,000 instances) a source publishes after every change. Rebuilding or
//! deep-cloning the inventory each time cost half a second of CPU per change and kept two or
//! three full copies alive. So every part is reference-counted and copied on write:
//!
//! - instances and nodes are `Arc`s, shared between a source's own state, the inventory it is
//!   editing and every inventory it published;
//! - the instances by id live in [`SHARDS`] maps chosen by a hash of the id, and the
//!   instances of each tenant in one id-ordered map per tenant ([`TenantInstances`]).
//!
//! Cloning an inventory copies a handful of pointers; the first change after a publish
//! copies one shard (≈ 400 pointers at 100,000 instances), the tenant list and the changed
//! tenant's map — pointers again, never an instance. What it does not do: bound the cost for
//! one tenant owning most of the fleet (its map is copied whole on each of its changes).
//!
//! Each tenant's map and the node map carry a *stamp*, unique in the process, that changes
//! whenever their content does: discovery bodies rendered from them can be cached under it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::model::Instance;

/// How many maps the instances by id are split into. A change copies one of them; at
/// 100,000 instances each holds ≈ 400.
pub const SHARDS: usize = 256;

/// A compute node: where an agent runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Node id (a DNS label), as the agent reports it in its instances' `node`.
    pub id: String,
    /// The agent's address, `host:port`.
    pub agent: String,
    /// Display name (`server_hostname` in Triton's `cn` discovery).
    #[serde(default)]
    pub hostname: String,
}

/// Hands out stamps: never the same twice in one process.
fn next_stamp() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The instances one tenant owns, in id order.
#[derive(Debug, Clone)]
pub struct TenantInstances {
    stamp: u64,
    instances: BTreeMap<Arc<str>, Arc<Instance>>,
}

impl TenantInstances {
    /// Changes whenever the set or any of its instances changes; unique in the process.
    pub fn stamp(&self) -> u64 {
        self.stamp
    }

    /// The instances, in id order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &Arc<Instance>> + '_ {
        self.instances.values()
    }

    /// The instance `id`, if this tenant owns it.
    pub fn get(&self, id: &str) -> Option<&Arc<Instance>> {
        self.instances.get(id)
    }

    /// How many instances.
    pub fn len(&self) -> usize {
        self.instances.len()
    }

    /// Never true for a map found in an inventory (empty tenants are dropped).
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }
}

/// Every node, in id order.
#[derive(Debug, Clone)]
pub struct NodeSet {
    stamp: u64,
    nodes: BTreeMap<Arc<str>, Arc<Node>>,
}

impl Default for NodeSet {
    fn default() -> NodeSet {
        NodeSet {
            stamp: next_stamp(),
            nodes: BTreeMap::new(),
        }
    }
}

impl NodeSet {
    /// Changes whenever a node is added, removed or changed; unique in the process.
    pub fn stamp(&self) -> u64 {
        self.stamp
    }

    /// The nodes, in id order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &Arc<Node>> + '_ {
        self.nodes.values()
    }
}

/// One shard of the instances by id.
type Shard = BTreeMap<Arc<str>, Arc<Instance>>;

/// Instances by id, in [`SHARDS`] copy-on-write maps. `shards` stays empty until the first
/// insert, so an empty inventory costs nothing.
#[derive(Clone, Default)]
struct ById {
    shards: Arc<Vec<Arc<Shard>>>,
    len: usize,
}

impl ById {
    /// FNV-1a: cheap on short ids and the same in every process run, so two inventories
    /// put one id in the same shard (which [`PartialEq`] relies on).
    fn shard_of(id: &str) -> usize {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in id.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        // The remainder is below SHARDS, which fits any usize.
        (h % SHARDS as u64) as usize
    }

    fn get(&self, id: &str) -> Option<&Arc<Instance>> {
        self.shards.get(Self::shard_of(id))?.get(id)
    }

    fn shard_mut(&mut self, id: &str) -> &mut Shard {
        let shards = Arc::make_mut(&mut self.shards);
        if shards.is_empty() {
            shards.resize_with(SHARDS, Default::default);
        }
        Arc::make_mut(&mut shards[Self::shard_of(id)])
    }

    fn insert(&mut self, id: Arc<str>, instance: Arc<Instance>) -> Option<Arc<Instance>> {
        let old = self.shard_mut(&id).insert(id, instance);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    fn remove(&mut self, id: &str) -> Option<Arc<Instance>> {
        // Look first: a miss must not copy a shared shard.
        self.get(id)?;
        let old = self.shard_mut(id).remove(id);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    fn values(&self) -> impl Iterator<Item = &Arc<Instance>> + '_ {
        self.shards.iter().flat_map(|s| s.values())
    }
}

impl PartialEq for ById {
    fn eq(&self, other: &ById) -> bool {
        if self.len != other.len {
            return false;
        }
        if self.len == 0 || Arc::ptr_eq(&self.shards, &other.shards) {
            return true;
        }
        // Both hold instances, so both have all SHARDS shards, assigned by the same hash.
        self.shards
            .iter()
            .zip(other.shards.iter())
            .all(|(a, b)| Arc::ptr_eq(a, b) || a == b)
    }
}

/// One consistent picture of the fleet. Cheap to clone; see the module docs.
#[derive(Clone, Default)]
pub struct Inventory {
    /// Every instance, by id.
    by_id: ById,
    /// The instances of each tenant; unowned instances are only in `by_id`.
    tenants: Arc<BTreeMap<Arc<str>, Arc<TenantInstances>>>,
    /// Nodes by id.
    nodes: Arc<NodeSet>,
}

impl Inventory {
    /// An inventory holding `nodes` and `instances` (later duplicates of an id replace
    /// earlier ones).
    pub fn from_parts(
        nodes: impl IntoIterator<Item = Node>,
        instances: impl IntoIterator<Item = Instance>,
    ) -> Inventory {
        let mut inv = Inventory::default();
        for n in nodes {
            inv.insert_node(n);
        }
        for i in instances {
            inv.insert_instance(i);
        }
        inv
    }

    /// The instance `id`, whoever owns it.
    pub fn instance(&self, id: &str) -> Option<&Arc<Instance>> {
        self.by_id.get(id)
    }

    /// Every instance, in id order. Sorts: O(n log n), for tools and tests; requests use
    /// [`Inventory::owned_by`] and [`Inventory::instance`].
    pub fn instances(&self) -> impl ExactSizeIterator<Item = &Arc<Instance>> + '_ {
        let mut all: Vec<&Arc<Instance>> = self.by_id.values().collect();
        all.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        all.into_iter()
    }

    /// Every instance, in no particular order; O(n) without sorting.
    pub fn instances_any_order(&self) -> impl Iterator<Item = &Arc<Instance>> + '_ {
        self.by_id.values()
    }

    /// How many instances.
    pub fn instance_count(&self) -> usize {
        self.by_id.len
    }

    /// The instances a tenant owns, in id order; O(what it owns).
    pub fn owned_by<'a>(&'a self, tenant: &str) -> impl Iterator<Item = &'a Arc<Instance>> + 'a {
        self.tenant(tenant).into_iter().flat_map(|t| t.iter())
    }

    /// The instances a tenant owns, with their stamp; `None` when it owns none.
    pub fn tenant(&self, tenant: &str) -> Option<&Arc<TenantInstances>> {
        self.tenants.get(tenant)
    }

    /// The node `id`.
    pub fn node(&self, id: &str) -> Option<&Arc<Node>> {
        self.nodes.nodes.get(id)
    }

    /// Every node, in id order.
    pub fn nodes(&self) -> impl ExactSizeIterator<Item = &Arc<Node>> + '_ {
        self.nodes.iter()
    }

    /// Every node, with the stamp of the set.
    pub fn node_set(&self) -> &Arc<NodeSet> {
        &self.nodes
    }

    /// How many nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.nodes.len()
    }

    /// Adds or replaces the instance with this id; returns the one it replaced. Inserting an
    /// equal instance changes nothing (no stamp moves).
    pub fn insert_instance(&mut self, instance: impl Into<Arc<Instance>>) -> Option<Arc<Instance>> {
        let instance = instance.into();
        if let Some(old) = self.by_id.get(&instance.id) {
            if Arc::ptr_eq(old, &instance) || **old == *instance {
                return Some(Arc::clone(old));
            }
        }
        let id: Arc<str> = Arc::from(instance.id.as_str());
        let old = self.by_id.insert(Arc::clone(&id), Arc::clone(&instance));
        if let Some(t) = old.as_ref().and_then(|o| o.tenant.as_deref()) {
            if instance.tenant.as_deref() != Some(t) {
                self.unindex(t, &id);
            }
        }
        if let Some(t) = instance.tenant.as_deref() {
            self.index(t, id, instance.clone());
        }
        old
    }

    /// Removes the instance `id`; returns it.
    pub fn remove_instance(&mut self, id: &str) -> Option<Arc<Instance>> {
        let old = self.by_id.remove(id)?;
        if let Some(t) = old.tenant.as_deref() {
            self.unindex(t, id);
        }
        Some(old)
    }

    /// Adds or replaces the node with this id; returns the one it replaced. Inserting an
    /// equal node changes nothing.
    pub fn insert_node(&mut self, node: impl Into<Arc<Node>>) -> Option<Arc<Node>> {
        let node = node.into();
        if let Some(old) = self.nodes.nodes.get(node.id.as_str()) {
            if Arc::ptr_eq(old, &node) || **old == *node {
                return Some(Arc::clone(old));
            }
        }
        let set = Arc::make_mut(&mut self.nodes);
        set.stamp = next_stamp();
        set.nodes.insert(Arc::from(node.id.as_str()), node)
    }

    /// Removes the node `id`; returns it. Its instances stay: sources decide what a missing
    /// node means for them.
    pub fn remove_node(&mut self, id: &str) -> Option<Arc<Node>> {
        self.nodes.nodes.get(id)?;
        let set = Arc::make_mut(&mut self.nodes);
        set.stamp = next_stamp();
        set.nodes.remove(id)
    }

    /// Adds `instance` (under `id`) to `tenant`'s map.
    fn index(&mut self, tenant: &str, id: Arc<str>, instance: Arc<Instance>) {
        let tenants = Arc::make_mut(&mut self.tenants);
        if let Some(t) = tenants.get_mut(tenant) {
            let owned = Arc::make_mut(t);
            owned.stamp = next_stamp();
            owned.instances.insert(id, instance);
            return;
        }
        let owned = TenantInstances {
            stamp: next_stamp(),
            instances: BTreeMap::from([(id, instance)]),
        };
        tenants.insert(Arc::from(tenant), Arc::new(owned));
    }

    /// Removes `id` from `tenant`'s map, and the map when it empties.
    fn unindex(&mut self, tenant: &str, id: &str) {
        let tenants = Arc::make_mut(&mut self.tenants);
        let Some(t) = tenants.get_mut(tenant) else {
            return;
        };
        let owned = Arc::make_mut(t);
        owned.stamp = next_stamp();
        owned.instances.remove(id);
        if owned.instances.is_empty() {
            tenants.remove(tenant);
        }
    }
}

/// Equal when they hold equal nodes and instances (stamps are not compared).
impl PartialEq for Inventory {
    fn eq(&self, other: &Inventory) -> bool {
        let nodes_equal =
            Arc::ptr_eq(&self.nodes, &other.nodes) || self.nodes.nodes == other.nodes.nodes;
        nodes_equal && self.by_id == other.by_id
    }
}

impl Eq for Inventory {}

impl fmt::Debug for Inventory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inventory")
            .field("nodes", &self.nodes().collect::<Vec<_>>())
            .field("instances", &self.instances().collect::<Vec<_>>())
            .finish()
    }
}

/// Health of the source feeding a [`Shared`] inventory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceStatus {
    /// When an inventory was last published (`None`: never — not ready).
    pub last_success: Option<SystemTime>,
    /// The last error since that success, if any.
    pub last_error: Option<String>,
    /// Instance and node ids that more than one node claims right now. Each is served to
    /// nobody until only one node claims it: whichever claim were believed, a lying node
    /// could take another's instance.
    pub conflicts: Conflicts,
}

/// Ids claimed by more than one node (see [`SourceStatus::conflicts`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conflicts {
    /// How many instance ids.
    pub instances: usize,
    /// How many node ids.
    pub nodes: usize,
}

/// The inventory shared between sources and request handlers.
#[derive(Debug, Default)]
pub struct Shared {
    current: ArcSwap<Inventory>,
    status: Mutex<SourceStatus>,
}

impl Shared {
    /// An empty, not-yet-ready inventory.
    pub fn new() -> Arc<Shared> {
        Arc::new(Shared::default())
    }

    /// The current inventory.
    pub fn load(&self) -> Arc<Inventory> {
        self.current.load_full()
    }

    /// Replaces the inventory and marks the source healthy.
    pub fn publish(&self, inventory: Inventory) {
        self.current.store(Arc::new(inventory));
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        s.last_success = Some(SystemTime::now());
        s.last_error = None;
    }

    /// Records a source failure; the last inventory stays in force.
    pub fn fail(&self, error: impl Into<String>) {
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        s.last_error = Some(error.into());
    }

    /// Records the ids claimed by more than one node now (kept until the next call).
    pub fn set_conflicts(&self, conflicts: Conflicts) {
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        s.conflicts = conflicts;
    }

    /// Source health, for `/readyz` and metrics.
    pub fn status(&self) -> SourceStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// True once any inventory was published.
    pub fn ready(&self) -> bool {
        self.status().last_success.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(id: &str, tenant: Option<&str>) -> Instance {
        Instance {
            id: id.into(),
            runtime_id: id.into(),
            generation: String::new(),
            node: "n1".into(),
            tenant: tenant.map(str::to_string),
            alias: id.into(),
            groups: vec![],
            image: None,
            source: "runc".into(),
            labels: BTreeMap::new(),
        }
    }

    fn ids<'a>(it: impl Iterator<Item = &'a Arc<Instance>>) -> Vec<&'a str> {
        it.map(|i| i.id.as_str()).collect()
    }

    #[test]
    fn failures_keep_the_last_inventory() {
        let shared = Shared::new();
        assert!(!shared.ready());
        let inv = Inventory::from_parts(
            [],
            [
                inst("a", Some("acme")),
                inst("b", Some("globex")),
                inst("c", None),
            ],
        );
        shared.publish(inv.clone());
        shared.fail("agent n1 unreachable");
        assert!(shared.ready());
        assert_eq!(*shared.load(), inv);
        assert_eq!(
            shared.status().last_error.as_deref(),
            Some("agent n1 unreachable")
        );
        let ids: Vec<_> = shared
            .load()
            .owned_by("acme")
            .map(|i| i.id.clone())
            .collect();
        assert_eq!(ids, ["a"]);
    }

    #[test]
    fn the_tenant_index_follows_every_change() {
        let mut inv = Inventory::default();
        for n in 0..1000 {
            let tenant = if n % 2 == 0 { "even" } else { "odd" };
            inv.insert_instance(inst(&format!("i{n:04}"), Some(tenant)));
        }
        inv.insert_instance(inst("unowned", None));
        assert_eq!(inv.instance_count(), 1001);
        assert_eq!(inv.owned_by("even").count(), 500);
        let odd = ids(inv.owned_by("odd"));
        assert_eq!(odd.first(), Some(&"i0001"), "id order");
        assert!(odd.windows(2).all(|w| w[0] < w[1]), "id order");

        // Moving an instance to another tenant moves it in the index; removing the last
        // instance of a tenant removes the tenant.
        inv.insert_instance(inst("i0000", Some("odd")));
        assert_eq!(inv.owned_by("even").count(), 499);
        assert_eq!(inv.owned_by("odd").count(), 501);
        inv.insert_instance(inst("i0002", None));
        assert_eq!(inv.owned_by("even").count(), 498);
        inv.insert_instance(inst("solo", Some("solo")));
        assert!(inv.tenant("solo").is_some());
        inv.remove_instance("solo");
        assert!(inv.tenant("solo").is_none());
        assert_eq!(inv.owned_by("solo").count(), 0);
        assert_eq!(inv.instance_count(), 1001);
        assert!(inv.remove_instance("nope").is_none());

        let all = ids(inv.instances());
        assert_eq!(all.len(), 1001);
        assert!(all.windows(2).all(|w| w[0] < w[1]), "id order");
    }

    #[test]
    fn a_published_copy_never_sees_later_changes() {
        let mut inv = Inventory::from_parts(
            [Node {
                id: "n1".into(),
                agent: "a:1".into(),
                hostname: "n1".into(),
            }],
            (0..100).map(|n| inst(&format!("i{n}"), Some("acme"))),
        );
        let published = inv.clone();
        let acme_before = published.tenant("acme").map(|t| t.stamp());
        inv.remove_instance("i7");
        inv.insert_instance(inst("new", Some("acme")));
        inv.remove_node("n1");
        assert!(published.instance("i7").is_some());
        assert!(published.instance("new").is_none());
        assert_eq!(published.owned_by("acme").count(), 100);
        assert_eq!(published.node_count(), 1);
        assert_eq!(published.tenant("acme").map(|t| t.stamp()), acme_before);
        assert_ne!(inv.tenant("acme").map(|t| t.stamp()), acme_before);
        assert_ne!(inv, published);
    }

    #[test]
    fn stamps_move_only_with_content() {
        let mut inv = Inventory::from_parts([], [inst("a", Some("acme")), inst("b", Some("x"))]);
        let (acme, x, nodes) = (
            inv.tenant("acme").map(|t| t.stamp()),
            inv.tenant("x").map(|t| t.stamp()),
            inv.node_set().stamp(),
        );
        // Equal values change nothing.
        inv.insert_instance(inst("a", Some("acme")));
        assert_eq!(inv.tenant("acme").map(|t| t.stamp()), acme);
        // A change to one tenant leaves the other's stamp (and the nodes') alone.
        let mut changed = inst("a", Some("acme"));
        changed.alias = "renamed".into();
        inv.insert_instance(changed);
        assert_ne!(inv.tenant("acme").map(|t| t.stamp()), acme);
        assert_eq!(inv.tenant("x").map(|t| t.stamp()), x);
        assert_eq!(inv.node_set().stamp(), nodes);
        let node = Node {
            id: "n1".into(),
            agent: "a:1".into(),
            hostname: String::new(),
        };
        inv.insert_node(node.clone());
        let after = inv.node_set().stamp();
        assert_ne!(after, nodes);
        inv.insert_node(node);
        assert_eq!(inv.node_set().stamp(), after);
    }

    #[test]
    fn equality_is_by_content() {
        let a = Inventory::from_parts([], [inst("a", Some("t")), inst("b", None)]);
        let b = Inventory::from_parts([], [inst("b", None), inst("a", Some("t"))]);
        assert_eq!(a, b);
        assert_eq!(Inventory::default(), Inventory::from_parts([], []));
        let mut c = b.clone();
        c.remove_instance("b");
        assert_ne!(a, c);
        c.insert_instance(inst("b", None));
        assert_eq!(a, c);
    }
}
