//! The proxy's own metrics, served on the admin listener with prometheus-client.
//!
//! Label values are bounded: tenant names come from the tenants file (`-` before
//! authentication), routes and status classes are fixed sets, error kinds an enum. Never an
//! instance id, a path or a Host from a request.

use std::sync::atomic::AtomicU64;
use std::time::SystemTime;

use lookout_discovery::Shared;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of a served request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The tenant (a configured name), or `-` when not authenticated.
    pub tenant: String,
    /// Route name (`discover`, `gz_discover`, `sd`, `gz_sd`, `instance_metrics`,
    /// `node_metrics`, `ping`, `healthz`, `readyz`, `other`).
    pub route: &'static str,
    /// `2xx`, `4xx`, `5xx`, …
    pub code: &'static str,
}

/// Labels of a duration sample.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// Route name, as in [`RequestLabels::route`].
    pub route: &'static str,
}

/// Labels of a throttled request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ThrottleLabels {
    /// `source` (before authentication) or `tenant`.
    pub scope: &'static str,
}

/// Labels of an upstream failure.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    /// `unreachable`, `timeout`, `protocol`, `agent_status` or `no_agent`.
    pub kind: &'static str,
}

/// Labels of a refused authentication.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthLabels {
    /// The [`crate::identity::IdentityError`] variant, snake case.
    pub reason: &'static str,
}

/// Every metric the proxy keeps about itself.
pub struct Telemetry {
    registry: Registry,
    /// Requests served.
    pub requests: Family<RequestLabels, Counter>,
    /// Time from request headers to response headers.
    pub request_seconds: Family<RouteLabels, Histogram>,
    /// Requests refused with 429.
    pub throttled: Family<ThrottleLabels, Counter>,
    /// Failed upstream requests, by kind.
    pub upstream_errors: Family<UpstreamLabels, Counter>,
    /// Refused authentications, by reason.
    pub auth_failures: Family<AuthLabels, Counter>,
    /// Open client connections.
    pub connections: Gauge,
    /// Connections closed at once because `limits.max_connections` were open.
    pub connections_refused: Counter,
    /// Certificate reloads that failed (the previous certificates stay in use).
    pub tls_reload_failures: Counter,
    /// Tenant changes refused (file or etcd; the previous tenants stay in force).
    pub tenants_reload_failures: Counter,
    /// 1 while the tenants of etcd are watched (`[tenants] etcd`), else 0.
    pub tenants_etcd_up: Gauge,
    /// Instances in the inventory (set at each scrape of the admin listener).
    pub inventory_instances: Gauge,
    /// Nodes in the inventory.
    pub inventory_nodes: Gauge,
    /// Instance ids more than one node claims now, served to nobody.
    pub inventory_conflicting_instances: Gauge,
    /// Node ids more than one agent claims now, routed to nobody.
    pub inventory_conflicting_nodes: Gauge,
    /// Discovery bodies rendered (the others were served from the cache), by route.
    pub discovery_renders: Family<RouteLabels, Counter>,
    /// Seconds since the inventory was last published (−1: never).
    pub inventory_age_seconds: Gauge<f64, AtomicU64>,
    /// 1 when the inventory source's last attempt succeeded, else 0.
    pub inventory_source_up: Gauge,
    /// Replicas this proxy assumes share the tenants' limits (configured or from DNS).
    pub replicas: Gauge,
    /// Replica-count DNS lookups that failed or listed nothing (the last count stays).
    pub replicas_dns_failures: Counter,
}

