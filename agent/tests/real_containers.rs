//! The agent against real runc containers (needs root, `runc`, `busybox-static`,
//! `iproute2`, and `promtool` from `prometheus`; deploy/test.sh installs them). Containers
//! get real cgroup limits, a tmpfs root of a known size, a veth into a network namespace the
//! test creates; the agent's numbers are checked against the kernel and the limits.

#[path = "support/agent.rs"]
mod agent;

use std::time::{Duration, Instant};

use agent::get;
use lookout_agent::Agent;
use lookout_testkit::containers::{ContainerSpec, NetPair, Runc};
use lookout_testkit::exposition::{metric, promtool_check, samples};
use rustls_pki_types::pem::PemObject;

const MIB: u64 = 1024 * 1024;

/// Sum over CPUs of a mode's counter.
fn cpu_mode(text: &str, mode: &str) -> f64 {
    samples(text, "node_cpu_seconds_total")
        .iter()
        .filter(|(l, _)| l.iter().any(|(k, v)| k == "mode" && v == mode))
        .map(|(_, v)| v)
        .sum()
}

fn cpu_count(text: &str) -> usize {
    let mut cpus: Vec<String> = samples(text, "node_cpu_seconds_total")
        .into_iter()
        .filter_map(|(l, _)| l.into_iter().find(|(k, _)| k == "cpu").map(|(_, v)| v))
        .collect();
    cpus.sort();
    cpus.dedup();
    cpus.len()
}

async fn wait_for<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

