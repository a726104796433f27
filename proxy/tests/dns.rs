//! The hickory-resolver paths against a real DNS server: Debian's dnsmasq, started by each
//! test on 127.0.0.1 with a free port and killed when the test ends (even on failure).
//!
//! - The proxy's replica count follows DNS: a tenant's burst is divided by the number of
//!   addresses the name lists, changes when the answer changes, refreshes by the records' TTL
//!   when `refresh` is longer, and survives an empty answer and a DNS outage.
//! - The `agents` discovery source resolves SRV and A records with an explicitly named server
//!   (`[inventory.dns] server`), directly and through its watcher.
//!
//! Needs dnsmasq (Debian package `dnsmasq-base`, installed by `deploy/test.sh`); the tests
//! fail loudly when it is missing. All traffic stays on 127.0.0.1: answers name loopback
//! addresses, or `localhost` for SRV targets nothing connects to.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lookout_discovery::agents::resolve::RecordKind;
use lookout_discovery::agents::{
    AgentAddr, AgentsConfig, DnsConfig, DnsKind, HickoryResolver, Resolve, Watcher, DNS_TIMEOUT,
};
use lookout_proxy::config::ProxyConfig;
use lookout_proxy::limit::REPLICAS_DNS_TIMEOUT;
use lookout_proxy::server::Proxy;
use lookout_testkit::dns::Dnsmasq;
use lookout_testkit::exposition::unlabelled;
use lookout_testkit::https;
use lookout_testkit::pki::{token_sha256 as token_hash, Pki, BASE};
use rustls::ClientConfig;

/// Bound on every wait for something DNS-driven to show.
const WAIT: Duration = Duration::from_secs(10);

/// Polls `check` until it is true, or panics after [`WAIT`] saying `what`.
async fn wait_for(what: &str, check: impl FnMut() -> bool) {
    wait_within(WAIT, what, check).await;
}

/// Polls `check` until it is true, or panics after `bound` saying `what`.
async fn wait_within(bound: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < bound, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn set<const N: usize>(items: [&str; N]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

// --- the agents source ------------------------------------------------------------------

const SRV: &str = "_lookout._tcp.lookout.test";
const AGENT_HOSTS: &str = "127.0.0.2 agents.lookout.test\n127.0.0.3 agents.lookout.test\n\
                           ::2 agents.lookout.test\n";

fn agents_dnsmasq() -> Dnsmasq {
    Dnsmasq::start(
        AGENT_HOSTS,
        &[
            &format!("--srv-host={SRV},localhost,19001,0,10"),
            &format!("--srv-host={SRV},localhost,19002,1,10"),
            // "." as target: the service is decidedly not available there.
            "--srv-host=_none._tcp.lookout.test",
        ],
    )
}

fn agents_dns(kind: DnsKind, name: &str, port: Option<u16>, server: SocketAddr) -> DnsConfig {
    DnsConfig {
        name: name.into(),
        kind,
        port,
        refresh: Duration::from_secs(30),
        server: Some(server),
    }
}

#[tokio::test]
async fn hickory_with_an_explicit_server_resolves_srv_and_a_for_agents() {
    let dns = agents_dnsmasq();
    let resolver = HickoryResolver::new(Some(dns.addr())).expect("resolver");

    let srv = agents_dns(DnsKind::Srv, SRV, None, dns.addr());
    let got = resolver.resolve(&srv).await.expect("SRV answer");
    let want: BTreeSet<AgentAddr> = [
        AgentAddr::new("localhost", 19001),
        AgentAddr::new("localhost", 19002),
    ]
    .into();
    assert_eq!(got.agents, want);
    // dnsmasq answers local records with TTL 0 (--local-ttl).
    assert_eq!(got.ttl, Some(Duration::ZERO));

    let a = agents_dns(DnsKind::A, "agents.lookout.test", Some(9164), dns.addr());
    let got = resolver.resolve(&a).await.expect("A answer");
    let hosts: BTreeSet<String> = got.agents.iter().map(ToString::to_string).collect();
    assert_eq!(
        hosts,
        set(["127.0.0.2:9164", "127.0.0.3:9164", "[::2]:9164"]),
        "A and AAAA records, at the configured port"
    );

    // The resolver the watcher builds (`from_system`) asks the server the config names.
    let system = HickoryResolver::from_system().expect("system resolver");
    let got = system
        .resolve(&srv)
        .await
        .expect("SRV via the named server");
    assert_eq!(got.agents, want);

    // Unknown names and SRV records saying "not available" are errors or empty, never a
    // made-up agent.
    let missing = agents_dns(DnsKind::Srv, "_nothing._tcp.lookout.test", None, dns.addr());
    assert!(resolver.resolve(&missing).await.is_err());
    let none = agents_dns(DnsKind::Srv, "_none._tcp.lookout.test", None, dns.addr());
    assert_eq!(resolver.resolve(&none).await.map(|r| r.agents.len()), Ok(0));
}

#[tokio::test]
async fn targets_count_srv_a_and_aaaa_separately() {
    let dns = agents_dnsmasq();
    let resolver = HickoryResolver::new(Some(dns.addr())).expect("resolver");
    let server = dns.addr();
    let ask = |name: &'static str, kind| {
        let resolver = &resolver;
        async move { resolver.targets(name, kind, Some(server)).await }
    };
    let t = ask(SRV, RecordKind::Srv).await.expect("SRV");
    assert_eq!(t.targets, set(["localhost:19001", "localhost:19002"]));
    let t = ask("agents.lookout.test", RecordKind::A).await.expect("A");
    assert_eq!(t.targets, set(["127.0.0.2", "127.0.0.3"]));
    let t = ask("agents.lookout.test", RecordKind::Aaaa)
        .await
        .expect("AAAA");
    assert_eq!(t.targets, set(["::2"]));
    assert!(ask("nobody.lookout.test", RecordKind::A).await.is_err());
}

/// The proxy's client certificate and the operator CA, enough for the watcher to load its TLS
/// material.
fn client_tls(pki: &Pki) -> String {
    format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n",
        pki.path("proxy.pem").display(),
        pki.path("proxy-key.pem").display(),
        pki.path("operator-ca.pem").display(),
    )
}

