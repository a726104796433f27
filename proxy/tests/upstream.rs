//! The proxy's upstream client against a real agent started in-process (and a few fake TLS
//! servers for the failure modes an agent does not produce on demand).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::HeaderMap;
use http_body_util::BodyExt;
use lookout_agent::config::AgentConfig;
use lookout_agent::Agent;
use lookout_proxy::upstream::{
    forwarded_headers, strip_hop_by_hop, Upstream, UpstreamConfig, UpstreamError,
};
use lookout_testkit::https::{read_head, serve_tls};
use lookout_testkit::net::closed_port;
use lookout_testkit::pki::{Pki, Usage};
use tokio::io::AsyncWriteExt;

/// `lookout_testkit`'s PKI, an agent certificate from a foreign CA (`impostor.pem`), and an
/// empty runc state root (`runc/`).
struct Fixture {
    pki: Pki,
}

impl Fixture {
    fn new() -> Fixture {
        let pki = Pki::new("lookout-upstream-");
        let impostor = pki
            .foreign
            .issue("impostor", &["localhost", "127.0.0.1"], Usage::Server);
        pki.write_issued("impostor", &impostor);
        std::fs::create_dir(pki.path("runc")).expect("runc root");
        Fixture { pki }
    }

    fn upstream_config(&self, idle_timeout: Duration) -> UpstreamConfig {
        UpstreamConfig {
            cert: self.pki.path("proxy.pem"),
            key: self.pki.path("proxy-key.pem"),
            ca: self.pki.path("operator-ca.pem"),
            connect_timeout: Duration::from_secs(2),
            idle_timeout,
        }
    }

    fn upstream(&self) -> Upstream {
        Upstream::new(&self.upstream_config(Duration::from_secs(30))).expect("upstream")
    }

    /// An agent config on `listen` serving `<identity>.pem` of this PKI.
    fn agent_config(&self, listen: &str, identity: &str) -> AgentConfig {
        let text = self
            .pki
            .agent_toml(&self.pki.path("runc"))
            .listen(listen)
            .identity(
                &self.pki.path(&format!("{identity}.pem")),
                &self.pki.path(&format!("{identity}-key.pem")),
            )
            .rescan("1h")
            .render();
        AgentConfig::parse(&text).expect("agent config parses")
    }

    async fn agent(&self) -> Agent {
        self.agent_on("127.0.0.1:0").await
    }

    async fn agent_on(&self, listen: &str) -> Agent {
        Agent::start(self.agent_config(listen, "agent"))
            .await
            .expect("agent starts")
    }
}

/// Reads the whole body of `resp`.
async fn body(resp: http::Response<hyper::body::Incoming>) -> Vec<u8> {
    resp.into_body()
        .collect()
        .await
        .expect("body streams")
        .to_bytes()
        .to_vec()
}

/// Gives the release task time to put a finished connection back.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}

