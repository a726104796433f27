//! Agents registering in a real etcd, and the proxy-side `etcd` source reading them: two
//! agents standing for two nodes (each with its own runc state root and real containers),
//! containers coming and going, a clean agent stop (its lease revoked: gone at once), and a
//! `lookout agent` process killed (gone after the lease TTL — not before its last keep-alive
//! could lapse — the other node untouched), restarted, and stopped by SIGTERM (its lease
//! revoked: gone long before the TTL).
//!
//! Needs root, `runc`, `busybox-static` and `/usr/bin/etcd` (Debian's `etcd-server`); the
//! harnesses panic naming what is missing.

#[path = "../discovery/tests/support/etcd.rs"]
mod etcd_server;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lookout_agent::config::AgentConfig;
use lookout_agent::Agent;
use lookout_discovery::etcd::{EtcdConfig, EtcdSource};
use lookout_discovery::{Inventory, Shared};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use tempfile::TempDir;
use tokio::sync::watch;
use tokio::time::Instant;

use etcd_server::Etcd;
use lookout_testkit::containers::{ContainerSpec, Runc};

/// How soon a container's start or stop must show in the source's inventory.
const PROPAGATION: Duration = Duration::from_secs(2);
/// The agents' lease TTL in this test.
const TTL: Duration = Duration::from_secs(2);
/// Bound for slower steps (first registration, a lease expiring).
const SLOW: Duration = Duration::from_secs(15);

