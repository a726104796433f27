//! Configuration of the `agents` source: which agents to watch (a static list and/or DNS),
//! the proxy's client TLS identity, and the timeouts and backoff that bound every attempt.
//!
//! ```toml
//! agents = ["node1.example.net:9164", "10.0.0.7:9164"]
//! connect_timeout = "5s"        # default 5s: TCP connect, TLS handshake, response headers
//! idle_timeout = "45s"          # default 45s: nothing (not even a heartbeat) → peer is dead
//! backoff = { min = "500ms", max = "30s" }   # reconnect backoff, exponential with jitter
//!
//! [dns]                         # optional; agents found here are added to `agents`
//! name = "_lookout._tcp.example.net"
//! kind = "srv"                  # "srv" (target + port, default) or "a" (A/AAAA + `port`)
//! port = 9164                   # for kind = "a" only
//! refresh = "30s"               # default 30s; sooner when the records' TTL is shorter
//! # server = "10.0.0.53:53"     # ask this name server only (port 53 when omitted);
//! #                             # default: the system's (/etc/resolv.conf)
//!
//! [tls]
//! cert = "/etc/lookout/proxy.pem"      # the proxy's client certificate (operator CA)
//! key = "/etc/lookout/proxy-key.pem"
//! ca = "/etc/lookout/ca.pem"           # the operator CA agents' certificates chain to
//! # server_name = "agent.lookout"      # default: the host part of each agent address
//! ```
//!
//! Durations are written as a number and a unit: `ms`, `s`, `m` or `h` (`"1.5s"` works).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Default for [`AgentsConfig::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default for [`AgentsConfig::idle_timeout`]: three missed 15 s heartbeats.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(45);
/// Default for [`BackoffConfig::min`].
pub const DEFAULT_BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Default for [`BackoffConfig::max`].
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Default for [`DnsConfig::refresh`].
pub const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(30);

/// Configuration of the `agents` discovery source.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentsConfig {
    /// Agents listed statically, `host:port` (IPv6 as `[addr]:port`). Default: none.
    #[serde(default)]
    pub agents: Vec<AgentAddr>,
    /// Agents found by DNS, re-resolved periodically. Default: none.
    #[serde(default)]
    pub dns: Option<DnsConfig>,
    /// The proxy's client identity and the CA agents are verified against.
    pub tls: ClientTlsConfig,
    /// Bound on each of TCP connect, TLS handshake and waiting for the response headers.
    /// Default 5 s.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// A stream on which nothing arrives (not even a heartbeat) for this long is treated as
    /// broken and reconnected. Default 45 s (agents send a heartbeat every 15 s).
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Reconnect backoff.
    #[serde(default)]
    pub backoff: BackoffConfig,
}

/// The proxy's client TLS material (PEM files).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsConfig {
    /// Client certificate chain, issued by the operator CA.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The operator CA: agents' server certificates must chain to it.
    pub ca: PathBuf,
    /// Name to verify every agent certificate against. Default: the host part of each
    /// agent's address (a DNS name or an IP address).
    #[serde(default)]
    pub server_name: Option<String>,
}

/// Exponential reconnect backoff, with jitter, between `min` and `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffConfig {
    /// First delay after a failure. Default 500 ms.
    #[serde(default = "default_backoff_min", with = "humantime_serde")]
    pub min: Duration,
    /// Largest delay. Default 30 s.
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            min: DEFAULT_BACKOFF_MIN,
            max: DEFAULT_BACKOFF_MAX,
        }
    }
}

/// Agents found through DNS.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// Name to resolve, e.g. `_lookout._tcp.example.net` (SRV) or `agents.example.net` (A).
    pub name: String,
    /// Which records. Default `srv`.
    #[serde(default)]
    pub kind: DnsKind,
    /// Agent port for `kind = "a"` (required there; SRV records carry their own).
    #[serde(default)]
    pub port: Option<u16>,
    /// How often to re-resolve; sooner when the records' TTL is shorter. Default 30 s.
    #[serde(default = "default_dns_refresh", with = "humantime_serde")]
    pub refresh: Duration,
    /// The one name server to ask (`ip` or `ip:port`, port 53 by default), for split-horizon
    /// setups and tests. Default: the system's (`/etc/resolv.conf`).
    #[serde(default, deserialize_with = "name_server::deserialize")]
    pub server: Option<SocketAddr>,
}

/// Which DNS records list the agents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsKind {
    /// SRV records: one agent per target host and port.
    #[default]
    Srv,
    /// A and AAAA records: one agent per address, at [`DnsConfig::port`].
    A,
}