impl Telemetry {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("lookout_proxy");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests served, by tenant, route and status class",
            requests.clone(),
        );
        let request_seconds = Family::<RouteLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.0005, 2.0, 16))) as fn() -> Histogram,
        );
        registry.register(
            "request_seconds",
            "Time from request headers to response headers, by route",
            request_seconds.clone(),
        );
        let throttled = Family::<ThrottleLabels, Counter>::default();
        registry.register(
            "throttled",
            "Requests refused with 429, by limit scope",
            throttled.clone(),
        );
        let upstream_errors = Family::<UpstreamLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Failed requests to agents, by kind",
            upstream_errors.clone(),
        );
        let auth_failures = Family::<AuthLabels, Counter>::default();
        registry.register(
            "auth_failures",
            "Requests refused with 401, by reason",
            auth_failures.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "connections",
            "Open client connections",
            connections.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "connections_refused",
            "Connections closed at once because the connection limit was reached",
            connections_refused.clone(),
        );
        let tls_reload_failures = Counter::default();
        registry.register(
            "tls_reload_failures",
            "Certificate reloads that failed; the previous certificates stay in use",
            tls_reload_failures.clone(),
        );
        let tenants_reload_failures = Counter::default();
        registry.register(
            "tenants_reload_failures",
            "Tenant changes (file or etcd) refused; the previous tenants stay in force",
            tenants_reload_failures.clone(),
        );
        let tenants_etcd_up = Gauge::default();
        registry.register(
            "tenants_etcd_up",
            "1 while the tenants in etcd are watched ([tenants] etcd); 0 when not configured or etcd is failing",
            tenants_etcd_up.clone(),
        );
        let inventory_instances = Gauge::default();
        registry.register(
            "inventory_instances",
            "Instances in the inventory",
            inventory_instances.clone(),
        );
        let inventory_nodes = Gauge::default();
        registry.register(
            "inventory_nodes",
            "Nodes in the inventory",
            inventory_nodes.clone(),
        );
        let inventory_conflicting_instances = Gauge::default();
        registry.register(
            "inventory_conflicting_instances",
            "Instance ids claimed by more than one node now; served to nobody until one node claims each",
            inventory_conflicting_instances.clone(),
        );
        let inventory_conflicting_nodes = Gauge::default();
        registry.register(
            "inventory_conflicting_nodes",
            "Node ids claimed by more than one agent now; routed to nobody until one agent claims each",
            inventory_conflicting_nodes.clone(),
        );
        let discovery_renders = Family::<RouteLabels, Counter>::default();
        registry.register(
            "discovery_renders",
            "Discovery bodies rendered because what they show changed or was not cached, by route",
            discovery_renders.clone(),
        );
        let inventory_age_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "inventory_age_seconds",
            "Seconds since the inventory was last published; -1 when it never was",
            inventory_age_seconds.clone(),
        );
        let inventory_source_up = Gauge::default();
        registry.register(
            "inventory_source_up",
            "1 when the inventory source's last attempt succeeded, else 0",
            inventory_source_up.clone(),
        );
        let replicas = Gauge::default();
        registry.register(
            "replicas",
            "Proxy replicas assumed to share the tenants' cluster-wide rate limits",
            replicas.clone(),
        );
        let replicas_dns_failures = Counter::default();
        registry.register(
            "replicas_dns_failures",
            "Replica-count DNS lookups that failed or listed nothing; the last count stays",
            replicas_dns_failures.clone(),
        );
        Telemetry {
            registry,
            requests,
            request_seconds,
            throttled,
            upstream_errors,
            auth_failures,
            connections,
            connections_refused,
            tls_reload_failures,
            tenants_reload_failures,
            tenants_etcd_up,
            inventory_instances,
            inventory_nodes,
            inventory_conflicting_instances,
            inventory_conflicting_nodes,
            discovery_renders,
            inventory_age_seconds,
            inventory_source_up,
            replicas,
            replicas_dns_failures,
        }
    }

    /// Refreshes the inventory gauges from `shared`.
    pub fn observe_inventory(&self, shared: &Shared) {
        let inv = shared.load();
        let status = shared.status();
        self.inventory_instances
            .set(i64::try_from(inv.instance_count()).unwrap_or(i64::MAX));
        self.inventory_nodes
            .set(i64::try_from(inv.node_count()).unwrap_or(i64::MAX));
        let age = status.last_success.map_or(-1.0, |t| {
            SystemTime::now()
                .duration_since(t)
                .map_or(0.0, |d| d.as_secs_f64())
        });
        self.inventory_age_seconds.set(age);
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.inventory_conflicting_instances
            .set(gauge(status.conflicts.instances));
        self.inventory_conflicting_nodes
            .set(gauge(status.conflicts.nodes));
        let up = status.last_success.is_some() && status.last_error.is_none();
        self.inventory_source_up.set(i64::from(up));
    }

    /// OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
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

/// The status class label of a status code (`1xx` … `5xx`).
pub fn status_class(code: u16) -> &'static str {
    match code {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
