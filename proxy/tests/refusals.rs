//! The proxy's refusals of hostile or failing peers, end to end through a real
//! [`Proxy`] on loopback:
//!
//! - **slow clients**: a TCP client that never finishes the TLS handshake, a TLS client that
//!   sends nothing or trickles its request headers, a slowloris flood, and a connection flood
//!   past `limits.max_connections` — each cut off within its configured timeout (plus a
//!   generous margin for a loaded machine), while a legitimate tenant is still served;
//! - **agents that fail**: a real agent killed (its runtime dropped: every task ended, every
//!   socket closed at once, like a killed process) is a 503 within the scrape timeout, and
//!   the same proxy scrapes the agent again once it is back on its address; an agent that
//!   dies in the middle of a response body (a fake, because a real agent cannot be made to
//!   die at a chosen byte) is a broken body for the tenant, never a short 200 a scraper
//!   would take as complete;
//! - **revoked credentials**: a key removed from the tenants file, or listed in `[revoked]`,
//!   is a 401 on a new connection and on a connection kept alive from before the reload.
//!
//! The other refusals (no credentials 401, another tenant's instance and non-operator node
//! metrics 404, 429 with `Retry-After`, Host/SNI 400/421, oversized headers 431) are in
//! `server.rs`.
//!
//! **Needs root**, runc and busybox-static (like `end_to_end.rs`) for the two tests that
//! scrape a real runc container (`slowloris_flood_*`, `killed_agent_*`): the container
//! harness panics naming what is missing, never skips. The others need nothing but loopback.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lookout_agent::config::AgentConfig;
use lookout_agent::Agent;
use lookout_proxy::config::ProxyConfig;
use lookout_proxy::identity::spki_sha256;
use lookout_proxy::server::Proxy;
use lookout_proxy::tenants::hex;
use lookout_testkit::containers::{ContainerSpec, Runc};
use lookout_testkit::exposition::unlabelled;
use lookout_testkit::https::{self, read_head, serve_tls, Connection, Response};
use lookout_testkit::net::closed_port;
use lookout_testkit::pki::{token_sha256 as token_hash, Pki, BASE as SUFFIX};
use lookout_testkit::tls::Identity;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: u64 = 1024 * 1024;

/// Added to every configured timeout before a test gives up on it firing: the machine may be
/// busy with other builds, so this is generous. Tests never assert speed, only that a timeout
/// fires at all within this bound.
const MARGIN: Duration = Duration::from_secs(5);

/// Bound on waits for something that should happen promptly (a reload, a restart).
const SETTLE: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------
// PKI and files
// ---------------------------------------------------------------------------------------

/// `lookout_testkit`'s PKI (operator CA with agent and proxy certificates, server CA, tenant
/// CA with `acme`, a self-signed key for `globex`) with the tenants file as issued; files in
/// a temp dir.
fn fleet() -> Pki {
    let pki = Pki::new("lookout-refusals-");
    pki.write("tenants.toml", &pki.tenants(&[]));
    pki
}

/// What these tests set up on top of the PKI.
trait Setup {
    fn tenants(&self, edits: &[Edit]) -> String;
    fn edit_tenants(&self, edits: &[Edit]);
    fn agent_config(&self, runc_root: &Path, listen: &str) -> AgentConfig;
    async fn proxy(&self, inventory: Inventory, limits: &Limits) -> Proxy;
    fn client(&self, identity: Option<&Identity>, alpn: &[&[u8]]) -> Arc<ClientConfig>;
}

impl Setup for Pki {
    /// The tenants file: `acme` by CA certificate, `globex` by its registered key, `initech`
    /// by token — or with one of them taken away.
    fn tenants(&self, edits: &[Edit]) -> String {
        let has = |e: Edit| edits.contains(&e);
        let globex_spki = hex(&spki_sha256(self.globex.cert()).expect("spki"));
        let acme_spki = hex(&spki_sha256(self.acme.cert()).expect("spki"));
        let revoked = if has(Edit::RevokeAcme) {
            format!("[revoked]\nspki_sha256 = [\"{acme_spki}\"]\n")
        } else {
            String::new()
        };
        let globex_keys = if has(Edit::RemoveGlobexKey) {
            String::new()
        } else {
            format!("\"{globex_spki}\"")
        };
        let initech_tokens = if has(Edit::RemoveInitechToken) {
            String::new()
        } else {
            format!("\"{}\"", token_hash("initech-token"))
        };
        format!(
            r#"[defaults]
rate_limit = {{ per_second = 10000.0, burst = 10000 }}
{revoked}
[[tenant]]
name = "acme"

[[tenant]]
name = "globex"
spki_sha256 = [{globex_keys}]

[[tenant]]
name = "initech"
token_sha256 = [{initech_tokens}]
"#
        )
    }

