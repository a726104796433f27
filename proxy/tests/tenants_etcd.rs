//! Tenants in a real etcd (Debian's `etcd-server`, started by the test on loopback): edits
//! through `tenants::admin` (what `lookout tenants` runs) racing each other, and proxies with
//! `[tenants] etcd` following them — on open connections too, through a conflict with the
//! tenants file, and through an etcd outage.
//!
//! Needs `/usr/bin/etcd` (the helper panics naming the package when it is missing).

#[path = "../../discovery/tests/support/etcd.rs"]
mod etcd_server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use lookout_proxy::config::ProxyConfig;
use lookout_proxy::server::Proxy;
use lookout_proxy::tenants::admin::{self, Command, KeyInput, Target};
use lookout_proxy::tenants::{hex, TenantRecord};
use lookout_testkit::pki::{token_sha256, Pki, BASE};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use sha2::{Digest, Sha256};

use etcd_server::Etcd;

/// How soon a proxy must apply an edit.
const PROPAGATION: Duration = Duration::from_secs(2);
/// Bound on slower waits (etcd restarting, a broken watch noticed).
const WAIT: Duration = Duration::from_secs(20);

fn target(etcd: &Etcd) -> Target {
    Target::from_flags(vec![etcd.endpoint()], "/lookout/".into(), None).expect("target")
}

async fn edit(etcd: &Etcd, command: Command) -> admin::Outcome {
    let c = format!("{command:?}");
    admin::run(target(etcd), command)
        .await
        .unwrap_or_else(|e| panic!("{c}: {e}"))
}

fn add(name: &str) -> Command {
    Command::Add {
        record: TenantRecord::named(name),
    }
}

fn token_of(name: &str) -> String {
    format!("{name}-token")
}

/// Registers `<name>-token` for `name`.
async fn add_token(etcd: &Etcd, name: &str) {
    let sha256 = Some(token_sha256(&token_of(name)));
    edit(
        etcd,
        Command::AddToken {
            name: name.into(),
            sha256,
        },
    )
    .await;
}

