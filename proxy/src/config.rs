//! The proxy's configuration: a TOML file parsed once into typed structs, with every problem
//! reported together (not just the first) before the proxy starts.
//!
//! ```toml
//! listen = "0.0.0.0:9163"              # tenants' HTTPS listener (default)
//! admin_listen = "127.0.0.1:9165"      # own metrics, plain HTTP; keep it on loopback (default)
//! base_name = "lookout.example.com"    # the discovery host
//! base_aliases = ["localhost"]         # optional: more names for the discovery host
//! ip_literals_are_base = false         # optional: `Host: 10.0.0.5:9163` is the discovery host
//! dns_suffix = "lookout.example.com"   # `<id>.<dns_suffix>` names instances and nodes
//! sd_port = 9163                       # port in HTTP SD targets; default: the listen port
//! tenants_file = "/etc/lookout/tenants.toml"   # optional with [tenants] etcd
//! tenants_reload_interval = "10s"      # how often the tenants file is checked (default)
//!
//! [tenants]                            # optional: tenants in etcd too (`lookout tenants`)
//! etcd = true                          # through the [inventory] etcd connection (source =
//!                                      # "etcd"); or a table of its own: [tenants.etcd] with
//!                                      # the keys of lookout_discovery::etcd::EtcdConfig
//!
//! [tls]                                # the tenants-facing listener
//! cert = "/etc/lookout/server.pem"     # SANs: base_name and *.<dns_suffix>
//! key = "/etc/lookout/server-key.pem"
//! tenant_ca = "/etc/lookout/tenant-ca.pem"   # optional: CA whose certificates name tenants
//! reload_interval = "10s"              # default
//!
//! [upstream]                           # how the proxy reaches agents (mTLS)
//! cert = "/etc/lookout/proxy.pem"      # issued by the operator CA
//! key = "/etc/lookout/proxy-key.pem"
//! ca = "/etc/lookout/ca.pem"           # the operator CA
//! connect_timeout = "5s"               # default
//! idle_timeout = "90s"                 # default
//! scrape_timeout = "10s"               # default when X-Prometheus-Scrape-Timeout-Seconds is absent
//!
//! [inventory]
//! source = "agents"                    # or "file"
//! agents = ["node1.example.net:9164"]  # the rest as lookout_discovery::agents::AgentsConfig
//! [inventory.tls]
//! cert = "/etc/lookout/proxy.pem"
//! key = "/etc/lookout/proxy-key.pem"
//! ca = "/etc/lookout/ca.pem"
//!
//! # or:
//! # [inventory]
//! # source = "file"
//! # path = "/etc/lookout/inventory.toml"
//! # reload_interval = "5s"
//!
//! # or (many nodes, many replicas): the rest as lookout_discovery::etcd::EtcdConfig
//! # [inventory]
//! # source = "etcd"
//! # endpoints = ["https://etcd1.example.net:2379"]
//! # prefix = "/lookout/"
//! # lease_ttl = "10s"                  # this replica's registration under <prefix>proxies/
//! # advertise = "10.0.0.5:9163"        # optional: recorded in this replica's key
//! # [inventory.tls]
//! # ca = "/etc/lookout/etcd-ca.pem"
//!
//! [limits]
//! replicas = 1                         # proxy replicas sharing the tenants' rate limits
//!                                      # (default 1); with replicas_dns: the count until DNS
//!                                      # first answers; unset with source = "etcd": the live
//!                                      # replicas registered in etcd
//! max_connections = 4096               # open client connections, beyond which new ones close
//! handshake_timeout = "10s"            # TLS handshake bound
//! header_read_timeout = "10s"          # request headers bound (HTTP/1.1)
//! idle_timeout = "2m"                  # a connection with no new request this long is closed
//! max_header_bytes = 16384             # request header bytes (at least 8192)
//! source = { per_second = 50.0, burst = 200 }   # per source address, before authentication
//!
//! [limits.replicas_dns]                # optional: count the replicas in DNS instead
//! name = "proxies.lookout.example.com"
//! kind = "a"                           # "a" (default) / "aaaa": distinct addresses;
//!                                      # "srv": distinct target:port pairs
//! refresh = "30s"                      # default; sooner when the records' TTL is shorter
//! server = "10.0.0.53:53"              # optional: ask this name server only (port 53 when
//!                                      # omitted); default: the system's (/etc/resolv.conf)
//! ```
//!
//! Durations are a number and a unit: `ms`, `s`, `m`, `h`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lookout_discovery::agents::config::{check_dns_name, name_server};
use lookout_discovery::agents::resolve::RecordKind;
use lookout_discovery::agents::AgentsConfig;
use lookout_discovery::etcd::EtcdConfig;
use serde::Deserialize;

