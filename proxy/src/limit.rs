//! Rate limits: per tenant after authentication, per source address before it (so that
//! unauthenticated floods are cheap to refuse — cmon throttled only after authentication).
//!
//! Both are GCRA (governor). Tenant limits are configured **cluster-wide**: with `n` proxy
//! replicas behind round-robin DNS or a load balancer, each sees about `1/n` of a tenant's
//! requests, so each enforces `rate / n` with burst `ceil(burst / n)` (at least 1). The replica
//! count can change at runtime ([`TenantLimiter::set_replicas`]); the limiters are then rebuilt,
//! which forgets the per-tenant state — at worst one extra burst per tenant per change.
//!
//! The per-source limit is **not** divided: a client's keep-alive connection sticks to one
//! replica, so it protects each replica on its own. IPv6 sources are keyed by their /64,
//! since one host commonly holds a whole /64.
//!
//! The replica count is configured (`[limits] replicas`), follows the replicas registered in
//! etcd ([`follow_replicas_etcd`]), or is read from DNS
//! ([`follow_replicas_dns`], `[limits.replicas_dns]`): the distinct A or AAAA addresses, or
//! SRV targets, of one name, re-resolved every `refresh` and no later than the records' TTL.
//! A failed lookup, or an answer listing nothing, keeps the last count in force — a DNS outage
//! must not silently turn every replica into one allowing the whole cluster's rate — and is
//! logged and counted (`lookout_proxy_replicas_dns_failures_total`);
//! `lookout_proxy_replicas` shows the count in force.
//!
//! Clocks are injected (governor's `Clock`), so tests use `FakeRelativeClock`. Not here: the
//! 429 response itself.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use lookout_discovery::agents::resolve::{next_refresh, HickoryResolver, Targets};
use lookout_discovery::etcd::EtcdStatus;
use tokio::sync::watch;

use crate::config::ReplicasDnsConfig;
use crate::telemetry::Telemetry;
use crate::tenants::RateLimit;

/// Bound on one replica-count lookup.
pub const REPLICAS_DNS_TIMEOUT: Duration = Duration::from_secs(15);
/// Delay before retrying a failed replica-count lookup (`refresh` when that is shorter).
pub const REPLICAS_DNS_RETRY: Duration = Duration::from_secs(5);

/// Over the limit: try again after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate limited; retry after {0:?}")]
pub struct RetryAfter(pub Duration);

impl RetryAfter {
    /// Whole seconds for the `Retry-After` header: rounded up, at least 1.
    pub fn header_seconds(&self) -> u64 {
        let d = self.0;
        let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
        s.max(1)
    }
}

type Keyed<K, C> =
    RateLimiter<K, DefaultKeyedStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;