async fn wait_for(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn concurrent_edits_are_serialised_not_lost() {
    let etcd = Etcd::start();
    edit(&etcd, add("acme")).await;
    const WRITERS: usize = 16;
    let keys: Vec<String> = (0..WRITERS)
        .map(|i| hex(&Sha256::digest(format!("key {i}").as_bytes())))
        .collect();
    // All start together: their reads overlap, so most first attempts lose the race.
    let barrier = Arc::new(tokio::sync::Barrier::new(WRITERS));
    let tasks: Vec<_> = keys
        .iter()
        .map(|k| {
            let (target, barrier) = (target(&etcd), Arc::clone(&barrier));
            let command = Command::AddKey {
                name: "acme".into(),
                key: KeyInput::Spki(k.clone()),
            };
            tokio::spawn(async move {
                barrier.wait().await;
                admin::run(target, command).await
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("join").expect("every edit succeeds");
    }
    let show = edit(
        &etcd,
        Command::Show {
            name: "acme".into(),
        },
    )
    .await;
    let record: TenantRecord = serde_json::from_str(&show.stdout).expect("JSON");
    let mut stored = record.spki_sha256;
    stored.sort();
    let mut want = keys;
    want.sort();
    assert_eq!(stored, want, "an edit was lost");

    // One key raced onto several tenants: each edit is validated against the set it lands
    // in (the guard covers every tenants key, not just the edited one), so exactly one wins.
    const RIVALS: usize = 8;
    for i in 0..RIVALS {
        edit(&etcd, add(&format!("t{i}"))).await;
    }
    let key = hex(&Sha256::digest(b"contested"));
    let barrier = Arc::new(tokio::sync::Barrier::new(RIVALS));
    let tasks: Vec<_> = (0..RIVALS)
        .map(|i| {
            let (target, barrier) = (target(&etcd), Arc::clone(&barrier));
            let command = Command::AddKey {
                name: format!("t{i}"),
                key: KeyInput::Spki(key.clone()),
            };
            tokio::spawn(async move {
                barrier.wait().await;
                admin::run(target, command).await
            })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        match t.await.expect("join") {
            Ok(_) => won += 1,
            Err(admin::AdminError::Invalid(p)) => {
                assert!(p[0].contains("is also registered to tenant"), "{p:?}")
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(won, 1, "a key registered to two tenants");
}

/// A proxy in this process with `[tenants] etcd = true`, the file tenant `filet`, and an
/// HTTPS client.
struct TenantsProxy {
    proxy: Proxy,
    client: Arc<ClientConfig>,
    _pki: Pki,
}

impl TenantsProxy {
    async fn start(etcd: &Etcd) -> TenantsProxy {
        let pki = Pki::new("lookout-tenants-etcd-");
        let hash = token_sha256(&token_of("filet"));
        pki.write(
            "tenants.toml",
            &format!("[[tenant]]\nname = \"filet\"\ntoken_sha256 = [\"{hash}\"]\n"),
        );
        let config = pki
            .proxy_toml()
            .tables(&format!(
                r#"[tenants]
etcd = true
[inventory]
source = "etcd"
endpoints = ["{endpoint}"]
lease_ttl = "2s"
connect_timeout = "1s"
request_timeout = "1s"
backoff = {{ min = "100ms", max = "300ms" }}
[limits]
source = {{ per_second = 10000.0, burst = 10000 }}
"#,
                endpoint = etcd.endpoint(),
            ))
            .render();
        let cfg = ProxyConfig::load(&pki.write("proxy.toml", &config)).expect("valid config");
        let proxy = Proxy::start(cfg).await.expect("proxy starts");
        TenantsProxy {
            proxy,
            client: Arc::new(pki.tenant_client(None)),
            _pki: pki,
        }
    }

    /// A new HTTP/1.1 connection, kept open for several requests.
    async fn connect(&self) -> SendRequest<Empty<Bytes>> {
        let tcp = tokio::net::TcpStream::connect(self.proxy.local_addr())
            .await
            .expect("connect");
        let name = ServerName::try_from(BASE).expect("name");
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&self.client))
            .connect(name, tcp)
            .await
            .expect("TLS");
        let (send, conn) = http1::handshake(TokioIo::new(tls)).await.expect("HTTP");
        tokio::spawn(conn);
        send
    }

    /// One GET on `conn` (as `tenant`'s token when given): status and body.
    async fn get_on(
        conn: &mut SendRequest<Empty<Bytes>>,
        path: &str,
        tenant: Option<&str>,
    ) -> (u16, String) {
        let mut req = http::Request::get(path).header("host", BASE);
        if let Some(t) = tenant {
            req = req.header("authorization", format!("Bearer {}", token_of(t)));
        }
        conn.ready().await.expect("connection still open");
        let resp = conn
            .send_request(req.body(Empty::new()).expect("request"))
            .await
            .expect("response");
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// One GET on a new connection.
    async fn get(&self, path: &str, tenant: Option<&str>) -> (u16, String) {
        Self::get_on(&mut self.connect().await, path, tenant).await
    }

    async fn status(&self, tenant: &str) -> u16 {
        self.get("/v1/discover", Some(tenant)).await.0
    }

    fn metric(&self, name: &str) -> f64 {
        let text = self.proxy.telemetry().encode();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing"))
    }
}

#[tokio::test]
async fn open_connections_see_tenant_changes_at_their_next_request() {
    let etcd = Etcd::start();
    edit(&etcd, add("acme")).await;
    add_token(&etcd, "acme").await;
    let p = TenantsProxy::start(&etcd).await;
    wait_for("ready", WAIT, async || {
        p.get("/readyz", None).await.0 == 200
    })
    .await;
    let mut conn = p.connect().await;
    let get = async |conn: &mut _, t| TenantsProxy::get_on(conn, "/v1/discover", Some(t)).await.0;
    assert_eq!(get(&mut conn, "acme").await, 200);
    assert_eq!(
        get(&mut conn, "filet").await,
        200,
        "the file's tenant, merged"
    );
    assert_eq!(get(&mut conn, "later").await, 401);

    // Each change is seen by the same connection, kept open throughout.
    edit(&etcd, add("later")).await;
    add_token(&etcd, "later").await;
    let start = Instant::now();
    while get(&mut conn, "later").await != 200 {
        assert!(
            start.elapsed() < PROPAGATION,
            "a new token not accepted in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sha256 = token_sha256(&token_of("acme"));
    let command = Command::RemoveToken {
        name: "acme".into(),
        sha256,
    };
    edit(&etcd, command).await;
    let start = Instant::now();
    while get(&mut conn, "acme").await != 401 {
        assert!(
            start.elapsed() < PROPAGATION,
            "a removed token still accepted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get(&mut conn, "later").await, 200, "the same connection");
    assert_eq!(p.metric("lookout_proxy_tenants_etcd_up"), 1.0);
    assert_eq!(p.metric("lookout_proxy_tenants_reload_failures_total"), 0.0);
}

#[tokio::test]
async fn a_conflict_from_the_start_keeps_the_file_tenants_and_is_not_ready() {
    let etcd = Etcd::start();
    // `filet` is the file's; admin with no file cannot know.
    edit(&etcd, add("filet")).await;
    edit(&etcd, add("acme")).await;
    add_token(&etcd, "acme").await;
    let p = TenantsProxy::start(&etcd).await;
    wait_for("the conflict counted", WAIT, async || {
        p.metric("lookout_proxy_tenants_reload_failures_total") >= 1.0
    })
    .await;
    let (status, body) = p.get("/readyz", None).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("tenants from etcd not loaded: refused: tenant \"filet\": the name is used by more than one tenant"),
        "{body}"
    );
    assert_eq!(
        p.status("filet").await,
        200,
        "the file's tenants stay in force"
    );
    assert_eq!(p.status("acme").await, 401, "etcd's are not in force");

    edit(
        &etcd,
        Command::Remove {
            name: "filet".into(),
        },
    )
    .await;
    wait_for("the fixed set applies", PROPAGATION, async || {
        p.status("acme").await == 200
    })
    .await;
    assert_eq!(p.get("/readyz", None).await.0, 200);
    assert_eq!(p.status("filet").await, 200);
}

#[tokio::test]
async fn etcd_down_keeps_the_last_tenants_and_says_so() {
    let mut etcd = Etcd::start();
    edit(&etcd, add("acme")).await;
    add_token(&etcd, "acme").await;
    let p = TenantsProxy::start(&etcd).await;
    wait_for("acme accepted", WAIT, async || {
        p.status("acme").await == 200
    })
    .await;

    etcd.stop();
    wait_for("the outage noticed", WAIT, async || {
        p.metric("lookout_proxy_tenants_etcd_up") == 0.0
    })
    .await;
    let (status, body) = p.get("/readyz", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("serving the last tenants; etcd: "), "{body}");
    assert_eq!(p.status("acme").await, 200, "the last tenants stay");
    assert_eq!(p.status("filet").await, 200);
    assert_eq!(p.metric("lookout_proxy_tenants_reload_failures_total"), 0.0);

    etcd.restart();
    edit(&etcd, add("later")).await;
    add_token(&etcd, "later").await;
    wait_for("an edit after the outage applies", WAIT, async || {
        p.status("later").await == 200
    })
    .await;
    wait_for("the watch is back", WAIT, async || {
        p.metric("lookout_proxy_tenants_etcd_up") == 1.0
    })
    .await;
    assert_eq!(p.get("/readyz", None).await, (200, "ready\n".to_string()));
    assert_eq!(p.status("acme").await, 200);
}