impl AgentsConfig {
    /// Parses a TOML document holding only this configuration.
    pub fn parse(text: &str) -> Result<AgentsConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// What is wrong with a parsed configuration (empty when it is usable).
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.agents.is_empty() && self.dns.is_none() {
            p.push("no agents: list some in `agents` or configure `dns`".to_string());
        }
        if let Some(dns) = &self.dns {
            if let Err(e) = check_dns_name(&dns.name) {
                p.push(format!("dns.name: {e}"));
            }
            if let Some(e) = dns.server.and_then(name_server::problem) {
                p.push(format!("dns.server: {e}"));
            }
            if dns.kind == DnsKind::A && dns.port.is_none_or(|p| p == 0) {
                p.push("dns.kind = \"a\" needs a non-zero dns.port".to_string());
            }
            if dns.refresh.is_zero() {
                p.push("dns.refresh must be positive".to_string());
            }
        }
        if let Some(name) = &self.tls.server_name {
            if rustls_pki_types::ServerName::try_from(name.as_str()).is_err() {
                p.push(format!(
                    "tls.server_name {name:?} is not a DNS name or IP address"
                ));
            }
        }
        for (what, d) in [
            ("connect_timeout", self.connect_timeout),
            ("idle_timeout", self.idle_timeout),
            ("backoff.min", self.backoff.min),
        ] {
            if d.is_zero() {
                p.push(format!("{what} must be positive"));
            }
        }
        if self.backoff.min > self.backoff.max {
            p.push("backoff.min is larger than backoff.max".to_string());
        }
        p
    }
}

/// Why `name` cannot be looked up in DNS: empty, whitespace, a label empty or over 63
/// characters, the name over 253, or characters other than letters, digits, `-` and `_`
/// (SRV names start their labels with `_`). One trailing dot (a fully qualified name) is fine.
pub fn check_dns_name(name: &str) -> Result<(), String> {
    let bare = name.strip_suffix('.').unwrap_or(name);
    if bare.is_empty() {
        return Err("empty".to_string());
    }
    if bare.len() > 253 {
        return Err(format!("{name:?} is longer than 253 characters"));
    }
    for label in bare.split('.') {
        let ok = (1..=63).contains(&label.len())
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok {
            return Err(format!("{name:?} is not a DNS name (label {label:?})"));
        }
    }
    Ok(())
}

/// A name server's address in configuration: `ip:port`, `[ipv6]:port`, or an IP address alone
/// (port 53).
pub mod name_server {
    use super::*;

    /// Parses `ip`, `ip:port` or `[ipv6]:port`.
    pub fn parse(s: &str) -> Result<SocketAddr, String> {
        s.parse::<SocketAddr>()
            .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
            .map_err(|_| format!("name server {s:?}: want an IP address, optionally with :port"))
    }

    /// What is wrong with a parsed address: port 0, or an unspecified address (`0.0.0.0`,
    /// `::`), neither of which names a server.
    pub fn problem(addr: SocketAddr) -> Option<String> {
        if addr.port() == 0 {
            Some(format!("{addr}: port 0"))
        } else if addr.ip().is_unspecified() {
            Some(format!("{addr}: unspecified address"))
        } else {
            None
        }
    }

    /// `#[serde(default, deserialize_with = "…")]` for an `Option<SocketAddr>`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map(Some).map_err(serde::de::Error::custom)
    }
}

/// An agent's address: `host:port`, where host is a DNS name or an IP address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AgentAddr {
    /// DNS name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl AgentAddr {
    /// An address from its parts.
    pub fn new(host: impl Into<String>, port: u16) -> AgentAddr {
        AgentAddr {
            host: host.into(),
            port,
        }
    }
}

impl fmt::Display for AgentAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl From<std::net::SocketAddr> for AgentAddr {
    fn from(a: std::net::SocketAddr) -> Self {
        AgentAddr::new(a.ip().to_string(), a.port())
    }
}

impl FromStr for AgentAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| format!("agent address {s:?}: {why} (want host:port)");
        let (host, port) = s.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        let host = match host.strip_prefix('[') {
            Some(h) => h.strip_suffix(']').ok_or_else(|| bad("unclosed '['"))?,
            None if host.contains(':') => return Err(bad("IPv6 addresses need [brackets]")),
            None => host,
        };
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(bad("bad host"));
        }
        let port: u16 = port.parse().map_err(|_| bad("bad port"))?;
        if port == 0 {
            return Err(bad("port 0"));
        }
        Ok(AgentAddr::new(host, port))
    }
}

