//! Tenant isolation under id reuse, an agent restart and a lying node (needs root, `runc`
//! and `busybox-static`; deploy/test.sh installs them). Decided from the bodies, not the
//! statuses: over at least 100,000 requests no tenant ever receives another tenant's data.
//!
//! The fleet: a real agent (node `node-a`) with real runc containers, a proxy in this process
//! watching it, and three tenants, one per kind of credential — `acme` (certificate from the
//! tenant CA), `globex` (self-signed certificate, registered key), `initech` (bearer token).
//! Every container's alias names its owner (`<tenant>/<id>`), and the agent puts the alias in
//! `node_uname_info{nodename}`: a body whose nodename is another tenant's is a leak.
//!
//! What happens while every tenant scrapes every id (its own and the others'), over
//! HTTP/1.1 and HTTP/2, by path (`/v1/instances/<id>/metrics`) and by host
//! (`<id>.<suffix>/metrics`):
//!
//! - `churn` is deleted and started again every 0.1–0.5 s, alternately owned by acme and
//!   globex (`runc delete -f; runc run -d` with the other bundle);
//! - the agent is stopped, `reuse-me` changes owner from acme to globex while it is down, and
//!   the agent starts again on the same address, while the proxy's watch is still waiting
//!   out its 4 s backoff — so the proxy's inventory says acme for a while;
//! - a lying agent (a compromised node with a valid agent certificate; a fake, since the real
//!   agent cannot be made to lie) claims globex's `victim`, placed on the genuine node, for
//!   acme.
//!
//! The test prints the count of answers by status, and asserts that the races it is about
//! were really run: churn served to each of its owners, reuse-me to each before and after,
//! stale scrapes refused by the agent itself.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lookout_agent::config::AgentConfig;
use lookout_agent::Agent;
use lookout_proxy::config::ProxyConfig;
use lookout_proxy::server::Proxy;
use lookout_testkit::containers::{Container, ContainerSpec, Runc};
use lookout_testkit::exposition::metric;
use lookout_testkit::https::{read_head, serve_tls, Kept, Protocol};
use lookout_testkit::net::free_port;
use lookout_testkit::pki::{token_sha256, Pki, BASE as SUFFIX};
use rustls::ClientConfig;
use tokio::io::AsyncWriteExt;

const TENANTS: [&str; 3] = ["acme", "globex", "initech"];
const IDS: [&str; 6] = [
    "acme-own",
    "globex-own",
    "initech-own",
    "churn",
    "reuse-me",
    "victim",
];
const INITECH_TOKEN: &str = "initech-isolation-token-3f9a";
/// At least this many requests, and all of them within [`HARD_STOP`].
const MIN_REQUESTS: u64 = 100_000;
const HARD_STOP: Duration = Duration::from_secs(150);
/// When the agent is stopped, and for how long (the proxy retries every 4 s).
const RESTART_AT: Duration = Duration::from_secs(10);
const DOWN_FOR: Duration = Duration::from_secs(5);

fn spec(id: &str, tenant: &str) -> ContainerSpec {
    ContainerSpec::new(id)
        .annotation("lookout.tenant", tenant)
        .annotation("lookout.alias", &format!("{tenant}/{id}"))
}

fn agent_config(pki: &Pki, root: &Path, port: u16) -> AgentConfig {
    let text = pki
        .agent_toml(root)
        .node_id("node-a")
        .listen(&format!("127.0.0.1:{port}"))
        .rescan("1h")
        .render();
    AgentConfig::parse(&text).expect("agent config")
}

/// The tenants whose containers a body shows (`nodename="<tenant>/…"`).
fn owners_in(body: &str) -> Vec<String> {
    body.match_indices("nodename=\"")
        .filter_map(|(i, m)| {
            let rest = &body[i + m.len()..];
            rest.split_once('/').map(|(t, _)| t.to_string())
        })
        .collect()
}

/// The lying node: its watch stream claims globex's `victim`, on the genuine node, for acme.
async fn lying_agent(pki: &Pki) -> SocketAddr {
    serve_tls(pki.agent_acceptor(), |_, mut s| async move {
        if !read_head(&mut s).await {
            return;
        }
        let lie = serde_json::json!({
            "type": "snapshot",
            "node": "node-liar",
            "instances": [{
                "id": "victim", "runtime_id": "victim", "node": "node-a",
                "tenant": "acme", "alias": "acme/victim", "source": "runc"
            }]
        });
        let line = format!("{lie}\n");
        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n\
                    transfer-encoding: chunked\r\n\r\n";
        let chunk = format!("{head}{:x}\r\n{line}\r\n", line.len());
        if s.write_all(chunk.as_bytes()).await.is_err() {
            return;
        }
        // Heartbeats, as a live agent sends them, until the proxy hangs up.
        while s.write_all(b"1\r\n\n\r\n").await.is_ok() {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    })
    .await
}

/// What the scrapers saw.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    by_status: Mutex<BTreeMap<u16, u64>>,
    /// (tenant, id) → 200 answers.
    served: Mutex<BTreeMap<(String, String), u64>>,
    /// Answers carrying another tenant's data (or data of no identifiable tenant).
    foreign: Mutex<Vec<String>>,
}