use crate::tenants::RateLimit;
use crate::upstream::UpstreamConfig;

/// The whole proxy configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Tenants' HTTPS listener. Default `0.0.0.0:9163`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Own-metrics listener, plain HTTP. Default `127.0.0.1:9165`.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: SocketAddr,
    /// The discovery host name, e.g. `lookout.example.com`.
    pub base_name: String,
    /// More names answered as the discovery host (e.g. `localhost`). Default none.
    #[serde(default)]
    pub base_aliases: Vec<String>,
    /// Whether an IP-literal Host is the discovery host. Default false.
    #[serde(default)]
    pub ip_literals_are_base: bool,
    /// The zone under which `<id>.<dns_suffix>` names instances and nodes.
    pub dns_suffix: String,
    /// Port written into HTTP SD targets. Default: the port of `listen`.
    #[serde(default)]
    pub sd_port: Option<u16>,
    /// The tenants file ([`crate::tenants`]). Optional when `[tenants] etcd` is set; with
    /// both, the two sets are merged.
    #[serde(default)]
    pub tenants_file: Option<PathBuf>,
    /// How often the tenants file is checked for changes. Default 10 s.
    #[serde(default = "ten_seconds", with = "humantime_serde")]
    pub tenants_reload_interval: Duration,
    /// Tenants from etcd.
    #[serde(default)]
    pub tenants: TenantsSection,
    /// The listener's certificate and the tenant CA.
    pub tls: ServerTlsConfig,
    /// The connection to agents.
    pub upstream: UpstreamSection,
    /// Where the inventory comes from.
    pub inventory: InventoryConfig,
    /// Bounds.
    #[serde(default)]
    pub limits: LimitsConfig,
}

/// `[tenants]`: where tenants come from besides `tenants_file`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantsSection {
    /// Read tenants from etcd too (`<prefix>tenants/…`, [`crate::tenants::etcd`]), watched
    /// and applied without restart. Default: no.
    #[serde(default)]
    pub etcd: TenantsEtcd,
}

/// `[tenants] etcd`: `false` (default), `true` (the `[inventory]` etcd connection and prefix),
/// or a table: a connection of its own ([`EtcdConfig`]), e.g. with the `agents` inventory.
#[derive(Debug, Clone, Default)]
pub enum TenantsEtcd {
    /// Tenants come from the file only.
    #[default]
    Off,
    /// Through the `[inventory]` etcd connection (`source = "etcd"`).
    Inventory,
    /// Through this connection.
    Own(Box<EtcdConfig>),
}

impl<'de> Deserialize<'de> for TenantsEtcd {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Read the value first, so that a table's mistakes are reported as EtcdConfig's
        // (unknown field, bad duration) rather than as "matched no variant".
        match toml::Value::deserialize(d)? {
            toml::Value::Boolean(false) => Ok(TenantsEtcd::Off),
            toml::Value::Boolean(true) => Ok(TenantsEtcd::Inventory),
            v @ toml::Value::Table(_) => v
                .try_into::<EtcdConfig>()
                .map(|e| TenantsEtcd::Own(Box::new(e)))
                .map_err(serde::de::Error::custom),
            _ => Err(serde::de::Error::custom(
                "want true, false, or a table of etcd settings",
            )),
        }
    }
}

/// The tenants-facing TLS material (PEM files), re-read when they change.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// Certificate chain; its SANs should cover `base_name` and `*.<dns_suffix>`.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
    /// CA certificate(s) whose issued certificates name tenants (CN/SAN). Optional: without
    /// it only registered keys and bearer tokens authenticate.
    #[serde(default)]
    pub tenant_ca: Option<PathBuf>,
    /// How often the files are checked for changes. Default 10 s.
    #[serde(default = "ten_seconds", with = "humantime_serde")]
    pub reload_interval: Duration,
}

