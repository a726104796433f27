//! The agent's configuration: a TOML file parsed once into typed structs, with every problem
//! reported together (not just the first) before the agent starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lookout_discovery::etcd::EtcdConfig;
use serde::Deserialize;

use crate::source::rules::CgroupRule;

/// Default runc-family state roots: runc's own, containerd's namespaces, Docker's.
pub const DEFAULT_RUNC_ROOTS: &[&str] = &[
    "/run/runc",
    "/run/containerd/runc/k8s.io",
    "/run/containerd/runc/moby",
    "/run/containerd/runc/default",
    "/run/docker/runtime-runc/moby",
];

/// Default crun state root.
pub const DEFAULT_CRUN_ROOTS: &[&str] = &["/run/crun"];

/// The whole agent configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This node's id (a DNS label); defaults to the host name, lowercased.
    #[serde(default)]
    pub node_id: Option<String>,
    /// Where proxies connect (mTLS). Default `0.0.0.0:9164`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// TLS material; required: the agent never serves plaintext.
    pub tls: TlsConfig,
    /// Filesystem roots, so tests can point the agent at fixture trees.
    #[serde(default)]
    pub roots: Roots,
    /// How containers are found.
    #[serde(default)]
    pub discovery: DiscoveryConfig,
    /// Which labels carry ownership and naming.
    #[serde(default)]
    pub labels: LabelKeys,
    /// Cost controls.
    #[serde(default)]
    pub collection: CollectionConfig,
    /// Register this node and its containers in etcd, for proxies using the `etcd` inventory
    /// source ([`lookout_discovery::etcd`]). Default: none (proxies watch the agent directly).
    /// `advertise` is required here: the `host:port` proxies reach this agent at.
    #[serde(default)]
    pub etcd: Option<EtcdConfig>,
}

/// Server certificate and the operator CA that signs proxy client certificates.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain of this agent.
    pub cert: PathBuf,
    /// PEM private key of this agent.
    pub key: PathBuf,
    /// PEM CA certificate(s); only client certificates issued by these are accepted.
    pub client_ca: PathBuf,
    /// How often the files are checked for changes (hot reload). Default 10 s.
    #[serde(default = "default_reload", with = "humantime_serde")]
    pub reload_interval: Duration,
}

/// Host filesystem roots.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Roots {
    /// procfs mount. Default `/proc`.
    #[serde(default = "default_proc")]
    pub proc: PathBuf,
    /// cgroup filesystem root (v1 controllers below it, or the v2 unified tree). Default
    /// `/sys/fs/cgroup`.
    #[serde(default = "default_cgroup")]
    pub cgroup: PathBuf,
    /// sysfs mount, for block device names. Default `/sys`.
    #[serde(default = "default_sys")]
    pub sys: PathBuf,
}

/// Container sources.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// runc-family state roots (each holds `<id>/state.json`). Missing roots are fine: they
    /// are watched for when they appear at the next rescan.
    #[serde(default = "default_runc_roots")]
    pub runc_roots: Vec<PathBuf>,
    /// crun state roots (each holds `<id>/status`).
    #[serde(default = "default_crun_roots")]
    pub crun_roots: Vec<PathBuf>,
    /// Cgroup path rules for runtimes without runc-style state. Replaces the defaults when
    /// given; set `default_cgroup_rules = false` to use none of the defaults.
    #[serde(default)]
    pub cgroup_rules: Vec<CgroupRule>,
    /// Include the built-in rules for systemd-nspawn, libvirt and LXC/Incus. Default true.
    #[serde(default = "yes")]
    pub default_cgroup_rules: bool,
    /// Full rescan period, the safety net behind inotify. Default 30 s.
    #[serde(default = "default_rescan", with = "humantime_serde")]
    pub rescan_interval: Duration,
}