/// An operator CA and an agent certificate (the agents serve mTLS even if nothing scrapes).
struct Pki {
    dir: TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("lookout-etcd-pki-")
            .tempdir()
            .expect("tempdir");
        let ca_key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, "operator CA");
        let ca = p.self_signed(&ca_key).expect("ca");
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = p.signed_by(&key, &ca, &ca_key).expect("sign");
        let w = |n: &str, t: String| std::fs::write(dir.path().join(n), t).expect("write");
        w("ca.pem", ca.pem());
        w("agent.pem", cert.pem());
        w("agent-key.pem", key.serialize_pem());
        Pki { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// The configuration of an agent for `node` registering in `etcd` with lease `ttl`,
/// listening on (and advertising) `port`.
fn agent_toml(pki: &Pki, etcd: &Etcd, node: &str, root: &Path, port: u16, ttl: Duration) -> String {
    format!(
        r#"node_id = "{node}"
listen = "127.0.0.1:{port}"
[tls]
cert = "{cert}"
key = "{key}"
client_ca = "{ca}"
[discovery]
runc_roots = ["{root}"]
crun_roots = []
default_cgroup_rules = false
rescan_interval = "1h"
[etcd]
endpoints = ["{endpoint}"]
advertise = "127.0.0.1:{port}"
lease_ttl = "{ttl}s"
backoff = {{ min = "100ms", max = "500ms" }}
"#,
        cert = pki.path("agent.pem"),
        key = pki.path("agent-key.pem"),
        ca = pki.path("ca.pem"),
        root = root.display(),
        endpoint = etcd.endpoint(),
        ttl = ttl.as_secs(),
    )
}

/// An agent in this process (see [`agent_toml`]), with the test's [`TTL`].
async fn start_agent(
    pki: &Pki,
    etcd: &Etcd,
    node: &str,
    root: &Path,
    port: u16,
    ttl: Duration,
) -> Agent {
    let text = agent_toml(pki, etcd, node, root, port, ttl);
    let cfg = AgentConfig::parse(&text).expect("agent config parses");
    let problems = cfg.problems();
    assert!(problems.is_empty(), "agent config problems: {problems:?}");
    Agent::start(cfg).await.expect("agent starts")
}

/// `lookout agent` as its own process, so that it can crash (SIGKILL: no revoke) or stop
/// on SIGTERM. Killed when dropped.
struct AgentProcess(std::process::Child);

impl AgentProcess {
    fn start(pki: &Pki, config: &str) -> AgentProcess {
        let path = pki.dir.path().join(format!("agent-{}.toml", free_port()));
        std::fs::write(&path, config).expect("write agent config");
        let log = std::fs::File::create(path.with_extension("log")).expect("log");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_lookout"))
            .arg("agent")
            .arg("--config")
            .arg(&path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn lookout agent");
        AgentProcess(child)
    }

    /// SIGTERM, and the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = rustix::process::Pid::from_raw(self.0.id() as i32).expect("pid");
        rustix::process::kill_process(pid, rustix::process::Signal::Term).expect("SIGTERM");
        self.0.wait().expect("wait")
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `(runtime_id, node)` of every instance, sorted.
fn placed(inv: &Inventory) -> Vec<(String, String)> {
    let mut v: Vec<_> = inv
        .instances()
        .map(|i| (i.runtime_id.clone(), i.node.clone()))
        .collect();
    v.sort();
    v
}

/// Waits until the inventory holds exactly `want`; returns how long it took.
async fn until(shared: &Shared, within: Duration, want: &[(&str, &str)]) -> Duration {
    let mut want: Vec<(String, String)> = want
        .iter()
        .map(|(r, n)| (r.to_string(), n.to_string()))
        .collect();
    want.sort();
    let start = Instant::now();
    loop {
        let inv = shared.load();
        if placed(&inv) == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "within {within:?}: wanted {want:?}, inventory {:?}, source {:?}",
            placed(&inv),
            shared.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn spec(id: &str) -> ContainerSpec {
    ContainerSpec::new(id).annotation("lookout.tenant", "acme")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_register_their_containers_and_leave_on_stop_crash_and_return() {
    let etcd = Etcd::start();
    let pki = Pki::new();
    let (runc1, runc2) = (Runc::new(), Runc::new());
    let _a1 = runc1.run(spec("etcd-a1"));
    let _b1 = runc2.run(spec("etcd-b1"));
    let (port1, port2) = (free_port(), free_port());
    // node-a will stop cleanly: with a 60 s lease only its revocation can make it leave
    // within PROPAGATION (2 s).
    let long = Duration::from_secs(60);
    let agent1 = start_agent(&pki, &etcd, "node-a", runc1.state_root(), port1, long).await;
    let agent2 = start_agent(&pki, &etcd, "node-b", runc2.state_root(), port2, TTL).await;

    let mut cfg = EtcdConfig::new(vec![etcd.endpoint()]);
    cfg.backoff.min = Duration::from_millis(100);
    cfg.backoff.max = Duration::from_millis(500);
    let shared = Shared::new();
    let (stop, stop_rx) = watch::channel(false);
    let source = EtcdSource::new(cfg).expect("source");
    let source = tokio::spawn(source.run(Arc::clone(&shared), stop_rx));

    until(
        &shared,
        SLOW,
        &[("etcd-a1", "node-a"), ("etcd-b1", "node-b")],
    )
    .await;
    let inv = shared.load();
    let agent = |n: &str| inv.node(n).map(|n| n.agent.clone());
    assert_eq!(agent("node-a"), Some(format!("127.0.0.1:{port1}")));
    assert_eq!(agent("node-b"), Some(format!("127.0.0.1:{port2}")));
    let a1 = inv
        .instances()
        .find(|i| i.runtime_id == "etcd-a1")
        .expect("a1");
    assert_eq!(a1.tenant.as_deref(), Some("acme"));

    // A container started on node-a shows within the propagation bound; a removed one goes.
    let a2 = runc1.run(spec("etcd-a2"));
    let took = until(
        &shared,
        PROPAGATION,
        &[
            ("etcd-a1", "node-a"),
            ("etcd-a2", "node-a"),
            ("etcd-b1", "node-b"),
        ],
    )
    .await;
    eprintln!("a new container reached the etcd source in {took:?}");
    a2.remove();
    until(
        &shared,
        PROPAGATION,
        &[("etcd-a1", "node-a"), ("etcd-b1", "node-b")],
    )
    .await;

    // A clean stop revokes the lease: node-a leaves at once.
    let status = agent1.etcd_status().expect("registering").clone();
    assert_eq!(status.borrow().leases_granted, 1);
    agent1.shutdown().await;
    until(&shared, PROPAGATION, &[("etcd-b1", "node-b")]).await;
    assert!(shared.load().node("node-a").is_none());

    // node-a comes back as a `lookout agent` process, then crashes (SIGKILL: no revoke):
    // gone after the lease TTL, not before.
    let toml = agent_toml(&pki, &etcd, "node-a", runc1.state_root(), port1, TTL);
    let process = AgentProcess::start(&pki, &toml);
    until(
        &shared,
        SLOW,
        &[("etcd-a1", "node-a"), ("etcd-b1", "node-b")],
    )
    .await;
    let crashed = Instant::now();
    drop(process);
    until(&shared, SLOW, &[("etcd-b1", "node-b")]).await;
    assert!(
        crashed.elapsed() >= TTL / 2,
        "node-a left after {:?}, before its lease could expire",
        crashed.elapsed()
    );
    assert!(shared.load().node("node-b").is_some());
    assert_eq!(shared.status().last_error, None);

    // SIGTERM stops the process cleanly: its lease is revoked, so node-a leaves long before
    // the (here 60 s) lease could expire.
    let toml = agent_toml(&pki, &etcd, "node-a", runc1.state_root(), port1, long);
    let process = AgentProcess::start(&pki, &toml);
    until(
        &shared,
        SLOW,
        &[("etcd-a1", "node-a"), ("etcd-b1", "node-b")],
    )
    .await;
    let exit = process.terminate();
    assert!(exit.success(), "lookout agent exited with {exit}");
    until(&shared, SLOW, &[("etcd-b1", "node-b")]).await;

    agent2.shutdown().await;
    until(&shared, PROPAGATION, &[]).await;
    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(5), source)
        .await
        .expect("source stops")
        .expect("no panic");
}
