//! The proxy's HTTPS server end to end, over real TLS on loopback: a throw-away PKI made with
//! rcgen (server CA, tenant CA, a CA-issued tenant certificate, a registered self-signed key,
//! an unknown one), a tenants file with bearer tokens and an operator, and the `file`
//! inventory source. Discovery, authentication, authorization and every refusal path are
//! checked through a hyper + tokio-rustls client that sets SNI and Host explicitly.
//!
//! Scrapes that reach a real agent are proven in `end_to_end.rs`; the upstream error mapping
//! is unit-tested in `server::handler`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use lookout_proxy::config::ProxyConfig;
use lookout_proxy::identity::spki_sha256;
use lookout_proxy::server::Proxy;
use lookout_proxy::tenants::hex;
use lookout_testkit::https;
use lookout_testkit::pki::{token_sha256 as token_hash, Pki, BASE};
use lookout_testkit::tls::Identity;
use rustls::ClientConfig;

/// A running proxy with its files and the credentials of each test tenant: `acme` by a
/// CA-issued certificate, `globex` by a self-signed certificate whose key is registered, and a
/// `stranger` nobody registered (all from `lookout_testkit`'s PKI).
struct Fixture {
    pki: Pki,
    proxy: Proxy,
}

const INVENTORY: &str = r#"
[[nodes]]
id = "cn1"
agent = "127.0.0.1:1"
hostname = "cn1.dc1"
[[nodes]]
id = "cn2"
agent = "127.0.0.1:1"
[[instances]]
id = "web-1"
node = "cn1"
tenant = "acme"
alias = "web01"
groups = ["web"]
[[instances]]
id = "db-1"
node = "cn2"
tenant = "acme"
groups = ["db"]
[[instances]]
id = "g-1"
node = "cn1"
tenant = "globex"
[[instances]]
id = "i-1"
node = "cn2"
tenant = "initech"
[[instances]]
id = "orphan"
node = "cn2"
"#;

impl Fixture {
    async fn start() -> Fixture {
        let pki = Pki::new("lookout-proxy-");
        let globex_spki = hex(&spki_sha256(pki.globex.cert()).expect("spki"));
        pki.write(
            "tenants.toml",
            &format!(
                r#"
[defaults]
rate_limit = {{ per_second = 1000.0, burst = 1000 }}

[[tenant]]
name = "acme"

[[tenant]]
name = "globex"
spki_sha256 = ["{globex_spki}"]

[[tenant]]
name = "initech"
token_sha256 = ["{initech}"]

[[tenant]]
name = "ops"
roles = ["operator"]
token_sha256 = ["{ops}"]

[[tenant]]
name = "slow"
rate_limit = {{ per_second = 0.01, burst = 3 }}
token_sha256 = ["{slow}"]
"#,
                initech = token_hash("initech-token"),
                ops = token_hash("ops-token"),
                slow = token_hash("slow-token"),
            ),
        );
        pki.write("inventory.toml", INVENTORY);
        let config = pki
            .proxy_toml()
            .top("tenants_reload_interval = \"100ms\"")
            .tls("reload_interval = \"100ms\"")
            .tables(&format!(
                "[inventory]\nsource = \"file\"\npath = \"{}\"\nreload_interval = \"100ms\"\n\
                 [limits]\nsource = {{ per_second = 10000.0, burst = 10000 }}\n",
                pki.path("inventory.toml").display()
            ))
            .render();
        let config_path = pki.write("proxy.toml", &config);
        let cfg = ProxyConfig::load(&config_path).expect("config valid");
        let proxy = Proxy::start(cfg).await.expect("proxy starts");
        let f = Fixture { pki, proxy };
        f.wait_ready().await;
        f
    }

    fn path(&self, name: &str) -> PathBuf {
        self.pki.path(name)
    }

