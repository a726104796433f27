//! Host/SNI routing: which virtual host a request is for.
//!
//! `Host: <id>.<suffix>[:port]` is an instance (or node) route, `Host: <base>[:port]` the
//! discovery host. The header is lowercased **once**, here, and only the lowercased value is
//! used afterwards (cmon re-read the raw prefix in one place, so an upper-case Host passed
//! authorization and then got 404). When the client sent SNI, it must name the same host as
//! the header — a mismatch is 421 Misdirected Request, which tells a client that reused a
//! connection for another host to open a new one.
//!
//! Not here: whether the instance exists or belongs to the caller (authorization), paths.

use std::net::IpAddr;

use lookout_discovery::is_dns_label;

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The base name (discovery, health, path-form scrapes).
    Base,
    /// `<id>.<suffix>`: an instance or node id (a lowercase DNS label).
    Instance(String),
}

/// Why a Host/SNI pair has no route (statuses: [`crate::refusal::status`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// No Host header (or `:authority`).
    #[error("missing Host")]
    Missing,
    /// Not a valid `host[:port]`.
    #[error("malformed Host {0:?}")]
    Malformed(String),
    /// SNI names another host than the Host header.
    #[error("SNI {sni:?} does not match Host {host:?}")]
    Misdirected {
        /// The SNI, lowercased.
        sni: String,
        /// The Host name, lowercased, without port.
        host: String,
    },
    /// A well-formed name this proxy does not serve.
    #[error("unknown host {0:?}")]
    Unknown(String),
}

/// The names this proxy answers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRules {
    base: Vec<String>,
    suffix: String,
    ip_is_base: bool,
}

impl HostRules {
    /// `base` names the discovery host (e.g. `lookout.example.com`), `suffix` the zone under
    /// which `<id>.<suffix>` names instances (may equal `base`). Both are lowercased and a
    /// trailing dot dropped; an error if either is not a DNS name.
    pub fn new(base: &str, suffix: &str) -> Result<Self, HostError> {
        let norm = |s: &str| {
            let s = s.to_ascii_lowercase();
            let s = s.strip_suffix('.').unwrap_or(&s).to_string();
            if is_dns_name(&s) {
                Ok(s)
            } else {
                Err(HostError::Malformed(s))
            }
        };
        Ok(HostRules {
            base: vec![norm(base)?],
            suffix: norm(suffix)?,
            ip_is_base: false,
        })
    }

    /// Also answer to `name` as the base host (e.g. `localhost` for `lookout dev`).
    pub fn with_base_alias(mut self, name: &str) -> Result<Self, HostError> {
        let extra = HostRules::new(name, &self.suffix)?;
        self.base.extend(extra.base);
        Ok(self)
    }

    /// Whether IP-literal hosts (`127.0.0.1:9163`, `[::1]`) are the base host; default no.
    pub fn ip_literals_are_base(mut self, yes: bool) -> Self {
        self.ip_is_base = yes;
        self
    }

    /// Routes a request by its Host header value (`None` when absent) and its TLS SNI.
    pub fn route(&self, host: Option<&str>, sni: Option<&str>) -> Result<Route, HostError> {
        let raw = host.ok_or(HostError::Missing)?;
        let name = parse_host(raw)?;
        if let Some(sni) = sni {
            let sni = sni.to_ascii_lowercase();
            let sni = sni.strip_suffix('.').unwrap_or(&sni);
            if sni != name.as_str() {
                return Err(HostError::Misdirected {
                    sni: sni.to_string(),
                    host: name.as_str().to_string(),
                });
            }
        }
        match name {
            HostName::Ip(_) if self.ip_is_base => Ok(Route::Base),
            HostName::Ip(s) => Err(HostError::Unknown(s)),
            HostName::Dns(s) => {
                if self.base.contains(&s) {
                    return Ok(Route::Base);
                }
                match s.split_once('.') {
                    Some((id, rest)) if rest == self.suffix && is_dns_label(id) => {
                        Ok(Route::Instance(id.to_string()))
                    }
                    _ => Err(HostError::Unknown(s)),
                }
            }
        }
    }
}

enum HostName {
    Dns(String),
    Ip(String),
}

impl HostName {
    fn as_str(&self) -> &str {
        match self {
            HostName::Dns(s) | HostName::Ip(s) => s,
        }
    }
}

/// Splits `host[:port]` / `[v6][:port]`, validates and lowercases the host part.
fn parse_host(raw: &str) -> Result<HostName, HostError> {
    let bad = || HostError::Malformed(raw.chars().take(100).collect());
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or_else(bad)?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(bad)?),
        };
        let ip: std::net::Ipv6Addr = v6.parse().map_err(|_| bad())?;
        if let Some(p) = port {
            check_port(p).ok_or_else(bad)?;
        }
        return Ok(HostName::Ip(ip.to_string()));
    } else {
        match raw.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (raw, None),
        }
    };
    if let Some(p) = port {
        check_port(p).ok_or_else(bad)?;
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(HostName::Ip(ip.to_string()));
    }
    let lower = host.to_ascii_lowercase();
    let lower = lower.strip_suffix('.').unwrap_or(&lower);
    if !is_dns_name(lower) {
        return Err(bad());
    }
    Ok(HostName::Dns(lower.to_string()))
}

fn check_port(p: &str) -> Option<()> {
    (!p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
        .then(|| p.parse::<u16>().ok())
        .flatten()
        .filter(|&n| n > 0)
        .map(|_| ())
}

/// A lowercase DNS name: dot-separated labels, total at most 253 characters, the last not all
/// digits. A name like that is an IPv4 literal (`10.0.0.5`, which routes as an IP, never as a
/// name) or no host name at all (RFC 1123 §2.1); accepted as a base name or suffix, it
/// configured a name no request could reach.
fn is_dns_name(s: &str) -> bool {
    let last = s.rsplit_once('.').map_or(s, |(_, last)| last);
    s.len() <= 253 && s.split('.').all(is_dns_label) && !last.bytes().all(|b| b.is_ascii_digit())
}
