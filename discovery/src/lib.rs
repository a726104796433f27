//! The model every lookout component shares: what an instance (a container seen as a node)
//! and a node are, and how instances are named so that `https://<id>.<suffix>/metrics` routes.
//!
//! Inventory sources (agents, etcd, file) and SD encoders arrive with the proxy issue; this
//! crate holds only what the agent already publishes.

pub mod model;
pub mod naming;

pub use model::{Instance, InstanceEvent};
pub use naming::{instance_id_for, is_dns_label};