type Direct<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// This replica's share of a cluster-wide rate.
pub fn share(limit: RateLimit, replicas: u32) -> Quota {
    let n = f64::from(replicas.max(1));
    let per_second = if limit.per_second.is_finite() && limit.per_second > 0.0 {
        limit.per_second / n
    } else {
        // Validated away by the tenants file; the slowest sane rate if it ever gets here.
        1e-3
    };
    // One cell every 1/rate seconds, bounded so that Duration construction cannot fail.
    let period = Duration::from_secs_f64((1.0 / per_second).clamp(1e-9, 1e9));
    let burst = limit.burst.div_ceil(replicas.max(1)).max(1);
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

struct TenantState<C: Clock> {
    default: Keyed<String, C>,
    overrides: BTreeMap<String, Direct<C>>,
}

/// Per-tenant limits: one default, per-tenant overrides, this replica's share of each.
/// Shared by every connection; reconfigured in place (`&self`) at runtime.
pub struct TenantLimiter<C: Clock + Clone = DefaultClock> {
    clock: C,
    config: Mutex<LimitConfig>,
    state: RwLock<Arc<TenantState<C>>>,
}

#[derive(Clone, PartialEq)]
struct LimitConfig {
    default: RateLimit,
    overrides: BTreeMap<String, RateLimit>,
    replicas: u32,
}

impl TenantLimiter<DefaultClock> {
    /// A limiter on the real clock.
    pub fn new(default: RateLimit, overrides: BTreeMap<String, RateLimit>, replicas: u32) -> Self {
        Self::with_clock(default, overrides, replicas, DefaultClock::default())
    }
}

impl<C: Clock + Clone> TenantLimiter<C> {
    /// A limiter on `clock` (tests pass a `FakeRelativeClock`).
    pub fn with_clock(
        default: RateLimit,
        overrides: BTreeMap<String, RateLimit>,
        replicas: u32,
        clock: C,
    ) -> Self {
        let config = LimitConfig {
            default,
            overrides,
            replicas: replicas.max(1),
        };
        let state = build_state(&config, &clock);
        TenantLimiter {
            clock,
            config: Mutex::new(config),
            state: RwLock::new(Arc::new(state)),
        }
    }

    /// Allows one request of `tenant`, or says how long to wait.
    pub fn check(&self, tenant: &str) -> Result<(), RetryAfter> {
        let state = Arc::clone(&self.state.read().unwrap_or_else(|e| e.into_inner()));
        let res = match state.overrides.get(tenant) {
            Some(l) => l.check(),
            None => state.default.check_key(&tenant.to_owned()),
        };
        res.map_err(|not_until| RetryAfter(not_until.wait_time_from(self.clock.now())))
    }

    /// The replica count in force.
    pub fn replicas(&self) -> u32 {
        self.config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replicas
    }

    /// Changes the replica count (at least 1); limiters are rebuilt when it differs.
    pub fn set_replicas(&self, replicas: u32) {
        self.reconfigure(|c| c.replicas = replicas.max(1));
    }

    /// Replaces the default and overrides (after a tenants-file reload); limiters are rebuilt
    /// when they differ.
    pub fn set_limits(&self, default: RateLimit, overrides: BTreeMap<String, RateLimit>) {
        self.reconfigure(|c| {
            c.default = default;
            c.overrides = overrides;
        });
    }

    fn reconfigure(&self, change: impl FnOnce(&mut LimitConfig)) {
        let mut config = self.config.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = config.clone();
        change(&mut next);
        if next != *config {
            let state = build_state(&next, &self.clock);
            *self.state.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(state);
            *config = next;
        }
    }

    /// Forgets tenants whose state is back to full; call now and then to bound memory.
    pub fn housekeeping(&self) {
        let state = Arc::clone(&self.state.read().unwrap_or_else(|e| e.into_inner()));
        state.default.retain_recent();
        state.default.shrink_to_fit();
    }
}

fn build_state<C: Clock + Clone>(config: &LimitConfig, clock: &C) -> TenantState<C> {
    let LimitConfig {
        default,
        overrides,
        replicas,
    } = config;
    let (default, replicas) = (*default, *replicas);
    TenantState {
        default: RateLimiter::new(
            share(default, replicas),
            DefaultKeyedStateStore::default(),
            clock.clone(),
        ),
        overrides: overrides
            .iter()
            .map(|(t, l)| {
                let limiter =
                    RateLimiter::new(share(*l, replicas), InMemoryState::default(), clock.clone());
                (t.clone(), limiter)
            })
            .collect(),
    }
}

/// The replica count a DNS answer gives: its number of distinct targets. An answer listing
/// none is an error, so that the count never falls to 1 because DNS said nothing.
pub fn replicas_in(answer: &Targets) -> Result<u32, String> {
    match answer.targets.len() {
        0 => Err("the answer lists no replicas".to_string()),
        n => Ok(u32::try_from(n).unwrap_or(u32::MAX)),
    }
}

/// Keeps `limiter`'s replica count at what `dns` lists, asking `resolver`, until `shutdown`
/// changes: resolves at once, then every `dns.refresh` or sooner when the records' TTL is
/// shorter (at most once a second). A failure or an empty answer keeps the count in force,
/// is logged and counted, and is retried after [`REPLICAS_DNS_RETRY`] (or `refresh`, if
/// shorter). `telemetry.replicas` follows every answer.
pub async fn follow_replicas_dns<C: Clock + Clone>(
    limiter: &TenantLimiter<C>,
    resolver: &HickoryResolver,
    dns: &ReplicasDnsConfig,
    telemetry: &Telemetry,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let lookup = tokio::time::timeout(
            REPLICAS_DNS_TIMEOUT,
            resolver.targets(&dns.name, dns.kind, dns.server),
        );
        let answer = tokio::select! {
            r = lookup => r.unwrap_or_else(|_| Err(format!("timed out after {REPLICAS_DNS_TIMEOUT:?}"))),
            _ = shutdown.changed() => return,
        };
        let wait = match answer.and_then(|a| Ok((replicas_in(&a)?, a.ttl))) {
            Ok((replicas, ttl)) => {
                let before = limiter.replicas();
                if replicas != before {
                    limiter.set_replicas(replicas);
                    tracing::info!(name = %dns.name, before, replicas, "replica count changed");
                }
                telemetry.replicas.set(i64::from(limiter.replicas()));
                next_refresh(dns.refresh, ttl)
            }
            Err(error) => {
                telemetry.replicas_dns_failures.inc();
                tracing::warn!(
                    name = %dns.name,
                    %error,
                    keeping = limiter.replicas(),
                    "replica count lookup failed; keeping the last count"
                );
                dns.refresh.min(REPLICAS_DNS_RETRY)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Keeps `limiter`'s replica count at the number of live proxy replicas the etcd source
/// reports, until `shutdown` changes. A count of 0 (this replica not registered yet, or an
/// empty read) keeps the count in force; so does an etcd outage, since the source keeps its
/// last view. `telemetry.replicas` follows.
pub async fn follow_replicas_etcd<C: Clock + Clone>(
    limiter: &TenantLimiter<C>,
    mut status: watch::Receiver<EtcdStatus>,
    telemetry: &Telemetry,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let live = status.borrow_and_update().proxies;
        let replicas = u32::try_from(live).unwrap_or(u32::MAX);
        let before = limiter.replicas();
        if replicas > 0 && replicas != before {
            limiter.set_replicas(replicas);
            tracing::info!(before, replicas, "replica count changed (etcd)");
        }
        telemetry.replicas.set(i64::from(limiter.replicas()));
        tokio::select! {
            r = status.changed() => {
                if r.is_err() {
                    return;
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Per-source-address limit applied before authentication (per replica, not divided).
pub struct SourceLimiter<C: Clock + Clone = DefaultClock> {
    clock: C,
    limiter: Keyed<IpAddr, C>,
}

impl SourceLimiter<DefaultClock> {
    /// A limiter on the real clock.
    pub fn new(limit: RateLimit) -> Self {
        Self::with_clock(limit, DefaultClock::default())
    }
}

impl<C: Clock + Clone> SourceLimiter<C> {
    /// A limiter on `clock`.
    pub fn with_clock(limit: RateLimit, clock: C) -> Self {
        SourceLimiter {
            limiter: RateLimiter::new(
                share(limit, 1),
                DefaultKeyedStateStore::default(),
                clock.clone(),
            ),
            clock,
        }
    }

    /// Allows one request (or connection) from `source`, or says how long to wait.
    pub fn check(&self, source: IpAddr) -> Result<(), RetryAfter> {
        self.limiter
            .check_key(&source_key(source))
            .map_err(|n| RetryAfter(n.wait_time_from(self.clock.now())))
    }

    /// Forgets sources whose state is back to full; call periodically to bound memory.
    pub fn housekeeping(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Sources currently tracked.
    pub fn tracked(&self) -> usize {
        self.limiter.len()
    }
}

/// The limiter key of an address: IPv4 as is (IPv4-mapped IPv6 too), IPv6 by its /64.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}