const DEADLINE: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread")]
async fn agent_endpoints_and_statuses_pass_through() {
    let pki = Fixture::new();
    let agent = pki.agent().await;
    let addr = agent.local_addr().to_string();
    let up = pki.upstream();

    let r = up
        .get(&addr, "/healthz", &HeaderMap::new(), DEADLINE)
        .await
        .expect("healthz");
    assert_eq!(r.status(), 200);
    assert_eq!(String::from_utf8_lossy(&body(r).await).trim(), "ok");

    let r = up
        .get(&addr, "/v1/instances", &HeaderMap::new(), DEADLINE)
        .await
        .expect("instances");
    assert_eq!(r.status(), 200);
    let list: serde_json::Value = serde_json::from_slice(&body(r).await).expect("JSON");
    assert_eq!(list, serde_json::json!([]));

    let r = up
        .get(&addr, "/v1/node/metrics", &HeaderMap::new(), DEADLINE)
        .await
        .expect("node metrics");
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("content-encoding").is_none());
    let text = String::from_utf8(body(r).await).expect("utf8");
    assert!(text.contains("node_"), "node metrics: {text:.200}");

    // An agent 404 is a response, not an error.
    let r = up
        .get(
            &addr,
            "/v1/instances/nope/metrics",
            &HeaderMap::new(),
            DEADLINE,
        )
        .await
        .expect("a 404 is a response");
    assert_eq!(r.status(), 404);
    body(r).await;

    // A localhost name works as well as the IP literal.
    let port = agent.local_addr().port();
    let r = up
        .get(
            &format!("localhost:{port}"),
            "/healthz",
            &HeaderMap::new(),
            DEADLINE,
        )
        .await
        .expect("by name");
    assert_eq!(r.status(), 200);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sequential_requests_share_one_connection() {
    let pki = Fixture::new();
    let agent = pki.agent().await;
    let addr = agent.local_addr().to_string();
    let up = pki.upstream();
    for path in [
        "/healthz",
        "/v1/instances",
        "/v1/instances/nope/metrics",
        "/healthz",
    ]
    .iter()
    .cycle()
    .take(10)
    {
        let r = up
            .get(&addr, path, &HeaderMap::new(), DEADLINE)
            .await
            .expect("get");
        body(r).await;
        settle().await;
    }
    assert_eq!(up.connections_opened(), 1, "one pooled connection");
    assert_eq!(up.connections_reused(), 9);
    assert_eq!(up.idle_connections(), 1);

    // A body dropped unread never leaves a half-read connection in the pool: it is closed,
    // or (when hyper had already read it all) pooled clean — the next answer is whole.
    let r = up
        .get(&addr, "/v1/node/metrics", &HeaderMap::new(), DEADLINE)
        .await
        .expect("get");
    drop(r);
    settle().await;
    let kept = up.idle_connections();
    let r = up
        .get(&addr, "/healthz", &HeaderMap::new(), DEADLINE)
        .await
        .expect("get after a dropped body");
    assert_eq!(r.status(), 200);
    assert_eq!(String::from_utf8_lossy(&body(r).await).trim(), "ok");
    // Pooled clean, it was reused; closed, a new one was opened — and nothing else.
    assert_eq!(
        up.connections_opened(),
        if kept == 1 { 1 } else { 2 },
        "{kept} kept after the dropped body"
    );
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_expire() {
    let pki = Fixture::new();
    let agent = pki.agent().await;
    let addr = agent.local_addr().to_string();
    let up = Upstream::new(&pki.upstream_config(Duration::from_millis(200))).expect("upstream");
    let r = up
        .get(&addr, "/healthz", &HeaderMap::new(), DEADLINE)
        .await
        .expect("get");
    body(r).await;
    settle().await;
    assert_eq!(up.idle_connections(), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(up.idle_connections(), 0, "expired by its timer");
    let r = up
        .get(&addr, "/healthz", &HeaderMap::new(), DEADLINE)
        .await
        .expect("get");
    body(r).await;
    assert_eq!(up.connections_opened(), 2);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn gzip_is_negotiated_once() {
    use std::io::Read;
    let pki = Fixture::new();
    let agent = pki.agent().await;
    let addr = agent.local_addr().to_string();
    let up = pki.upstream();
    let mut h = HeaderMap::new();
    h.insert("accept-encoding", "gzip".parse().expect("value"));
    let r = up
        .get(&addr, "/v1/node/metrics", &h, DEADLINE)
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    let encodings: Vec<_> = r.headers().get_all("content-encoding").iter().collect();
    assert_eq!(encodings, vec!["gzip"], "exactly one gzip");
    let wire = body(r).await;
    let mut text = String::new();
    flate2::read::GzDecoder::new(&wire[..])
        .read_to_string(&mut text)
        .expect("one gunzip gives the exposition");
    assert!(text.contains("node_"), "decoded: {text:.200}");
    agent.shutdown().await;
}

#[test]
fn only_allowed_headers_are_forwarded() {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("accept", "application/openmetrics-text; version=1.0.0"),
        ("accept", "text/plain;q=0.5"),
        ("accept-encoding", "gzip"),
        ("x-prometheus-scrape-timeout-seconds", "10"),
        ("user-agent", "Prometheus/2.42.0"),
        ("authorization", "Bearer secret"),
        ("cookie", "session=1"),
        ("x-forwarded-for", "10.0.0.1"),
        ("x-forwarded-host", "evil"),
        ("forwarded", "for=10.0.0.1"),
        ("connection", "keep-alive"),
        ("keep-alive", "timeout=5"),
        ("te", "trailers"),
        ("upgrade", "h2c"),
        ("proxy-authorization", "Basic eA=="),
        ("proxy-connection", "keep-alive"),
        ("transfer-encoding", "chunked"),
        ("host", "a.example"),
        ("x-tenant", "someone"),
    ] {
        h.append(k, v.parse().expect("value"));
    }
    let out = forwarded_headers(&h);
    let mut names: Vec<_> = out.keys().map(|k| k.as_str().to_string()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "accept",
            "accept-encoding",
            "user-agent",
            "x-prometheus-scrape-timeout-seconds"
        ]
    );
    assert_eq!(out.get_all("accept").iter().count(), 2, "every value kept");

    // An allowed header that the client's Connection marks hop-by-hop is dropped.
    let mut h = HeaderMap::new();
    h.insert("connection", "accept-encoding".parse().expect("value"));
    h.insert("accept-encoding", "gzip".parse().expect("value"));
    h.insert("accept", "text/plain".parse().expect("value"));
    let out = forwarded_headers(&h);
    assert!(out.get("accept-encoding").is_none());
    assert!(out.get("accept").is_some());
}

#[test]
fn hop_by_hop_response_headers_are_removed() {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("connection", "keep-alive, x-hop"),
        ("keep-alive", "timeout=5"),
        ("transfer-encoding", "chunked"),
        ("x-hop", "1"),
        ("content-encoding", "gzip"),
        ("content-type", "text/plain; version=0.0.4"),
        ("vary", "accept-encoding"),
    ] {
        h.append(k, v.parse().expect("value"));
    }
    strip_hop_by_hop(&mut h);
    let mut names: Vec<_> = h.keys().map(|k| k.as_str().to_string()).collect();
    names.sort();
    assert_eq!(names, ["content-encoding", "content-type", "vary"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn closed_port_is_unreachable() {
    let pki = Fixture::new();
    let up = pki.upstream();
    let addr = closed_port().to_string();
    let e = up
        .get(&addr, "/healthz", &HeaderMap::new(), DEADLINE)
        .await
        .expect_err("nothing listens");
    assert!(matches!(e, UpstreamError::Unreachable(_)), "{e:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_with_a_foreign_certificate_is_unreachable() {
    let pki = Fixture::new();
    let agent = Agent::start(pki.agent_config("127.0.0.1:0", "impostor"))
        .await
        .expect("agent starts");
    let up = pki.upstream();
    let e = up
        .get(
            &agent.local_addr().to_string(),
            "/healthz",
            &HeaderMap::new(),
            DEADLINE,
        )
        .await
        .expect_err("certificate from another CA");
    match e {
        UpstreamError::Unreachable(m) => assert!(m.contains("TLS"), "{m}"),
        other => panic!("expected Unreachable, got {other:?}"),
    }
    agent.shutdown().await;
}

/// A TLS server with the agent's certificate (operator CA), no client auth; `serve(n, stream)`
/// handles the `n`-th connection.
async fn fake_agent<F, Fut>(pki: &Fixture, serve: F) -> SocketAddr
where
    F: Fn(usize, tokio_rustls::server::TlsStream<tokio::net::TcpStream>) -> Fut
        + Send
        + Sync
        + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    serve_tls(pki.pki.agent_acceptor(), serve).await
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_agent_times_out_within_the_deadline() {
    let pki = Fixture::new();
    let addr = fake_agent(&pki, |_, mut s| async move {
        read_head(&mut s).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
    })
    .await;
    let up = pki.upstream();
    let deadline = Duration::from_millis(300);
    let t0 = Instant::now();
    let e = up
        .get(&addr.to_string(), "/healthz", &HeaderMap::new(), deadline)
        .await
        .expect_err("never answers");
    let took = t0.elapsed();
    assert!(matches!(e, UpstreamError::Timeout), "{e:?}");
    assert!(took >= deadline, "{took:?}");
    assert!(took < deadline + Duration::from_secs(1), "{took:?}");
    assert_eq!(up.idle_connections(), 0);
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

#[tokio::test(flavor = "multi_thread")]
async fn keep_alive_race_is_retried_once_on_a_new_connection() {
    let pki = Fixture::new();
    // The first connection answers one request, then reads the next and closes without a
    // word (an agent closing an idle connection just as it is reused); later ones answer.
    let addr = fake_agent(&pki, |n, mut s| async move {
        while read_head(&mut s).await {
            if n == 0 {
                let _ = s.write_all(OK).await;
                let _ = s.flush().await;
                if read_head(&mut s).await {
                    let _ = s.shutdown().await;
                }
                return;
            }
            let _ = s.write_all(OK).await;
            let _ = s.flush().await;
        }
    })
    .await
    .to_string();
    let up = pki.upstream();
    for _ in 0..2 {
        let r = up
            .get(&addr, "/healthz", &HeaderMap::new(), DEADLINE)
            .await
            .expect("answered (second time after one retry)");
        assert_eq!(r.status(), 200);
        assert_eq!(body(r).await, b"ok");
        settle().await;
    }
    assert_eq!(up.retries(), 1);
    assert_eq!(up.connections_opened(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn failure_on_a_fresh_connection_is_not_retried() {
    let pki = Fixture::new();
    let addr = fake_agent(&pki, |_, mut s| async move {
        if read_head(&mut s).await {
            let _ = s.shutdown().await;
        }
    })
    .await
    .to_string();
    let up = pki.upstream();
    let e = up
        .get(&addr, "/healthz", &HeaderMap::new(), DEADLINE)
        .await
        .expect_err("closed without an answer");
    assert!(matches!(e, UpstreamError::Unreachable(_)), "{e:?}");
    assert_eq!(up.connections_opened(), 1);
    assert_eq!(up.retries(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn not_http_is_a_protocol_error() {
    let pki = Fixture::new();
    let addr = fake_agent(&pki, |_, mut s| async move {
        if read_head(&mut s).await {
            let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2\r\n\r\n").await;
            let _ = s.shutdown().await;
        }
    })
    .await
    .to_string();
    let e = pki
        .upstream()
        .get(&addr, "/healthz", &HeaderMap::new(), DEADLINE)
        .await
        .expect_err("not HTTP");
    assert!(matches!(e, UpstreamError::Protocol(_)), "{e:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pool_recovers_after_the_agent_restarts() {
    let pki = Fixture::new();
    let agent = pki.agent().await;
    let listen = agent.local_addr();
    let addr = listen.to_string();
    let up = pki.upstream();
    let r = up
        .get(&addr, "/healthz", &HeaderMap::new(), DEADLINE)
        .await
        .expect("get");
    body(r).await;
    settle().await;
    assert_eq!(up.idle_connections(), 1);

    agent.shutdown().await;
    let e = up
        .get(&addr, "/healthz", &HeaderMap::new(), DEADLINE)
        .await
        .expect_err("agent gone");
    assert!(matches!(e, UpstreamError::Unreachable(_)), "{e:?}");

    let agent = pki.agent_on(&addr).await;
    assert_eq!(agent.local_addr(), listen);
    let r = up
        .get(&addr, "/healthz", &HeaderMap::new(), DEADLINE)
        .await
        .expect("the same Upstream reaches the new agent");
    assert_eq!(r.status(), 200);
    body(r).await;
    agent.shutdown().await;
}

#[test]
fn bad_identity_files_are_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = |n: &str| dir.path().join(n);
    let e = Upstream::new(&UpstreamConfig {
        cert: missing("proxy.pem"),
        key: missing("proxy-key.pem"),
        ca: missing("ca.pem"),
        connect_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
    })
    .expect_err("no files");
    assert!(e.to_string().contains("ca.pem"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_targets_are_refused_without_sending() {
    let pki = Fixture::new();
    let up = pki.upstream();
    let e = up
        .get("127.0.0.1:1", "healthz", &HeaderMap::new(), DEADLINE)
        .await
        .expect_err("not a path");
    assert!(matches!(e, UpstreamError::Protocol(_)), "{e:?}");
    let e = up
        .get("not an address", "/healthz", &HeaderMap::new(), DEADLINE)
        .await
        .expect_err("not host:port");
    assert!(matches!(e, UpstreamError::Unreachable(_)), "{e:?}");
    assert_eq!(up.connections_opened(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn body_dropped_part_way_closes_its_connection() {
    let pki = Fixture::new();
    // The first connection starts a long body and stalls; later ones answer in full.
    let addr = fake_agent(&pki, |n, mut s| async move {
        while read_head(&mut s).await {
            if n == 0 {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\nnode_")
                    .await;
                let _ = s.flush().await;
                tokio::time::sleep(Duration::from_secs(60)).await;
                return;
            }
            let _ = s.write_all(OK).await;
            let _ = s.flush().await;
        }
    })
    .await
    .to_string();
    let up = pki.upstream();
    let r = up
        .get(&addr, "/v1/node/metrics", &HeaderMap::new(), DEADLINE)
        .await
        .expect("headers arrive");
    assert_eq!(r.status(), 200);
    drop(r);
    settle().await;
    assert_eq!(
        up.idle_connections(),
        0,
        "a half-read connection is never pooled"
    );
    let r = up
        .get(&addr, "/healthz", &HeaderMap::new(), DEADLINE)
        .await
        .expect("get");
    assert_eq!(body(r).await, b"ok");
    assert_eq!(up.connections_opened(), 2);
    assert_eq!(up.retries(), 0);
}