async fn instance_ids(
    client: &std::sync::Arc<rustls::ClientConfig>,
    addr: std::net::SocketAddr,
) -> Vec<String> {
    let r = get(client, addr, "/v1/instances", &[]).await.expect("list");
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Vec<lookout_discovery::Instance> =
        serde_json::from_str(&r.body).expect("instances JSON");
    v.into_iter().map(|i| i.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_containers_are_seen_as_nodes_of_their_size() {
    let runc = Runc::new();
    let net = NetPair::new();
    let burner = runc.run(
        ContainerSpec::new("burner")
            .memory_limit(64 * MIB)
            .cpu_quota(100_000, 100_000)
            .rootfs_tmpfs_bytes(32 * MIB)
            .annotation("lookout.tenant", "acme")
            .annotation("lookout.alias", "burner-1"),
    );
    let idle = runc.run(
        ContainerSpec::new("idle")
            .memory_limit(128 * MIB)
            .cpu_quota(50_000, 100_000)
            .netns(net.ns_a_path())
            .annotation("lookout.tenant", "globex"),
    );
    burner.exec_detached(&["sh", "-c", "while :; do :; done"]);

    let pki = agent::pki();
    let cfg = agent::agent_config(
        &pki,
        runc.state_root(),
        "[collection]\ncache_ttl = \"0s\"\nload_interval = \"1s\"\n",
    );
    let agent = Agent::start(cfg).await.expect("agent starts");
    let addr = agent.local_addr();
    let client = pki.proxy_client();

    // Discovery: both containers, with operator labels.
    let r = get(&client, addr, "/v1/instances", &[])
        .await
        .expect("list");
    let list: Vec<lookout_discovery::Instance> = serde_json::from_str(&r.body).expect("json");
    let b = list
        .iter()
        .find(|i| i.id == "burner")
        .expect("burner listed");
    assert_eq!(b.tenant.as_deref(), Some("acme"));
    assert_eq!(b.alias, "burner-1");
    assert_eq!(b.node, "test-node");
    let i = list.iter().find(|i| i.id == "idle").expect("idle listed");
    assert_eq!(i.tenant.as_deref(), Some("globex"));

    let scrape = |id: &'static str| {
        let client = client.clone();
        async move {
            let r = get(&client, addr, &format!("/v1/instances/{id}/metrics"), &[])
                .await
                .expect("scrape");
            assert_eq!(r.status, 200, "{}", r.body);
            r.body
        }
    };

    // Size: memory limit, visible CPUs from the quota, rootfs size.
    let b0 = scrape("burner").await;
    let i0 = scrape("idle").await;
    assert_eq!(
        metric(&b0, "node_memory_MemTotal_bytes", &[]),
        Some((64 * MIB) as f64)
    );
    assert_eq!(
        metric(&i0, "node_memory_MemTotal_bytes", &[]),
        Some((128 * MIB) as f64)
    );
    assert_eq!(cpu_count(&b0), 1, "quota of one core → one CPU");
    assert_eq!(cpu_count(&i0), 1, "half a core rounds up to one CPU");
    assert_eq!(
        metric(&b0, "node_filesystem_size_bytes", &[("mountpoint", "/")]),
        Some((32 * MIB) as f64),
        "rootfs is a 32 MiB tmpfs:\n{}",
        b0.lines()
            .filter(|l| l.starts_with("node_filesystem"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        metric(&b0, "node_uname_info", &[("nodename", "burner-1")]),
        Some(1.0)
    );
    let avail = metric(&b0, "node_memory_MemAvailable_bytes", &[]).expect("MemAvailable");
    assert!(avail > 0.0 && avail <= (64 * MIB) as f64);
    let wss = metric(&b0, "container_memory_working_set_bytes", &[]).expect("working set");
    let usage = std::fs::read_to_string(burner.cgroup_dir("memory").join("memory.usage_in_bytes"))
        .expect("usage")
        .trim()
        .parse::<f64>()
        .expect("number");
    // cAdvisor's rule: usage less inactive file pages, read by the test a moment after
    // the agent (1 MiB of slack for what moved in between).
    let stat = std::fs::read_to_string(burner.cgroup_dir("memory").join("memory.stat"))
        .expect("memory.stat");
    let inactive_file = stat
        .lines()
        .find_map(|l| l.strip_prefix("total_inactive_file "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .expect("total_inactive_file");
    let slack = MIB as f64;
    assert!(
        wss > 0.0 && wss >= usage - inactive_file - slack && wss <= usage + slack,
        "working set {wss} vs kernel usage {usage} less inactive file {inactive_file}"
    );
    let boot = metric(&b0, "node_boot_time_seconds", &[]).expect("boot time");
    let now = metric(&b0, "node_time_seconds", &[]).expect("time");
    assert!(
        now - boot >= 0.0 && now - boot < 120.0,
        "container uptime {} s",
        now - boot
    );
    promtool_check(&b0);
    for c in [
        "cpu",
        "meminfo",
        "filesystem",
        "netdev",
        "diskstats",
        "pressure",
        "loadavg",
    ] {
        assert_eq!(
            metric(&b0, "node_scrape_collector_success", &[("collector", c)]),
            Some(1.0),
            "collector {c}"
        );
    }

    // Network: a bounded burst from the peer namespace shows up on the container's veth.
    let rx0 = metric(
        &i0,
        "node_network_receive_bytes_total",
        &[("device", "veth0")],
    )
    .expect("veth0 rx");
    net.send_burst_to_a(1_000_000);
    let rx1 = metric(
        &scrape("idle").await,
        "node_network_receive_bytes_total",
        &[("device", "veth0")],
    )
    .expect("veth0 rx");
    assert!(
        rx1 - rx0 >= 1_000_000.0,
        "rx rose by {} bytes: {rx0} → {rx1}\n{}",
        rx1 - rx0,
        i0.lines()
            .filter(|l| l.contains("veth0"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // CPU: busy rate of the burner near one core, of the idle one near zero; modes add to 1 s/s.
    let (b1, i1, t1) = (scrape("burner").await, scrape("idle").await, Instant::now());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (b2, i2, t2) = (scrape("burner").await, scrape("idle").await, Instant::now());
    let secs = (t2 - t1).as_secs_f64();
    let busy = |a: &str, b: &str| {
        ((cpu_mode(b, "user") + cpu_mode(b, "system"))
            - (cpu_mode(a, "user") + cpu_mode(a, "system")))
            / secs
    };
    let all_modes = |a: &str, b: &str| {
        [
            "user", "system", "idle", "nice", "iowait", "irq", "softirq", "steal",
        ]
        .iter()
        .map(|m| cpu_mode(b, m) - cpu_mode(a, m))
        .sum::<f64>()
            / secs
    };
    let burner_busy = busy(&b1, &b2);
    let idle_busy = busy(&i1, &i2);
    assert!(
        (0.7..=1.1).contains(&burner_busy),
        "burner busy {burner_busy} cores"
    );
    assert!(idle_busy < 0.05, "idle busy {idle_busy} cores");
    let sum = all_modes(&b1, &b2);
    assert!(
        (0.85..=1.15).contains(&sum),
        "burner modes sum to {sum} s/s"
    );
    let sum = all_modes(&i1, &i2);
    assert!((0.85..=1.15).contains(&sum), "idle modes sum to {sum} s/s");

    // Load: the burner's load1 rises (sampled every second in this test).
    wait_for("burner load1 > 0.3", Duration::from_secs(40), || {
        let s = scrape("burner");
        async move { metric(&s.await, "node_load1", &[]).is_some_and(|l| l > 0.3) }
    })
    .await;
    let idle_load = metric(&scrape("idle").await, "node_load1", &[]).expect("load1");
    assert!(idle_load < 0.3, "idle load1 {idle_load}");

    // Removal: a removed container leaves the inventory promptly and its view is 404.
    idle.remove();
    wait_for(
        "idle to leave /v1/instances",
        Duration::from_secs(5),
        || {
            let (c, a) = (client.clone(), addr);
            async move { !instance_ids(&c, a).await.contains(&"idle".to_string()) }
        },
    )
    .await;
    let r = get(&client, addr, "/v1/instances/idle/metrics", &[])
        .await
        .expect("request");
    assert_eq!(r.status, 404);
    assert!(instance_ids(&client, addr)
        .await
        .contains(&"burner".to_string()));
    agent.shutdown().await;
    drop(burner);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_formats_errors_and_watch_stream() {
    let runc = Runc::new();
    let first = runc.run(ContainerSpec::new("first").memory_limit(32 * MIB));
    let pki = agent::pki();
    let agent = Agent::start(agent::agent_config(&pki, runc.state_root(), ""))
        .await
        .expect("agent starts");
    let addr = agent.local_addr();
    let client = pki.proxy_client();

    // OpenMetrics by Accept (what Prometheus 2.42 sends), gzip by Accept-Encoding.
    let prom_accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let r = get(
        &client,
        addr,
        "/v1/instances/first/metrics",
        &[("accept", prom_accept), ("accept-encoding", "gzip")],
    )
    .await
    .expect("scrape");
    assert_eq!(r.status, 200);
    assert!(r.headers["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("application/openmetrics-text; version=1.0.0"));
    assert_eq!(r.headers["content-encoding"], "gzip");
    assert!(
        r.wire_len * 3 < r.body.len(),
        "gzip shrinks {} → {}",
        r.body.len(),
        r.wire_len
    );
    assert!(r.body.ends_with("# EOF\n"));
    assert!(r.body.contains("# TYPE node_cpu_seconds counter\n"));
    let r = get(&client, addr, "/v1/instances/first/metrics", &[])
        .await
        .expect("scrape");
    assert!(r.headers["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("text/plain; version=0.0.4"));
    assert!(r.headers.get("content-encoding").is_none());
    assert!(r.body.contains("# TYPE node_cpu_seconds_total counter\n"));

    // collect[] / exclude[].
    let r = get(
        &client,
        addr,
        "/v1/instances/first/metrics?collect[]=meminfo",
        &[],
    )
    .await
    .expect("scrape");
    assert!(r.body.contains("node_memory_MemTotal_bytes"));
    assert!(!r.body.contains("node_cpu_seconds_total"));
    let r = get(
        &client,
        addr,
        "/v1/instances/first/metrics?exclude[]=meminfo",
        &[],
    )
    .await
    .expect("scrape");
    assert!(
        !r.body.contains("node_memory_MemTotal_bytes") && r.body.contains("node_cpu_seconds_total")
    );
    let r = get(
        &client,
        addr,
        "/v1/instances/first/metrics?collect[]=bogus",
        &[],
    )
    .await
    .expect("scrape");
    assert_eq!(r.status, 400);

    // Refusals: malformed id 400, unknown 404, wrong method 405, unknown route 404.
    for (path, status) in [
        ("/v1/instances/NOT_A_LABEL/metrics", 400),
        ("/v1/instances/nope/metrics", 404),
        ("/v1/instances/first/metrics/extra", 404),
        ("/nothing-here", 404),
        ("/healthz", 200),
        ("/v1/node/metrics", 200),
        ("/metrics", 200),
    ] {
        let r = get(&client, addr, path, &[]).await.expect("request");
        assert_eq!(r.status, status, "{path}: {}", r.body);
    }
    let r = get(&client, addr, "/v1/node/metrics", &[])
        .await
        .expect("node");
    assert!(
        metric(&r.body, "node_memory_MemTotal_bytes", &[]).is_some_and(|v| v > (64 * MIB) as f64)
    );
    assert_eq!(
        metric(&r.body, "node_uname_info", &[("nodename", "test-node")]),
        Some(1.0)
    );
    let own = get(&client, addr, "/metrics", &[])
        .await
        .expect("own metrics");
    assert!(
        own.body.contains("lookout_agent_requests_total"),
        "{}",
        own.body
    );
    assert_eq!(
        metric(&own.body, "lookout_agent_containers", &[]),
        Some(1.0),
        "{}",
        own.body
    );
    // Its cgroup directories and /proc/<pid> are held open, within the budget.
    let held = metric(&own.body, "lookout_agent_held_directories", &[]).expect("held gauge");
    let budget = metric(&own.body, "lookout_agent_held_directories_budget", &[]).expect("budget");
    assert!((2.0..=8.0).contains(&held), "held {held}: {}", own.body);
    assert!(budget >= 256.0, "budget {budget}");

    // Watch: a snapshot first, then an upsert for a new container and a remove when it goes.
    let mut watch = agent::WatchStream::open(&client, addr).await;
    let first_event = watch.next_event().await;
    assert_eq!(first_event["type"], "snapshot");
    assert_eq!(first_event["instances"][0]["id"], "first");
    let second = runc.run(ContainerSpec::new("second"));
    let ev = watch.next_event().await;
    assert_eq!(
        (ev["type"].as_str(), ev["instance"]["id"].as_str()),
        (Some("upsert"), Some("second"))
    );
    second.remove();
    let ev = watch.next_event().await;
    assert_eq!(
        (ev["type"].as_str(), ev["id"].as_str()),
        (Some("remove"), Some("second"))
    );

    // A container whose process exits by itself, runc's state left behind: gone from the
    // list and 404 (asked with its owner's headers, as the proxy still would), never an
    // error page, without anyone deleting it.
    let brief = runc.run(ContainerSpec::new("brief").args(&["sh", "-c", "sleep 2"]));
    wait_for(
        "brief to be listed while it runs",
        Duration::from_secs(5),
        || {
            let c = client.clone();
            async move { instance_ids(&c, addr).await.contains(&"brief".to_string()) }
        },
    )
    .await;
    let owner = agent::owner_of(&client, addr, "brief").await.expect("list");
    let owner: Vec<(&str, &str)> = owner.iter().map(|(k, v)| (*k, v.as_str())).collect();
    wait_for(
        "brief to be 404 once it exited",
        Duration::from_secs(10),
        || {
            let (c, h) = (client.clone(), owner.clone());
            async move {
                agent::get_as_is(&c, addr, "/v1/instances/brief/metrics", &h)
                    .await
                    .is_ok_and(|r| r.status == 404)
            }
        },
    )
    .await;
    assert!(
        runc.state_root().join("brief/state.json").exists(),
        "runc's state is still there: the agent saw the exit, not a deletion"
    );
    wait_for("brief to leave the list", Duration::from_secs(5), || {
        let c = client.clone();
        async move { !instance_ids(&c, addr).await.contains(&"brief".to_string()) }
    })
    .await;
    drop(brief);
    // And one removed with runc delete.
    first.remove();
    wait_for("first to be 404", Duration::from_secs(5), || {
        let c = client.clone();
        async move {
            get(&c, addr, "/v1/instances/first/metrics", &[])
                .await
                .is_ok_and(|r| r.status == 404)
        }
    })
    .await;
    // Nothing is held for containers that are gone.
    wait_for("held directories released", Duration::from_secs(5), || {
        let c = client.clone();
        async move {
            let own = get(&c, addr, "/metrics", &[]).await.expect("own metrics");
            metric(&own.body, "lookout_agent_held_directories", &[]) == Some(0.0)
        }
    })
    .await;
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_operator_ca_clients_are_served_and_certificates_reload() {
    let runc = Runc::new();
    let pki = agent::pki();
    let cfg = agent::agent_config(&pki, runc.state_root(), "");
    let agent = Agent::start(cfg).await.expect("agent starts");
    let addr = agent.local_addr();

    let ok = get(&pki.proxy_client(), addr, "/healthz", &[])
        .await
        .expect("proxy served");
    assert_eq!(ok.status, 200);
    let anonymous = get(&pki.agent_client(None), addr, "/healthz", &[]).await;
    assert!(
        anonymous.is_err(),
        "no client certificate must be refused: {anonymous:?}"
    );
    let foreign = get(
        &pki.agent_client(Some(&pki.identity("foreign"))),
        addr,
        "/healthz",
        &[],
    )
    .await;
    assert!(
        foreign.is_err(),
        "a certificate from another CA must be refused: {foreign:?}"
    );

    // Renewed certificate: new connections present it without a restart.
    let before = agent::peer_certificate(&pki.proxy_client(), addr).await;
    std::fs::copy(pki.path("agent2.pem"), pki.path("agent.pem")).expect("replace cert");
    std::fs::copy(pki.path("agent2-key.pem"), pki.path("agent-key.pem")).expect("replace key");
    wait_for("the renewed certificate", Duration::from_secs(5), || {
        let c = pki.proxy_client();
        let before = before.clone();
        async move { agent::peer_certificate(&c, addr).await != before }
    })
    .await;
    // A broken replacement is read and refused (counted from a baseline taken now: the
    // certificate-then-key copy above may itself have counted one), and the renewed
    // certificate stays in force.
    let renewed = std::fs::read(pki.path("agent2.pem")).expect("agent2.pem");
    let renewed = rustls_pki_types::CertificateDer::from_pem_slice(&renewed).expect("PEM");
    assert_eq!(
        agent::peer_certificate(&pki.proxy_client(), addr).await,
        renewed.to_vec()
    );
    let failures = || {
        let c = pki.proxy_client();
        async move {
            let own = get(&c, addr, "/metrics", &[]).await.expect("own metrics");
            metric(&own.body, "lookout_agent_tls_reload_failures_total", &[]).unwrap_or(0.0)
        }
    };
    let before = failures().await;
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(pki.path("agent.pem"), "not a certificate").expect("break cert");
    wait_for(
        "the broken certificate refused",
        Duration::from_secs(5),
        || {
            let f = failures();
            async move { f.await > before }
        },
    )
    .await;
    let still = get(&pki.proxy_client(), addr, "/healthz", &[])
        .await
        .expect("still served");
    assert_eq!(still.status, 200);
    assert_eq!(
        agent::peer_certificate(&pki.proxy_client(), addr).await,
        renewed.to_vec(),
        "the renewed certificate is still the one presented"
    );
    agent.shutdown().await;
}

/// Eight scrapes that provably overlap share one collection: the container has a mount
/// whose statfs hangs, so its first collection takes the whole 2 s `statfs_timeout`, and the
/// other seven arrive while it runs. Without the per-container single-flight lock each
/// would collect (eight misses).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_scrapes_share_one_collection() {
    let hung = HungFs::mount();
    let runc = Runc::new();
    let _c = runc.run(
        ContainerSpec::new("shared")
            .memory_limit(32 * MIB)
            .bind(hung.dir.path(), "/data"),
    );
    let pki = agent::pki();
    let cfg = agent::agent_config(
        &pki,
        runc.state_root(),
        "[collection]\ncache_ttl = \"30s\"\nstatfs_timeout = \"2s\"\n",
    );
    let agent = Agent::start(cfg).await.expect("agent starts");
    let addr = agent.local_addr();
    let client = pki.proxy_client();

    let own = |c: std::sync::Arc<rustls::ClientConfig>| async move {
        get(&c, addr, "/metrics", &[])
            .await
            .expect("own metrics")
            .body
    };
    let counters = |text: &str| {
        (
            metric(text, "lookout_agent_cache_misses_total", &[]).unwrap_or(0.0),
            metric(text, "lookout_agent_cache_hits_total", &[]).unwrap_or(0.0),
            metric(text, "lookout_agent_collection_seconds_count", &[]).unwrap_or(0.0),
        )
    };
    let before = counters(&own(client.clone()).await);
    // What a proxy would send, looked up once so that the eight requests start together.
    let asserted = agent::owner_of(&client, addr, "shared")
        .await
        .expect("list");
    let start = Instant::now();
    let scrapes: Vec<_> = (0..8)
        .map(|_| {
            let c = client.clone();
            let h = asserted.clone();
            tokio::spawn(async move {
                let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
                agent::get_as_is(&c, addr, "/v1/instances/shared/metrics", &h)
                    .await
                    .expect("scrape")
            })
        })
        .collect();
    let mut bodies = Vec::new();
    for s in scrapes {
        let r = s.await.expect("task");
        assert_eq!(r.status, 200, "{}", r.body);
        bodies.push(r.body);
    }
    let took = start.elapsed();
    let after = counters(&own(client.clone()).await);
    assert_eq!(
        (after.0 - before.0, after.1 - before.1, after.2 - before.2),
        (1.0, 7.0, 1.0),
        "8 overlapping scrapes: one miss, seven hits, one collection"
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(4),
        "one statfs timeout (2 s) for all eight, not one each: {took:?}"
    );
    let times: Vec<_> = bodies
        .iter()
        .map(|b| metric(b, "node_time_seconds", &[]))
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] == w[1]),
        "one snapshot served to all: {times:?}"
    );
    agent.shutdown().await;
}

/// A FUSE filesystem whose statfs never returns (tests/support/hung_fs.py, Debian's
/// python3-fusepy), mounted for the life of the value.
struct HungFs {
    dir: tempfile::TempDir,
    server: std::process::Child,
}

impl HungFs {
    fn mount() -> HungFs {
        let dir = tempfile::Builder::new()
            .prefix("lookout-hung-")
            .tempdir()
            .expect("tempdir");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/hung_fs.py");
        let server = std::process::Command::new("/usr/bin/python3")
            .arg(script)
            .arg(dir.path())
            .spawn()
            .expect("/usr/bin/python3 missing: install python3-fusepy (deploy/test.sh does)");
        let start = Instant::now();
        loop {
            let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
            if mounts.contains(&format!(" {} ", dir.path().display())) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "hung FUSE filesystem did not mount: install python3-fusepy and fuse3"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        HungFs { dir, server }
    }
}

impl Drop for HungFs {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = std::process::Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_filesystem_costs_its_metrics_not_the_scrape() {
    let hung = HungFs::mount();
    let runc = Runc::new();
    let c = runc.run(ContainerSpec::new("nfs-client").bind(hung.dir.path(), "/data"));
    let pki = agent::pki();
    let cfg = agent::agent_config(
        &pki,
        runc.state_root(),
        "[collection]\ncache_ttl = \"0s\"\nstatfs_timeout = \"5s\"\n",
    );
    let agent = Agent::start(cfg).await.expect("agent starts");
    let addr = agent.local_addr();
    let client = pki.proxy_client();
    let path = "/v1/instances/nfs-client/metrics";
    let timeout = [("x-prometheus-scrape-timeout-seconds", "1")];

    // The scrape's own deadline (1 s) ends the request before the 5 s statfs deadline.
    let start = Instant::now();
    let r = get(&client, addr, path, &timeout).await.expect("request");
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "answered in {:?}",
        start.elapsed()
    );

    // The stuck mount is skipped while its call still blocks: the next scrape is whole and fast,
    // /data reported as a device error, the rest of the filesystems intact.
    let start = Instant::now();
    let r = get(&client, addr, path, &timeout).await.expect("request");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        start.elapsed() < Duration::from_millis(900),
        "answered in {:?}",
        start.elapsed()
    );
    assert_eq!(
        metric(
            &r.body,
            "node_filesystem_device_error",
            &[("mountpoint", "/data")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &r.body,
            "node_filesystem_size_bytes",
            &[("mountpoint", "/data")]
        ),
        None
    );
    assert!(metric(
        &r.body,
        "node_filesystem_size_bytes",
        &[("mountpoint", "/")]
    )
    .is_some_and(|v| v > 0.0));
    assert_eq!(
        metric(
            &r.body,
            "node_scrape_collector_success",
            &[("collector", "filesystem")]
        ),
        Some(1.0)
    );
    assert!(metric(&r.body, "node_memory_MemTotal_bytes", &[]).is_some());
    agent.shutdown().await;
    drop(c);
    drop(hung);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_quota_shows_within_limits_ttl() {
    let runc = Runc::new();
    let c = runc.run(ContainerSpec::new("resized").cpu_quota(50_000, 100_000));
    let pki = agent::pki();
    let cfg = agent::agent_config(
        &pki,
        runc.state_root(),
        "[collection]\ncache_ttl = \"0s\"\nlimits_ttl = \"1s\"\n",
    );
    let agent = Agent::start(cfg).await.expect("agent starts");
    let addr = agent.local_addr();
    let client = pki.proxy_client();
    let cores = |c: std::sync::Arc<rustls::ClientConfig>| async move {
        let r = get(&c, addr, "/v1/instances/resized/metrics", &[])
            .await
            .expect("scrape");
        metric(&r.body, "lookout_container_cpu_limit_cores", &[])
    };
    assert_eq!(cores(client.clone()).await, Some(0.5));
    std::fs::write(c.cgroup_dir("cpu").join("cpu.cfs_quota_us"), "150000").expect("raise quota");
    wait_for("the new quota", Duration::from_secs(5), || {
        let cl = client.clone();
        async move { cores(cl).await == Some(1.5) }
    })
    .await;
    agent.shutdown().await;
}

/// procfs hands out a many-record file (`mountinfo`, `net/dev`) about one page per read:
/// a container with more mounts or interfaces than fit in 4 KiB must still show all of
/// them (stopping at the first short read dropped everything past the first page).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounts_and_interfaces_past_the_first_page_are_all_reported() {
    const MOUNTS: usize = 48;
    const VETH_PAIRS: usize = 24;
    let net = NetPair::new();
    let out = net.exec_in_a(&[
        "sh",
        "-c",
        &format!("i=0; while [ $i -lt {VETH_PAIRS} ]; do ip link add pa$i type veth peer name pb$i || exit 1; i=$((i+1)); done"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let volume = tempfile::tempdir().expect("tempdir");
    let mut spec = ContainerSpec::new("many").netns(net.ns_a_path());
    for i in 0..MOUNTS {
        spec = spec.bind(
            volume.path(),
            &format!("/volumes/with-a-longish-name-{i:02}"),
        );
    }
    let runc = Runc::new();
    let c = runc.run(spec);
    let mountinfo =
        std::fs::read_to_string(format!("/proc/{}/mountinfo", c.pid())).expect("mountinfo");
    assert!(
        mountinfo.len() > 2 * 4096,
        "mountinfo is {} bytes",
        mountinfo.len()
    );
    let netdev = std::fs::read_to_string(format!("/proc/{}/net/dev", c.pid())).expect("net/dev");
    assert!(netdev.len() > 4096, "net/dev is {} bytes", netdev.len());

    let pki = agent::pki();
    let agent = Agent::start(agent::agent_config(&pki, runc.state_root(), ""))
        .await
        .expect("agent starts");
    let r = get(
        &pki.proxy_client(),
        agent.local_addr(),
        "/v1/instances/many/metrics",
        &[],
    )
    .await
    .expect("scrape");
    assert_eq!(r.status, 200, "{}", r.body);
    for i in 0..MOUNTS {
        let mp = format!("/volumes/with-a-longish-name-{i:02}");
        assert!(
            metric(
                &r.body,
                "node_filesystem_size_bytes",
                &[("mountpoint", &mp)]
            )
            .is_some(),
            "{mp} missing"
        );
    }
    for i in 0..VETH_PAIRS {
        for side in ["pa", "pb"] {
            let dev = format!("{side}{i}");
            assert!(
                metric(
                    &r.body,
                    "node_network_receive_bytes_total",
                    &[("device", &dev)]
                )
                .is_some(),
                "{dev} missing"
            );
        }
    }
    drop(c);
    agent.shutdown().await;
}
