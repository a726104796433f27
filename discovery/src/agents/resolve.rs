//! Finding agents through DNS, behind a small trait so the watcher can be driven by a fixed
//! answer in tests ([`StaticResolver`]) and by hickory-resolver in production
//! ([`HickoryResolver`]).

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;

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

/// The production resolver: hickory-resolver with the system configuration
/// (`/etc/resolv.conf`), caching answers by TTL.
pub struct HickoryResolver {
    inner: TokioResolver,
}

impl HickoryResolver {
    /// A resolver configured from the system (`/etc/resolv.conf`).
    pub fn from_system() -> Result<HickoryResolver, String> {
        let inner = TokioResolver::builder_tokio()
            .map_err(|e| format!("DNS configuration: {e}"))?
            .build()
            .map_err(|e| format!("DNS resolver: {e}"))?;
        Ok(HickoryResolver { inner })
    }
}

impl Resolve for HickoryResolver {
    fn resolve<'a>(&'a self, dns: &'a DnsConfig) -> ResolveFuture<'a> {
        Box::pin(async move {
            let mut out = Resolved::default();
            let mut ttl: Option<u32> = None;
            match dns.kind {
                DnsKind::Srv => {
                    let lookup = self
                        .inner
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
                    let lookup = self
                        .inner
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
        }
    }

    /// The set-diff logic, driven by the static resolver: the real hickory resolver cannot be
    /// exercised here without a DNS server (tests have no external DNS).
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
