//! This replica's registration in etcd (with `[inventory] source = "etcd"`): the key
//! `<prefix>proxies/<id>` under a lease kept alive, so every replica can count the live ones
//! and take its share of the cluster-wide rate limits ([`crate::limit::follow_replicas_etcd`]).
//!
//! The id is random per process start: a restarted replica registers anew and its old key
//! expires with the old lease — until then the count is one too high, which errs on the strict
//! side. A clean shutdown revokes the lease at once.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::SystemTime;

use lookout_discovery::etcd::{
    proxy_keys, EtcdConfig, Keys, ProxyRecord, Registrar, RegistrarStatus,
};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// A fresh replica id: `proxy-` and 16 random hex digits.
pub fn replica_id() -> String {
    let r = RandomState::new().hash_one((std::process::id(), SystemTime::now()));
    format!("proxy-{r:016x}")
}

/// Registers replica `id` (a task in `tasks`, ending with `shutdown`, which revokes the
/// lease); returns the registrar's status.
pub fn start(
    config: EtcdConfig,
    id: &str,
    tasks: &mut JoinSet<()>,
    shutdown: watch::Receiver<bool>,
) -> Result<watch::Receiver<RegistrarStatus>, String> {
    let keys = Keys::new(config.prefix.clone());
    let record = ProxyRecord::starting_now(id, config.advertise.clone());
    let registrar = Registrar::for_proxy(config, id)?;
    let status = registrar.status();
    // The wanted key never changes: the sender is dropped at once, which the registrar
    // takes as "keep this registration as it is".
    let (_, desired) = watch::channel(Arc::new(proxy_keys(&keys, &record)));
    tasks.spawn(registrar.run(desired, shutdown));
    Ok(status)
}