impl Tally {
    fn record(&self, tenant: &str, id: &str, proto: Protocol, status: u16, body: &str) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        *self
            .by_status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(status)
            .or_default() += 1;
        let owners = owners_in(body);
        let leak = if status == 200 {
            owners.is_empty() || owners.iter().any(|o| o != tenant)
        } else {
            !owners.is_empty() || body.contains("node_")
        };
        if leak {
            let mut f = self.foreign.lock().unwrap_or_else(|e| e.into_inner());
            if f.len() < 20 {
                f.push(format!(
                    "{tenant} asked {id} ({proto:?}) → {status}, owners {owners:?}: {}",
                    body.chars().take(300).collect::<String>()
                ));
            } else {
                f.push(String::new());
            }
        }
        if status == 200 {
            *self
                .served
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry((tenant.to_string(), id.to_string()))
                .or_default() += 1;
        }
    }

    fn served(&self, tenant: &str, id: &str) -> u64 {
        self.served
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(tenant.to_string(), id.to_string()))
            .copied()
            .unwrap_or(0)
    }
}

/// One scraper: `tenant` asking for `id` on one kept-alive connection (re-opened when the
/// proxy closes it), by path or by host, until `stop`.
#[allow(clippy::too_many_arguments)]
async fn scrape_loop(
    client: ClientConfig,
    proxy: SocketAddr,
    tenant: &'static str,
    id: &'static str,
    proto: Protocol,
    by_host: bool,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) {
    let port = proxy.port();
    let (sni, host, path) = if by_host {
        let name = format!("{id}.{SUFFIX}");
        (
            name.clone(),
            format!("{name}:{port}"),
            "/metrics".to_string(),
        )
    } else {
        (
            SUFFIX.to_string(),
            format!("{SUFFIX}:{port}"),
            format!("/v1/instances/{id}/metrics"),
        )
    };
    let bearer = format!("Bearer {INITECH_TOKEN}");
    let auth: Vec<(&str, &str)> = if tenant == "initech" {
        vec![("authorization", bearer.as_str())]
    } else {
        vec![]
    };
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut conn) = Kept::open(&client, proxy, &sni, proto).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            // Mostly the uname collector (small, and it names the container); now and then
            // the whole view.
            let full = n.is_multiple_of(100);
            let target = if full {
                path.clone()
            } else {
                format!("{path}?collect[]=uname")
            };
            match conn.get(&host, &target, &auth).await {
                Ok(r) => tally.record(tenant, id, proto, r.status, &r.text()),
                Err(_) => break,
            }
        }
    }
}

