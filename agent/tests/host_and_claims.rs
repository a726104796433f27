//! What the agent must never show a tenant, against real runc containers (needs root, `runc`
//! and `busybox-static`; deploy/test.sh installs them):
//!
//! - a container in the host's network namespace (`hostNetwork`, `--network host`) gets no
//!   network series — they would be the host's interfaces — and its `netdev` collector says 0;
//! - a state file pointing at a process in all of the host's namespaces (here a `sleep` the
//!   test starts on the host) is no container and is never listed;
//! - a copy of a container's state file under another id and tenant makes both claims on
//!   that process void: neither is listed or served, both are counted, until the copy goes.

#[path = "support/agent.rs"]
mod agent;

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use agent::get;
use lookout_agent::Agent;
use lookout_testkit::containers::{ContainerSpec, Runc};
use lookout_testkit::exposition::metric;

/// Instance ids the agent lists.
async fn listed(
    client: &std::sync::Arc<rustls::ClientConfig>,
    addr: std::net::SocketAddr,
) -> Vec<String> {
    let r = get(client, addr, "/v1/instances", &[]).await.expect("list");
    let v: Vec<lookout_discovery::Instance> = serde_json::from_str(&r.body).expect("json");
    let mut ids: Vec<String> = v.into_iter().map(|i| i.id).collect();
    ids.sort();
    ids
}

/// Writes `<root>/<id>/state.json` from `state` with `id` and the label set replaced.
fn forge_state(root: &Path, mut state: serde_json::Value, id: &str, labels: &[&str]) {
    state["id"] = id.into();
    state["config"]["labels"] = labels.iter().map(|l| l.to_string()).collect();
    let dir = root.join(id);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("state.json"), state.to_string()).expect("write state");
}

/// The start time of `pid` in clock ticks (field 22 of `/proc/<pid>/stat`).
fn start_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    after
        .split(' ')
        .nth(19)
        .expect("starttime")
        .parse()
        .expect("number")
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_is_never_shown_and_contested_processes_are_served_to_nobody() {
    let runc = Runc::new();
    let own = runc.run(ContainerSpec::new("own-net"));
    let hostnet = runc.run(ContainerSpec::new("host-net").netns("/proc/self/ns/net"));
    let web = runc.run(ContainerSpec::new("web").annotation("lookout.tenant", "acme"));
    let pki = agent::pki();
    let cfg = agent::agent_config(
        &pki,
        runc.state_root(),
        "[collection]\ncache_ttl = \"0s\"\n",
    );
    let agent = Agent::start(cfg).await.expect("agent starts");
    let addr = agent.local_addr();
    let client = pki.proxy_client();

    // Host network: no interface series, the collector withheld (0), not counted as failing.
    let r = get(&client, addr, "/v1/instances/host-net/metrics", &[])
        .await
        .expect("scrape");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        !r.body.contains("node_network_"),
        "the host's interfaces leaked:\n{}",
        r.body
    );
    assert_eq!(
        metric(
            &r.body,
            "node_scrape_collector_success",
            &[("collector", "netdev")]
        ),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &r.body,
            "node_scrape_collector_success",
            &[("collector", "filesystem")]
        ),
        Some(1.0),
        "its mount namespace is its own"
    );
    // A container with its own network namespace keeps its interfaces.
    let r = get(&client, addr, "/v1/instances/own-net/metrics", &[])
        .await
        .expect("scrape");
    assert!(
        metric(
            &r.body,
            "node_network_receive_bytes_total",
            &[("device", "lo")]
        )
        .is_some(),
        "{}",
        r.body
    );
    let own_metrics = get(&client, addr, "/metrics", &[])
        .await
        .expect("own metrics");
    assert_eq!(
        metric(
            &own_metrics.body,
            "lookout_agent_collector_errors_total",
            &[("collector", "netdev")]
        ),
        None,
        "a withheld collector is no error"
    );

    // A state file claiming a host process: never a container.
    let sleeper = Killed(Command::new("sleep").arg("600").spawn().expect("sleep"));
    let pid = sleeper.0.id();
    let mut host_state = web.state_file();
    host_state["init_process_pid"] = pid.into();
    host_state["init_process_start"] = start_ticks(pid).into();
    forge_state(
        runc.state_root(),
        host_state,
        "host-proc",
        &["lookout.tenant=acme"],
    );
    // A copy of web's state under another id and tenant: web's process is contested.
    forge_state(
        runc.state_root(),
        web.state_file(),
        "evil-copy",
        &["lookout.tenant=globex"],
    );

    let start = Instant::now();
    loop {
        let ids = listed(&client, addr).await;
        let own_metrics = get(&client, addr, "/metrics", &[]).await.expect("own").body;
        let refused = |reason| {
            metric(
                &own_metrics,
                "lookout_agent_claims_refused",
                &[("reason", reason)],
            )
        };
        if ids == ["host-net", "own-net"]
            && refused("conflict") == Some(1.0)
            && refused("host_process") == Some(1.0)
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "expected only host-net and own-net, one conflict, one host process: {ids:?}\n{own_metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for id in ["web", "evil-copy", "host-proc"] {
        let r = get(
            &client,
            addr,
            &format!("/v1/instances/{id}/metrics"),
            &[(lookout_discovery::TENANT_HEADER, "acme")],
        )
        .await
        .expect("scrape");
        assert_eq!(r.status, 404, "{id} served: {}", r.body);
    }

    // The copy goes: web is web again.
    std::fs::remove_dir_all(runc.state_root().join("evil-copy")).expect("rm copy");
    std::fs::remove_dir_all(runc.state_root().join("host-proc")).expect("rm forged");
    let start = Instant::now();
    while !listed(&client, addr).await.contains(&"web".to_string()) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "web never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = get(&client, addr, "/v1/instances/web/metrics", &[])
        .await
        .expect("scrape");
    assert_eq!(r.status, 200, "{}", r.body);
    drop((own, hostnet, web));
    agent.shutdown().await;
}

