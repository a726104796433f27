//! Instances and the change events an agent streams to proxies.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The request header in which a proxy tells the agent which tenant it authorized a scrape
/// for. The agent serves an instance only when the live container's owner is that tenant,
/// whatever the proxy's inventory said: a stale inventory, a reused id or a lying node then
/// ends in a 404, never in another tenant's data. Only a proxy sets it: agents serve
/// proxy certificates only, and proxies forward an allow-list of client headers that does
/// not include it.
pub const TENANT_HEADER: &str = "x-lookout-tenant";

/// The request header carrying the [`Instance::generation`] a proxy routed a scrape to; the
/// agent answers 404 when the live container under that id is another incarnation.
pub const GENERATION_HEADER: &str = "x-lookout-generation";

/// One container, as discovery and authorization see it.
///
/// `id` is the routable name (a DNS label); `runtime_id` is what the container runtime calls
/// it. Ownership (`tenant`) comes only from labels the operator's orchestrator sets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Routable instance id: a lowercase DNS label of at most 63 characters.
    pub id: String,
    /// The id the container runtime uses (may be long, mixed case, or not a DNS label).
    pub runtime_id: String,
    /// Which incarnation of `id` this is: changes whenever a new container takes the id
    /// (the agent derives it from the runtime id and the init process's start time). The
    /// proxy sends it back with each scrape ([`GENERATION_HEADER`]) so that the agent serves
    /// only the container the proxy authorized. Empty from sources that do not know it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub generation: String,
    /// The node (agent) hosting the instance.
    pub node: String,
    /// Owning tenant, if the orchestrator labelled one; `None` means unowned.
    pub tenant: Option<String>,
    /// Human name, used as `nodename` in `node_uname_info`.
    pub alias: String,
    /// Groups for `?groups=` filtering in discovery.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Image name or id, when the runtime or a label says.
    #[serde(default)]
    pub image: Option<String>,
    /// How the agent found it: `runc`, `crun` or `cgroup-rule:<name>`.
    pub source: String,
    /// Every runtime label (OCI annotations), for operators and relabeling.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// One line of an agent's `GET /v1/instances?watch` stream (newline-delimited JSON).
///
/// The first event is always `Snapshot`, so a watcher never needs a separate list call; after
/// that only changes follow. A watcher that loses the stream reconnects and starts again from
/// a snapshot (level-triggered, no drift).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum InstanceEvent {
    /// Every instance the node has right now.
    Snapshot {
        /// The node (agent) sending the stream, so that a node with no instances is still
        /// known (for its node view). Absent from agents that predate it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
        /// The full list.
        instances: Vec<Instance>,
    },
    /// A new or changed instance.
    Upsert {
        /// The instance as it is now.
        instance: Instance,
    },
    /// An instance that is gone.
    Remove {
        /// Its id.
        id: String,
    },
}