/// Swaps `churn` between acme and globex every 0.1–0.5 s until `stop`.
fn churn_loop(runc: Arc<Runc>, stop: Arc<AtomicBool>, swaps: Arc<AtomicU64>) {
    let mut current: Option<Container> = None;
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if let Some(c) = current.take() {
            c.remove();
        }
        let tenant = if i.is_multiple_of(2) {
            "acme"
        } else {
            "globex"
        };
        current = Some(runc.run(spec("churn", tenant)));
        swaps.fetch_add(1, Ordering::Relaxed);
        i += 1;
        std::thread::sleep(Duration::from_millis(100 + (i * 137) % 400));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_tenant_ever_receives_another_tenants_container() {
    let runc = Arc::new(Runc::new());
    let _own: Vec<Container> = [
        ("acme-own", "acme"),
        ("globex-own", "globex"),
        ("initech-own", "initech"),
        ("victim", "globex"),
    ]
    .into_iter()
    .map(|(id, t)| runc.run(spec(id, t)))
    .collect();
    let reuse = runc.run(spec("reuse-me", "acme"));

    let pki = Pki::new("lookout-isolation-");
    let globex_spki: String = lookout_proxy::identity::spki_sha256(pki.globex.cert())
        .expect("spki")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    pki.write(
        "tenants.toml",
        &format!(
            r#"[defaults]
rate_limit = {{ per_second = 100000.0, burst = 100000 }}
[[tenant]]
name = "acme"
[[tenant]]
name = "globex"
cert_cn = []
spki_sha256 = ["{globex_spki}"]
[[tenant]]
name = "initech"
cert_cn = []
token_sha256 = ["{}"]
"#,
            token_sha256(INITECH_TOKEN)
        ),
    );
    let agent_port = free_port();
    let mut agent = Some(
        Agent::start(agent_config(&pki, runc.state_root(), agent_port))
            .await
            .expect("agent starts"),
    );
    let liar = lying_agent(&pki).await;
    let config = pki
        .proxy_toml()
        .agents(
            &[format!("127.0.0.1:{agent_port}"), liar.to_string()],
            ("4s", "4s"),
        )
        .tables("[limits]\nsource = { per_second = 1000000.0, burst = 1000000 }\n")
        .render();
    let proxy = Proxy::start(ProxyConfig::parse(&config).expect("proxy config"))
        .await
        .expect("proxy starts");
    let addr = proxy.local_addr();

    let clients: [ClientConfig; 3] = [
        pki.tenant_client(Some(&pki.acme)),
        pki.tenant_client(Some(&pki.globex)),
        pki.tenant_client(None),
    ];
    // Ready: acme's own container is served through the proxy.
    let start = Instant::now();
    loop {
        let mut c = Kept::open(&clients[0], addr, SUFFIX, Protocol::Http1)
            .await
            .expect("connect");
        let r = c
            .get(
                SUFFIX,
                "/v1/instances/acme-own/metrics?collect[]=uname",
                &[],
            )
            .await
            .expect("answer");
        if r.status == 200 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never ready: {}",
            r.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    let churn = {
        let (runc, stop, swaps) = (Arc::clone(&runc), Arc::clone(&stop), Arc::clone(&swaps));
        std::thread::spawn(move || churn_loop(runc, stop, swaps))
    };
    let mut scrapers = tokio::task::JoinSet::new();
    for (t, tenant) in TENANTS.iter().enumerate() {
        for id in IDS {
            for proto in [Protocol::Http1, Protocol::Http2] {
                for by_host in [false, true] {
                    scrapers.spawn(scrape_loop(
                        clients[t].clone(),
                        addr,
                        tenant,
                        id,
                        proto,
                        by_host,
                        Arc::clone(&tally),
                        Arc::clone(&stop),
                    ));
                }
            }
        }
    }

    // The restart: reuse-me changes owner while the agent is down.
    let began = Instant::now();
    tokio::time::sleep(RESTART_AT).await;
    let acme_reuse_before = tally.served("acme", "reuse-me");
    agent.take().expect("agent").shutdown().await;
    reuse.remove();
    let reuse = runc.run(spec("reuse-me", "globex"));
    tokio::time::sleep(DOWN_FOR).await;
    let agent = Agent::start(agent_config(&pki, runc.state_root(), agent_port))
        .await
        .expect("agent restarts");
    let restarted = Instant::now();

    // Until enough requests, the stale window long past.
    while (tally.requests.load(Ordering::Relaxed) < MIN_REQUESTS
        || restarted.elapsed() < Duration::from_secs(8))
        && began.elapsed() < HARD_STOP
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The agent's own refusals, read before the scrapers stop.
    let own = {
        let c = pki.proxy_client();
        lookout_testkit::https::get(
            &c,
            agent.local_addr(),
            "localhost",
            "localhost",
            "/metrics",
            &[],
        )
        .await
        .expect("agent's own metrics")
        .text()
    };
    stop.store(true, Ordering::Relaxed);
    while scrapers.join_next().await.is_some() {}
    churn.join().expect("churn loop");

    let total = tally.requests.load(Ordering::Relaxed);
    let by_status = tally
        .by_status
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let foreign = tally
        .foreign
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    println!(
        "isolation: {total} requests in {:.1} s, by status {by_status:?}; {} churn swaps; \
         foreign bodies: {}",
        began.elapsed().as_secs_f64(),
        swaps.load(Ordering::Relaxed),
        foreign.len()
    );
    assert!(
        foreign.is_empty(),
        "{} answers carried another tenant's data:\n{}",
        foreign.len(),
        foreign.join("\n")
    );
    assert!(
        total >= MIN_REQUESTS,
        "only {total} requests in {HARD_STOP:?}"
    );

    // The races were run, not dodged.
    for tenant in ["acme", "globex"] {
        assert!(
            tally.served(tenant, "churn") > 0,
            "churn never served to {tenant}"
        );
    }
    for tenant in TENANTS {
        let own = format!("{tenant}-own");
        assert!(
            tally.served(tenant, &own) > 1000,
            "{tenant}'s own container"
        );
    }
    assert!(
        acme_reuse_before > 0,
        "reuse-me served to acme before the restart"
    );
    assert!(
        tally.served("globex", "reuse-me") > 0,
        "reuse-me served to globex after"
    );
    let refused = metric(
        &own,
        "lookout_agent_scrapes_refused_total",
        &[("reason", "other_tenant")],
    );
    assert!(
        refused.is_some_and(|n| n > 0.0),
        "the restarted agent refused no stale scrape: the stale window was not exercised\n{own}"
    );
    // The lie: victim is claimed by two nodes and served to nobody.
    assert_eq!(tally.served("acme", "victim"), 0);
    assert_eq!(
        tally.served("globex", "victim"),
        0,
        "a contested id is served to nobody"
    );

    drop(reuse);
    proxy.shutdown().await;
    agent.shutdown().await;
}