/// What root on the node (or a bug) can plant in a state root: a FIFO where `state.json`
/// should be (it blocked discovery for good), a symlink to `/dev/zero` (the agent read
/// until it was killed at 1 GiB), a state file of 5 MiB. None stops a scan: a container
/// started after them is found, and the planted entries are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_fifos_devices_and_floods_never_stop_discovery() {
    let runc = Runc::new();
    let root = runc.state_root();
    for name in ["fifo", "zero", "big"] {
        std::fs::create_dir_all(root.join(name)).expect("mkdir");
    }
    let made = Command::new("mkfifo")
        .arg(root.join("fifo/state.json"))
        .status()
        .expect("mkfifo");
    assert!(made.success());
    std::os::unix::fs::symlink("/dev/zero", root.join("zero/state.json")).expect("symlink");
    std::fs::write(root.join("big/state.json"), vec![b' '; 5 << 20]).expect("write");

    let pki = agent::pki();
    let agent = Agent::start(agent::agent_config(&pki, root, ""))
        .await
        .expect("agent starts");
    let addr = agent.local_addr();
    let client = pki.proxy_client();
    let first = runc.run(ContainerSpec::new("after-the-fifo"));
    let start = Instant::now();
    while listed(&client, addr).await != ["after-the-fifo"] {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "a container started after the planted files was never found: {:?}",
            listed(&client, addr).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = get(&client, addr, "/v1/instances/after-the-fifo/metrics", &[])
        .await
        .expect("scrape");
    assert_eq!(r.status, 200, "{}", r.body);
    drop(first);
    agent.shutdown().await;
}

