//! Configuration of lookout's connection to etcd, shared by the agent's `[etcd]` table and
//! the proxy's `[inventory] source = "etcd"`.
//!
//! ```toml
//! endpoints = ["https://etcd1.example.net:2379", "https://etcd2.example.net:2379"]
//! prefix = "/lookout/"          # default; every lookout key lives under it
//! lease_ttl = "10s"             # default; a dead agent's instances leave discovery after it
//! connect_timeout = "5s"        # default: TCP connect + TLS handshake to one endpoint
//! request_timeout = "5s"        # default: bound on every unary request (get, put, txn, lease)
//! backoff = { min = "500ms", max = "30s" }   # retry backoff, exponential with jitter
//! advertise = "10.0.0.11:9164"  # agents: required, where proxies reach this agent;
//!                               # proxies: optional, shown in their replica key
//! # max_value_bytes = 65536     # default; larger values are skipped and counted
//! # max_instances = 1000000     # default; instances beyond it are skipped and counted
//!
//! [tls]                         # optional; endpoints are then https (or bare host:port)
//! ca = "/etc/lookout/etcd-ca.pem"       # CA etcd's server certificates chain to
//! cert = "/etc/lookout/etcd-client.pem" # optional client certificate (etcd --client-cert-auth)
//! key = "/etc/lookout/etcd-client-key.pem"
//! # server_name = "etcd.example.net"    # default: each endpoint's host
//! ```
//!
//! Endpoints are `http://host:port`, `https://host:port`, or a bare `host:port` (https when
//! `[tls]` is set, http otherwise). TLS is rustls with the ring provider (etcd-client's
//! `tls-ring`). etcd user/password authentication is not supported yet: use client
//! certificates.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::agents::config::{AgentAddr, BackoffConfig};

/// Default for [`EtcdConfig::prefix`].
pub const DEFAULT_PREFIX: &str = "/lookout/";
/// Default for [`EtcdConfig::lease_ttl`].
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// Default for [`EtcdConfig::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default for [`EtcdConfig::request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Default for [`EtcdConfig::max_value_bytes`].
pub const DEFAULT_MAX_VALUE_BYTES: usize = 64 * 1024;
/// Default for [`EtcdConfig::max_instances`].
pub const DEFAULT_MAX_INSTANCES: usize = 1_000_000;
/// Smallest lease TTL etcd grants with its default timing (1.5 × election timeout, rounded
/// up); shorter TTLs would be silently raised by etcd.
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(2);

/// How to reach etcd and what lookout keeps there.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// etcd client URLs; at least one.
    pub endpoints: Vec<String>,
    /// Key prefix under which every lookout key lives (see [`crate::etcd`]). Must start and
    /// end with `/`. Default `/lookout/`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// TLS towards etcd. Default: none (plain http, for loopback and tests).
    #[serde(default)]
    pub tls: Option<EtcdTlsConfig>,
    /// Bound on connecting to one endpoint (TCP + TLS). Default 5 s.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Bound on every unary request. Default 5 s.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// TTL of the registration leases (agents and proxies), whole seconds, at least 2 s:
    /// how long a dead process's keys outlive it. Kept alive every third of it. Default 10 s.
    #[serde(default = "default_lease_ttl", with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// Retry backoff after a failure.
    #[serde(default)]
    pub backoff: BackoffConfig,
    /// The `host:port` others reach this process at. Agents: required (it is the node key's
    /// `agent`, where proxies connect). Proxies: optional, recorded in their replica key.
    #[serde(default)]
    pub advertise: Option<String>,
    /// Largest value read; a larger one is skipped (logged, counted). Default 64 KiB.
    #[serde(default = "default_max_value_bytes")]
    pub max_value_bytes: usize,
    /// Most instances the proxy-side source holds; more are skipped (logged, counted).
    /// Default 1,000,000.
    #[serde(default = "default_max_instances")]
    pub max_instances: usize,
}

/// TLS towards etcd (PEM files).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdTlsConfig {
    /// CA certificate(s) etcd's server certificates chain to.
    pub ca: PathBuf,
    /// Client certificate, when etcd requires one (`--client-cert-auth`). With `key`.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key. With `cert`.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Name to verify etcd's certificates against. Default: each endpoint's host.
    #[serde(default)]
    pub server_name: Option<String>,
}

impl EtcdConfig {
    /// A configuration with defaults for everything but the endpoints (tests, embedders).
    pub fn new(endpoints: Vec<String>) -> EtcdConfig {
        EtcdConfig {
            endpoints,
            prefix: default_prefix(),
            tls: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            lease_ttl: DEFAULT_LEASE_TTL,
            backoff: BackoffConfig::default(),
            advertise: None,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            max_instances: DEFAULT_MAX_INSTANCES,
        }
    }

    /// Parses a TOML document holding only this configuration.
    pub fn parse(text: &str) -> Result<EtcdConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The lease TTL in whole seconds, as etcd takes it (rounded up).
    pub fn lease_ttl_seconds(&self) -> i64 {
        let s = self.lease_ttl.as_secs() + u64::from(self.lease_ttl.subsec_nanos() > 0);
        i64::try_from(s).unwrap_or(i64::MAX)
    }

