//! Proxies on the `etcd` inventory source against a real etcd (Debian's `etcd-server`,
//! started by the test on loopback): they serve what agents registered, register themselves,
//! divide the tenants' limits by the live replica count, and keep serving — saying so in
//! `/readyz` — while etcd is down.
//!
//! Needs `/usr/bin/etcd` (the helper panics naming the package when it is missing).

#[path = "../../discovery/tests/support/etcd.rs"]
mod etcd_server;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use lookout_discovery::etcd::{agent_keys, EtcdConfig, Keys, Registrar};
use lookout_discovery::{Instance, Node};
use lookout_proxy::config::ProxyConfig;
use lookout_proxy::server::Proxy;
use lookout_testkit::pki::{token_sha256, Pki, BASE};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::sync::watch;

use etcd_server::Etcd;

/// Every tenant's burst (cluster-wide); the rate never refills during a test.
const BURST: u32 = 9;
/// Bound on every wait.
const WAIT: Duration = Duration::from_secs(15);

/// A proxy on loopback reading `etcd`, with tenants `t1` and `t2` (tokens `<name>-token`).
struct EtcdProxy {
    proxy: Proxy,
    client: Arc<ClientConfig>,
    _pki: Pki,
}

impl EtcdProxy {
    async fn start(etcd: &Etcd) -> EtcdProxy {
        let pki = Pki::new("lookout-proxy-etcd-");
        let mut tenants =
            format!("[defaults]\nrate_limit = {{ per_second = 0.001, burst = {BURST} }}\n");
        for t in ["t1", "t2"] {
            let hash = token_sha256(&format!("{t}-token"));
            tenants.push_str(&format!(
                "[[tenant]]\nname = \"{t}\"\ntoken_sha256 = [\"{hash}\"]\n"
            ));
        }
        pki.write("tenants.toml", &tenants);
        let config = pki
            .proxy_toml()
            .tables(&format!(
                r#"[inventory]
source = "etcd"
endpoints = ["{endpoint}"]
lease_ttl = "60s"
connect_timeout = "2s"
request_timeout = "2s"
backoff = {{ min = "100ms", max = "500ms" }}
[limits]
source = {{ per_second = 10000.0, burst = 10000 }}
"#,
                endpoint = etcd.endpoint(),
            ))
            .render();
        let cfg = ProxyConfig::load(&pki.write("proxy.toml", &config)).expect("valid config");
        let proxy = Proxy::start(cfg).await.expect("proxy starts");
        EtcdProxy {
            proxy,
            client: Arc::new(pki.tenant_client(None)),
            _pki: pki,
        }
    }

    /// One GET on the base name (as `tenant` when given): status and body.
    async fn get(&self, path: &str, tenant: Option<&str>) -> (u16, String) {
        let tcp = tokio::net::TcpStream::connect(self.proxy.local_addr())
            .await
            .expect("connect");
        let name = ServerName::try_from(BASE).expect("name");
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&self.client))
            .connect(name, tcp)
            .await
            .expect("TLS");
        let (mut send, conn) = http1::handshake(TokioIo::new(tls)).await.expect("HTTP");
        tokio::spawn(conn);
        let mut req = http::Request::get(path).header("host", BASE);
        if let Some(t) = tenant {
            req = req.header("authorization", format!("Bearer {t}-token"));
        }
        let req = req.body(Empty::<Bytes>::new()).expect("request");
        let resp = send.send_request(req).await.expect("response");
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// Requests `tenant` gets through `/v1/discover` before its first 429.
    async fn passes(&self, tenant: &str) -> u32 {
        for n in 0..=BURST {
            match self.get("/v1/discover", Some(tenant)).await.0 {
                200 => {}
                429 => return n,
                other => panic!("{tenant}: unexpected status {other}"),
            }
        }
        panic!("{tenant}: no 429 after {} requests", BURST + 1);
    }

    fn replicas(&self) -> Option<f64> {
        let text = self.proxy.telemetry().encode();
        text.lines().find_map(|l| {
            l.strip_prefix("lookout_proxy_replicas ")?
                .trim()
                .parse()
                .ok()
        })
    }
}

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Registers node `n1` with instance `web-1` of tenant `t1`, as an agent would.
fn register_node(etcd: &Etcd) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let mut cfg = EtcdConfig::new(vec![etcd.endpoint()]);
    cfg.lease_ttl = Duration::from_secs(2);
    cfg.backoff.min = Duration::from_millis(100);
    cfg.backoff.max = Duration::from_millis(500);
    let node = Node {
        id: "n1".into(),
        agent: "127.0.0.1:9".into(),
        hostname: "n1".into(),
    };
    let web = Instance {
        id: "web-1".into(),
        runtime_id: "web-1".into(),
        generation: String::new(),
        node: "n1".into(),
        tenant: Some("t1".into()),
        alias: "web-1".into(),
        groups: vec![],
        image: None,
        source: "runc".into(),
        labels: BTreeMap::new(),
    };
    let desired = Arc::new(agent_keys(&Keys::new("/lookout/"), &node, [&web]));
    let registrar = Registrar::for_agent(cfg, "n1").expect("registrar");
    let (_, desired) = watch::channel(desired);
    let (stop, stop_rx) = watch::channel(false);
    (stop, tokio::spawn(registrar.run(desired, stop_rx)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_serve_etcd_count_each_other_and_ride_out_an_outage() {
    let mut etcd = Etcd::start();
    let (_stop_node, _node) = register_node(&etcd);
    let p1 = EtcdProxy::start(&etcd).await;
    let p2 = EtcdProxy::start(&etcd).await;

    // Both serve the registered instance to its tenant.
    for p in [&p1, &p2] {
        wait_for("web-1 discovered", async || {
            let (status, body) = p.get("/v1/discover", Some("t1")).await;
            status == 200 && body.contains("web-1")
        })
        .await;
    }
    // Each counts both replicas and takes half of the cluster-wide burst.
    wait_for("2 replicas", async || {
        p1.replicas() == Some(2.0) && p2.replicas() == Some(2.0)
    })
    .await;
    assert_eq!(p1.passes("t2").await, BURST.div_ceil(2));

    // etcd down with both replicas up: the inventory stays, /readyz says what is wrong, and
    // each keeps counting 2 — not the default of 1 a reset would give.
    etcd.stop();
    for p in [&p1, &p2] {
        wait_for("the outage in /readyz", async || {
            let (status, body) = p.get("/readyz", None).await;
            status == 200 && body.contains("source failing: etcd")
        })
        .await;
        let (status, body) = p.get("/v1/discover", Some("t1")).await;
        assert_eq!(status, 200);
        assert!(body.contains("web-1"), "{body}");
        assert_eq!(
            p.replicas(),
            Some(2.0),
            "the count stays through the outage"
        );
    }

    // etcd back: ready again.
    etcd.restart();
    for p in [&p1, &p2] {
        wait_for("ready again", async || {
            p.get("/readyz", None).await == (200, "ready\n".into())
        })
        .await;
    }

    // A replica stopping cleanly revokes its key: the other takes the whole share at once.
    // The lease is 60 s and the wait at most 15 s, so only the revocation can do it.
    p2.proxy.shutdown().await;
    wait_for("1 replica", async || p1.replicas() == Some(1.0)).await;
    p1.proxy.shutdown().await;
}