impl<'de> Deserialize<'de> for AgentAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn default_connect_timeout() -> Duration {
    DEFAULT_CONNECT_TIMEOUT
}
fn default_idle_timeout() -> Duration {
    DEFAULT_IDLE_TIMEOUT
}
fn default_backoff_min() -> Duration {
    DEFAULT_BACKOFF_MIN
}
fn default_backoff_max() -> Duration {
    DEFAULT_BACKOFF_MAX
}
fn default_dns_refresh() -> Duration {
    DEFAULT_DNS_REFRESH
}

#[cfg(test)]
mod tests {
    use super::*;

    const TLS: &str = "[tls]\ncert = \"c\"\nkey = \"k\"\nca = \"ca\"\n";

    #[test]
    fn defaults_and_full_form() {
        let c = AgentsConfig::parse(&format!("agents = [\"a:1\", \"[::1]:9164\"]\n{TLS}"))
            .expect("parses");
        assert_eq!(
            c.agents,
            [AgentAddr::new("a", 1), AgentAddr::new("::1", 9164)]
        );
        assert_eq!(c.agents[1].to_string(), "[::1]:9164");
        assert_eq!(c.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(c.idle_timeout, DEFAULT_IDLE_TIMEOUT);
        assert_eq!(c.backoff, BackoffConfig::default());
        assert!(c.problems().is_empty(), "{:?}", c.problems());

        let c = AgentsConfig::parse(&format!(
            "connect_timeout = \"250ms\"\nbackoff = {{ min = \"1s\", max = \"1.5m\" }}\n\
             [dns]\nname = \"agents.example\"\nkind = \"a\"\nport = 9164\nrefresh = \"10s\"\n{TLS}"
        ))
        .expect("parses");
        assert_eq!(c.connect_timeout, Duration::from_millis(250));
        assert_eq!(c.backoff.max, Duration::from_secs(90));
        let dns = c.dns.as_ref().expect("dns");
        assert_eq!((dns.kind, dns.port), (DnsKind::A, Some(9164)));
        assert_eq!(dns.server, None);
        assert!(c.problems().is_empty(), "{:?}", c.problems());
    }

    #[test]
    fn dns_server_forms_and_refusals() {
        let parse = |server: &str| {
            AgentsConfig::parse(&format!(
                "[dns]\nname = \"_lookout._tcp.example.\"\nserver = \"{server}\"\n{TLS}"
            ))
        };
        let server = |s: &str| parse(s).expect("parses").dns.expect("dns").server;
        assert_eq!(
            server("127.0.0.1:5353"),
            Some("127.0.0.1:5353".parse().expect("addr"))
        );
        assert_eq!(
            server("10.0.0.53"),
            Some("10.0.0.53:53".parse().expect("addr"))
        );
        assert_eq!(
            server("[::1]:5353"),
            Some("[::1]:5353".parse().expect("addr"))
        );
        assert_eq!(server("::1"), Some("[::1]:53".parse().expect("addr")));
        assert!(
            parse("ns1.example.net").is_err(),
            "a name server is an address"
        );
        assert!(parse("127.0.0.1:99999").is_err());
        let c = parse("0.0.0.0:0").expect("parses");
        assert_eq!(c.problems().len(), 1, "{:?}", c.problems());
        assert!(c.problems()[0].contains("dns.server"), "{:?}", c.problems());
    }

    #[test]
    fn dns_names_are_checked() {
        for good in [
            "a",
            "_lookout._tcp.example.net",
            "proxies.example.net.",
            "x-1.y_2",
        ] {
            assert_eq!(check_dns_name(good), Ok(()), "{good}");
        }
        let long = "a".repeat(64);
        for bad in ["", ".", "a..b", "has space.example", "a/b", long.as_str()] {
            assert!(check_dns_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn refusals() {
        assert!(AgentsConfig::parse(&format!("agent = []\n{TLS}")).is_err());
        assert!(AgentsConfig::parse(&format!("agents = [\"nohost\"]\n{TLS}")).is_err());
        assert!(AgentsConfig::parse(&format!("agents = [\"::1:80\"]\n{TLS}")).is_err());
        assert!(AgentsConfig::parse(&format!("agents = [\"h:0\"]\n{TLS}")).is_err());
        assert!(AgentsConfig::parse(&format!("connect_timeout = \"5\"\n{TLS}")).is_err());
        let c = AgentsConfig::parse(&format!("[dns]\nname = \"x\"\nkind = \"a\"\n{TLS}"))
            .expect("parses");
        assert_eq!(c.problems().len(), 1, "{:?}", c.problems());
        let c = AgentsConfig::parse(TLS).expect("parses");
        assert_eq!(c.problems().len(), 1, "{:?}", c.problems());
    }
}
