//! Finding agents through DNS, behind a small trait so the watcher can be driven by a fixed
//! answer in tests ([`StaticResolver`]) and by hickory-resolver in production
//! ([`HickoryResolver`]).
//!
//! [`HickoryResolver`] also answers plain questions ([`HickoryResolver::targets`]: the
//! distinct SRV targets, A or AAAA addresses of a name), which is how the proxy counts its
//! replicas. Either way a name server can be named explicitly (`server`, for split-horizon
//! setups and tests); otherwise the system's (`/etc/resolv.conf`) is asked.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;
use serde::Deserialize;

use super::config::{AgentAddr, DnsConfig, DnsKind};

/// Most agents taken from one DNS answer; the rest are ignored with a warning.
pub const MAX_DNS_AGENTS: usize = 4096;

/// The agents a DNS name resolved to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    /// The agents.
    pub agents: BTreeSet<AgentAddr>,
    /// Smallest TTL of the records, when known: the answer is re-checked no later.
    pub ttl: Option<Duration>,
}

/// A boxed resolution future.
pub type ResolveFuture<'a> = Pin<Box<dyn Future<Output = Result<Resolved, String>> + Send + 'a>>;

/// Resolves a [`DnsConfig`] to a set of agents. An error means "unknown right now": the
/// watcher keeps the agents it has.
pub trait Resolve: Send + Sync + 'static {
    /// Resolves `dns` once.
    fn resolve<'a>(&'a self, dns: &'a DnsConfig) -> ResolveFuture<'a>;
}

/// Which records [`HickoryResolver::targets`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordKind {
    /// SRV records: one target per distinct target host and port.
    Srv,
    /// A records: one target per distinct IPv4 address.
    A,
    /// AAAA records: one target per distinct IPv6 address.
    Aaaa,
}

/// The distinct targets one name lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Targets {
    /// SRV targets as `host:port` (host without the trailing dot), or addresses.
    pub targets: BTreeSet<String>,
    /// Smallest TTL of the records, when there were any.
    pub ttl: Option<Duration>,
}

/// The production resolver: hickory-resolver, caching answers by TTL. It asks the system's
/// name servers (`/etc/resolv.conf`) unless a question names its own server; a resolver per
/// such server is built on first use and kept.
pub struct HickoryResolver {
    /// The resolver for questions that name no server (or name `server`).
    default: TokioResolver,
    /// The server `default` asks, when it is not the system's.
    server: Option<SocketAddr>,
    /// Resolvers for other explicitly named servers.
    others: Mutex<BTreeMap<SocketAddr, TokioResolver>>,
}

impl HickoryResolver {
    /// A resolver configured from the system (`/etc/resolv.conf`).
    pub fn from_system() -> Result<HickoryResolver, String> {
        let default = TokioResolver::builder_tokio()
            .map_err(|e| format!("DNS configuration: {e}"))?
            .build()
            .map_err(|e| format!("DNS resolver: {e}"))?;
        Ok(HickoryResolver {
            default,
            server: None,
            others: Mutex::default(),
        })
    }

    /// A resolver that asks `server` only (UDP, then TCP for truncated answers), or the
    /// system's name servers when `None`. With a server, neither `/etc/resolv.conf` nor
    /// `/etc/hosts` is read.
    pub fn new(server: Option<SocketAddr>) -> Result<HickoryResolver, String> {
        let Some(server) = server else {
            return HickoryResolver::from_system();
        };
        Ok(HickoryResolver {
            default: for_server(server)?,
            server: Some(server),
            others: Mutex::default(),
        })
    }

    /// The resolver that asks `server` (the default one for `None`).
    fn pick(&self, server: Option<SocketAddr>) -> Result<TokioResolver, String> {
        match server {
            None => Ok(self.default.clone()),
            Some(s) if Some(s) == self.server => Ok(self.default.clone()),
            Some(s) => {
                let mut others = self.others.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(r) = others.get(&s) {
                    return Ok(r.clone());
                }
                let r = for_server(s)?;
                others.insert(s, r.clone());
                Ok(r)
            }
        }
    }