    /// Rewrites the tenants file so that its modification time visibly changes.
    fn edit_tenants(&self, edits: &[Edit]) {
        std::thread::sleep(Duration::from_millis(20));
        self.write("tenants.toml", &self.tenants(edits));
    }

    fn agent_config(&self, runc_root: &Path, listen: &str) -> AgentConfig {
        let text = self
            .agent_toml(runc_root)
            .node_id("node-a")
            .listen(listen)
            .render();
        AgentConfig::parse(&text).expect("agent config")
    }

    /// Starts a proxy with this inventory and these limits.
    async fn proxy(&self, inventory: Inventory, limits: &Limits) -> Proxy {
        let config = self
            .proxy_toml()
            .top("tenants_reload_interval = \"100ms\"")
            .upstream("connect_timeout = \"1s\"")
            .upstream(&format!(
                "scrape_timeout = \"{}ms\"",
                limits.scrape_timeout.as_millis()
            ));
        let config = match inventory {
            Inventory::Agent(addr) => config.agents(&[addr.to_string()], ("100ms", "500ms")),
            Inventory::FakeAgent(addr) => {
                let path = self.write(
                    "inventory.toml",
                    &format!(
                        "[[nodes]]\nid = \"node-a\"\nagent = \"{addr}\"\n\
                         [[instances]]\nid = \"web\"\nnode = \"node-a\"\ntenant = \"acme\"\n\
                         [[instances]]\nid = \"g-1\"\nnode = \"node-a\"\ntenant = \"globex\"\n\
                         [[instances]]\nid = \"i-1\"\nnode = \"node-a\"\ntenant = \"initech\"\n"
                    ),
                );
                config.tables(&format!(
                    "[inventory]\nsource = \"file\"\npath = \"{}\"\nreload_interval = \"100ms\"\n",
                    path.display()
                ))
            }
        };
        let config = config
            .tables(&format!(
                "[limits]\nmax_connections = {max}\nhandshake_timeout = \"{hs}ms\"\n\
                 header_read_timeout = \"{hr}ms\"\n\
                 source = {{ per_second = {sps}, burst = {sb} }}\n",
                sps = limits.source.0,
                sb = limits.source.1,
                max = limits.max_connections,
                hs = limits.handshake_timeout.as_millis(),
                hr = limits.header_read_timeout.as_millis(),
            ))
            .render();
        let config = ProxyConfig::parse(&config).expect("proxy config");
        let proxy = Proxy::start(config).await.expect("proxy starts");
        let client = self.client(None, &[]);
        let addr = proxy.local_addr();
        eventually("the proxy is ready", SETTLE, || async {
            let r = get(&client, addr, SUFFIX, "/readyz", &[]).await.ok()?;
            (r.status == 200).then_some(())
        })
        .await;
        proxy
    }

    /// A tenant's TLS client configuration offering these ALPN protocols.
    fn client(&self, identity: Option<&Identity>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let mut cfg = self.tenant_client(identity);
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(cfg)
    }
}

/// A change to the tenants file as issued; the file holds every edit in the list given
/// (none: as issued).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Edit {
    RemoveGlobexKey,
    RemoveInitechToken,
    RevokeAcme,
}

/// Where the proxy's inventory comes from.
enum Inventory {
    /// A real agent's watch stream.
    Agent(SocketAddr),
    /// A file naming instances `web` (acme), `g-1` (globex), `i-1` (initech) on node
    /// `node-a`, whose agent is at this address (a fake, or nothing).
    FakeAgent(SocketAddr),
}

