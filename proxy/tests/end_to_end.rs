//! A tenant's scrape through the whole system (needs root, runc and busybox-static like the
//! agent's container tests): a real runc container with a memory limit, a real agent watching
//! it, a proxy whose inventory comes from that agent's watch stream, and a tenant
//! authenticating with a certificate from the tenant CA. Discovery lists the container, the
//! scrape by `<id>.<suffix>` returns the container's node view (MemTotal = its limit), gzip
//! passes through once, a killed agent is a 503 within the scrape timeout, and a restarted one
//! is scraped again without restarting the proxy.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lookout_agent::config::AgentConfig;
use lookout_agent::Agent;
use lookout_proxy::config::ProxyConfig;
use lookout_proxy::server::Proxy;
use lookout_testkit::containers::{ContainerSpec, Runc};
use lookout_testkit::exposition::unlabelled;
use lookout_testkit::https;
use lookout_testkit::pki::{Pki, BASE as SUFFIX};
use rustls::ClientConfig;

const MIB: u64 = 1024 * 1024;

fn agent_config(pki: &Pki, runc_root: &Path, listen: &str) -> AgentConfig {
    let text = pki
        .agent_toml(runc_root)
        .node_id("node-a")
        .listen(listen)
        .render();
    AgentConfig::parse(&text).expect("agent config")
}

struct Tenant {
    client: Arc<ClientConfig>,
}

impl Tenant {
    async fn get(
        &self,
        proxy: SocketAddr,
        name: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, http::HeaderMap, Vec<u8>) {
        let host = format!("{name}:{}", proxy.port());
        let r = https::get(&self.client, proxy, name, &host, path, headers)
            .await
            .expect("answer within 30 s");
        let body = r.body.expect("body").to_vec();
        (r.status, r.headers, body)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_scrapes_its_container_through_proxy_and_agent() {
    let runc = Runc::new();
    let _web = runc.run(
        ContainerSpec::new("web")
            .memory_limit(64 * MIB)
            .annotation("lookout.tenant", "acme"),
    );
    let _theirs = runc.run(ContainerSpec::new("theirs").annotation("lookout.tenant", "globex"));

    let pki = Pki::new("lookout-e2e-");
    pki.write(
        "tenants.toml",
        "[[tenant]]\nname = \"acme\"\n\n[[tenant]]\nname = \"globex\"\n",
    );

    let agent = Agent::start(agent_config(&pki, runc.state_root(), "127.0.0.1:0"))
        .await
        .expect("agent starts");
    let agent_addr = agent.local_addr();
    let config = pki
        .proxy_toml()
        .upstream("connect_timeout = \"1s\"")
        .agents(&[agent_addr.to_string()], ("100ms", "500ms"))
        .render();
    let config = ProxyConfig::parse(&config).expect("proxy config");
    let proxy = Proxy::start(config).await.expect("proxy starts");
    let addr = proxy.local_addr();

    let tenant = Tenant {
        client: Arc::new(pki.tenant_client(Some(&pki.acme))),
    };

    // Discovery: the proxy learned the container from the agent's watch stream.
    let start = Instant::now();
    let listed = loop {
        let (status, _, body) = tenant.get(addr, SUFFIX, "/v1/discover", &[]).await;
        let text = String::from_utf8_lossy(&body).into_owned();
        if status == 200 && text.contains("\"web\"") {
            break text;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "web never discovered: {status} {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let v: serde_json::Value = serde_json::from_str(&listed).expect("json");
    let ids: Vec<&str> = v["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .filter_map(|c| c["vm_uuid"].as_str())
        .collect();
    assert_eq!(ids, ["web"], "acme sees only its own container");
    assert_eq!(v["containers"][0]["server_uuid"], "node-a");

    // The scrape, by name, as Prometheus does it.
    let web = format!("web.{SUFFIX}");
    let (status, headers, body) = tenant.get(addr, &web, "/metrics", &[]).await;
    let text = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(status, 200, "{text}");
    assert!(headers["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("text/plain; version=0.0.4"));
    assert_eq!(
        unlabelled(&text, "node_memory_MemTotal_bytes"),
        Some((64 * MIB) as f64)
    );
    // Another tenant's container: 404, like a missing one.
    let (status, _, _) = tenant
        .get(addr, &format!("theirs.{SUFFIX}"), "/metrics", &[])
        .await;
    assert_eq!(status, 404);
    let (status, _, _) = tenant
        .get(addr, &format!("nothing.{SUFFIX}"), "/metrics", &[])
        .await;
    assert_eq!(status, 404);
    // The owner's own mistake in the query is the owner's 400, not a gateway error.
    let (status, _, body) = tenant
        .get(addr, &web, "/metrics?collect[]=bogus", &[])
        .await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    // A client cannot speak for the proxy: the tenant and generation headers it sends are
    // replaced by the proxy's, or dropped where the proxy authorized nothing.
    let (status, _, _) = tenant
        .get(
            addr,
            &web,
            "/metrics",
            &[
                ("x-lookout-tenant", "globex"),
                ("x-lookout-generation", "0"),
            ],
        )
        .await;
    assert_eq!(status, 200, "the proxy's assertion replaces the client's");
    let (status, _, _) = tenant
        .get(
            addr,
            &format!("theirs.{SUFFIX}"),
            "/metrics",
            &[("x-lookout-tenant", "globex")],
        )
        .await;
    assert_eq!(
        status, 404,
        "claiming another tenant in a header gets nothing"
    );

    // Compression negotiated once.
    let (status, headers, body) = tenant
        .get(addr, &web, "/metrics", &[("accept-encoding", "gzip")])
        .await;
    assert_eq!(status, 200);
    let encodings: Vec<_> = headers.get_all("content-encoding").iter().collect();
    assert_eq!(encodings, ["gzip"], "exactly one gzip");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&body[..]), &mut text)
        .expect("gunzip once");
    assert!(text.contains("node_cpu_seconds_total"));

    // The agent dies: a clear 503 within the scrape timeout, the inventory kept.
    agent.shutdown().await;
    let start = Instant::now();
    let (status, _, _) = tenant
        .get(
            addr,
            &web,
            "/metrics",
            &[("x-prometheus-scrape-timeout-seconds", "3")],
        )
        .await;
    assert_eq!(status, 503);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "answered in {:?}",
        start.elapsed()
    );

    // The agent comes back on the same address: scraped again, the proxy untouched.
    let agent = Agent::start(agent_config(
        &pki,
        runc.state_root(),
        &agent_addr.to_string(),
    ))
    .await
    .expect("agent restarts on the same port");
    let start = Instant::now();
    loop {
        let (status, _, body) = tenant.get(addr, &web, "/metrics", &[]).await;
        if status == 200 {
            assert!(String::from_utf8_lossy(&body).contains("node_memory_MemTotal_bytes"));
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not recovered: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.shutdown().await;
    agent.shutdown().await;
}
