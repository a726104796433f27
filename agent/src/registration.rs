//! Registration in etcd (`[etcd]`): the node key and one key per container, kept equal to
//! the registry under a lease the agent keeps alive ([`lookout_discovery::etcd::registrar`]).
//! Without `[etcd]` nothing here runs and proxies find the agent by the `agents` source.
//!
//! Each change of the registry becomes the full set of wanted keys; the registrar writes only
//! the keys that differ. Shutdown revokes the lease, so the node's instances leave every
//! proxy's inventory at once; a crash leaves them for at most the lease TTL.

use std::sync::Arc;

use lookout_discovery::etcd::{agent_keys, Desired, EtcdConfig, Keys, Registrar, RegistrarStatus};
use lookout_discovery::Node;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::registry::{Inventory, Registry};

/// Starts registering this node's containers in etcd (two tasks in `tasks`, ending with
/// `shutdown`); returns the registrar's status.
///
/// `config.advertise` is the address proxies reach this agent at ([`crate::config`] requires
/// it with `[etcd]`); `hostname` is the node's display name.
pub fn start(
    config: EtcdConfig,
    node_id: &str,
    hostname: String,
    registry: &Registry,
    tasks: &mut JoinSet<()>,
    shutdown: watch::Receiver<bool>,
) -> Result<watch::Receiver<RegistrarStatus>, String> {
    let agent = config
        .advertise
        .clone()
        .ok_or("etcd.advertise is required: the host:port proxies reach this agent at")?;
    let node = Node {
        id: node_id.to_string(),
        agent,
        hostname,
    };
    let keys = Keys::new(config.prefix.clone());
    let registrar = Registrar::for_agent(config, node_id)?;
    let status = registrar.status();
    let mut containers = registry.subscribe();
    let first = desired(&keys, &node, &containers.borrow_and_update());
    let (tx, rx) = watch::channel(first);
    tasks.spawn(follow(containers, keys, node, tx, shutdown.clone()));
    tasks.spawn(registrar.run(rx, shutdown));
    Ok(status)
}

fn desired(keys: &Keys, node: &Node, inv: &Inventory) -> Desired {
    let instances = inv.containers.values().map(|t| &t.container.instance);
    Arc::new(agent_keys(keys, node, instances))
}

/// Turns every registry change into the wanted key set.
async fn follow(
    mut containers: watch::Receiver<Arc<Inventory>>,
    keys: Keys,
    node: Node,
    tx: watch::Sender<Desired>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            r = containers.changed() => {
                if r.is_err() {
                    return;
                }
                let inv = containers.borrow_and_update().clone();
                tx.send_replace(desired(&keys, &node, &inv));
            }
            _ = shutdown.changed() => return,
        }
    }
}
