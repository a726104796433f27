//! The Grafana "Node Exporter Full" dashboard's top row, computed by a real Prometheus 2.42
//! (Debian's `prometheus`; needs root and runc like the other container tests) scraping a
//! container as a tenant does: through a proxy (in this process) in front of the agent, with
//! a bearer token. CPU busy, system load, RAM used, swap used, root FS used, CPU cores and
//! uptime must all be sensible for a container from the agent's output alone.

#[path = "support/agent.rs"]
mod agent;

use std::sync::Arc;
use std::time::Duration;

use lookout_agent::Agent;
use lookout_proxy::config::ProxyConfig;
use lookout_proxy::server::Proxy;
use lookout_testkit::containers::{ContainerSpec, Runc};
use lookout_testkit::pki::{token_sha256, Pki};
use lookout_testkit::prometheus::Prometheus;

const MIB: u64 = 1024 * 1024;
const TOKEN: &str = "dashboard-test-token-5e2b";

/// Scrapes every second, one job per container id, through the proxy's instance path.
fn prometheus_config(pki: &Pki, proxy_addr: std::net::SocketAddr, ids: &[&str]) -> String {
    let token_file = pki.write("tenant.token", TOKEN);
    let jobs: String = ids
        .iter()
        .map(|id| {
            format!(
                r#"  - job_name: "{id}"
    scheme: https
    metrics_path: /v1/instances/{id}/metrics
    authorization:
      credentials_file: {token}
    tls_config:
      ca_file: {ca}
    static_configs:
      - targets: ["{addr}"]
"#,
                token = token_file.display(),
                ca = pki.path("server-ca.pem").display(),
                addr = proxy_addr,
            )
        })
        .collect();
    format!("global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n{jobs}")
}

