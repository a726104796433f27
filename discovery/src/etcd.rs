//! The `etcd` discovery source and registration: agents register their node and instances in
//! etcd under leases they keep alive; proxies watch one prefix and register themselves, so
//! that fleets with many nodes and many proxy replicas share state through etcd — an existing
//! distributed engine — instead of every proxy watching every agent.
//!
//! # Key layout
//!
//! Every key lives under a prefix (default `/lookout/`, [`EtcdConfig::prefix`]). Values are
//! JSON.
//!
//! | key | value | lease | written by |
//! |---|---|---|---|
//! | `<prefix>nodes/<node-id>` | [`Node`](crate::Node): `{"id","agent":"host:port","hostname"}` | the agent's | agent |
//! | `<prefix>instances/<node-id>/<instance-id>` | [`Instance`](crate::Instance), one key per instance | the agent's | agent |
//! | `<prefix>proxies/<proxy-id>` | [`ProxyRecord`]: `{"id","started","advertise"?}` | the proxy's | proxy |
//! | `<prefix>tenants/<name>` | one tenant: the fields of a `[[tenant]]` table of the tenants file, as JSON | none | `lookout tenants` |
//! | `<prefix>tenants-config/defaults` | the tenants file's `[defaults]`: `{"rate_limit":{"per_second","burst"}}` | none | `lookout tenants set-limit --default` |
//! | `<prefix>tenants-config/revoked` | its `[revoked]`: `{"spki_sha256":["<hex>",…]}` | none | `lookout tenants revoke` |
//!
//! - The node id is in both the node key and each instance key, and inside the values; a
//!   value that contradicts its key is refused. Ids are DNS labels, so they never contain `/`.
//! - Agent keys are written incrementally: one put or delete per changed instance
//!   ([`registrar`]). A restarted agent reconciles `instances/<node>/` against what it has, so
//!   no duplicate or stale key survives it. Node ids must be unique across agents (as with the
//!   `agents` source): two agents claiming one node id overwrite each other.
//! - The number of live `proxies/` keys is the replica count that divides cluster-wide rate
//!   limits ([`EtcdStatus::proxies`]).
//! - Tenant keys are read by the proxy's tenants (`lookout_proxy::tenants::etcd`, which
//!   validates them with the tenants file's rules), not by the inventory source. One range,
//!   `[<prefix>tenants, <prefix>tenantt)` ([`Keys::tenants_range`]), covers `tenants/` and
//!   `tenants-config/`, so one read and one watch ([`mirror`]) see them at a single revision.
//!   The name in a tenant key and in its value must agree. They carry no lease: tenants
//!   outlive every process. `lookout tenants` writes them in transactions that fail when any
//!   tenants key changed since it read them, so concurrent edits are retried, never lost.
//! - Anything else under the prefix is ignored by this version, so later kinds of keys can be
//!   added without breaking older proxies.
//!
//! # Leases and what a proxy may serve
//!
//! - Each agent and proxy holds one lease (`lease_ttl`, default 10 s), kept alive every
//!   third of it. A clean shutdown revokes it: the process's keys vanish at once. A process
//!   that dies, or is cut off from etcd, keeps its keys until the lease expires: **a dead
//!   node's instances stay discoverable for at most `lease_ttl`** (plus etcd's expiry check,
//!   ~0.5 s), then disappear from every proxy.
//! - A proxy serves what its last full read plus the watch events after it say: with a live
//!   watch that is etcd's state a few milliseconds ago. Each proxy publishes one consistent
//!   etcd revision at a time; proxies are not in lock-step with each other.
//! - When etcd is unreachable, proxies keep serving the last inventory they had — **stale
//!   for as long as the outage lasts**, since leases cannot expire without etcd either — and
//!   say so: `/readyz` reports the error, `lookout_proxy_inventory_source_up` is 0. When etcd
//!   returns, a fresh full read replaces the view (level-triggered: nothing drifts).
//! - Instances whose node key is absent are not served ([`source`]).
//!
//! # Not here
//!
//! What tenant records mean (the proxy's `tenants` module), etcd user/password
//! authentication.

mod client;
pub mod config;
mod follow;
pub mod keys;
pub mod mirror;
pub mod range;
pub mod registrar;
pub mod source;

pub use client::{bounded, connect, EtcdError, MAX_MESSAGE_BYTES};
pub use config::{EtcdConfig, EtcdTlsConfig};
/// The etcd client [`connect`] returns.
pub use etcd_client::Client;
pub use keys::{Key, Keys, ProxyRecord};
pub use mirror::{Mirror, MirrorStatus, Snapshot};
pub use registrar::{agent_keys, proxy_keys, Desired, Registrar, RegistrarStatus, Scope};
pub use source::{EtcdSource, EtcdStatus};
