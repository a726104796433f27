//! The model every lookout component shares: what an instance (a container seen as a node)
//! and a node are, how instances are named so that `https://<id>.<suffix>/metrics` routes,
//! the proxy's inventory, the sources that fill it, and the service-discovery encoders.

pub mod agents;
pub mod etcd;
pub mod file;
pub mod inventory;
pub mod model;
pub mod naming;
pub mod sd;

pub use inventory::{Conflicts, Inventory, Node, Shared, SourceStatus};
pub use model::{Instance, InstanceEvent, GENERATION_HEADER, TENANT_HEADER};
pub use naming::{instance_id_for, is_dns_label};