#[tokio::test]
async fn the_agents_watcher_asks_the_configured_server() {
    let mut dns = agents_dnsmasq();
    let pki = Pki::new("lookout-dns-");
    let config = AgentsConfig::parse(&format!(
        "[dns]\nname = \"agents.lookout.test\"\nkind = \"a\"\nport = 9\nrefresh = \"100ms\"\n\
         server = \"{}\"\n{}",
        dns.addr(),
        client_tls(&pki)
    ))
    .expect("config");
    assert!(config.problems().is_empty(), "{:?}", config.problems());
    let watcher = Watcher::new(config).expect("watcher");
    let status = watcher.status();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let shared = lookout_discovery::Shared::new();
    let task = tokio::spawn(watcher.run(Arc::clone(&shared), rx));
    let watched =
        || -> BTreeSet<String> { status.agents().iter().map(|a| a.addr.clone()).collect() };
    let want = set(["127.0.0.2:9", "127.0.0.3:9", "[::2]:9"]);
    wait_for("the watcher to list the agents DNS names", || {
        watched() == want
    })
    .await;

    dns.set_hosts("127.0.0.3 agents.lookout.test\n");
    let want = set(["127.0.0.3:9"]);
    wait_for("the watcher to drop agents gone from DNS", || {
        watched() == want
    })
    .await;

    dns.stop();
    // A dead server is noticed when the lookup gives up (hickory: 3 tries of 5 s each).
    wait_within(DNS_TIMEOUT + WAIT, "the DNS error to be recorded", || {
        status.dns_error().is_some()
    })
    .await;
    assert_eq!(watched(), want, "a DNS outage keeps the agents");

    let _ = stop.send(true);
    task.await.expect("watcher ends");
}

// --- the proxy's replica count ----------------------------------------------------------

/// The burst every test tenant has, cluster-wide.
const BURST: u32 = 9;
const PROXIES: &str = "proxies.lookout.test";

/// A proxy on loopback whose replica count comes from `dns`, with tenants `t1`…`t4` (tokens
/// `t1-token`…) of burst [`BURST`] and a rate slow enough never to refill during a test.
struct LimitedProxy {
    proxy: Proxy,
    client: Arc<ClientConfig>,
    _pki: Pki,
}