    async fn wait_ready(&self) {
        for _ in 0..100 {
            let r = self.get(None, BASE, BASE, "/readyz", &[]).await;
            if r.status == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("proxy never became ready");
    }

    fn client(&self, identity: Option<&Identity>, sni: bool) -> Arc<ClientConfig> {
        let mut cfg = self.pki.tenant_client(identity);
        cfg.enable_sni = sni;
        Arc::new(cfg)
    }

    /// One GET over a fresh TLS connection with this SNI (`""`: none; the certificate is
    /// then verified for the base name) and Host.
    async fn get(
        &self,
        identity: Option<&Identity>,
        sni: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Resp {
        let client = self.client(identity, !sni.is_empty());
        let name = if sni.is_empty() { BASE } else { sni };
        get(&client, self.proxy.local_addr(), name, host, path, headers)
            .await
            .expect("request")
    }

    /// The proxy's own metrics, from its admin listener.
    async fn own_metrics(&self) -> String {
        let tcp = tokio::net::TcpStream::connect(self.proxy.admin_addr())
            .await
            .expect("admin connect");
        let (mut send, conn) = http1::handshake(TokioIo::new(tcp))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let req = http::Request::get("/metrics")
            .header("host", "localhost")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let resp = send.send_request(req).await.expect("admin response");
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        String::from_utf8_lossy(&body).into_owned()
    }

    /// A GET on the base name, SNI and Host agreeing.
    async fn base(
        &self,
        identity: Option<&Identity>,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Resp {
        let host = format!("{BASE}:{}", self.proxy.local_addr().port());
        self.get(identity, BASE, &host, path, headers).await
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: http::HeaderMap,
    body: String,
    /// The body's bytes as sent (`body` is their lossy UTF-8 reading).
    raw: Bytes,
}

impl Resp {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// Asserts the body can never be decoded as a JSON object (Triton SD error rule).
    fn assert_not_json_object(&self) {
        let parsed: Result<serde_json::Value, _> = serde_json::from_str(&self.body);
        assert!(
            !parsed.as_ref().is_ok_and(|v| v.is_object() || v.is_null()),
            "error body decodes as JSON: {:?}",
            self.body
        );
        assert_eq!(
            self.headers
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("text/plain; charset=utf-8")
        );
    }
}

/// One GET over a fresh connection; a body cut short is an error.
async fn get(
    client: &Arc<ClientConfig>,
    addr: SocketAddr,
    server_name: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Resp, String> {
    let r = https::get(client, addr, server_name, host, path, headers).await?;
    Ok(Resp {
        body: r.complete_text()?,
        raw: r.body.as_ref().map(Bytes::clone).unwrap_or_default(),
        status: r.status,
        headers: r.headers,
    })
}

fn vm_uuids(v: &serde_json::Value) -> Vec<String> {
    v["containers"]
        .as_array()
        .expect("containers array")
        .iter()
        .map(|c| c["vm_uuid"].as_str().expect("vm_uuid").to_string())
        .collect()
}

#[tokio::test]
async fn ping_health_and_readiness_need_no_credentials() {
    let f = Fixture::start().await;
    let r = f.base(None, "/_ping", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "OK"));
    assert_eq!(f.base(None, "/healthz", &[]).await.status, 200);
    let r = f.base(None, "/readyz", &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // `/_ping` answers on instance hosts too, still without authentication.
    let host = format!("web-1.{BASE}");
    assert_eq!(f.get(None, &host, &host, "/_ping", &[]).await.status, 200);
    // Health answers on a Host no rule serves (a probe sending the pod's address); nothing
    // else does.
    for (path, body) in [("/_ping", "OK"), ("/healthz", "ok\n")] {
        let r = f.get(None, "", "10.1.2.3:9163", path, &[]).await;
        assert_eq!((r.status, r.body.as_str()), (200, body), "{path}");
    }
    let r = f.get(None, "", "10.1.2.3:9163", "/readyz", &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = f.get(None, "", "10.1.2.3:9163", "/v1/discover", &[]).await;
    assert_eq!(r.status, 404, "{}", r.body);
    f.proxy.shutdown().await;
}

#[tokio::test]
async fn no_credentials_and_unknown_keys_are_401() {
    let f = Fixture::start().await;
    for (who, id, headers) in [
        ("nobody", None, vec![]),
        ("stranger", Some(&f.pki.stranger), vec![]),
        ("bad token", None, vec![("authorization", "Bearer nope")]),
        (
            "not bearer",
            None,
            vec![("authorization", "Basic Zm9vOmJhcg==")],
        ),
    ] {
        let r = f.base(id, "/v1/discover", &headers).await;
        assert_eq!(r.status, 401, "{who}: {}", r.body);
        r.assert_not_json_object();
        assert!(r.headers.contains_key("www-authenticate"), "{who}");
    }
    f.proxy.shutdown().await;
}

#[tokio::test]
async fn ca_issued_certificate_lists_exactly_its_instances() {
    let f = Fixture::start().await;
    let r = f.base(Some(&f.pki.acme), "/v1/discover", &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    assert_eq!(vm_uuids(&r.json()), ["db-1", "web-1"]);
    let web = &r.json()["containers"][1];
    assert_eq!(web["vm_alias"], "web01");
    assert_eq!(web["server_uuid"], "cn1");
    assert_eq!(web["groups"], serde_json::json!(["web"]));

    // Groups filter (Prometheus's form encoding), OR semantics.
    let r = f
        .base(Some(&f.pki.acme), "/v1/discover?groups=web", &[])
        .await;
    assert_eq!(vm_uuids(&r.json()), ["web-1"]);
    let r = f
        .base(Some(&f.pki.acme), "/v1/discover?groups=web%2Cdb", &[])
        .await;
    assert_eq!(vm_uuids(&r.json()), ["db-1", "web-1"]);
    let r = f
        .base(Some(&f.pki.acme), "/v1/discover?groups=none", &[])
        .await;
    assert_eq!(r.body, r#"{"containers":[]}"#);

    // A bad filter is 400, with a body Prometheus cannot mistake for an empty list.
    let r = f
        .base(Some(&f.pki.acme), "/v1/discover?groups=a%2Ca", &[])
        .await;
    assert_eq!(r.status, 400);
    r.assert_not_json_object();
    f.proxy.shutdown().await;
}

#[tokio::test]
async fn registered_self_signed_key_works() {
    let f = Fixture::start().await;
    let r = f.base(Some(&f.pki.globex), "/v1/discover", &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(vm_uuids(&r.json()), ["g-1"]);
    f.proxy.shutdown().await;
}

#[tokio::test]
async fn bearer_token_gets_http_sd_with_the_exact_content_type() {
    let f = Fixture::start().await;
    let auth = [("authorization", "Bearer initech-token")];
    let r = f.base(None, "/v1/sd", &auth).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    assert!(r.headers.get("content-encoding").is_none());
    let port = f.proxy.local_addr().port();
    let v = r.json();
    let groups = v.as_array().expect("array");
    assert_eq!(groups.len(), 1);
    assert_eq!(
        groups[0]["targets"],
        serde_json::json!([format!("i-1.{BASE}:{port}")])
    );
    assert_eq!(groups[0]["labels"]["__meta_triton_machine_id"], "i-1");
    f.proxy.shutdown().await;
}

#[tokio::test]
async fn another_tenants_instance_is_404_like_a_missing_one() {
    let f = Fixture::start().await;
    let theirs = f
        .base(Some(&f.pki.acme), "/v1/instances/g-1/metrics", &[])
        .await;
    let missing = f
        .base(Some(&f.pki.acme), "/v1/instances/nope/metrics", &[])
        .await;
    let orphan = f
        .base(Some(&f.pki.acme), "/v1/instances/orphan/metrics", &[])
        .await;
    assert_eq!(theirs.status, 404);
    assert_eq!(missing.status, 404);
    assert_eq!(theirs.body, missing.body);
    assert_eq!(orphan.body, missing.body);
    assert_eq!(
        theirs.headers.get("content-type"),
        missing.headers.get("content-type")
    );
    // The same through the instance's own name.
    let host = format!("g-1.{BASE}");
    let named = f
        .get(Some(&f.pki.acme), &host, &host, "/metrics", &[])
        .await;
    assert_eq!(
        (named.status, named.body.as_str()),
        (404, missing.body.as_str())
    );
    let host = format!("nope.{BASE}");
    let named = f
        .get(Some(&f.pki.acme), &host, &host, "/metrics", &[])
        .await;
    assert_eq!(
        (named.status, named.body.as_str()),
        (404, missing.body.as_str())
    );
    // Node metrics are for operators only.
    let node = f
        .base(Some(&f.pki.acme), "/v1/nodes/cn1/metrics", &[])
        .await;
    assert_eq!(
        (node.status, node.body.as_str()),
        (404, missing.body.as_str())
    );
    let host = format!("cn1.{BASE}");
    let node = f
        .get(Some(&f.pki.acme), &host, &host, "/metrics", &[])
        .await;
    assert_eq!(node.status, 404);
    f.proxy.shutdown().await;
}

#[tokio::test]
async fn node_discovery_is_for_operators_only() {
    let f = Fixture::start().await;
    let r = f.base(Some(&f.pki.acme), "/v1/gz/discover", &[]).await;
    assert_eq!(r.status, 404);
    r.assert_not_json_object();
    let r = f
        .base(
            None,
            "/v1/gz/sd",
            &[("authorization", "Bearer initech-token")],
        )
        .await;
    assert_eq!(r.status, 404);

    let ops = [("authorization", "Bearer ops-token")];
    let r = f.base(None, "/v1/gz/discover", &ops).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json(),
        serde_json::json!({"cns": [
            {"server_uuid": "cn1", "server_hostname": "cn1.dc1"},
            {"server_uuid": "cn2", "server_hostname": ""},
        ]})
    );
    let r = f.base(None, "/v1/gz/sd", &ops).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json().as_array().map(Vec::len), Some(2));
    f.proxy.shutdown().await;
}

fn header<'a>(r: &'a Resp, name: &str) -> Option<&'a str> {
    r.headers.get(name).and_then(|v| v.to_str().ok())
}

fn gunzip(raw: &[u8]) -> String {
    use std::io::Read;
    let mut out = String::new();
    flate2::read::GzDecoder::new(raw)
        .read_to_string(&mut out)
        .expect("a gzip body");
    out
}

/// Triton discovery honours `Accept-Encoding: gzip` (as Go's client sends it, decoding
/// transparently); HTTP SD never compresses (Prometheus's HTTP SD client would not decode
/// it). Bodies are cached, yet an inventory change shows at once in both forms.
#[tokio::test]
async fn triton_discovery_is_gzipped_on_request_and_follows_changes() {
    let f = Fixture::start().await;
    let initech = ("authorization", "Bearer initech-token");
    let gzip = ("accept-encoding", "gzip");

    let plain = f.base(None, "/v1/discover", &[initech]).await;
    assert_eq!(plain.status, 200, "{}", plain.body);
    assert_eq!(header(&plain, "content-encoding"), None);
    assert_eq!(header(&plain, "vary"), Some("accept-encoding"));
    assert_eq!(vm_uuids(&plain.json()), ["i-1"]);
    let zipped = f.base(None, "/v1/discover", &[initech, gzip]).await;
    assert_eq!(zipped.status, 200);
    assert_eq!(header(&zipped, "content-encoding"), Some("gzip"));
    assert_eq!(header(&zipped, "vary"), Some("accept-encoding"));
    assert_eq!(gunzip(&zipped.raw), plain.body);
    let refused = [initech, ("accept-encoding", "gzip;q=0, identity")];
    let r = f.base(None, "/v1/discover", &refused).await;
    assert_eq!(
        (header(&r, "content-encoding"), r.body.as_str()),
        (None, &*plain.body)
    );

    let sd = f.base(None, "/v1/sd", &[initech, gzip]).await;
    assert_eq!(sd.status, 200);
    assert_eq!(
        header(&sd, "content-encoding"),
        None,
        "HTTP SD is never gzipped"
    );
    assert_eq!(sd.json().as_array().map(Vec::len), Some(1));

    let ops = [("authorization", "Bearer ops-token"), gzip];
    let cns = f.base(None, "/v1/gz/discover", &ops).await;
    assert_eq!(header(&cns, "content-encoding"), Some("gzip"));
    assert!(gunzip(&cns.raw).contains(r#""server_uuid":"cn2""#));
    let nodes = f.base(None, "/v1/gz/sd", &ops).await;
    assert_eq!(header(&nodes, "content-encoding"), None);

    // initech gets a second instance, a third node appears: every cached body moves on.
    let changed = format!(
        "{INVENTORY}[[nodes]]\nid = \"cn3\"\nagent = \"127.0.0.1:1\"\n\
         [[instances]]\nid = \"i-2\"\nnode = \"cn3\"\ntenant = \"initech\"\n"
    );
    std::fs::write(f.path("inventory.toml"), changed).expect("write inventory");
    let mut listed = Vec::new();
    for _ in 0..200 {
        let r = f.base(None, "/v1/discover", &[initech, gzip]).await;
        listed = vm_uuids(&serde_json::from_str(&gunzip(&r.raw)).expect("JSON"));
        if listed.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(listed, ["i-1", "i-2"], "the gzip body follows the change");
    let r = f.base(None, "/v1/discover", &[initech]).await;
    assert_eq!(vm_uuids(&r.json()), ["i-1", "i-2"], "so does the plain one");
    let r = f.base(None, "/v1/sd", &[initech]).await;
    assert_eq!(r.json().as_array().map(Vec::len), Some(2));
    let r = f.base(None, "/v1/gz/sd", &ops[..1]).await;
    assert_eq!(r.json().as_array().map(Vec::len), Some(3));
    let r = f.base(None, "/v1/gz/discover", &ops).await;
    assert!(gunzip(&r.raw).contains(r#""server_uuid":"cn3""#));
    // Another tenant's bodies are unaffected.
    let r = f.base(Some(&f.pki.globex), "/v1/discover", &[]).await;
    assert_eq!(vm_uuids(&r.json()), ["g-1"]);
    f.proxy.shutdown().await;
}

#[tokio::test]
async fn burst_past_the_tenant_limit_is_429_with_retry_after() {
    let f = Fixture::start().await;
    let auth = [("authorization", "Bearer slow-token")];
    // Burst 3: exactly three served, then the fourth refused.
    for i in 0..3 {
        let r = f.base(None, "/v1/discover", &auth).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
    }
    let r = f.base(None, "/v1/discover", &auth).await;
    assert_eq!(r.status, 429, "the fourth request: {}", r.body);
    let retry: u64 = r
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After seconds");
    // One token every 100 s (0.01 per second): come back in about 100 s, not at once.
    assert!((99..=101).contains(&retry), "Retry-After {retry}");
    r.assert_not_json_object();
    // Other tenants are not affected.
    assert_eq!(
        f.base(Some(&f.pki.acme), "/v1/discover", &[]).await.status,
        200
    );
    f.proxy.shutdown().await;
}

#[tokio::test]
async fn host_and_sni_refusals() {
    let f = Fixture::start().await;
    // SNI names the base, Host an instance: 421.
    let r = f
        .get(
            Some(&f.pki.acme),
            BASE,
            &format!("web-1.{BASE}"),
            "/metrics",
            &[],
        )
        .await;
    assert_eq!(r.status, 421, "{}", r.body);
    // Malformed Host: 400.
    let r = f
        .get(Some(&f.pki.acme), BASE, "bad host!", "/v1/discover", &[])
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    r.assert_not_json_object();
    // Unknown name: 404. Case and port do not matter.
    let r = f
        .get(
            Some(&f.pki.acme),
            "",
            "elsewhere.example",
            "/v1/discover",
            &[],
        )
        .await;
    assert_eq!(r.status, 404);
    let r = f
        .get(
            Some(&f.pki.acme),
            BASE,
            "LOOKOUT.test:9163",
            "/v1/discover",
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    f.proxy.shutdown().await;
}

#[tokio::test]
async fn own_metrics_on_the_admin_listener() {
    let f = Fixture::start().await;
    // Twice: the second body comes from the cache.
    for _ in 0..2 {
        let r = f.base(Some(&f.pki.acme), "/v1/discover", &[]).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(f.base(None, "/v1/discover", &[]).await.status, 401);
    let text = f.own_metrics().await;
    // Exact values, not substrings ("… 2" would also match 20).
    for (name, labels, want) in [
        (
            "lookout_proxy_requests_total",
            &[("tenant", "acme"), ("route", "discover"), ("code", "2xx")][..],
            2.0,
        ),
        (
            "lookout_proxy_discovery_renders_total",
            &[("route", "discover")],
            1.0,
        ),
        (
            "lookout_proxy_auth_failures_total",
            &[("reason", "no_credentials")],
            1.0,
        ),
        ("lookout_proxy_inventory_instances", &[], 5.0),
        ("lookout_proxy_inventory_nodes", &[], 2.0),
        ("lookout_proxy_inventory_source_up", &[], 1.0),
        ("lookout_proxy_inventory_conflicting_instances", &[], 0.0),
    ] {
        assert_eq!(
            lookout_testkit::exposition::metric(&text, name, labels),
            Some(want),
            "{name}{labels:?} in\n{text}"
        );
    }
    assert!(
        text.contains("lookout_proxy_request_seconds_bucket"),
        "{text}"
    );
    f.proxy.shutdown().await;
}

#[tokio::test]
async fn tenants_file_reloads_and_a_broken_one_keeps_the_last_good() {
    let f = Fixture::start().await;
    let path = f.path("tenants.toml");
    let good = std::fs::read_to_string(&path).expect("read tenants");
    let auth = [("authorization", "Bearer new-token")];
    assert_eq!(f.base(None, "/v1/discover", &auth).await.status, 401);

    // A broken edit: it is read and refused (the failure counted), and the old tenants
    // stay in force.
    let failures = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("lookout_proxy_tenants_reload_failures_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let before = failures(&f.own_metrics().await);
    write_changed(&path, "this is not toml [");
    let start = std::time::Instant::now();
    while failures(&f.own_metrics().await) <= before {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the broken tenants file was never read and refused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        f.base(Some(&f.pki.acme), "/v1/discover", &[]).await.status,
        200
    );

    // A good edit adding a token takes effect without a restart.
    let added = format!(
        "{good}\n[[tenant]]\nname = \"newco\"\ntoken_sha256 = [\"{}\"]\n",
        token_hash("new-token")
    );
    write_changed(&path, &added);
    let mut status = 0;
    for _ in 0..50 {
        status = f.base(None, "/v1/discover", &auth).await.status;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 200);
    f.proxy.shutdown().await;
}

/// Writes `text` so that the modification time visibly changes.
fn write_changed(path: &Path, text: &str) {
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(path, text).expect("write");
}

#[tokio::test]
async fn oversized_headers_are_refused() {
    let f = Fixture::start().await;
    let big = "x".repeat(32 * 1024);
    let client = f.client(Some(&f.pki.acme), true);
    let host = format!("{BASE}:{}", f.proxy.local_addr().port());
    let r = get(
        &client,
        f.proxy.local_addr(),
        BASE,
        &host,
        "/v1/discover",
        &[("x-padding", big.as_str())],
    )
    .await;
    // hyper answers 431 (or closes the connection): either way, never served.
    match r {
        Ok(r) => assert_eq!(r.status, 431, "{}", r.body),
        Err(e) => assert!(e.starts_with("request"), "{e}"),
    }
    f.proxy.shutdown().await;
}

/// HEAD on every kind of answer the proxy makes itself (probes, discovery, refusals), over
/// HTTP/2 and HTTP/1.1, with Debian's curl (deploy/test.sh installs it): no body. A DATA
/// frame after a HEAD on HTTP/2 is a protocol error (curl exits 92).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_gets_no_body_on_either_protocol() {
    let f = Fixture::start().await;
    let port = f.proxy.local_addr().port();
    let ca = f.path("server-ca.pem");
    for (path, auth, want) in [
        ("/_ping", None, "200"),
        ("/readyz", None, "200"),
        ("/v1/discover", Some("initech-token"), "200"),
        ("/v1/sd", Some("initech-token"), "200"),
        ("/v1/instances/nope/metrics", Some("initech-token"), "404"),
        ("/v1/discover", None, "401"),
    ] {
        for proto in ["--http2", "--http1.1"] {
            let mut cmd = std::process::Command::new("curl");
            cmd.args(["-sS", "-I", "--max-time", "10", proto, "--cacert"])
                .arg(&ca)
                .arg("--resolve")
                .arg(format!("{BASE}:{port}:127.0.0.1"))
                .arg(format!("https://{BASE}:{port}{path}"));
            if let Some(token) = auth {
                cmd.arg("-H").arg(format!("authorization: Bearer {token}"));
            }
            let out = tokio::task::spawn_blocking(move || cmd.output())
                .await
                .expect("join")
                .expect("curl (deploy/test.sh installs it)");
            let head = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "HEAD {path} {proto}: curl {:?}: {}{head}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            );
            let status = head.split_whitespace().nth(1).unwrap_or_default();
            assert_eq!(status, want, "HEAD {path} {proto}: {head}");
        }
    }
}