struct Limits {
    max_connections: usize,
    handshake_timeout: Duration,
    header_read_timeout: Duration,
    scrape_timeout: Duration,
    /// Per-source-address rate: (per second, burst).
    source: (f64, u32),
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            scrape_timeout: Duration::from_secs(10),
            source: (10000.0, 10000),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------

/// A TLS connection to the proxy for server name `name`, the handshake bounded by [`MARGIN`].
async fn tls(
    client: &Arc<ClientConfig>,
    proxy: SocketAddr,
    name: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    https::connect(client, proxy, name, MARGIN).await
}

/// An HTTP/1.1 connection to the proxy, kept alive for several requests.
async fn open(
    client: &Arc<ClientConfig>,
    proxy: SocketAddr,
    name: &str,
) -> Result<Connection, String> {
    https::open(client, proxy, name, MARGIN).await
}

/// One GET on `send`, with `Host: <name>:<port>`.
async fn request(
    send: &mut Connection,
    proxy: SocketAddr,
    name: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Response, String> {
    let host = format!("{name}:{}", proxy.port());
    https::request(send, &host, path, headers).await
}

/// One GET over a fresh connection.
async fn get(
    client: &Arc<ClientConfig>,
    proxy: SocketAddr,
    name: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Response, String> {
    let mut send = open(client, proxy, name).await?;
    request(&mut send, proxy, name, path, headers).await
}

/// Reads until the peer closes (EOF or reset) and returns what arrived, or `Err` if the
/// connection is still open after `limit`.
async fn until_closed<S: AsyncRead + Unpin>(s: &mut S, limit: Duration) -> Result<Vec<u8>, ()> {
    let mut got = Vec::new();
    let read_all = async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    match tokio::time::timeout(limit, read_all).await {
        Ok(()) => Ok(got),
        Err(_) => Err(()),
    }
}

/// Polls `f` until it returns `Some`, every 100 ms, for at most `limit`.
async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The request a slow client trickles: complete, so that only its slowness is refused.
fn slow_request(port: u16) -> Vec<u8> {
    format!(
        "GET /v1/discover HTTP/1.1\r\nhost: {SUFFIX}:{port}\r\n\
         user-agent: slowloris/1.0\r\naccept: */*\r\n\r\n"
    )
    .into_bytes()
}

/// A client that finishes TLS (offering `alpn`), then writes `request` one byte every
/// `every` (stopping at the first write error); returns the read half, to watch for the
/// proxy closing the connection.
async fn trickle(
    client: &Arc<ClientConfig>,
    proxy: SocketAddr,
    request: Vec<u8>,
    every: Duration,
) -> tokio::io::ReadHalf<tokio_rustls::client::TlsStream<TcpStream>> {
    let stream = tls(client, proxy, SUFFIX).await.expect("TLS handshake");
    let (read, mut write) = tokio::io::split(stream);
    tokio::spawn(async move {
        for byte in request {
            if write.write_all(&[byte]).await.is_err() || write.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(every).await;
        }
        // Keep the write side open: only the proxy may end this connection.
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    read
}

// ---------------------------------------------------------------------------------------
// Slow clients
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshake_never_finished_is_closed_after_handshake_timeout() {
    let pki = fleet();
    let limits = Limits {
        handshake_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let proxy = pki
        .proxy(Inventory::FakeAgent(closed_port()), &limits)
        .await;
    let addr = proxy.local_addr();

    // One sends nothing at all, one the start of a ClientHello record and then nothing.
    let start = Instant::now();
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    let mut partial = TcpStream::connect(addr).await.expect("connect");
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .expect("write");

    // Meanwhile others are served.
    let acme = pki.client(Some(&pki.acme), &[]);
    let r = get(&acme, addr, SUFFIX, "/v1/discover", &[])
        .await
        .expect("served while two handshakes stall");
    assert_eq!(r.status, 200, "{}", r.text());

    let limit = limits.handshake_timeout + MARGIN;
    for (who, s) in [("silent", &mut silent), ("partial", &mut partial)] {
        let got = until_closed(s, limit)
            .await
            .unwrap_or_else(|()| panic!("{who}: still open after {limit:?}"));
        assert!(got.is_empty(), "{who}: the proxy answered {got:?}");
        // Closed by the handshake deadline, not by something earlier.
        assert!(start.elapsed() >= limits.handshake_timeout, "{who}");
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_headers_slower_than_header_read_timeout_are_cut_off() {
    let pki = fleet();
    let limits = Limits {
        header_read_timeout: Duration::from_millis(600),
        ..Limits::default()
    };
    let proxy = pki
        .proxy(Inventory::FakeAgent(closed_port()), &limits)
        .await;
    let addr = proxy.local_addr();
    let port = addr.port();
    let acme = pki.client(Some(&pki.acme), &[]);

    // Whole headers would take ~8 s at this pace: far past the deadline.
    let every = Duration::from_millis(100);
    let mut slow = Vec::new();
    for alpn in [&[][..], &[&b"http/1.1"[..]][..]] {
        let client = pki.client(Some(&pki.acme), alpn);
        slow.push((
            Instant::now(),
            trickle(&client, addr, slow_request(port), every).await,
        ));
    }

    // Meanwhile the proxy serves others, also on a connection kept alive across requests.
    let mut send = open(&acme, addr, SUFFIX).await.expect("connect");
    for i in 0..3 {
        let r = request(&mut send, addr, SUFFIX, "/v1/discover", &[])
            .await
            .unwrap_or_else(|e| panic!("served while slow clients trickle ({i}): {e}"));
        assert_eq!(r.status, 200, "{}", r.text());
    }

    let limit = limits.header_read_timeout + MARGIN;
    for (i, (start, mut read)) in slow.into_iter().enumerate() {
        let got = until_closed(&mut read, limit)
            .await
            .unwrap_or_else(|()| panic!("slow client {i}: still open after {limit:?}"));
        let took = start.elapsed();
        // hyper ends the connection on the header deadline without a response: no 408,
        // and certainly never the 200 the complete request would have earned.
        assert!(
            got.is_empty(),
            "slow client {i}: {:?}",
            String::from_utf8_lossy(&got)
        );
        assert!(
            took >= limits.header_read_timeout,
            "slow client {i}: {took:?}"
        );
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_silent_after_the_tls_handshake_is_cut_off() {
    let pki = fleet();
    let limits = Limits {
        header_read_timeout: Duration::from_millis(600),
        ..Limits::default()
    };
    let proxy = pki
        .proxy(Inventory::FakeAgent(closed_port()), &limits)
        .await;
    let addr = proxy.local_addr();

    // No ALPN (Prometheus), HTTP/1.1 and h2 negotiated: each finishes TLS and says nothing,
    // or (last) starts the h2 preface and stalls.
    let mut silent = Vec::new();
    for (what, alpn, bytes) in [
        ("no ALPN", &[][..], &b""[..]),
        ("http/1.1", &[&b"http/1.1"[..]][..], &b""[..]),
        ("h2", &[&b"h2"[..]][..], &b""[..]),
        (
            "h2, half a preface",
            &[&b"h2"[..]][..],
            &b"PRI * HTTP/2.0\r\n"[..],
        ),
    ] {
        let client = pki.client(Some(&pki.acme), alpn);
        // Before the handshake: the proxy's deadline starts when its side of it ends.
        let start = Instant::now();
        let mut s = tls(&client, addr, SUFFIX).await.expect("TLS handshake");
        s.write_all(bytes).await.expect("write");
        s.flush().await.expect("flush");
        silent.push((what, start, s));
    }
    let limit = limits.header_read_timeout + MARGIN;
    for (what, start, mut s) in silent {
        let got = until_closed(&mut s, limit)
            .await
            .unwrap_or_else(|()| panic!("{what}: still open after {limit:?}"));
        assert!(got.is_empty(), "{what}: {got:?}");
        let took = start.elapsed();
        assert!(
            took >= limits.header_read_timeout,
            "{what}: closed after {took:?}"
        );
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_flood_does_not_stop_a_tenants_scrape() {
    let runc = Runc::new();
    let _web = runc.run(
        ContainerSpec::new("web")
            .memory_limit(64 * MIB)
            .annotation("lookout.tenant", "acme"),
    );
    let pki = fleet();
    let agent = Agent::start(pki.agent_config(runc.state_root(), "127.0.0.1:0"))
        .await
        .expect("agent starts");
    // Long enough that the flood is still in place while the tenant scrapes.
    let limits = Limits {
        handshake_timeout: Duration::from_secs(5),
        header_read_timeout: Duration::from_secs(5),
        ..Limits::default()
    };
    let proxy = pki
        .proxy(Inventory::Agent(agent.local_addr()), &limits)
        .await;
    let addr = proxy.local_addr();
    let acme = pki.client(Some(&pki.acme), &[]);
    let web = format!("web.{SUFFIX}");
    eventually("the container is scrapable", SETTLE, || async {
        let r = get(&acme, addr, &web, "/metrics", &[]).await.ok()?;
        (r.status == 200).then_some(())
    })
    .await;

    // 200 connections: half finish TLS and trickle headers, half never start TLS (those
    // last, being the cheapest, so that all are open together well within the deadlines).
    const FLOOD: usize = 200;
    let stranger = pki.client(None, &[]);
    let mut trickling = Vec::new();
    for _ in 0..FLOOD / 2 {
        let request = slow_request(addr.port());
        trickling.push(trickle(&stranger, addr, request, Duration::from_millis(250)).await);
    }
    let mut tcp_only = Vec::new();
    for _ in 0..FLOOD / 2 {
        tcp_only.push(TcpStream::connect(addr).await.expect("connect"));
    }
    let telemetry = Arc::clone(proxy.telemetry());
    eventually("the flood holds its connections", SETTLE, || async {
        (telemetry.connections.get() >= FLOOD as i64).then_some(())
    })
    .await;

    // The tenant's scrape succeeds through the flood.
    let r = get(&acme, addr, &web, "/metrics", &[])
        .await
        .expect("scrape during the flood");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        unlabelled(&r.text(), "node_memory_MemTotal_bytes"),
        Some((64 * MIB) as f64)
    );

    // And every flood connection is cut by its deadline.
    let limit = limits.handshake_timeout.max(limits.header_read_timeout) + MARGIN;
    for (i, s) in tcp_only.iter_mut().enumerate() {
        let got = until_closed(s, limit)
            .await
            .unwrap_or_else(|()| panic!("tcp-only {i}: still open after {limit:?}"));
        assert!(got.is_empty(), "tcp-only {i}: {got:?}");
    }
    for (i, s) in trickling.iter_mut().enumerate() {
        let got = until_closed(s, limit)
            .await
            .unwrap_or_else(|()| panic!("trickling {i}: still open after {limit:?}"));
        assert!(got.is_empty(), "trickling {i}: {got:?}");
    }
    eventually("the connection gauge drains", SETTLE, || async {
        (telemetry.connections.get() == 0).then_some(())
    })
    .await;
    proxy.shutdown().await;
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_new_ones_are_closed_until_slow_ones_time_out() {
    let pki = fleet();
    let limits = Limits {
        max_connections: 8,
        handshake_timeout: Duration::from_millis(800),
        ..Limits::default()
    };
    let proxy = pki
        .proxy(Inventory::FakeAgent(closed_port()), &limits)
        .await;
    let addr = proxy.local_addr();
    let telemetry = Arc::clone(proxy.telemetry());

    // The readiness probe's connection must be gone first, or it would hold a slot.
    eventually("no connection open", SETTLE, || async {
        (telemetry.connections.get() == 0).then_some(())
    })
    .await;
    let mut flood = Vec::new();
    for _ in 0..limits.max_connections {
        flood.push(TcpStream::connect(addr).await.expect("connect"));
    }
    eventually("the flood fills every slot", SETTLE, || async {
        (telemetry.connections.get() == limits.max_connections as i64).then_some(())
    })
    .await;

    // Every slot is taken: the tenant's connection is closed at once, and counted.
    let acme = pki.client(Some(&pki.acme), &[]);
    let e = get(&acme, addr, SUFFIX, "/v1/discover", &[])
        .await
        .expect_err("no slot left");
    assert!(e.starts_with("tls:"), "closed before the handshake: {e}");
    assert!(telemetry.connections_refused.get() >= 1);

    // The handshake deadline frees the slots; then the tenant is served again.
    let limit = limits.handshake_timeout + MARGIN;
    for (i, s) in flood.iter_mut().enumerate() {
        until_closed(s, limit)
            .await
            .unwrap_or_else(|()| panic!("flood {i}: still open after {limit:?}"));
    }
    let r = eventually("served once the slots are free", SETTLE, || async {
        get(&acme, addr, SUFFIX, "/v1/discover", &[]).await.ok()
    })
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Failing agents
// ---------------------------------------------------------------------------------------

/// A real agent on a runtime of its own, so that killing it ends every one of its tasks
/// and closes every one of its sockets (listener, watch streams, pooled connections) at once,
/// as the death of its process would. Dropping an [`Agent`] alone aborts its tasks only
/// eventually, and a connection task may outlive the listener.
struct AgentProcess {
    runtime: Option<tokio::runtime::Runtime>,
    agent: Option<Agent>,
    addr: SocketAddr,
}

impl AgentProcess {
    async fn start(config: AgentConfig) -> Result<AgentProcess, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| format!("agent runtime: {e}"))?;
        let agent = runtime
            .spawn(Agent::start(config))
            .await
            .map_err(|e| format!("agent start task: {e}"))?
            .map_err(|e| format!("agent start: {e}"))?;
        Ok(AgentProcess {
            addr: agent.local_addr(),
            runtime: Some(runtime),
            agent: Some(agent),
        })
    }

    /// Kills the agent: no graceful shutdown, nothing finishes. Returns once every task of
    /// the agent is gone (dropping a runtime waits for that, so it runs on a blocking thread).
    async fn kill(mut self) {
        let (runtime, agent) = (self.runtime.take(), self.agent.take());
        tokio::task::spawn_blocking(move || {
            drop(agent);
            drop(runtime);
        })
        .await
        .expect("the agent's runtime shuts down");
    }
}

impl Drop for AgentProcess {
    /// On a test failure: stop without blocking (the test's runtime may not block here).
    fn drop(&mut self) {
        drop(self.agent.take());
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_agent_is_503_and_the_proxy_recovers_when_it_is_back() {
    let runc = Runc::new();
    let _web = runc.run(
        ContainerSpec::new("web")
            .memory_limit(64 * MIB)
            .annotation("lookout.tenant", "acme"),
    );
    let pki = fleet();
    let agent = AgentProcess::start(pki.agent_config(runc.state_root(), "127.0.0.1:0"))
        .await
        .expect("agent starts");
    let agent_addr = agent.addr;
    let proxy = pki
        .proxy(Inventory::Agent(agent_addr), &Limits::default())
        .await;
    let addr = proxy.local_addr();
    let acme = pki.client(Some(&pki.acme), &[]);
    let web = format!("web.{SUFFIX}");
    // Scraped once, so the proxy holds a pooled keep-alive connection to the agent when it
    // dies, and its watch stream is connected.
    eventually("the container is scrapable", SETTLE, || async {
        let r = get(&acme, addr, &web, "/metrics", &[]).await.ok()?;
        (r.status == 200).then_some(())
    })
    .await;

    agent.kill().await;
    let scrape_timeout = Duration::from_secs(3);
    let start = Instant::now();
    let r = get(
        &acme,
        addr,
        &web,
        "/metrics",
        &[("x-prometheus-scrape-timeout-seconds", "3")],
    )
    .await
    .expect("an answer");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        start.elapsed() < scrape_timeout,
        "answered in {:?}",
        start.elapsed()
    );
    assert!(r.text().starts_with("error: "), "{}", r.text());

    // Back on the same address, a new agent that finds the container again: the same
    // proxy scrapes it.
    let agent = AgentProcess::start(pki.agent_config(runc.state_root(), &agent_addr.to_string()))
        .await
        .expect("agent restarts on its address");
    let r = eventually("the same proxy scrapes again", SETTLE, || async {
        let r = get(&acme, addr, &web, "/metrics", &[]).await.ok()?;
        (r.status == 200).then_some(r)
    })
    .await;
    assert_eq!(
        unlabelled(&r.text(), "node_memory_MemTotal_bytes"),
        Some((64 * MIB) as f64)
    );
    proxy.shutdown().await;
    agent.kill().await;
}

/// A fake agent (TLS with the agent's certificate) that answers every request with
/// `answer` (a response head and the start of its body), then dies.
async fn agent_dying_mid_body(pki: &Pki, answer: &'static [u8]) -> SocketAddr {
    serve_tls(pki.agent_acceptor(), move |_, mut s| async move {
        if read_head(&mut s).await {
            let _ = s.write_all(answer).await;
            let _ = s.flush().await;
        }
        // Dropped without close_notify or the rest of the body: a crash.
    })
    .await
}

/// Whether a body error says the message ended before it was complete: hyper's own
/// "incomplete message", or the TLS layer's unexpected EOF (the proxy aborts the connection
/// without `close_notify`).
fn ended_early(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::UnexpectedEof)
        {
            return true;
        }
        source = s.source();
    }
    e.is_incomplete_message()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_dying_mid_response_is_a_broken_body_not_a_short_200() {
    // A fake: a real agent cannot be made to die at a chosen byte of its answer.
    let pki = fleet();
    let acme = pki.client(Some(&pki.acme), &[]);
    let web = format!("web.{SUFFIX}");
    for (framing, answer) in [
        (
            "chunked",
            &b"HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\n\
               transfer-encoding: chunked\r\n\r\n\
               1e\r\nnode_memory_MemTotal_bytes 6.7\r\n"[..],
        ),
        (
            "content-length",
            &b"HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\n\
               content-length: 100000\r\n\r\nnode_memory_MemTotal_bytes 6.7\n"[..],
        ),
    ] {
        let fake = agent_dying_mid_body(&pki, answer).await;
        let proxy = pki
            .proxy(Inventory::FakeAgent(fake), &Limits::default())
            .await;
        let addr = proxy.local_addr();
        let r = get(&acme, addr, &web, "/metrics", &[])
            .await
            .unwrap_or_else(|e| panic!("{framing}: {e}"));
        // The headers were already on their way: the status is the agent's 200, but the
        // body must fail, so that no scraper takes the partial metrics as complete.
        assert_eq!(r.status, 200, "{framing}");
        // Framed, so that even a client ignoring the missing TLS close_notify sees the
        // message is short: never delimited by the connection's end.
        let header = |name: &str| r.headers.get(name).and_then(|v| v.to_str().ok());
        assert!(
            header("transfer-encoding") == Some("chunked") || header("content-length").is_some(),
            "{framing}: not framed: {:?}",
            r.headers
        );
        match &r.body {
            Err(e) => assert!(ended_early(e), "{framing}: unexpected body error {e:?}"),
            Ok(b) => panic!("{framing}: a truncated body was delivered as complete: {b:?}"),
        }
        proxy.shutdown().await;
    }
}

// ---------------------------------------------------------------------------------------
// Revoked credentials
// ---------------------------------------------------------------------------------------

/// Waits until a new connection with `client` (and `headers`) gets a 401 on discovery.
async fn until_refused(client: &Arc<ClientConfig>, proxy: SocketAddr, headers: &[(&str, &str)]) {
    eventually("the reload takes effect", SETTLE, || async {
        let r = get(client, proxy, SUFFIX, "/v1/discover", headers)
            .await
            .ok()?;
        (r.status == 401).then_some(())
    })
    .await;
}

/// Discovery on a kept-alive connection: the status, and the instance ids listed.
async fn discover(
    send: &mut Connection,
    proxy: SocketAddr,
    headers: &[(&str, &str)],
) -> (u16, Vec<String>) {
    assert!(!send.is_closed(), "the kept-alive connection is still open");
    let r = request(send, proxy, SUFFIX, "/v1/discover", headers)
        .await
        .expect("answered on the kept-alive connection");
    let ids = match (r.status, &r.body) {
        (200, Ok(b)) => {
            let v: serde_json::Value = serde_json::from_slice(b).expect("JSON");
            v["containers"]
                .as_array()
                .expect("containers")
                .iter()
                .filter_map(|c| c["vm_uuid"].as_str().map(str::to_string))
                .collect()
        }
        _ => Vec::new(),
    };
    (r.status, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_credentials_are_401_also_on_kept_alive_connections() {
    let pki = fleet();
    let proxy = pki
        .proxy(Inventory::FakeAgent(closed_port()), &Limits::default())
        .await;
    let addr = proxy.local_addr();
    let globex = pki.client(Some(&pki.globex), &[]);
    let acme = pki.client(Some(&pki.acme), &[]);
    let anonymous = pki.client(None, &[]);
    let token = [("authorization", "Bearer initech-token")];

    // Each credential works, on a connection then kept alive.
    let mut globex_conn = open(&globex, addr, SUFFIX).await.expect("connect");
    let mut acme_conn = open(&acme, addr, SUFFIX).await.expect("connect");
    let mut initech_conn = open(&anonymous, addr, SUFFIX).await.expect("connect");
    assert_eq!(
        discover(&mut globex_conn, addr, &[]).await,
        (200, vec!["g-1".into()])
    );
    assert_eq!(
        discover(&mut acme_conn, addr, &[]).await,
        (200, vec!["web".into()])
    );
    assert_eq!(
        discover(&mut initech_conn, addr, &token).await,
        (200, vec!["i-1".into()])
    );

    // The registered key is removed from the tenants file.
    pki.edit_tenants(&[Edit::RemoveGlobexKey]);
    until_refused(&globex, addr, &[]).await;
    assert_eq!(discover(&mut globex_conn, addr, &[]).await.0, 401);

    // The token is removed.
    // The edits add up: globex stays without its key.
    pki.edit_tenants(&[Edit::RemoveGlobexKey, Edit::RemoveInitechToken]);
    until_refused(&anonymous, addr, &token).await;
    assert_eq!(discover(&mut initech_conn, addr, &token).await.0, 401);

    // A CA-issued certificate is listed in [revoked]: refused although the CA still vouches
    // for it.
    assert_eq!(discover(&mut acme_conn, addr, &[]).await.0, 200);
    pki.edit_tenants(&[
        Edit::RemoveGlobexKey,
        Edit::RemoveInitechToken,
        Edit::RevokeAcme,
    ]);
    until_refused(&acme, addr, &[]).await;
    assert_eq!(discover(&mut acme_conn, addr, &[]).await.0, 401);

    // Right before the undo, all three are still refused.
    assert_eq!(discover(&mut globex_conn, addr, &[]).await.0, 401);
    assert_eq!(discover(&mut initech_conn, addr, &token).await.0, 401);
    // Undoing the edits restores access, on the same connections too.
    pki.edit_tenants(&[]);
    eventually("restored", SETTLE, || async {
        let r = get(&acme, addr, SUFFIX, "/v1/discover", &[]).await.ok()?;
        (r.status == 200).then_some(())
    })
    .await;
    assert_eq!(discover(&mut acme_conn, addr, &[]).await.0, 200);
    assert_eq!(discover(&mut globex_conn, addr, &[]).await.0, 200);
    assert_eq!(discover(&mut initech_conn, addr, &token).await.0, 200);
    proxy.shutdown().await;
}

/// The per-source limit runs before authentication: anonymous requests from one address
/// are 429 once its burst is spent (not 401 forever), and then even a tenant with a valid
/// certificate from that address is refused by it, though its own tenant limit is far off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_limit_is_applied_before_authentication() {
    let pki = fleet();
    let limits = Limits {
        source: (0.01, 6),
        ..Limits::default()
    };
    let proxy = pki
        .proxy(
            Inventory::FakeAgent("127.0.0.1:1".parse().expect("addr")),
            &limits,
        )
        .await;
    let addr = proxy.local_addr();
    let anonymous = pki.client(None, &[]);
    let mut statuses = Vec::new();
    let limited = loop {
        let r = get(&anonymous, addr, SUFFIX, "/v1/discover", &[])
            .await
            .expect("an answer");
        statuses.push(r.status);
        if r.status == 429 {
            break r;
        }
        assert_eq!(r.status, 401, "anonymous, before the limit: {statuses:?}");
        assert!(statuses.len() <= 6, "never limited: {statuses:?}");
    };
    let retry: u64 = limited
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((99..=101).contains(&retry), "Retry-After {retry}");
    let acme = pki.client(Some(&pki.acme), &[]);
    let r = get(&acme, addr, SUFFIX, "/v1/discover", &[])
        .await
        .expect("an answer");
    assert_eq!(
        r.status, 429,
        "the source's limit, before acme is even authenticated"
    );
    proxy.shutdown().await;
}