impl LimitedProxy {
    async fn start(dns: &Dnsmasq, replicas_dns: &str, replicas: u32) -> LimitedProxy {
        let pki = Pki::new("lookout-proxy-dns-");
        let w = |name: &str, text: &str| -> String { pki.write(name, text).display().to_string() };
        let mut tenants =
            String::from("[defaults]\nrate_limit = { per_second = 0.001, burst = 9 }\n");
        for t in ["t1", "t2", "t3", "t4"] {
            tenants.push_str(&format!(
                "[[tenant]]\nname = \"{t}\"\ntoken_sha256 = [\"{}\"]\n",
                token_hash(&format!("{t}-token"))
            ));
        }
        w("tenants.toml", &tenants);
        let inventory = w("inventory.toml", "nodes = []\ninstances = []\n");
        let config = pki
            .proxy_toml()
            .tables(&format!(
                "[inventory]\nsource = \"file\"\npath = \"{inventory}\"\n\
                 [limits]\nreplicas = {replicas}\n\
                 source = {{ per_second = 10000.0, burst = 10000 }}\n\
                 [limits.replicas_dns]\nserver = \"{server}\"\n{replicas_dns}\n",
                server = dns.addr(),
            ))
            .render();
        let cfg = ProxyConfig::load(&pki.write("proxy.toml", &config)).expect("valid config");
        let proxy = Proxy::start(cfg).await.expect("proxy starts");
        let client = Arc::new(pki.tenant_client(None));
        LimitedProxy {
            proxy,
            client,
            _pki: pki,
        }
    }

    /// The status of one `GET /v1/discover` as `tenant`, over a fresh connection.
    async fn discover(&self, tenant: &str) -> u16 {
        let auth = format!("Bearer {tenant}-token");
        let headers = [("authorization", auth.as_str())];
        https::get(
            &self.client,
            self.proxy.local_addr(),
            BASE,
            BASE,
            "/v1/discover",
            &headers,
        )
        .await
        .expect("response")
        .status
    }

    /// Requests `tenant` gets through before its first 429 (at most `BURST + 1` tried).
    async fn passes(&self, tenant: &str) -> u32 {
        for n in 0..=BURST {
            match self.discover(tenant).await {
                200 => {}
                429 => return n,
                other => panic!("{tenant}: unexpected status {other}"),
            }
        }
        panic!("{tenant}: no 429 after {} requests", BURST + 1);
    }

    /// A metric without labels, from the proxy's own metrics.
    fn metric(&self, name: &str) -> Option<f64> {
        unlabelled(&self.proxy.telemetry().encode(), name)
    }
}

fn hosts_with(addrs: &[&str]) -> String {
    addrs.iter().map(|a| format!("{a} {PROXIES}\n")).collect()
}

#[tokio::test]
async fn the_tenant_share_follows_the_replicas_dns_lists_and_survives_an_outage() {
    let mut dns = Dnsmasq::start(&hosts_with(&["127.0.0.1", "::1"]), &[]);
    // Configured 2 until DNS answers; kind "a" counts IPv4 only, so ::1 adds nothing.
    let p = LimitedProxy::start(
        &dns,
        &format!("name = \"{PROXIES}\"\nrefresh = \"100ms\""),
        2,
    )
    .await;
    wait_for("the first DNS answer (1 replica)", || {
        p.metric("lookout_proxy_replicas") == Some(1.0)
    })
    .await;
    assert_eq!(
        p.passes("t1").await,
        BURST,
        "one replica enforces the whole burst"
    );

    dns.set_hosts(&hosts_with(&[
        "127.0.0.1",
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.3",
    ]));
    wait_for("3 replicas", || {
        p.metric("lookout_proxy_replicas") == Some(3.0)
    })
    .await;
    assert_eq!(p.passes("t2").await, BURST.div_ceil(3));
    assert_eq!(
        p.metric("lookout_proxy_replicas_dns_failures_total"),
        Some(0.0)
    );

    // The name disappears: an empty answer is not "1 replica".
    dns.set_hosts("");
    wait_for("the empty answer to count as a failure", || {
        p.metric("lookout_proxy_replicas_dns_failures_total") >= Some(1.0)
    })
    .await;
    assert_eq!(p.metric("lookout_proxy_replicas"), Some(3.0));
    assert_eq!(p.passes("t3").await, BURST.div_ceil(3));

    // DNS goes away altogether: the last count stays.
    dns.set_hosts(&hosts_with(&["127.0.0.1", "127.0.0.2"]));
    wait_for("2 replicas", || {
        p.metric("lookout_proxy_replicas") == Some(2.0)
    })
    .await;
    let before = p
        .metric("lookout_proxy_replicas_dns_failures_total")
        .unwrap_or(0.0);
    dns.stop();
    // A dead server is noticed when the lookup gives up (hickory: 3 tries of 5 s each).
    wait_within(
        REPLICAS_DNS_TIMEOUT + WAIT,
        "the outage to be counted",
        || p.metric("lookout_proxy_replicas_dns_failures_total") > Some(before),
    )
    .await;
    assert_eq!(p.metric("lookout_proxy_replicas"), Some(2.0));
    assert_eq!(p.passes("t4").await, BURST.div_ceil(2));
    p.proxy.shutdown().await;
}