/// `[upstream]`: the proxy's client identity towards agents.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    /// Client certificate, issued by the operator CA.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// The operator CA agents' certificates chain to.
    pub ca: PathBuf,
    /// TCP connect + TLS handshake bound. Default 5 s.
    #[serde(default = "five_seconds", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long an idle pooled connection is kept. Default 90 s.
    #[serde(default = "ninety_seconds", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Scrape deadline when the client sends no `X-Prometheus-Scrape-Timeout-Seconds`.
    /// Default 10 s (Prometheus's default scrape timeout).
    #[serde(default = "ten_seconds", with = "humantime_serde")]
    pub scrape_timeout: Duration,
    /// Name server for agent addresses that are names (resolved with hickory-resolver,
    /// answers cached by their TTL). Default: the system's (`/etc/resolv.conf`).
    #[serde(default)]
    pub dns_server: Option<SocketAddr>,
}

impl UpstreamSection {
    /// The [`UpstreamConfig`] for [`crate::upstream::Upstream::new`].
    pub fn upstream_config(&self) -> UpstreamConfig {
        UpstreamConfig {
            cert: self.cert.clone(),
            key: self.key.clone(),
            ca: self.ca.clone(),
            connect_timeout: self.connect_timeout,
            idle_timeout: self.idle_timeout,
        }
    }
}

/// `[inventory]`: which discovery source fills the inventory.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "source", rename_all = "lowercase")]
// Parsed once at start and held once: boxing the larger variant would save nothing real.
#[allow(clippy::large_enum_variant)]
pub enum InventoryConfig {
    /// Watch agents' instance streams ([`lookout_discovery::agents`]).
    Agents(AgentsConfig),
    /// One TOML/JSON file ([`lookout_discovery::file`]).
    File(FileSourceConfig),
    /// Watch one etcd prefix, and register this replica there ([`lookout_discovery::etcd`]).
    Etcd(EtcdConfig),
}

/// The `file` inventory source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// The inventory file.
    pub path: PathBuf,
    /// How often it is checked for changes. Default 5 s.
    #[serde(default = "five_seconds", with = "humantime_serde")]
    pub reload_interval: Duration,
}

/// `[limits]`: what bounds the proxy's cost.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Proxy replicas sharing the tenants' cluster-wide rate limits. With
    /// [`LimitsConfig::replicas_dns`], the count in force until DNS first answers. Unset:
    /// 1, or — with the `etcd` inventory source and no `replicas_dns` — the number of live
    /// replicas registered in etcd ([`LimitsConfig::follows_etcd`]).
    #[serde(default)]
    pub replicas: Option<u32>,
    /// Learn the replica count from DNS, re-resolved periodically ([`crate::limit`]).
    /// Default: none (`replicas` is fixed).
    #[serde(default)]
    pub replicas_dns: Option<ReplicasDnsConfig>,
    /// Most open client connections; more are closed at once. Default 4096.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Time a client has to finish the TLS handshake. Default 10 s.
    #[serde(default = "ten_seconds", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Time a client has to send a request's headers (HTTP/1.1). Default 10 s.
    #[serde(default = "ten_seconds", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A client connection on which no request has started for this long is closed
    /// gracefully (requests in flight finish first), HTTP/1.1 and HTTP/2 alike. Default 2 min:
    /// longer than any sane scrape interval, so Prometheus keeps its connection.
    #[serde(default = "two_minutes", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Most bytes of request headers. Default 16384; at least 8192.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Per-source-address limit applied before authentication (per replica).
    /// Default 50 r/s, burst 200.
    #[serde(default = "default_source_rate")]
    pub source: RateLimit,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            replicas: None,
            replicas_dns: None,
            max_connections: default_max_connections(),
            handshake_timeout: ten_seconds(),
            header_read_timeout: ten_seconds(),
            idle_timeout: two_minutes(),
            max_header_bytes: default_max_header_bytes(),
            source: default_source_rate(),
        }
    }
}

impl LimitsConfig {
    /// The replica count in force at start (and for good, unless DNS or etcd updates it).
    pub fn initial_replicas(&self) -> u32 {
        self.replicas.unwrap_or(1)
    }

    /// True when the replica count follows the proxies registered in etcd: the `etcd`
    /// inventory source, and neither `replicas` nor `replicas_dns` configured.
    pub fn follows_etcd(&self, inventory: &InventoryConfig) -> bool {
        matches!(inventory, InventoryConfig::Etcd(_))
            && self.replicas.is_none()
            && self.replicas_dns.is_none()
    }
}

