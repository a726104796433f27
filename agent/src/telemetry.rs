//! The agent's own metrics (`GET /metrics` on the agent's listener), with prometheus-client.
//! Label values are bounded: routes and status classes, never ids or paths from requests.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of a served request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Route name (`instance_metrics`, `node_metrics`, `instances`, `watch`, `own_metrics`,
    /// `healthz`, `other`).
    pub route: &'static str,
    /// HTTP status code.
    pub code: u16,
}

/// Labels naming a collector.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CollectorLabels {
    /// Collector name.
    pub collector: &'static str,
}

/// Labels of a refused scrape or discovery claim.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// [`crate::authorization::Refusal::reason`], or `conflict` / `host_process`.
    pub reason: &'static str,
}

/// Every metric the agent keeps about itself.
pub struct Telemetry {
    registry: Registry,
    /// Requests served.
    pub requests: Family<RequestLabels, Counter>,
    /// Snapshot served from cache.
    pub cache_hits: Counter,
    /// Snapshot collected.
    pub cache_misses: Counter,
    /// Time to collect one container's snapshot.
    pub collection_seconds: Histogram,
    /// Collector failures in served views.
    pub collector_errors: Family<CollectorLabels, Counter>,
    /// Containers known now.
    pub containers: Gauge,
    /// Interfaces served under an escaped name (theirs was not UTF-8), per scrape.
    pub interface_names_escaped: Counter,
    /// Processes the last discovery scan refused to track, by reason (set when encoding).
    pub claims_refused: Family<RefusalLabels, Gauge>,
    /// TLS reloads that failed (the old certificates stay in use).
    pub tls_reload_failures: Counter,
    /// Instance scrapes refused because the live container is not the one the proxy
    /// authorized ([`crate::authorization`]).
    pub scrapes_refused: Family<RefusalLabels, Counter>,
    /// Directory descriptors held for containers now, and the most that may be held (set
    /// when encoding).
    held_directories: Gauge,
    held_directories_budget: Gauge,
}

impl Telemetry {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("lookout_agent");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests served, by route and status code",
            requests.clone(),
        );
        let cache_hits = Counter::default();
        registry.register(
            "cache_hits",
            "Scrapes answered from a cached snapshot",
            cache_hits.clone(),
        );
        let cache_misses = Counter::default();
        registry.register(
            "cache_misses",
            "Scrapes that needed a new collection",
            cache_misses.clone(),
        );
        let collection_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 14));
        registry.register(
            "collection_seconds",
            "Time to collect one container's snapshot",
            collection_seconds.clone(),
        );
        let collector_errors = Family::<CollectorLabels, Counter>::default();
        registry.register(
            "collector_errors",
            "Collectors that failed in a served view",
            collector_errors.clone(),
        );
        let containers = Gauge::default();
        registry.register(
            "containers",
            "Containers known on this node",
            containers.clone(),
        );
        let interface_names_escaped = Counter::default();
        registry.register(
            "interface_names_escaped",
            "Interfaces in served views whose kernel name was not UTF-8, shown with \\xNN escapes",
            interface_names_escaped.clone(),
        );
        let claims_refused = Family::<RefusalLabels, Gauge>::default();
        registry.register(
            "claims_refused",
            "Processes discovery refused to track now: conflicting state files claim one (reason conflict), or one is in all of the host's namespaces (reason host_process)",
            claims_refused.clone(),
        );
        let tls_reload_failures = Counter::default();
        registry.register(
            "tls_reload_failures",
            "Certificate reloads that failed; the previous certificates stay in use",
            tls_reload_failures.clone(),
        );
        let scrapes_refused = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "scrapes_refused",
            "Instance scrapes answered 404 because the live container is not the tenant's or incarnation the proxy authorized",
            scrapes_refused.clone(),
        );
        let held_directories = Gauge::default();
        registry.register(
            "held_directories",
            "Cgroup and /proc/<pid> directories held open for reads (see held_directories_budget)",
            held_directories.clone(),
        );
        let held_directories_budget = Gauge::default();
        registry.register(
            "held_directories_budget",
            "Directories that may be held; past it, containers are read by path at more CPU",
            held_directories_budget.clone(),
        );
        Telemetry {
            registry,
            requests,
            cache_hits,
            cache_misses,
            collection_seconds,
            collector_errors,
            containers,
            interface_names_escaped,
            claims_refused,
            tls_reload_failures,
            scrapes_refused,
            held_directories,
            held_directories_budget,
        }
    }

    /// OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.held_directories
            .set(gauge(crate::kernel_file::dir_fds()));
        self.held_directories_budget
            .set(gauge(crate::kernel_file::dir_budget()));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}
