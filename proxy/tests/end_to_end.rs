//! A tenant's scrape through the whole system (needs root, runc and busybox-static like the
//! agent's container tests): a real runc container with a memory limit, a real agent watching
//! it, a proxy whose inventory comes from that agent's watch stream, and a tenant
//! authenticating with a certificate from the tenant CA. Discovery lists the container, the
//! scrape by `<id>.<suffix>` returns the container's node view (MemTotal = its limit), gzip
//! passes through once, a killed agent is a 503 within the scrape timeout, and a restarted one
//! is scraped again without restarting the proxy.

#[path = "../../agent/tests/support/containers.rs"]
mod containers;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use containers::{ContainerSpec, Runc};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use lookout_agent::config::AgentConfig;
use lookout_agent::Agent;
use lookout_proxy::config::ProxyConfig;
use lookout_proxy::server::Proxy;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

const SUFFIX: &str = "lookout.test";
const MIB: u64 = 1024 * 1024;

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(cn: &str) -> Ca {
    let key = KeyPair::generate().expect("keygen");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, cn);
    Ca {
        cert: p.self_signed(&key).expect("CA"),
        key,
    }
}

fn issue(ca: &Ca, cn: &str, sans: &[&str], server: bool) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().expect("keygen");
    let mut p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .expect("params");
    if server {
        p.subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
    }
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    (p.signed_by(&key, &ca.cert, &ca.key).expect("sign"), key)
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p.display().to_string()
}

fn agent_config(dir: &Path, runc_root: &Path, listen: &str) -> AgentConfig {
    let text = format!(
        r#"node_id = "node-a"
listen = "{listen}"
[tls]
cert = "{cert}"
key = "{key}"
client_ca = "{ca}"
[discovery]
runc_roots = ["{root}"]
crun_roots = []
default_cgroup_rules = false
"#,
        cert = dir.join("agent.pem").display(),
        key = dir.join("agent-key.pem").display(),
        ca = dir.join("operator-ca.pem").display(),
        root = runc_root.display(),
    );
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
        let tcp = tokio::net::TcpStream::connect(proxy)
            .await
            .expect("connect");
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&self.client))
            .connect(ServerName::try_from(name.to_string()).expect("name"), tcp)
            .await
            .expect("tls");
        let (mut send, conn) = http1::handshake(TokioIo::new(tls))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let mut req = http::Request::get(path).header("host", format!("{name}:{}", proxy.port()));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = tokio::time::timeout(
            Duration::from_secs(30),
            send.send_request(req.body(Empty::<Bytes>::new()).expect("request")),
        )
        .await
        .expect("answer within 30 s")
        .expect("response");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .to_vec();
        (status, headers, body)
    }
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
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

    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let operator = ca("operator CA");
    let server_ca = ca("server CA");
    let tenant_ca = ca("tenant CA");
    let (agent_cert, agent_key) = issue(&operator, "node-a", &["localhost"], true);
    let (proxy_cert, proxy_key) = issue(&operator, "proxy", &[], false);
    let (server, server_key) = issue(&server_ca, SUFFIX, &[SUFFIX, &format!("*.{SUFFIX}")], true);
    let (acme, acme_key) = issue(&tenant_ca, "acme", &[], false);
    write(d, "operator-ca.pem", &operator.cert.pem());
    write(d, "agent.pem", &agent_cert.pem());
    write(d, "agent-key.pem", &agent_key.serialize_pem());
    let proxy_pem = write(d, "proxy.pem", &proxy_cert.pem());
    let proxy_key_pem = write(d, "proxy-key.pem", &proxy_key.serialize_pem());
    let server_pem = write(d, "server.pem", &server.pem());
    let server_key_pem = write(d, "server-key.pem", &server_key.serialize_pem());
    let tenant_ca_pem = write(d, "tenant-ca.pem", &tenant_ca.cert.pem());
    let tenants = write(
        d,
        "tenants.toml",
        "[[tenant]]\nname = \"acme\"\n\n[[tenant]]\nname = \"globex\"\n",
    );

    let agent = Agent::start(agent_config(d, runc.state_root(), "127.0.0.1:0"))
        .await
        .expect("agent starts");
    let agent_addr = agent.local_addr();
    let operator_ca = d.join("operator-ca.pem").display().to_string();
    let config = format!(
        r#"listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
base_name = "{SUFFIX}"
dns_suffix = "{SUFFIX}"
tenants_file = "{tenants}"
[tls]
cert = "{server_pem}"
key = "{server_key_pem}"
tenant_ca = "{tenant_ca_pem}"
[upstream]
cert = "{proxy_pem}"
key = "{proxy_key_pem}"
ca = "{operator_ca}"
connect_timeout = "1s"
[inventory]
source = "agents"
agents = ["{agent_addr}"]
backoff = {{ min = "100ms", max = "500ms" }}
[inventory.tls]
cert = "{proxy_pem}"
key = "{proxy_key_pem}"
ca = "{operator_ca}"
"#
    );
    let config = ProxyConfig::parse(&config).expect("proxy config");
    let proxy = Proxy::start(config).await.expect("proxy starts");
    let addr = proxy.local_addr();

    let mut roots = RootCertStore::empty();
    roots.add(server_ca.cert.der().clone()).expect("root");
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(acme_key.serialize_der()));
    let client =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![CertificateDer::from(acme.der().to_vec())], key)
            .expect("client cert");
    let tenant = Tenant {
        client: Arc::new(client),
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
        metric(&text, "node_memory_MemTotal_bytes"),
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
    let agent = Agent::start(agent_config(d, runc.state_root(), &agent_addr.to_string()))
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