/// A proxy in front of `agent`, its tenant [`agent::TEST_TENANT`] holding [`TOKEN`].
async fn proxy(pki: &Pki, agent: &Agent) -> Proxy {
    pki.write(
        "tenants.toml",
        &format!(
            "[[tenant]]\nname = \"{}\"\ncert_cn = []\ntoken_sha256 = [\"{}\"]\n",
            agent::TEST_TENANT,
            token_sha256(TOKEN)
        ),
    );
    // The address Prometheus dials is the discovery (base) host.
    let text = pki
        .proxy_toml()
        .top("ip_literals_are_base = true")
        .agents(&[agent.local_addr().to_string()], ("100ms", "500ms"))
        .render();
    let config = ProxyConfig::parse(&text).expect("proxy config");
    Proxy::start(config).await.expect("proxy starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_exporter_full_top_row_is_sensible_per_container() {
    let runc = Runc::new();
    let burner = runc.run(
        ContainerSpec::new("web")
            .memory_limit(96 * MIB)
            .cpu_quota(100_000, 100_000)
            .rootfs_tmpfs_bytes(16 * MIB),
    );
    burner.exec_detached(&["sh", "-c", "while :; do :; done"]);
    // Fill part of the root filesystem and memory so "used" panels have something to show.
    let out = burner.exec(&["dd", "if=/dev/zero", "of=/fill", "bs=1M", "count=8"]);
    assert!(
        out.status.success(),
        "dd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pki = agent::pki();
    let cfg = agent::agent_config(
        &pki,
        runc.state_root(),
        "[collection]\ncache_ttl = \"0s\"\nload_interval = \"1s\"\n",
    );
    let agent = Agent::start(cfg).await.expect("agent starts");
    let proxy = proxy(&pki, &agent).await;
    let config = prometheus_config(&pki, proxy.local_addr(), &["web"]);
    let prom = Arc::new(Prometheus::start("dashboard", &config));

    let p = Arc::clone(&prom);
    let result = tokio::task::spawn_blocking(move || {
        let wait_query = |promql: &str| p.wait_value(promql, Duration::from_secs(60));
        // Let a few scrapes land.
        wait_query(r#"count_over_time(up{job="web"}[1m]) >= 6"#);
        let up = wait_query(r#"up{job="web"}"#);
        let f = r#"{job="web"}"#;
        let cpu_busy = wait_query(r#"100 * (1 - avg(rate(node_cpu_seconds_total{job="web",mode="idle"}[5s])))"#);
        let cores = wait_query(&format!("count(count(node_cpu_seconds_total{f}) by (cpu))"));
        let sys_load = wait_query(&format!("scalar(node_load1{f}) * 100 / count(count(node_cpu_seconds_total{f}) by (cpu))"));
        let ram_used = wait_query(&format!("clamp_min((1 - node_memory_MemAvailable_bytes{f} / node_memory_MemTotal_bytes{f}) * 100, 0)"));
        let swap_total = wait_query(&format!("node_memory_SwapTotal_bytes{f}"));
        let root_fs = wait_query(
            r#"100 - ((node_filesystem_avail_bytes{job="web",mountpoint="/",fstype!="rootfs"} * 100) / node_filesystem_size_bytes{job="web",mountpoint="/",fstype!="rootfs"})"#,
        );
        let ram_total = wait_query(&format!("node_memory_MemTotal_bytes{f}"));
        let uptime = wait_query(&format!("node_time_seconds{f} - node_boot_time_seconds{f}"));
        (up, cpu_busy, cores, sys_load, ram_used, swap_total, root_fs, ram_total, uptime)
    })
    .await
    .expect("queries");
    let (up, cpu_busy, cores, sys_load, ram_used, swap_total, root_fs, ram_total, uptime) = result;
    assert_eq!(up, 1.0);
    assert_eq!(cores, 1.0, "one-core quota → CPU Cores 1");
    assert!(
        (70.0..=101.0).contains(&cpu_busy),
        "CPU Busy {cpu_busy} % for a burner"
    );
    // One runnable thread since the container started: the kernel's 1-minute average can
    // have climbed at most to 1 - e^(-age/60) of one core (a little slack for the
    // fixed-point arithmetic and the seconds between the query and the age read).
    let ceiling = 100.0 * (1.0 - (-(uptime + 5.0) / 60.0).exp()) + 2.0;
    assert!(
        sys_load > 0.0 && sys_load <= ceiling,
        "Sys Load {sys_load} % after {uptime} s (at most {ceiling} %)"
    );
    assert_eq!(ram_total, (96 * MIB) as f64, "RAM Total = the limit");
    // At least the 8 MiB written to the tmpfs root (shared memory, not reclaimable); at most
    // what the cgroup holds now, of the 96 MiB limit.
    let usage: f64 =
        std::fs::read_to_string(burner.cgroup_dir("memory").join("memory.usage_in_bytes"))
            .expect("usage")
            .trim()
            .parse()
            .expect("number");
    let most = usage / (96 * MIB) as f64 * 100.0 + 2.0;
    assert!(
        ram_used >= 8.0 / 96.0 * 100.0 && ram_used <= most,
        "RAM Used {ram_used} % (8 MiB of 96 written; the cgroup holds {usage} B)"
    );
    // No swap limit is set, so SwapTotal is the host's (0 on a host without swap, where the
    // dashboard's swap panel shows no data, as for a node without swap).
    let host_swap = std::fs::read_to_string("/proc/meminfo")
        .expect("meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("SwapTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .expect("SwapTotal in /proc/meminfo")
        * 1024.0;
    assert_eq!(
        swap_total, host_swap,
        "SwapTotal = host swap when unlimited"
    );
    assert!(
        (50.0..=75.0).contains(&root_fs),
        "Root FS Used {root_fs} % (busybox + 8 of 16 MiB written)"
    );
    assert!(
        uptime > 0.0 && uptime < 300.0,
        "Uptime {uptime} s for a fresh container"
    );
    drop(prom);
    proxy.shutdown().await;
    agent.shutdown().await;
}