    /// What is wrong with a parsed configuration (empty when usable). Files are checked for
    /// existence only; their contents are checked when connecting.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.endpoints.is_empty() {
            p.push("endpoints: list at least one etcd endpoint".to_string());
        }
        for e in &self.endpoints {
            if let Err(why) = check_endpoint(e, self.tls.is_some()) {
                p.push(format!("endpoints: {e:?}: {why}"));
            }
        }
        if !(self.prefix.starts_with('/') && self.prefix.ends_with('/') && self.prefix.len() > 1) {
            p.push(format!(
                "prefix {:?} must start and end with '/' (e.g. \"/lookout/\")",
                self.prefix
            ));
        }
        if self.lease_ttl < MIN_LEASE_TTL {
            p.push(format!(
                "lease_ttl must be at least {}s (etcd raises shorter TTLs)",
                MIN_LEASE_TTL.as_secs()
            ));
        }
        for (what, d) in [
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
            ("backoff.min", self.backoff.min),
        ] {
            if d.is_zero() {
                p.push(format!("{what} must be positive"));
            }
        }
        if self.backoff.min > self.backoff.max {
            p.push("backoff.min is larger than backoff.max".to_string());
        }
        if let Some(a) = &self.advertise {
            if let Err(e) = a.parse::<AgentAddr>() {
                p.push(format!("advertise: {e}"));
            }
        }
        if self.max_value_bytes < 1024 {
            p.push("max_value_bytes must be at least 1024".to_string());
        }
        if self.max_instances == 0 {
            p.push("max_instances must be at least 1".to_string());
        }
        if let Some(tls) = &self.tls {
            let mut files = vec![("tls.ca", &tls.ca)];
            match (&tls.cert, &tls.key) {
                (Some(c), Some(k)) => files.extend([("tls.cert", c), ("tls.key", k)]),
                (None, None) => {}
                _ => p.push("tls.cert and tls.key go together".to_string()),
            }
            for (what, f) in files {
                if let Err(e) = std::fs::metadata(f) {
                    p.push(format!("{what} {}: {e}", f.display()));
                }
            }
            if let Some(name) = &tls.server_name {
                if rustls_pki_types::ServerName::try_from(name.as_str()).is_err() {
                    p.push(format!(
                        "tls.server_name {name:?} is not a DNS name or IP address"
                    ));
                }
            }
        }
        p
    }
}

/// Why an endpoint is unusable: an unknown scheme, no port, https without `[tls]` (no CA
/// to verify etcd against), or http with `[tls]` (the TLS settings would be ignored).
fn check_endpoint(e: &str, tls: bool) -> Result<(), String> {
    let (scheme, rest) = match e.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, e),
    };
    match (scheme, tls) {
        (Some("https"), false) => return Err("https needs [tls] with the CA".into()),
        (Some("http"), true) => return Err("http with [tls] set; use https".into()),
        (Some("http" | "https") | None, _) => {}
        (Some(other), _) => return Err(format!("unknown scheme {other:?}")),
    }
    let hostport = rest.strip_suffix('/').unwrap_or(rest);
    hostport
        .parse::<AgentAddr>()
        .map(|_| ())
        .map_err(|_| "want host:port, optionally after http:// or https://".to_string())
}

fn default_prefix() -> String {
    DEFAULT_PREFIX.to_string()
}
fn default_connect_timeout() -> Duration {
    DEFAULT_CONNECT_TIMEOUT
}
fn default_request_timeout() -> Duration {
    DEFAULT_REQUEST_TIMEOUT
}
fn default_lease_ttl() -> Duration {
    DEFAULT_LEASE_TTL
}
fn default_max_value_bytes() -> usize {
    DEFAULT_MAX_VALUE_BYTES
}
fn default_max_instances() -> usize {
    DEFAULT_MAX_INSTANCES
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_full_form() {
        let c = EtcdConfig::parse("endpoints = [\"127.0.0.1:2379\"]").expect("parses");
        assert_eq!(c, EtcdConfig::new(vec!["127.0.0.1:2379".into()]));
        assert_eq!(c.lease_ttl_seconds(), 10);
        assert!(c.problems().is_empty(), "{:?}", c.problems());

        let c = EtcdConfig::parse(
            "endpoints = [\"http://a:2379\", \"b:2379\"]\nprefix = \"/x/y/\"\n\
             lease_ttl = \"2500ms\"\nadvertise = \"10.0.0.1:9164\"\n\
             backoff = { min = \"100ms\", max = \"1s\" }",
        )
        .expect("parses");
        assert_eq!(c.lease_ttl_seconds(), 3, "rounded up");
        assert_eq!(c.prefix, "/x/y/");
        assert!(c.problems().is_empty(), "{:?}", c.problems());
    }

    #[test]
    fn every_problem_is_listed() {
        let c = EtcdConfig::parse(
            "endpoints = [\"https://a:2379\", \"ftp://b:1\", \"nohost\"]\nprefix = \"lookout\"\n\
             lease_ttl = \"1s\"\nrequest_timeout = \"0s\"\nadvertise = \"nope\"\n\
             max_instances = 0",
        )
        .expect("parses");
        let p = c.problems().join("\n");
        for needle in [
            "https needs [tls]",
            "unknown scheme",
            "want host:port",
            "prefix",
            "lease_ttl",
            "request_timeout",
            "advertise",
            "max_instances",
        ] {
            assert!(p.contains(needle), "missing {needle} in {p}");
        }
        let c = EtcdConfig::parse(
            "endpoints = [\"http://a:2379\"]\n[tls]\nca = \"/nonexistent/ca\"\ncert = \"/c\"",
        )
        .expect("parses");
        let p = c.problems().join("\n");
        for needle in ["use https", "tls.ca", "go together"] {
            assert!(p.contains(needle), "missing {needle} in {p}");
        }
        assert!(EtcdConfig::parse("endpoints = []\nprefx = \"/a/\"").is_err());
        let empty = EtcdConfig::parse("endpoints = []").expect("parses");
        assert_eq!(empty.problems().len(), 1, "{:?}", empty.problems());
    }
}