#[tokio::test]
async fn srv_targets_count_and_a_short_ttl_beats_a_long_refresh() {
    // TTL 1 s on local records; `refresh` is an hour, so only the TTL can bring the change.
    let srv = "_lookout-proxy._tcp.lookout.test";
    let dns = Dnsmasq::start(
        &hosts_with(&["127.0.0.1"]),
        &[
            "--local-ttl=1",
            &format!("--srv-host={srv},localhost,9163"),
            &format!("--srv-host={srv},localhost,9263"),
        ],
    );
    let p = LimitedProxy::start(
        &dns,
        &format!("name = \"{srv}\"\nkind = \"srv\"\nrefresh = \"1h\""),
        1,
    )
    .await;
    wait_for("2 SRV targets", || {
        p.metric("lookout_proxy_replicas") == Some(2.0)
    })
    .await;
    assert_eq!(p.passes("t1").await, BURST.div_ceil(2));

    // The same check for AAAA, on a fresh proxy: the TTL brings the second address.
    dns.set_hosts(&hosts_with(&["127.0.0.1", "::1"]));
    let p2 = LimitedProxy::start(
        &dns,
        &format!("name = \"{PROXIES}\"\nkind = \"aaaa\"\nrefresh = \"1h\""),
        5,
    )
    .await;
    wait_for("1 AAAA address", || {
        p2.metric("lookout_proxy_replicas") == Some(1.0)
    })
    .await;
    dns.set_hosts(&hosts_with(&["::1", "::2", "::3"]));
    wait_for("3 AAAA addresses, within a TTL", || {
        p2.metric("lookout_proxy_replicas") == Some(3.0)
    })
    .await;
    assert_eq!(p2.passes("t1").await, BURST.div_ceil(3));
    p.proxy.shutdown().await;
    p2.proxy.shutdown().await;
}

/// Agent addresses that are names are resolved through hickory-resolver with the configured
/// server: the connection goes to the address DNS gives, and a name DNS does not know is a
/// DNS failure (503 for the tenant), never a guess.
#[tokio::test]
async fn agent_names_resolve_through_the_configured_server() {
    let dns = Dnsmasq::start("127.0.0.1 agent-7.lookout.test\n", &[]);
    let pki = Pki::new("lookout-upstream-dns-");
    let upstream =
        lookout_proxy::upstream::Upstream::new(&lookout_proxy::upstream::UpstreamConfig {
            cert: pki.path("proxy.pem"),
            key: pki.path("proxy-key.pem"),
            ca: pki.path("operator-ca.pem"),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
        })
        .expect("upstream")
        .with_dns_server(Some(dns.addr()))
        .expect("resolver");
    // A port nothing listens on: the error names the address the name resolved to.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let headers = http::HeaderMap::new();
    let err = upstream
        .get(
            &format!("agent-7.lookout.test:{closed}"),
            "/v1/node/metrics",
            &headers,
            Duration::from_secs(5),
        )
        .await
        .expect_err("nothing listens");
    assert!(
        err.to_string()
            .contains(&format!("connect 127.0.0.1:{closed}")),
        "{err}"
    );
    let err = upstream
        .get(
            "nobody.lookout.test:9164",
            "/v1/node/metrics",
            &headers,
            Duration::from_secs(5),
        )
        .await
        .expect_err("unknown name");
    assert!(err.to_string().contains("DNS"), "{err}");
}