    /// The distinct targets `name` lists in `kind` records, asking `server` (or the default
    /// name servers). A name with no such records (NXDOMAIN, or an empty answer) is an error,
    /// as is a failure to get an answer; SRV records whose target is `.` ("not available") or
    /// whose port is 0 are skipped.
    pub async fn targets(
        &self,
        name: &str,
        kind: RecordKind,
        server: Option<SocketAddr>,
    ) -> Result<Targets, String> {
        let resolver = self.pick(server)?;
        let rtype = match kind {
            RecordKind::Srv => RecordType::SRV,
            RecordKind::A => RecordType::A,
            RecordKind::Aaaa => RecordType::AAAA,
        };
        let lookup = resolver
            .lookup(name, rtype)
            .await
            .map_err(|e| format!("{rtype} {name}: {e}"))?;
        let mut out = Targets::default();
        for r in lookup.answers() {
            let target = match (&r.data, kind) {
                // A target of "." means "decidedly not available".
                (RData::SRV(srv), RecordKind::Srv) if !srv.target.is_root() && srv.port != 0 => {
                    let host = srv.target.to_ascii();
                    format!("{}:{}", host.trim_end_matches('.'), srv.port)
                }
                (RData::A(a), RecordKind::A) => a.0.to_string(),
                (RData::AAAA(a), RecordKind::Aaaa) => a.0.to_string(),
                _ => continue,
            };
            let ttl = Duration::from_secs(u64::from(r.ttl));
            out.ttl = Some(out.ttl.map_or(ttl, |t| t.min(ttl)));
            out.targets.insert(target);
        }
        Ok(out)
    }
}

/// A resolver asking `server` only, ignoring `/etc/hosts`.
fn for_server(server: SocketAddr) -> Result<TokioResolver, String> {
    let connection = |mut c: ConnectionConfig| {
        c.port = server.port();
        c
    };
    let ns = NameServerConfig::new(
        server.ip(),
        true,
        vec![
            connection(ConnectionConfig::udp()),
            connection(ConnectionConfig::tcp()),
        ],
    );
    let mut opts = ResolverOpts::default();
    opts.use_hosts_file = ResolveHosts::Never;
    TokioResolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![ns]),
        TokioRuntimeProvider::default(),
    )
    .with_options(opts)
    .build()
    .map_err(|e| format!("DNS resolver for {server}: {e}"))
}

impl Resolve for HickoryResolver {
    fn resolve<'a>(&'a self, dns: &'a DnsConfig) -> ResolveFuture<'a> {
        Box::pin(async move {
            let mut out = Resolved::default();
            let mut ttl: Option<u32> = None;
            let resolver = self.pick(dns.server)?;
            match dns.kind {
                DnsKind::Srv => {
                    let lookup = resolver
                        .srv_lookup(dns.name.as_str())
                        .await
                        .map_err(|e| format!("SRV {}: {e}", dns.name))?;
                    for r in lookup.answers() {
                        let RData::SRV(srv) = &r.data else { continue };
                        // A target of "." means "decidedly not available".
                        if srv.target.is_root() || srv.port == 0 {
                            continue;
                        }
                        let host = srv.target.to_ascii();
                        let host = host.trim_end_matches('.');
                        ttl = Some(ttl.map_or(r.ttl, |t| t.min(r.ttl)));
                        out.agents.insert(AgentAddr::new(host, srv.port));
                    }
                }
                DnsKind::A => {
                    let port = dns
                        .port
                        .ok_or_else(|| "dns.kind = \"a\" needs dns.port".to_string())?;
                    let lookup = resolver
                        .lookup_ip(dns.name.as_str())
                        .await
                        .map_err(|e| format!("A/AAAA {}: {e}", dns.name))?;
                    for r in lookup.as_lookup().answers() {
                        let Some(ip) = r.data.ip_addr() else { continue };
                        ttl = Some(ttl.map_or(r.ttl, |t| t.min(r.ttl)));
                        out.agents.insert(AgentAddr::new(ip.to_string(), port));
                    }
                }
            }
            out.ttl = ttl.map(|t| Duration::from_secs(u64::from(t)));
            Ok(out)
        })
    }
}

/// A resolver with a fixed answer that tests (or embedders) can change at any time.
#[derive(Debug)]
pub struct StaticResolver {
    answer: Mutex<Result<Resolved, String>>,
}

impl StaticResolver {
    /// Answers with `agents` (no TTL).
    pub fn new(agents: impl IntoIterator<Item = AgentAddr>) -> StaticResolver {
        StaticResolver {
            answer: Mutex::new(Ok(Resolved {
                agents: agents.into_iter().collect(),
                ttl: None,
            })),
        }
    }

