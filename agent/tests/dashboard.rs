//! The Grafana "Node Exporter Full" dashboard's top row, computed by a real Prometheus 2.42
//! (Debian's `prometheus`; needs root and runc like the other container tests) scraping the
//! agent over mTLS: CPU busy, system load, RAM used, swap used, root FS used, CPU cores and
//! uptime must all be sensible for a container from the agent's output alone.

#[path = "support/agent.rs"]
mod agent;
#[path = "support/containers.rs"]
mod containers;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use containers::{ContainerSpec, Runc};
use lookout_agent::Agent;

const MIB: u64 = 1024 * 1024;

struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn start_prometheus(
    pki: &agent::Pki,
    agent_addr: std::net::SocketAddr,
    ids: &[&str],
) -> Prometheus {
    let dir = tempfile::tempdir().expect("tempdir");
    let jobs: String = ids
        .iter()
        .map(|id| {
            format!(
                r#"  - job_name: "{id}"
    scheme: https
    metrics_path: /v1/instances/{id}/metrics
    tls_config:
      ca_file: {ca}
      cert_file: {cert}
      key_file: {key}
      server_name: localhost
    static_configs:
      - targets: ["{addr}"]
"#,
                ca = pki.path("ca.pem").display(),
                cert = pki.path("proxy.pem").display(),
                key = pki.path("proxy-key.pem").display(),
                addr = agent_addr,
            )
        })
        .collect();
    let config =
        format!("global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n{jobs}");
    std::fs::write(dir.path().join("prometheus.yml"), config).expect("write config");
    let port = free_port();
    let child = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus missing: install Debian's `prometheus` package (deploy/test.sh does)");
    Prometheus {
        child,
        port,
        _dir: dir,
    }
}

/// An instant query through Prometheus's HTTP API (plain HTTP on loopback), as a scalar.
fn query(port: u16, promql: &str) -> Option<f64> {
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "5", "--get", "--data-urlencode"])
        .arg(format!("query={promql}"))
        .arg(format!("http://127.0.0.1:{port}/api/v1/query"))
        .output()
        .expect("curl");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let r = &v["data"]["result"];
    let value = match v["data"]["resultType"].as_str()? {
        "scalar" => &r[1],
        _ => &r.get(0)?["value"][1],
    };
    value.as_str()?.parse().ok()
}

fn wait_query(port: u16, promql: &str) -> f64 {
    let start = Instant::now();
    loop {
        if let Some(v) = query(port, promql).filter(|v| v.is_finite()) {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no value for {promql}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
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
    let pki = agent::Pki::new();
    let cfg = agent::agent_config(
        &pki,
        runc.state_root(),
        "[collection]\ncache_ttl = \"0s\"\nload_interval = \"1s\"\n",
    );
    let agent = Agent::start(cfg).await.expect("agent starts");
    let prom = start_prometheus(&pki, agent.local_addr(), &["web"]);
    let port = prom.port;

    let result = tokio::task::spawn_blocking(move || {
        // Let a few scrapes land.
        wait_query(port, r#"count_over_time(up{job="web"}[1m]) >= 6"#);
        let up = wait_query(port, r#"up{job="web"}"#);
        let f = r#"{job="web"}"#;
        let cpu_busy = wait_query(port, r#"100 * (1 - avg(rate(node_cpu_seconds_total{job="web",mode="idle"}[5s])))"#);
        let cores = wait_query(port, &format!("count(count(node_cpu_seconds_total{f}) by (cpu))"));
        let sys_load = wait_query(port, &format!("scalar(node_load1{f}) * 100 / count(count(node_cpu_seconds_total{f}) by (cpu))"));
        let ram_used = wait_query(port, &format!("clamp_min((1 - node_memory_MemAvailable_bytes{f} / node_memory_MemTotal_bytes{f}) * 100, 0)"));
        let swap_total = wait_query(port, &format!("node_memory_SwapTotal_bytes{f}"));
        let root_fs = wait_query(
            port,
            r#"100 - ((node_filesystem_avail_bytes{job="web",mountpoint="/",fstype!="rootfs"} * 100) / node_filesystem_size_bytes{job="web",mountpoint="/",fstype!="rootfs"})"#,
        );
        let ram_total = wait_query(port, &format!("node_memory_MemTotal_bytes{f}"));
        let uptime = wait_query(port, &format!("node_time_seconds{f} - node_boot_time_seconds{f}"));
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
    assert!(sys_load > 0.0 && sys_load < 400.0, "Sys Load {sys_load} %");
    assert_eq!(ram_total, (96 * MIB) as f64, "RAM Total = the limit");
    assert!(ram_used > 0.0 && ram_used < 100.0, "RAM Used {ram_used} %");
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
    agent.shutdown().await;
}
