//! Registration under a lease: keeps a set of keys in etcd equal to what a process wants
//! registered, attached to a lease the process keeps alive — agents their node and instances,
//! proxies their replica key.
//!
//! - **Lease**: granted with `lease_ttl`, kept alive every third of it. A keep-alive answer
//!   saying the lease is gone (it expired while etcd was unreachable, or etcd lost it), or no
//!   answer for a whole TTL, starts a new *session*: a new lease and a full reconcile.
//! - **Reconcile** (each new session, and after a failed write): lists the registrar's scope
//!   in etcd (`nodes/<node>` and `instances/<node>/`, or `proxies/<id>`), puts every wanted
//!   key whose value or lease differs, deletes every key in scope that is not wanted. So a
//!   restarted agent leaves neither duplicates nor stale instances from its previous life,
//!   and keys move to the new lease before the old one expires.
//! - **Changes** after that are incremental: only the keys whose value changed are put, only
//!   the removed ones deleted — never a rewrite of the whole node.
//! - Writes go in transactions of at most [`MAX_TXN_OPS`] operations (etcd's default limit is
//!   128) and about [`MAX_TXN_BYTES`].
//! - **Shutdown** revokes the lease: every key of the process vanishes at once.
//! - **Failures** are logged and in [`RegistrarStatus::last_error`]; writes are retried with
//!   backoff while the lease is kept alive.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, GetOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn, TxnOp};
use tokio::sync::watch;
use tokio::time::Instant;

use super::client::{bounded, connect, EtcdError, MAX_MESSAGE_BYTES};
use super::config::EtcdConfig;
use super::keys::{self, Keys, ProxyRecord};
use crate::agents::Backoff;
use crate::inventory::Node;
use crate::model::Instance;

/// Most operations in one write transaction.
pub const MAX_TXN_OPS: usize = 64;
/// Value bytes after which a write transaction is closed (etcd takes 1.5 MiB requests).
pub const MAX_TXN_BYTES: usize = 512 * 1024;

/// The keys a process wants registered: full key → value.
pub type Desired = Arc<BTreeMap<String, Vec<u8>>>;

/// The keys an agent registers: its node key and one key per instance. Instances of another
/// node (an agent bug) are left out.
pub fn agent_keys<'a>(
    keys: &Keys,
    node: &Node,
    instances: impl IntoIterator<Item = &'a Instance>,
) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    out.insert(keys.node(&node.id), keys::encode(node));
    for i in instances {
        if i.node == node.id {
            out.insert(keys.instance(&node.id, &i.id), keys::encode(i));
        } else {
            tracing::warn!(id = %i.id, node = %i.node, "etcd registrar: instance of another node; not registered");
        }
    }
    out
}

/// The key a proxy replica registers.
pub fn proxy_keys(keys: &Keys, record: &ProxyRecord) -> BTreeMap<String, Vec<u8>> {
    BTreeMap::from([(keys.proxy(&record.id), keys::encode(record))])
}

/// Part of the keyspace a registrar owns: it deletes whatever there it does not want.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Exactly this key.
    Key(String),
    /// Every key starting with this.
    Prefix(String),
}

/// How a registrar is doing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistrarStatus {
    /// The lease in use, once granted.
    pub lease: Option<i64>,
    /// True when etcd holds exactly the wanted keys under `lease` (as far as the registrar
    /// knows: it was written and no write failed since).
    pub registered: bool,
    /// Keys registered.
    pub keys: usize,
    /// Leases granted since start (1 while nothing went wrong).
    pub leases_granted: u64,
    /// The current failure, until the next successful write.
    pub last_error: Option<String>,
}

/// Keeps the wanted keys registered under a lease. Build with [`Registrar::for_agent`] or
/// [`Registrar::for_proxy`], keep [`Registrar::status`], then [`Registrar::run`].
pub struct Registrar {
    config: EtcdConfig,
    scope: Vec<Scope>,
    status: watch::Sender<RegistrarStatus>,
}

/// One lease and its keep-alive stream.
struct Session {
    client: Client,
    lease: i64,
    keeper: LeaseKeeper,
    stream: LeaseKeepAliveStream,
    stream_ok: bool,
    last_ok: Instant,
    /// etcd said the lease does not exist.
    gone: bool,
}

/// One write.
enum Op {
    Put(String, Vec<u8>),
    Delete(Vec<u8>),
}