    /// Answers with `agents` from now on.
    pub fn set(&self, agents: impl IntoIterator<Item = AgentAddr>) {
        *self.answer.lock().unwrap_or_else(|e| e.into_inner()) = Ok(Resolved {
            agents: agents.into_iter().collect(),
            ttl: None,
        });
    }

    /// Fails every resolution with `error` from now on.
    pub fn fail(&self, error: impl Into<String>) {
        *self.answer.lock().unwrap_or_else(|e| e.into_inner()) = Err(error.into());
    }
}

impl Resolve for StaticResolver {
    fn resolve<'a>(&'a self, _dns: &'a DnsConfig) -> ResolveFuture<'a> {
        let answer = self
            .answer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Box::pin(async move { answer })
    }
}

/// The agents to add and to remove to go from `current` to `wanted`.
pub fn diff(
    current: &BTreeSet<AgentAddr>,
    wanted: &BTreeSet<AgentAddr>,
) -> (Vec<AgentAddr>, Vec<AgentAddr>) {
    let added = wanted.difference(current).cloned().collect();
    let removed = current.difference(wanted).cloned().collect();
    (added, removed)
}

/// The full agent set: the static list plus a DNS answer, capped at [`MAX_DNS_AGENTS`] DNS
/// entries.
pub fn wanted(static_agents: &[AgentAddr], dns: Option<&Resolved>) -> BTreeSet<AgentAddr> {
    let mut set: BTreeSet<AgentAddr> = static_agents.iter().cloned().collect();
    if let Some(r) = dns {
        if r.agents.len() > MAX_DNS_AGENTS {
            tracing::warn!(
                found = r.agents.len(),
                kept = MAX_DNS_AGENTS,
                "agents source: DNS listed too many agents; ignoring the rest"
            );
        }
        set.extend(r.agents.iter().take(MAX_DNS_AGENTS).cloned());
    }
    set
}

/// When to resolve again after a successful answer: `refresh`, or the TTL when sooner (but
/// not more often than every second).
pub fn next_refresh(refresh: Duration, ttl: Option<Duration>) -> Duration {
    match ttl {
        Some(t) => refresh.min(t.max(Duration::from_secs(1))),
        None => refresh,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> AgentAddr {
        s.parse().expect("address")
    }

    fn dns() -> DnsConfig {
        DnsConfig {
            name: "_lookout._tcp.test".into(),
            kind: DnsKind::Srv,
            port: None,
            refresh: Duration::from_secs(30),
            server: None,
        }
    }

    /// The set-diff logic, driven by the static resolver (the real hickory resolver is tested
    /// against dnsmasq in `proxy/tests/dns.rs`).
    #[tokio::test]
    async fn static_answers_drive_adds_and_removes() {
        let r = StaticResolver::new([a("n1:9164"), a("n2:9164")]);
        let statics = [a("fixed:9164")];
        let first = wanted(&statics, Some(&r.resolve(&dns()).await.expect("answer")));
        let (added, removed) = diff(&BTreeSet::new(), &first);
        assert_eq!(added, [a("fixed:9164"), a("n1:9164"), a("n2:9164")]);
        assert!(removed.is_empty());

        r.set([a("n2:9164"), a("n3:9164")]);
        let second = wanted(&statics, Some(&r.resolve(&dns()).await.expect("answer")));
        let (added, removed) = diff(&first, &second);
        assert_eq!(added, [a("n3:9164")]);
        assert_eq!(removed, [a("n1:9164")]);

        // A static agent never goes away with DNS, even when DNS lists nothing.
        r.set([]);
        let third = wanted(&statics, Some(&r.resolve(&dns()).await.expect("answer")));
        let (added, removed) = diff(&second, &third);
        assert!(added.is_empty());
        assert_eq!(removed, [a("n2:9164"), a("n3:9164")]);

        r.fail("SERVFAIL");
        assert_eq!(r.resolve(&dns()).await, Err("SERVFAIL".to_string()));
    }

    #[test]
    fn refresh_follows_short_ttls() {
        let refresh = Duration::from_secs(30);
        assert_eq!(next_refresh(refresh, None), refresh);
        assert_eq!(
            next_refresh(refresh, Some(Duration::from_secs(300))),
            refresh
        );
        assert_eq!(
            next_refresh(refresh, Some(Duration::from_secs(5))),
            Duration::from_secs(5)
        );
        assert_eq!(
            next_refresh(refresh, Some(Duration::ZERO)),
            Duration::from_secs(1)
        );
    }
}