/// `[limits.replicas_dns]`: the proxy replicas are the distinct targets of one DNS name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicasDnsConfig {
    /// The name listing every replica, e.g. `proxies.lookout.example.com` (A/AAAA) or
    /// `_lookout-proxy._tcp.example.com` (SRV).
    pub name: String,
    /// `a` (default) or `aaaa`: one replica per distinct address; `srv`: one per distinct
    /// target and port. A and AAAA are separate so that a dual-stack replica counts once.
    #[serde(default = "default_replicas_kind")]
    pub kind: RecordKind,
    /// How often to re-resolve; sooner when the records' TTL is shorter (not more often than
    /// every second). Default 30 s.
    #[serde(default = "thirty_seconds", with = "humantime_serde")]
    pub refresh: Duration,
    /// The one name server to ask (`ip` or `ip:port`, port 53 by default), for split-horizon
    /// setups and tests. Default: the system's (`/etc/resolv.conf`).
    #[serde(default, deserialize_with = "name_server::deserialize")]
    pub server: Option<SocketAddr>,
}

/// Smallest `limits.max_header_bytes` (hyper's own floor for its read buffer).
pub const MIN_HEADER_BYTES: usize = 8192;

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 9163))
}
fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9165))
}
fn two_minutes() -> Duration {
    Duration::from_secs(120)
}

fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}
fn five_seconds() -> Duration {
    Duration::from_secs(5)
}
fn thirty_seconds() -> Duration {
    Duration::from_secs(30)
}
fn default_replicas_kind() -> RecordKind {
    RecordKind::A
}
fn ninety_seconds() -> Duration {
    Duration::from_secs(90)
}
fn default_max_connections() -> usize {
    4096
}
fn default_max_header_bytes() -> usize {
    16 * 1024
}
fn default_source_rate() -> RateLimit {
    RateLimit {
        per_second: 50.0,
        burst: 200,
    }
}

/// Everything wrong with a configuration, one problem per entry.
#[derive(Debug, thiserror::Error)]
#[error("invalid proxy configuration {path}:\n  - {}", problems.join("\n  - "))]
pub struct ConfigError {
    /// The file.
    pub path: String,
    /// Each problem found.
    pub problems: Vec<String>,
}