/// An interface named with bytes that are not UTF-8 (legal for the kernel) turned off the
/// container's whole network collector. Now the others are reported and it is shown
/// escaped, and promtool accepts the view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interface_name_that_is_not_utf8_costs_no_other_interface() {
    let runc = Runc::new();
    let net = lookout_testkit::containers::NetPair::new();
    let out = net.exec_in_a(&[
        "sh",
        "-c",
        "ip link add \"$(printf '\\377\\376q')\" type veth peer name pq",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _c = runc.run(ContainerSpec::new("oddnames").netns(net.ns_a_path()));
    let pki = agent::pki();
    let agent = Agent::start(agent::agent_config(&pki, runc.state_root(), ""))
        .await
        .expect("agent starts");
    let client = pki.proxy_client();
    let r = get(
        &client,
        agent.local_addr(),
        "/v1/instances/oddnames/metrics",
        &[],
    )
    .await
    .expect("scrape");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        metric(
            &r.body,
            "node_scrape_collector_success",
            &[("collector", "netdev")]
        ),
        Some(1.0)
    );
    // The label value is `\xff\xfeq`; the exposition escapes its backslashes (and
    // `metric` compares the escaped text).
    for device in ["lo", "pq", "\\\\xff\\\\xfeq"] {
        assert!(
            metric(
                &r.body,
                "node_network_receive_bytes_total",
                &[("device", device)]
            )
            .is_some(),
            "{device} missing:\n{}",
            r.body
        );
    }
    lookout_testkit::exposition::promtool_check(&r.body);
    let own = get(&client, agent.local_addr(), "/metrics", &[])
        .await
        .expect("own");
    assert_eq!(
        metric(
            &own.body,
            "lookout_agent_interface_names_escaped_total",
            &[]
        ),
        Some(1.0)
    );
    agent.shutdown().await;
}

/// A tmpfs mounted on a host temp dir for a test, unmounted on drop.
struct Tmpfs(tempfile::TempDir);
impl Tmpfs {
    fn new(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("tempdir");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount");
        assert!(ok.success(), "mount tmpfs");
        Tmpfs(dir)
    }
}
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

/// The size the view reports for the filesystem mounted at `mountpoint`.
fn fs_size(view: &str, mountpoint: &str) -> Option<f64> {
    lookout_testkit::exposition::samples(view, "node_filesystem_size_bytes")
        .into_iter()
        .find(|(l, _)| l.iter().any(|(k, v)| k == "mountpoint" && v == mountpoint))
        .map(|(_, v)| v)
}

/// A tenant replaces the directory above one of its mounts with a symlink to `/`: the
/// mount list the agent holds still says `/mnt/tmp`, and resolving that through
/// `/proc/<pid>/root` used to follow the absolute symlink into the **host's** root, so the
/// view showed the host's `/tmp`. Resolved inside the container's root, it never leaves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_planted_above_a_mount_never_leads_out_of_the_container() {
    const MIB: f64 = 1024.0 * 1024.0;
    let runc = Runc::new();
    let vol = Tmpfs::new("4m");
    let c = runc.run(
        ContainerSpec::new("planter")
            .rootfs_tmpfs_bytes(16 << 20)
            .bind(vol.0.path(), "/mnt/tmp"),
    );
    let pki = agent::pki();
    // The mount list is read once per limits_ttl: the planted symlink is resolved against
    // the list read before it, as it would be for up to a minute by default.
    let cfg = agent::agent_config(
        &pki,
        runc.state_root(),
        "[collection]\ncache_ttl = \"0s\"\nlimits_ttl = \"1h\"\n",
    );
    let agent = Agent::start(cfg).await.expect("agent starts");
    let client = pki.proxy_client();
    let path = "/v1/instances/planter/metrics";
    let before = get(&client, agent.local_addr(), path, &[])
        .await
        .expect("scrape");
    assert_eq!(
        fs_size(&before.body, "/mnt/tmp"),
        Some(4.0 * MIB),
        "{}",
        before.body
    );

    let out = c.exec(&["sh", "-c", "mv /mnt /mnt.moved && ln -s / /mnt"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let host_tmp = rustix::fs::statfs("/tmp").expect("statfs /tmp");
    let host_tmp = host_tmp.f_blocks as f64 * host_tmp.f_bsize as f64;
    assert_ne!(
        host_tmp,
        16.0 * MIB,
        "the host's /tmp must differ from the container's root"
    );

    let after = get(&client, agent.local_addr(), path, &[])
        .await
        .expect("scrape");
    assert_eq!(after.status, 200);
    // Now `/mnt/tmp` inside the container is its own `/tmp`, on its 16 MiB root (or gone).
    if let Some(size) = fs_size(&after.body, "/mnt/tmp") {
        assert_ne!(size, host_tmp, "the host's /tmp was shown:\n{}", after.body);
        assert_eq!(size, 16.0 * MIB, "{}", after.body);
    }
    drop(c);
    agent.shutdown().await;
}