impl Registrar {
    /// A registrar owning `scope` (checks the configuration).
    pub fn new(config: EtcdConfig, scope: Vec<Scope>) -> Result<Registrar, String> {
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(Registrar {
            config,
            scope,
            status: watch::Sender::new(RegistrarStatus::default()),
        })
    }

    /// The registrar of the agent of `node`: owns `nodes/<node>` and `instances/<node>/`.
    pub fn for_agent(config: EtcdConfig, node: &str) -> Result<Registrar, String> {
        let keys = Keys::new(config.prefix.clone());
        let scope = vec![
            Scope::Key(keys.node(node)),
            Scope::Prefix(keys.node_instances(node)),
        ];
        Registrar::new(config, scope)
    }

    /// The registrar of proxy replica `id`: owns `proxies/<id>`.
    pub fn for_proxy(config: EtcdConfig, id: &str) -> Result<Registrar, String> {
        let scope = vec![Scope::Key(Keys::new(config.prefix.clone()).proxy(id))];
        Registrar::new(config, scope)
    }

    /// The registrar's status, live while it runs.
    pub fn status(&self) -> watch::Receiver<RegistrarStatus> {
        self.status.subscribe()
    }

    /// Keeps `desired` registered until `shutdown` turns true or its sender is dropped, then
    /// revokes the lease. A dropped `desired` sender freezes the registration as it is.
    pub async fn run(
        self,
        mut desired: watch::Receiver<Desired>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let ttl = Duration::from_secs(u64::try_from(self.config.lease_ttl_seconds()).unwrap_or(10));
        let mut backoff = Backoff::new(self.config.backoff);
        let mut client: Option<Client> = None;
        let mut desired_open = true;
        loop {
            if *shutdown.borrow_and_update() {
                return;
            }
            let granted = tokio::select! {
                r = self.grant(&mut client) => r,
                _ = shutdown.changed() => return,
            };
            let mut s = match granted {
                Ok(s) => s,
                Err(e) => {
                    self.failed(&e);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_delay()) => continue,
                        _ = shutdown.changed() => return,
                    }
                }
            };
            let mut written: Option<Desired> = None;
            let mut retry_at: Option<Instant> = None;
            // `changed()` marks the value seen: remember that a write is owed.
            let mut pending = false;
            let mut tick = tokio::time::interval_at(Instant::now() + ttl / 3, ttl / 3);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let due = retry_at.is_none_or(|t| Instant::now() >= t);
                let changed = written.is_none() || pending;
                if due && changed {
                    pending = false;
                    let want = desired.borrow_and_update().clone();
                    let w = tokio::select! {
                        r = self.write(&s, written.as_deref(), &want) => r,
                        _ = shutdown.changed() => return self.revoke(&s).await,
                    };
                    match w {
                        Ok(()) => {
                            retry_at = None;
                            backoff.reset();
                            self.status.send_modify(|st| {
                                st.registered = true;
                                st.keys = want.len();
                                st.last_error = None;
                            });
                            written = Some(want);
                        }
                        Err(e) => {
                            self.failed(&e);
                            written = None;
                            retry_at = Some(Instant::now() + backoff.next_delay());
                        }
                    }
                }
                let retry = async {
                    match retry_at {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = shutdown.changed() => return self.revoke(&s).await,
                    r = desired.changed(), if written.is_some() && desired_open => {
                        desired_open = r.is_ok();
                        pending = r.is_ok();
                    }
                    () = retry => {}
                    _ = tick.tick() => self.keep_alive(&mut s).await,
                    m = s.stream.message(), if s.stream_ok => match m {
                        Ok(Some(r)) if r.ttl() > 0 => s.last_ok = Instant::now(),
                        Ok(Some(_)) => s.gone = true,
                        Ok(None) | Err(_) => s.stream_ok = false,
                    },
                }
                if s.gone {
                    self.lost(format!("lease {:x} expired", s.lease));
                    break;
                }
                if s.last_ok.elapsed() >= ttl {
                    self.lost(format!(
                        "lease {:x}: no keep-alive answer for {ttl:?}; presumed expired",
                        s.lease
                    ));
                    break;
                }
            }
        }
    }

    /// Connects (once) and grants a lease with its keep-alive stream.
    async fn grant(&self, client: &mut Option<Client>) -> Result<Session, EtcdError> {
        let c = match client {
            Some(c) => c.clone(),
            None => client.insert(connect(&self.config).await?).clone(),
        };
        let t = self.config.request_timeout;
        let ttl = self.config.lease_ttl_seconds();
        let lease = bounded("lease grant", t, c.lease_client().grant(ttl, None))
            .await?
            .id();
        let (keeper, stream) =
            bounded("lease keep-alive", t, c.lease_client().keep_alive(lease)).await?;
        tracing::info!(
            lease = format_args!("{lease:x}"),
            ttl,
            "etcd registrar: lease granted"
        );
        self.status.send_modify(|st| {
            st.lease = Some(lease);
            st.registered = false;
            st.leases_granted += 1;
        });
        Ok(Session {
            client: c,
            lease,
            keeper,
            stream,
            stream_ok: true,
            last_ok: Instant::now(),
            gone: false,
        })
    }

    /// Sends one keep-alive, reopening the stream if it broke.
    async fn keep_alive(&self, s: &mut Session) {
        let t = self.config.request_timeout;
        if s.stream_ok
            && bounded("keep-alive", t, s.keeper.keep_alive())
                .await
                .is_ok()
        {
            return;
        }
        s.stream_ok = false;
        match bounded(
            "lease keep-alive",
            t,
            s.client.lease_client().keep_alive(s.lease),
        )
        .await
        {
            Ok((keeper, stream)) => {
                // Opening the stream is itself a successful keep-alive.
                (s.keeper, s.stream, s.stream_ok) = (keeper, stream, true);
                s.last_ok = Instant::now();
            }
            Err(EtcdError::Client(etcd_client::Error::LeaseKeepAliveError(e))) => {
                // "lease not found": the next check starts a new session at once.
                tracing::warn!(error = %e, "etcd registrar: lease keep-alive refused");
                s.gone = true;
            }
            Err(e) => tracing::warn!(error = %e, "etcd registrar: keep-alive failed"),
        }
    }

    /// Brings etcd to `want`: incrementally from `written`, or by a reconcile of the scope.
    async fn write(
        &self,
        s: &Session,
        written: Option<&BTreeMap<String, Vec<u8>>>,
        want: &BTreeMap<String, Vec<u8>>,
    ) -> Result<(), EtcdError> {
        let ops = match written {
            Some(w) => diff(w, want),
            None => reconcile(&self.list_scope(&s.client).await?, want, s.lease),
        };
        let (puts, deletes) = ops.iter().fold((0, 0), |(p, d), op| match op {
            Op::Put(..) => (p + 1, d),
            Op::Delete(_) => (p, d + 1),
        });
        if !ops.is_empty() {
            tracing::debug!(
                puts,
                deletes,
                full = written.is_none(),
                "etcd registrar: writing"
            );
        }
        let mut kv = s.client.kv_client();
        let mut batch: Vec<TxnOp> = Vec::new();
        let mut bytes = 0;
        let put = PutOptions::new().with_lease(s.lease);
        let mut ops = ops.into_iter().peekable();
        while let Some(op) = ops.next() {
            match op {
                Op::Put(k, v) => {
                    bytes += k.len() + v.len();
                    batch.push(TxnOp::put(k, v, Some(put.clone())));
                }
                Op::Delete(k) => {
                    bytes += k.len();
                    batch.push(TxnOp::delete(k, None));
                }
            }
            if batch.len() >= MAX_TXN_OPS || bytes >= MAX_TXN_BYTES || ops.peek().is_none() {
                let txn = Txn::new().and_then(std::mem::take(&mut batch));
                bounded("write", self.config.request_timeout, kv.txn(txn)).await?;
                bytes = 0;
            }
        }
        Ok(())
    }

    /// Every key in scope: key → (value, lease).
    async fn list_scope(&self, c: &Client) -> Result<BTreeMap<Vec<u8>, (Vec<u8>, i64)>, EtcdError> {
        let mut kv = c.kv_client().max_decoding_message_size(MAX_MESSAGE_BYTES);
        let mut out = BTreeMap::new();
        for scope in &self.scope {
            let (from, end) = match scope {
                Scope::Key(k) => (k.as_bytes().to_vec(), None),
                Scope::Prefix(p) => (p.as_bytes().to_vec(), Some(keys::prefix_end(p.as_bytes()))),
            };
            let mut from = from;
            loop {
                let opts = end
                    .clone()
                    .map(|e| GetOptions::new().with_range(e).with_limit(1000));
                let page = bounded(
                    "list",
                    self.config.request_timeout,
                    kv.get(from.clone(), opts),
                )
                .await?;
                for kv in page.kvs() {
                    out.insert(kv.key().to_vec(), (kv.value().to_vec(), kv.lease()));
                }
                match page.kvs().last() {
                    Some(last) if page.more() => {
                        from = last.key().to_vec();
                        from.push(0);
                    }
                    _ => break,
                }
            }
        }
        Ok(out)
    }

    async fn revoke(&self, s: &Session) {
        let t = self.config.request_timeout;
        match bounded("lease revoke", t, s.client.lease_client().revoke(s.lease)).await {
            Ok(_) => tracing::info!(
                lease = format_args!("{:x}", s.lease),
                "etcd registrar: lease revoked"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "etcd registrar: revoking the lease failed; its keys expire with it")
            }
        }
        self.status.send_modify(|st| {
            st.lease = None;
            st.registered = false;
        });
    }

    fn failed(&self, e: &EtcdError) {
        tracing::warn!(error = %e, "etcd registrar: failed; retrying");
        let msg = e.to_string();
        self.status.send_modify(|st| st.last_error = Some(msg));
    }

    fn lost(&self, why: String) {
        tracing::warn!(reason = %why, "etcd registrar: lease lost; registering again under a new lease");
        self.status.send_modify(|st| {
            st.registered = false;
            st.last_error = Some(why);
        });
    }
}