impl ProxyConfig {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<ProxyConfig, ConfigError> {
        let fail = |p: String| ConfigError {
            path: path.display().to_string(),
            problems: vec![p],
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
        let cfg = ProxyConfig::parse(&text).map_err(|e| fail(e.to_string()))?;
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

    /// Parses TOML without touching the filesystem (no semantic checks: see
    /// [`ProxyConfig::problems`]).
    pub fn parse(text: &str) -> Result<ProxyConfig, toml::de::Error> {
        toml::from_str(text)
    }

    /// The etcd connection tenants are read from, if any (`[tenants] etcd`).
    pub fn tenants_etcd(&self) -> Option<&EtcdConfig> {
        match (&self.tenants.etcd, &self.inventory) {
            (TenantsEtcd::Off, _) => None,
            (TenantsEtcd::Own(e), _) => Some(e),
            (TenantsEtcd::Inventory, InventoryConfig::Etcd(e)) => Some(e),
            (TenantsEtcd::Inventory, _) => None,
        }
    }

    /// The port HTTP SD targets carry (the listen port when `sd_port` is not set; a running
    /// proxy listening on port 0 uses the port it got).
    pub fn sd_port(&self) -> u16 {
        self.sd_port.unwrap_or(self.listen.port())
    }

    /// Every semantic problem: names that are not DNS names, files that cannot be read or
    /// used, values out of range.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        match crate::host::HostRules::new(&self.base_name, &self.dns_suffix) {
            Ok(rules) => {
                for a in &self.base_aliases {
                    if rules.clone().with_base_alias(a).is_err() {
                        p.push(format!("base_aliases: {a:?} is not a DNS name"));
                    }
                }
            }
            Err(e) => p.push(format!("base_name/dns_suffix: {e}")),
        }
        let mut files = vec![
            ("tls.cert", &self.tls.cert),
            ("tls.key", &self.tls.key),
            ("upstream.cert", &self.upstream.cert),
            ("upstream.key", &self.upstream.key),
            ("upstream.ca", &self.upstream.ca),
        ];
        if let Some(f) = &self.tenants_file {
            files.push(("tenants_file", f));
        }
        if let Some(ca) = &self.tls.tenant_ca {
            files.push(("tls.tenant_ca", ca));
        }
        let mut missing = false;
        for (name, file) in files {
            if let Err(e) = std::fs::metadata(file) {
                p.push(format!("{name} {}: {e}", file.display()));
                missing = true;
            }
        }
        if !missing {
            if let Err(e) = crate::server::TlsMaterial::load(&self.tls) {
                p.push(format!("tls: {e}"));
            }
            if let Some(f) = &self.tenants_file {
                if let Err(e) = crate::tenants::Tenants::load(f) {
                    p.push(e.to_string());
                }
            }
        }
        match (&self.tenants.etcd, &self.inventory) {
            (TenantsEtcd::Off, _) if self.tenants_file.is_none() => p.push(
                "tenants_file: set it, or [tenants] etcd, or both: no tenant could authenticate"
                    .into(),
            ),
            (TenantsEtcd::Inventory, InventoryConfig::Etcd(_)) | (TenantsEtcd::Off, _) => {}
            (TenantsEtcd::Inventory, _) => p.push(
                "tenants.etcd = true uses the [inventory] etcd connection, but the inventory \
                 source is not \"etcd\"; give [tenants.etcd] endpoints of its own"
                    .into(),
            ),
            (TenantsEtcd::Own(e), _) => {
                for problem in e.problems() {
                    p.push(format!("tenants.etcd.{problem}"));
                }
            }
        }
        match &self.inventory {
            InventoryConfig::Agents(a) => {
                for problem in a.problems() {
                    p.push(format!("inventory: {problem}"));
                }
            }
            InventoryConfig::Etcd(e) => {
                for problem in e.problems() {
                    p.push(format!("inventory.{problem}"));
                }
            }
            InventoryConfig::File(f) => {
                if f.reload_interval.is_zero() {
                    p.push("inventory.reload_interval must be greater than zero".into());
                }
                if let Err(e) = std::fs::metadata(&f.path) {
                    p.push(format!("inventory.path {}: {e}", f.path.display()));
                }
            }
        }
        let l = &self.limits;
        if l.replicas == Some(0) {
            p.push("limits.replicas must be at least 1".into());
        }
        if let Some(dns) = &l.replicas_dns {
            if let Err(e) = check_dns_name(&dns.name) {
                p.push(format!("limits.replicas_dns.name: {e}"));
            }
            if dns.refresh.is_zero() {
                p.push("limits.replicas_dns.refresh must be greater than zero".into());
            }
            if let Some(e) = dns.server.and_then(name_server::problem) {
                p.push(format!("limits.replicas_dns.server: {e}"));
            }
        }
        if l.max_connections == 0 {
            p.push("limits.max_connections must be at least 1".into());
        }
        if l.max_header_bytes < MIN_HEADER_BYTES {
            p.push(format!(
                "limits.max_header_bytes must be at least {MIN_HEADER_BYTES}"
            ));
        }
        if !(l.source.per_second.is_finite() && l.source.per_second > 0.0) {
            p.push("limits.source.per_second must be a positive number".into());
        }
        if l.source.burst == 0 {
            p.push("limits.source.burst must be at least 1".into());
        }
        for (name, d) in [
            ("limits.handshake_timeout", l.handshake_timeout),
            ("limits.header_read_timeout", l.header_read_timeout),
            ("limits.idle_timeout", l.idle_timeout),
            ("tls.reload_interval", self.tls.reload_interval),
            ("tenants_reload_interval", self.tenants_reload_interval),
            ("upstream.connect_timeout", self.upstream.connect_timeout),
            ("upstream.scrape_timeout", self.upstream.scrape_timeout),
        ] {
            if d.is_zero() {
                p.push(format!("{name} must be greater than zero"));
            }
        }
        if self.listen == self.admin_listen && self.listen.port() != 0 {
            p.push("listen and admin_listen must differ".into());
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
base_name = "lookout.example.com"
dns_suffix = "lookout.example.com"
tenants_file = "/nonexistent/tenants.toml"
[tls]
cert = "/c"
key = "/k"
[upstream]
cert = "/uc"
key = "/uk"
ca = "/uca"
[inventory]
source = "file"
path = "/inv.toml"
"#;

    #[test]
    fn defaults_fill_a_minimal_file() {
        let cfg = ProxyConfig::parse(MINIMAL).expect("parses");
        assert_eq!(cfg.listen.port(), 9163);
        assert_eq!(cfg.admin_listen, SocketAddr::from(([127, 0, 0, 1], 9165)));
        assert_eq!(cfg.sd_port(), 9163);
        assert_eq!(cfg.limits.initial_replicas(), 1);
        assert_eq!(cfg.limits.replicas_dns, None);
        assert!(!cfg.limits.follows_etcd(&cfg.inventory));
        assert_eq!(cfg.upstream.scrape_timeout, Duration::from_secs(10));
        assert!(matches!(cfg.inventory, InventoryConfig::File(_)));
    }

    #[test]
    fn agents_source_parses_and_unknown_keys_are_refused() {
        let agents = MINIMAL.replace(
            "source = \"file\"\npath = \"/inv.toml\"",
            "source = \"agents\"\nagents = [\"n1:9164\"]\n[inventory.tls]\ncert = \"/a\"\nkey = \"/b\"\nca = \"/c\"",
        );
        let cfg = ProxyConfig::parse(&agents).expect("agents parses");
        assert!(matches!(cfg.inventory, InventoryConfig::Agents(_)));
        let typo = MINIMAL.replace("path = ", "pth = ");
        assert!(ProxyConfig::parse(&typo).is_err());
        let top = format!("lisen = \"0.0.0.0:1\"\n{MINIMAL}");
        assert!(ProxyConfig::parse(&top).is_err());
    }

    #[test]
    fn etcd_source_parses_and_the_replicas_follow_it_unless_configured() {
        let etcd = MINIMAL.replace(
            "source = \"file\"\npath = \"/inv.toml\"",
            "source = \"etcd\"\nendpoints = [\"127.0.0.1:2379\"]\nlease_ttl = \"3s\"",
        );
        let cfg = ProxyConfig::parse(&etcd).expect("etcd parses");
        let InventoryConfig::Etcd(e) = &cfg.inventory else {
            panic!("not etcd: {:?}", cfg.inventory);
        };
        assert_eq!(e.lease_ttl, Duration::from_secs(3));
        assert_eq!(e.prefix, "/lookout/");
        assert!(cfg.limits.follows_etcd(&cfg.inventory));
        let fixed = ProxyConfig::parse(&format!("{etcd}\n[limits]\nreplicas = 2")).expect("parses");
        assert!(!fixed.limits.follows_etcd(&fixed.inventory));
        assert_eq!(fixed.limits.initial_replicas(), 2);
        let bad = ProxyConfig::parse(&etcd.replace("127.0.0.1:2379", "ftp://x")).expect("parses");
        assert!(
            bad.problems()
                .iter()
                .any(|p| p.starts_with("inventory.endpoints")),
            "{:?}",
            bad.problems()
        );
        assert!(ProxyConfig::parse(&etcd.replace("lease_ttl", "lease_tll")).is_err());
    }

    #[test]
    fn tenants_come_from_the_file_etcd_or_both() {
        let etcd_inventory = MINIMAL.replace(
            "source = \"file\"\npath = \"/inv.toml\"",
            "source = \"etcd\"\nendpoints = [\"127.0.0.1:2379\"]\nprefix = \"/x/\"",
        );
        let no_file =
            |text: &str| text.replace("tenants_file = \"/nonexistent/tenants.toml\"\n", "");
        let with = |text: &str, table: &str| {
            ProxyConfig::parse(&text.replace("[tls]", &format!("{table}\n[tls]"))).expect("parses")
        };
        let problem =
            |cfg: &ProxyConfig, needle: &str| cfg.problems().iter().any(|p| p.contains(needle));

        // The file alone: as before.
        let cfg = ProxyConfig::parse(MINIMAL).expect("parses");
        assert!(cfg.tenants_etcd().is_none());
        // etcd alone, through the inventory's connection: no file needed.
        let cfg = with(&no_file(&etcd_inventory), "[tenants]\netcd = true");
        assert_eq!(cfg.tenants_file, None);
        assert_eq!(cfg.tenants_etcd().map(|e| e.prefix.as_str()), Some("/x/"));
        assert!(!problem(&cfg, "tenants"), "{:?}", cfg.problems());
        // Neither: refused.
        let cfg = ProxyConfig::parse(&no_file(MINIMAL)).expect("parses");
        assert!(problem(&cfg, "tenants_file: set it, or [tenants] etcd"));
        // `true` needs the etcd inventory; a table of its own does not.
        let cfg = with(MINIMAL, "[tenants]\netcd = true");
        assert!(cfg.tenants_etcd().is_none());
        assert!(problem(
            &cfg,
            "tenants.etcd = true uses the [inventory] etcd"
        ));
        let cfg = with(
            MINIMAL,
            "[tenants.etcd]\nendpoints = [\"10.0.0.1:2379\"]\nrequest_timeout = \"2s\"",
        );
        let e = cfg.tenants_etcd().expect("its own connection");
        assert_eq!(
            (e.endpoints.len(), e.request_timeout),
            (1, Duration::from_secs(2))
        );
        assert!(!problem(&cfg, "tenants.etcd"), "{:?}", cfg.problems());
        let cfg = with(MINIMAL, "[tenants.etcd]\nendpoints = [\"ftp://x\"]");
        assert!(
            problem(&cfg, "tenants.etcd.endpoints"),
            "{:?}",
            cfg.problems()
        );
        // Mistakes in the table are named.
        let typo = MINIMAL.replace("[tls]", "[tenants.etcd]\nendpoint = [\"a:1\"]\n[tls]");
        let e = ProxyConfig::parse(&typo).expect_err("unknown field");
        assert!(e.to_string().contains("endpoint"), "{e}");
        let wrong = MINIMAL.replace("[tls]", "[tenants]\netcd = \"yes\"\n[tls]");
        assert!(ProxyConfig::parse(&wrong).is_err());
    }

    #[test]
    fn the_example_parses() {
        let text = include_str!("../../deploy/config/proxy.toml");
        let cfg = ProxyConfig::parse(text).expect("deploy/config/proxy.toml parses");
        assert!(matches!(cfg.inventory, InventoryConfig::Agents(_)));
        assert_eq!(cfg.limits.max_header_bytes, 16384);
        assert_eq!(cfg.limits.replicas_dns, None);
        // The commented-out [limits.replicas_dns] block parses once uncommented.
        let (head, block) = text
            .split_once("# [limits.replicas_dns]")
            .expect("the example documents [limits.replicas_dns]");
        let block: String = block
            .lines()
            .map(|l| format!("{}\n", l.strip_prefix("# ").unwrap_or(l)))
            .collect();
        let cfg = ProxyConfig::parse(&format!("{head}[limits.replicas_dns]{block}"))
            .expect("the replicas_dns example parses");
        let dns = cfg.limits.replicas_dns.expect("replicas_dns");
        assert_eq!(dns.kind, RecordKind::A);
        assert_eq!(dns.server, Some(SocketAddr::from(([10, 0, 0, 53], 53))));

        // The commented-out [tenants] block parses once uncommented: `etcd = true`, or a
        // connection of its own.
        let (top, rest) = text
            .split_once("# [tenants]\n")
            .expect("documents [tenants]");
        let (block, tls) = rest.split_once("\n[tls]").expect("[tls] after it");
        let (flag, own) = block
            .split_once("# [tenants.etcd]\n")
            .expect("[tenants.etcd]");
        let uncomment = |s: &str| -> String {
            s.lines()
                .map(|l| format!("{}\n", l.strip_prefix("# ").unwrap_or(l)))
                .collect()
        };
        let cfg = ProxyConfig::parse(&format!("{top}[tenants]\n{}\n[tls]{tls}", uncomment(flag)))
            .expect("[tenants] etcd = true parses");
        assert!(matches!(cfg.tenants.etcd, TenantsEtcd::Inventory));
        let cfg = ProxyConfig::parse(&format!(
            "{top}[tenants.etcd]\n{}\n[tls]{tls}",
            uncomment(own)
        ))
        .expect("[tenants.etcd] parses");
        let e = cfg.tenants_etcd().expect("its own connection");
        assert!(e.tls.is_some() && e.problems().iter().all(|p| p.contains("tls.ca")));

        // The commented-out etcd [inventory] replaces the agents one once uncommented.
        let (agents, rest) = text.split_once("[inventory]\n").expect("[inventory]");
        let (_, rest) = rest
            .split_once("# [inventory]\n# source = \"etcd\"\n")
            .expect("the example documents the etcd source");
        let (block, limits) = rest.split_once("\n[limits]").expect("[limits] after it");
        let block: String = block
            .lines()
            .map(|l| format!("{}\n", l.strip_prefix("# ").unwrap_or(l)))
            .collect();
        let cfg = ProxyConfig::parse(&format!(
            "{agents}[inventory]\nsource = \"etcd\"\n{block}\n[limits]{limits}"
        ))
        .expect("the etcd example parses");
        let InventoryConfig::Etcd(e) = &cfg.inventory else {
            panic!("not etcd");
        };
        assert_eq!(e.endpoints.len(), 2);
        assert!(e.tls.is_some());
        assert!(cfg.limits.follows_etcd(&cfg.inventory));
    }

    #[test]
    fn replicas_from_dns() {
        let with =
            |table: &str| ProxyConfig::parse(&MINIMAL.replace("[tls]", &format!("{table}\n[tls]")));
        let cfg =
            with("[limits.replicas_dns]\nname = \"proxies.lookout.example.com\"").expect("parses");
        let dns = cfg.limits.replicas_dns.as_ref().expect("replicas_dns");
        assert_eq!(dns.kind, RecordKind::A);
        assert_eq!(dns.refresh, Duration::from_secs(30));
        assert_eq!(dns.server, None);
        assert_eq!(
            cfg.limits.initial_replicas(),
            1,
            "the count until DNS answers"
        );

        let cfg = with(
            "[limits]\nreplicas = 3\n[limits.replicas_dns]\nname = \"_p._tcp.example.com.\"\n\
             kind = \"srv\"\nrefresh = \"5s\"\nserver = \"127.0.0.1:5353\"",
        )
        .expect("parses");
        let dns = cfg.limits.replicas_dns.as_ref().expect("replicas_dns");
        assert_eq!(
            (dns.kind, dns.refresh),
            (RecordKind::Srv, Duration::from_secs(5))
        );
        assert_eq!(dns.server, Some(SocketAddr::from(([127, 0, 0, 1], 5353))));
        assert_eq!(cfg.limits.replicas, Some(3));
        let cfg =
            with("[limits.replicas_dns]\nname = \"p.example\"\nkind = \"aaaa\"\nserver = \"::1\"")
                .expect("parses");
        let dns = cfg.limits.replicas_dns.as_ref().expect("replicas_dns");
        assert_eq!(dns.kind, RecordKind::Aaaa);
        assert_eq!(dns.server.map(|s| s.port()), Some(53));

        for refused in [
            "[limits.replicas_dns]\nname = \"p.example\"\nkind = \"mx\"",
            "[limits.replicas_dns]\nname = \"p.example\"\nserver = \"ns1.example\"",
            "[limits.replicas_dns]\nname = \"p.example\"\nrefesh = \"1s\"",
            "[limits.replicas_dns]\nkind = \"a\"",
        ] {
            assert!(with(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn every_problem_is_listed() {
        let bad = MINIMAL
            .replace("lookout.example.com\"\ndns", "not a name\"\ndns")
            .replace(
                "[tls]",
                "[limits]\nreplicas = 0\nmax_header_bytes = 10\n\
                 [limits.replicas_dns]\nname = \"bad name\"\nrefresh = \"0s\"\n\
                 server = \"0.0.0.0\"\n[tls]",
            );
        let cfg = ProxyConfig::parse(&bad).expect("parses");
        let p = cfg.problems();
        let has = |s: &str| p.iter().any(|x| x.contains(s));
        assert!(has("base_name"), "{p:?}");
        assert!(has("tls.cert"), "{p:?}");
        assert!(has("tenants_file"), "{p:?}");
        assert!(has("inventory.path"), "{p:?}");
        assert!(has("limits.replicas must be at least 1"), "{p:?}");
        assert!(has("limits.max_header_bytes"), "{p:?}");
        assert!(has("limits.replicas_dns.name"), "{p:?}");
        assert!(has("limits.replicas_dns.refresh"), "{p:?}");
        assert!(has("limits.replicas_dns.server"), "{p:?}");
    }
}
