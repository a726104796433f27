//! The proxy's view of the fleet: every instance and node, held behind an atomic swap so a
//! request always sees one consistent inventory while sources replace it whole.
//!
//! Sources (agents, etcd, file) build a new [`Inventory`] and [`Shared::publish`] it;
//! when a source fails it reports [`Shared::fail`] and the last good inventory keeps being
//! served — readiness and metrics say how stale it is.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::model::Instance;

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

/// One consistent picture of the fleet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    /// Instances by id.
    pub instances: BTreeMap<String, Instance>,
    /// Nodes by id.
    pub nodes: BTreeMap<String, Node>,
}

impl Inventory {
    /// The instances a tenant owns, in id order.
    pub fn owned_by<'a>(&'a self, tenant: &'a str) -> impl Iterator<Item = &'a Instance> + 'a {
        self.instances
            .values()
            .filter(move |i| i.tenant.as_deref() == Some(tenant))
    }
}

/// Health of the source feeding a [`Shared`] inventory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceStatus {
    /// When an inventory was last published (`None`: never — not ready).
    pub last_success: Option<SystemTime>,
    /// The last error since that success, if any.
    pub last_error: Option<String>,
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
            node: "n1".into(),
            tenant: tenant.map(str::to_string),
            alias: id.into(),
            groups: vec![],
            image: None,
            source: "runc".into(),
            labels: BTreeMap::new(),
        }
    }

    #[test]
    fn failures_keep_the_last_inventory() {
        let shared = Shared::new();
        assert!(!shared.ready());
        let mut inv = Inventory::default();
        inv.instances.insert("a".into(), inst("a", Some("acme")));
        inv.instances.insert("b".into(), inst("b", Some("globex")));
        inv.instances.insert("c".into(), inst("c", None));
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
}