/// The writes from `written` to `want`.
fn diff(written: &BTreeMap<String, Vec<u8>>, want: &BTreeMap<String, Vec<u8>>) -> Vec<Op> {
    let mut ops: Vec<Op> = written
        .keys()
        .filter(|k| !want.contains_key(*k))
        .map(|k| Op::Delete(k.clone().into_bytes()))
        .collect();
    for (k, v) in want {
        if written.get(k) != Some(v) {
            ops.push(Op::Put(k.clone(), v.clone()));
        }
    }
    ops
}

/// The writes from what etcd holds in scope to `want` under `lease`.
fn reconcile(
    existing: &BTreeMap<Vec<u8>, (Vec<u8>, i64)>,
    want: &BTreeMap<String, Vec<u8>>,
    lease: i64,
) -> Vec<Op> {
    let mut ops: Vec<Op> = existing
        .keys()
        .filter(|k| std::str::from_utf8(k).map_or(true, |k| !want.contains_key(k)))
        .map(|k| Op::Delete(k.clone()))
        .collect();
    for (k, v) in want {
        let current = existing.get(k.as_bytes());
        if current.is_none_or(|(cv, cl)| cv != v || *cl != lease) {
            ops.push(Op::Put(k.clone(), v.clone()));
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    fn show(ops: &[Op]) -> Vec<String> {
        ops.iter()
            .map(|op| match op {
                Op::Put(k, _) => format!("put {k}"),
                Op::Delete(k) => format!("delete {}", String::from_utf8_lossy(k)),
            })
            .collect()
    }

    #[test]
    fn changes_write_only_what_changed() {
        let before = map(&[("n", "1"), ("a", "1"), ("b", "1")]);
        let after = map(&[("n", "1"), ("a", "2"), ("c", "1")]);
        assert_eq!(show(&diff(&before, &after)), ["delete b", "put a", "put c"]);
        assert!(diff(&after, &after).is_empty());
    }

    #[test]
    fn reconcile_moves_keys_to_the_lease_and_deletes_leftovers() {
        let existing: BTreeMap<Vec<u8>, (Vec<u8>, i64)> = [
            ("a", "1", 7),   // same value, same lease: untouched
            ("b", "1", 6),   // old lease: put again
            ("c", "0", 7),   // changed value
            ("old", "1", 6), // not wanted: deleted
        ]
        .into_iter()
        .map(|(k, v, l)| (k.as_bytes().to_vec(), (v.as_bytes().to_vec(), l)))
        .collect();
        let want = map(&[("a", "1"), ("b", "1"), ("c", "1"), ("d", "1")]);
        assert_eq!(
            show(&reconcile(&existing, &want, 7)),
            ["delete old", "put b", "put c", "put d"]
        );
    }
}