/// Label (OCI annotation) keys that carry metadata. Ownership must come from labels the
/// operator's orchestrator sets, never from anything a tenant controls inside the container.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelKeys {
    /// Owning tenant. Default `lookout.tenant`.
    #[serde(default = "k_tenant")]
    pub tenant: String,
    /// Display name (`nodename`). Default `lookout.alias`.
    #[serde(default = "k_alias")]
    pub alias: String,
    /// Comma-separated groups. Default `lookout.groups`.
    #[serde(default = "k_groups")]
    pub groups: String,
    /// Image. Default `lookout.image`.
    #[serde(default = "k_image")]
    pub image: String,
    /// Orchestrator UUID used as the instance id when it is a DNS label. Default `lookout.id`.
    #[serde(default = "k_id")]
    pub id: String,
    /// When no tenant label is set, use the Kubernetes pod namespace (from the CRI
    /// annotations containerd and CRI-O write) as the tenant. Default true.
    #[serde(default = "yes")]
    pub tenant_from_kubernetes_namespace: bool,
    /// Tenant owning every container that has no tenant from the keys above: for a node
    /// given whole to one tenant, and for `lookout dev`. Default none: such containers are
    /// unowned, visible to operators only.
    #[serde(default)]
    pub default_tenant: Option<String>,
}

/// Cost controls: how the agent protects the node it watches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectionConfig {
    /// A container's snapshot is reused for this long; concurrent scrapes share one
    /// collection. Default 1 s (shorter than any sane scrape interval, so `rate()` is exact).
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// Collections that may run at once, node-wide: the agent's CPU bound. Default 1.
    #[serde(default = "one")]
    pub max_concurrent: usize,
    /// Deadline of a request that sends no `X-Prometheus-Scrape-Timeout-Seconds`. Default 10 s.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub default_timeout: Duration,
    /// Per-mount statfs deadline; a mount that exceeds it is reported failed and skipped
    /// until its stuck call returns. Default 1 s.
    #[serde(default = "default_statfs", with = "humantime_serde")]
    pub statfs_timeout: Duration,
    /// Task-state sampling period for the per-container load average. Default 5 s (the
    /// kernel's own LOAD_FREQ).
    #[serde(default = "default_load", with = "humantime_serde")]
    pub load_interval: Duration,
    /// Most open client connections. Default 256.
    #[serde(default = "default_conns")]
    pub max_connections: usize,
    /// How long a container's limits and mount list are reused; a changed limit of the
    /// container or a new mount shows within this time, a changed limit of an ancestor
    /// cgroup (shared by many containers, read once per half of it) within 1.5 times it.
    /// Default 60 s.
    #[serde(default = "default_limits_ttl", with = "humantime_serde")]
    pub limits_ttl: Duration,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 9164))
}
fn default_reload() -> Duration {
    Duration::from_secs(10)
}
fn default_proc() -> PathBuf {
    "/proc".into()
}
fn default_cgroup() -> PathBuf {
    "/sys/fs/cgroup".into()
}
fn default_sys() -> PathBuf {
    "/sys".into()
}
fn default_runc_roots() -> Vec<PathBuf> {
    DEFAULT_RUNC_ROOTS.iter().map(PathBuf::from).collect()
}
fn default_crun_roots() -> Vec<PathBuf> {
    DEFAULT_CRUN_ROOTS.iter().map(PathBuf::from).collect()
}
fn default_rescan() -> Duration {
    Duration::from_secs(30)
}
fn yes() -> bool {
    true
}
fn one() -> usize {
    1
}
fn k_tenant() -> String {
    "lookout.tenant".into()
}
fn k_alias() -> String {
    "lookout.alias".into()
}
fn k_groups() -> String {
    "lookout.groups".into()
}
fn k_image() -> String {
    "lookout.image".into()
}
fn k_id() -> String {
    "lookout.id".into()
}
fn default_ttl() -> Duration {
    Duration::from_secs(1)
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_statfs() -> Duration {
    Duration::from_secs(1)
}
fn default_load() -> Duration {
    Duration::from_secs(5)
}
fn default_conns() -> usize {
    256
}
fn default_limits_ttl() -> Duration {
    crate::cgroup::DEFAULT_LIMITS_TTL
}

impl Default for Roots {
    fn default() -> Self {
        Roots {
            proc: default_proc(),
            cgroup: default_cgroup(),
            sys: default_sys(),
        }
    }
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            runc_roots: default_runc_roots(),
            crun_roots: default_crun_roots(),
            cgroup_rules: Vec::new(),
            default_cgroup_rules: true,
            rescan_interval: default_rescan(),
        }
    }
}

impl Default for LabelKeys {
    fn default() -> Self {
        LabelKeys {
            tenant: k_tenant(),
            alias: k_alias(),
            groups: k_groups(),
            image: k_image(),
            id: k_id(),
            tenant_from_kubernetes_namespace: true,
            default_tenant: None,
        }
    }
}

impl Default for CollectionConfig {
    fn default() -> Self {
        CollectionConfig {
            cache_ttl: default_ttl(),
            max_concurrent: 1,
            default_timeout: default_timeout(),
            statfs_timeout: default_statfs(),
            load_interval: default_load(),
            max_connections: default_conns(),
            limits_ttl: default_limits_ttl(),
        }
    }
}

/// Everything wrong with a configuration, one problem per entry.
#[derive(Debug, thiserror::Error)]
#[error("invalid agent configuration {path}:\n  - {}", problems.join("\n  - "))]
pub struct ConfigError {
    /// The file.
    pub path: String,
    /// Each problem found.
    pub problems: Vec<String>,
}

impl AgentConfig {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let fail = |p: String| ConfigError {
            path: path.display().to_string(),
            problems: vec![p],
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
        let cfg = AgentConfig::parse(&text).map_err(|e| fail(e.to_string()))?;
        let problems = cfg.problems();
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError {
                path: path.display().to_string(),
                problems,
            })
        }
    }

    /// Parses TOML without touching the filesystem.
    pub fn parse(text: &str) -> Result<AgentConfig, toml::de::Error> {
        toml::from_str(text)
    }

    /// Every semantic problem: files that cannot be read, values out of range, rules that do
    /// not compile.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Some(id) = &self.node_id {
            if !lookout_discovery::is_dns_label(id) {
                p.push(format!(
                    "node_id {id:?} is not a DNS label (lowercase a-z, 0-9, '-', at most 63)"
                ));
            }
        }
        for (name, file) in [
            ("tls.cert", &self.tls.cert),
            ("tls.key", &self.tls.key),
            ("tls.client_ca", &self.tls.client_ca),
        ] {
            if let Err(e) = std::fs::metadata(file) {
                p.push(format!("{name} {}: {e}", file.display()));
            }
        }
        if p.is_empty() {
            if let Err(e) = crate::tls::server_config(&self.tls) {
                p.push(format!("tls: {e}"));
            }
        }
        for (name, dir) in [
            ("roots.proc", &self.roots.proc),
            ("roots.cgroup", &self.roots.cgroup),
        ] {
            if !dir.is_dir() {
                p.push(format!("{name} {} is not a directory", dir.display()));
            }
        }
        for rule in &self.discovery.cgroup_rules {
            if let Err(e) = rule.compile() {
                p.push(format!("discovery.cgroup_rules {:?}: {e}", rule.name));
            }
        }
        if self.labels.default_tenant.as_deref() == Some("") {
            p.push("labels.default_tenant must not be empty (leave it out for none)".into());
        }
        let c = &self.collection;
        if c.max_concurrent == 0 {
            p.push("collection.max_concurrent must be at least 1".into());
        }
        if c.max_connections == 0 {
            p.push("collection.max_connections must be at least 1".into());
        }
        if c.cache_ttl > Duration::from_secs(60) {
            p.push("collection.cache_ttl over 60 s would serve stale counters".into());
        }
        for (name, d) in [
            ("collection.default_timeout", c.default_timeout),
            ("collection.statfs_timeout", c.statfs_timeout),
            ("collection.load_interval", c.load_interval),
            ("discovery.rescan_interval", self.discovery.rescan_interval),
            ("tls.reload_interval", self.tls.reload_interval),
        ] {
            if d.is_zero() {
                p.push(format!("{name} must be greater than zero"));
            }
        }
        if let Some(etcd) = &self.etcd {
            p.extend(etcd.problems().into_iter().map(|e| format!("etcd.{e}")));
            if etcd.advertise.is_none() {
                p.push(
                    "etcd.advertise is required: the host:port proxies reach this agent at".into(),
                );
            }
        }
        p
    }

    /// The cgroup rules in force: configured ones, then the defaults unless disabled.
    pub fn effective_rules(&self) -> Vec<CgroupRule> {
        let mut rules = self.discovery.cgroup_rules.clone();
        if self.discovery.default_cgroup_rules {
            rules.extend(crate::source::rules::defaults());
        }
        rules
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_a_minimal_file() {
        let cfg = AgentConfig::parse("[tls]\ncert = \"/c\"\nkey = \"/k\"\nclient_ca = \"/ca\"\n")
            .expect("minimal config parses");
        assert_eq!(cfg.listen.port(), 9164);
        assert_eq!(cfg.labels.tenant, "lookout.tenant");
        assert_eq!(cfg.collection.max_concurrent, 1);
        assert!(cfg
            .discovery
            .runc_roots
            .contains(&PathBuf::from("/run/runc")));
    }

    #[test]
    fn every_problem_is_listed() {
        let cfg = AgentConfig::parse(
            r#"node_id = "Bad_Node"
[tls]
cert = "/nonexistent/c"
key = "/nonexistent/k"
client_ca = "/nonexistent/ca"
[roots]
proc = "/nonexistent/proc"
[collection]
max_concurrent = 0
load_interval = "0s"
[[discovery.cgroup_rules]]
name = "broken"
pattern = "("
[etcd]
endpoints = ["ftp://x"]
"#,
        )
        .expect("syntax is fine");
        let p = cfg.problems();
        let all = p.join("\n");
        for needle in [
            "node_id",
            "tls.cert",
            "tls.key",
            "tls.client_ca",
            "roots.proc",
            "max_concurrent",
            "load_interval",
            "broken",
            "etcd.endpoints",
            "etcd.advertise is required",
        ] {
            assert!(all.contains(needle), "missing {needle} in {all}");
        }
    }

    #[test]
    fn the_example_parses_with_and_without_etcd() {
        let text = include_str!("../../deploy/config/agent.toml");
        let cfg = AgentConfig::parse(text).expect("deploy/config/agent.toml parses");
        assert!(cfg.etcd.is_none());
        let (head, block) = text
            .split_once("# [etcd]\n")
            .expect("the example documents [etcd]");
        let block: String = block
            .lines()
            .map(|l| format!("{}\n", l.strip_prefix("# ").unwrap_or(l)))
            .collect();
        let cfg = AgentConfig::parse(&format!("{head}[etcd]\n{block}"))
            .expect("the [etcd] example parses");
        let etcd = cfg.etcd.expect("etcd");
        assert_eq!(etcd.advertise.as_deref(), Some("10.0.0.11:9164"));
        assert_eq!(etcd.lease_ttl, Duration::from_secs(10));
        let p = etcd.problems();
        assert!(
            p.iter().all(|p| p.starts_with("tls.")),
            "only the example's TLS files are missing here: {p:?}"
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = AgentConfig::parse(
            "listne = \"0.0.0.0:1\"\n[tls]\ncert = \"/c\"\nkey = \"/k\"\nclient_ca = \"/ca\"\n",
        )
        .expect_err("typo must fail");
        assert!(e.to_string().contains("listne"), "{e}");
    }
}
