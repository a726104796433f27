//! The `agents` discovery source against real agents watching real runc containers: two
//! agents in this process (different node ids, one operator CA), the proxy-side watcher
//! merging their watch streams, an agent killed and replaced on the same port, DNS-driven
//! membership (hickory against Debian's dnsmasq, `dnsmasq-base`), and a proxy certificate
//! from a foreign CA refused.
//!
//! Needs root, `runc` and `busybox-static` (the container harness panics naming what is
//! missing).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lookout_agent::config::AgentConfig;
use lookout_agent::Agent;
use lookout_discovery::agents::{AgentAddr, AgentsConfig, StatusHandle, Watcher, DNS_TIMEOUT};
use lookout_discovery::{Inventory, Shared};
use lookout_testkit::containers::{ContainerSpec, Runc};
use lookout_testkit::dns::Dnsmasq;
use lookout_testkit::net::free_port;
use lookout_testkit::pki::Pki;
use tokio::sync::watch;
use tokio::time::Instant;

/// How soon a change on an agent must show in the proxy's inventory.
const PROPAGATION: Duration = Duration::from_secs(2);
/// Bound for slower steps: first connections, an agent's shutdown noticed, a reconnect.
const SLOW: Duration = Duration::from_secs(15);

/// An agent on `listen` with node id `node`, watching only `runc_root`; the periodic rescan
/// is an hour away, so changes are seen through inotify.
async fn start_agent(pki: &Pki, node: &str, runc_root: &Path, listen: &str) -> Agent {
    let text = pki
        .agent_toml(runc_root)
        .node_id(node)
        .listen(listen)
        .tls_reload("200ms")
        .rescan("1h")
        .render();
    let cfg = AgentConfig::parse(&text).expect("agent test config parses");
    let problems = cfg.problems();
    assert!(
        problems.is_empty(),
        "agent test config problems: {problems:?}"
    );
    Agent::start(cfg).await.expect("agent starts")
}

/// The watcher's configuration: fast backoff so a restarted agent is found quickly.
fn watcher_config(pki: &Pki, identity: &str, agents: &[String], dns: &str) -> AgentsConfig {
    let list = agents
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        r#"agents = [{list}]
connect_timeout = "2s"
backoff = {{ min = "100ms", max = "500ms" }}
{dns}
[tls]
cert = "{cert}"
key = "{key}"
ca = "{ca}"
"#,
        cert = pki.path(&format!("{identity}.pem")).display(),
        key = pki.path(&format!("{identity}-key.pem")).display(),
        ca = pki.path("operator-ca.pem").display(),
    );
    AgentsConfig::parse(&text).expect("watcher test config parses")
}

/// A running watcher and what the test observes it through.
struct Running {
    shared: Arc<Shared>,
    status: StatusHandle,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn start(watcher: Watcher) -> Running {
        let shared = Shared::new();
        let status = watcher.status();
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(watcher.run(Arc::clone(&shared), rx));
        Running {
            shared,
            status,
            stop,
            task,
        }
    }

    /// Polls the inventory until `ok` holds; panics with `what` and the inventory after
    /// `within`. Returns how long it took.
    async fn wait(
        &self,
        within: Duration,
        what: &str,
        ok: impl Fn(&Inventory) -> bool,
    ) -> Duration {
        let start = Instant::now();
        loop {
            let inv = self.shared.load();
            if ok(&inv) {
                return start.elapsed();
            }
            if start.elapsed() > within {
                panic!(
                    "within {within:?}: {what}\ninventory: {:?}\nagents: {:?}\nsource: {:?}",
                    runtime_ids(&inv),
                    self.status.agents(),
                    self.shared.status()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("watcher stops within 5 s of shutdown")
            .expect("watcher task did not panic");
    }
}

/// `(runtime_id, node)` of every instance, sorted.
fn runtime_ids(inv: &Inventory) -> Vec<(String, String)> {
    let mut v: Vec<_> = inv
        .instances()
        .map(|i| (i.runtime_id.clone(), i.node.clone()))
        .collect();
    v.sort();
    v
}

/// Exactly these `(runtime_id, node)` pairs.
fn holds(inv: &Inventory, want: &[(&str, &str)]) -> bool {
    let mut want: Vec<(String, String)> = want
        .iter()
        .map(|(r, n)| (r.to_string(), n.to_string()))
        .collect();
    want.sort();
    runtime_ids(inv) == want
}

fn spec(id: &str) -> ContainerSpec {
    ContainerSpec::new(id).annotation("lookout.tenant", "acme")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn merges_two_agents_keeps_a_dead_one_and_converges_after_restart() {
    let pki = Pki::new("lookout-agents-pki-");
    let runc1 = Runc::new();
    let runc2 = Runc::new();
    let a1 = runc1.run(spec("agt-a1"));
    let b1 = runc2.run(spec("agt-b1"));
    let _b2 = runc2.run(spec("agt-b2"));

    let agent1 = start_agent(&pki, "node-a", runc1.state_root(), "127.0.0.1:0").await;
    let agent2 = start_agent(&pki, "node-b", runc2.state_root(), "127.0.0.1:0").await;
    let addr1 = AgentAddr::from(agent1.local_addr()).to_string();
    let addr2 = AgentAddr::from(agent2.local_addr()).to_string();
    let port2 = agent2.local_addr().port();

    let cfg = watcher_config(&pki, "proxy", &[addr1.clone(), addr2.clone()], "");
    let w = Running::start(Watcher::new(cfg).expect("watcher builds"));

    // Both agents' containers, each under its own node.
    w.wait(SLOW, "both agents' containers", |inv| {
        holds(
            inv,
            &[
                ("agt-a1", "node-a"),
                ("agt-b1", "node-b"),
                ("agt-b2", "node-b"),
            ],
        )
    })
    .await;
    let inv = w.shared.load();
    assert_eq!(inv.node("node-a").map(|n| n.agent.as_str()), Some(&*addr1));
    assert_eq!(inv.node("node-b").map(|n| n.agent.as_str()), Some(&*addr2));
    assert_eq!(inv.owned_by("acme").count(), 3, "tenant label carried");
    assert!(w.status.all_connected(), "{:?}", w.status.agents());
    assert_eq!(w.shared.status().last_error, None);

    // A container started on agent 1 appears within 2 s; one removed disappears.
    let a2 = runc1.run(spec("agt-a2"));
    w.wait(
        PROPAGATION,
        "a new container on agent 1 appears within 2 s",
        |inv| runtime_ids(inv).contains(&("agt-a2".into(), "node-a".into())),
    )
    .await;
    a1.remove();
    w.wait(
        PROPAGATION,
        "a removed container disappears within 2 s",
        |inv| {
            holds(
                inv,
                &[
                    ("agt-a2", "node-a"),
                    ("agt-b1", "node-b"),
                    ("agt-b2", "node-b"),
                ],
            )
        },
    )
    .await;

    // Agent 2 dies: its instances are kept, the failure is reported.
    agent2.shutdown().await;
    let deadline = Instant::now() + SLOW;
    let down = loop {
        let s = w.status.agent(&addr2).expect("agent 2 is watched");
        if !s.connected && s.last_error.is_some() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "agent 2's shutdown not noticed within {SLOW:?}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(down.node.as_deref(), Some("node-b"));
    assert_eq!(down.instances, 2, "agent 2's instances kept: {down:?}");
    assert!(
        holds(
            &w.shared.load(),
            &[
                ("agt-a2", "node-a"),
                ("agt-b1", "node-b"),
                ("agt-b2", "node-b")
            ],
        ),
        "a dead agent's instances must be kept: {:?}",
        runtime_ids(&w.shared.load())
    );
    // The source error is re-recorded right after each publish (a publish clears it), so
    // it may lag the agent's own status by a moment.
    let deadline = Instant::now() + SLOW;
    loop {
        let source_error = w.shared.status().last_error.unwrap_or_default();
        if source_error.contains(&format!("agent {addr2}")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "source error names agent 2: {source_error:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        w.shared.ready(),
        "a failing agent does not make the source unready"
    );

    // While it is down its node changes: one container gone, one new.
    b1.remove();
    let _b3 = runc2.run(spec("agt-b3"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        runtime_ids(&w.shared.load()).contains(&("agt-b1".into(), "node-b".into())),
        "nothing changes while agent 2 is unreachable"
    );

    // A new agent 2 on the same port: its snapshot replaces the slice.
    let agent2 = start_agent(
        &pki,
        "node-b",
        runc2.state_root(),
        &format!("127.0.0.1:{port2}"),
    )
    .await;
    w.wait(SLOW, "agent 2's new set replaces the old one", |inv| {
        holds(
            inv,
            &[
                ("agt-a2", "node-a"),
                ("agt-b2", "node-b"),
                ("agt-b3", "node-b"),
            ],
        )
    })
    .await;
    let up = w.status.agent(&addr2).expect("agent 2 is watched");
    assert!(up.connected, "{up:?}");
    assert_eq!(w.shared.status().last_error, None, "recovered");

    // Changes flow on the new stream too.
    a2.remove();
    w.wait(PROPAGATION, "changes flow after the reconnect", |inv| {
        holds(inv, &[("agt-b2", "node-b"), ("agt-b3", "node-b")])
    })
    .await;

    w.stop().await;
    agent1.shutdown().await;
    agent2.shutdown().await;
}

/// DNS decides which agents are watched, through hickory against a real DNS server
/// (Debian's dnsmasq on 127.0.0.1): two real agents on one port at 127.0.0.2 and
/// 127.0.0.3, listed by the A records of `agents.lookout.test` in dnsmasq's hosts file,
/// which the test edits (SIGHUP) to add and drop them, and kills for an outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dns_membership_adds_and_drops_agents() {
    let pki = Pki::new("lookout-agents-pki-");
    let runc1 = Runc::new();
    let runc2 = Runc::new();
    let _c1 = runc1.run(spec("dns-a1"));
    let _c2 = runc2.run(spec("dns-b1"));
    let port = free_port();
    let agent1 = start_agent(
        &pki,
        "dns-node-a",
        runc1.state_root(),
        &format!("127.0.0.2:{port}"),
    )
    .await;
    let agent2 = start_agent(
        &pki,
        "dns-node-b",
        runc2.state_root(),
        &format!("127.0.0.3:{port}"),
    )
    .await;
    let (addr1, addr2) = (format!("127.0.0.2:{port}"), format!("127.0.0.3:{port}"));

    let mut dns = Dnsmasq::start("127.0.0.2 agents.lookout.test\n", &["--local-ttl=1"]);
    // The agents' certificate names localhost and 127.0.0.1, not the addresses DNS gives.
    let text = format!(
        r#"agents = []
connect_timeout = "2s"
backoff = {{ min = "100ms", max = "500ms" }}
[dns]
name = "agents.lookout.test"
kind = "a"
port = {port}
refresh = "100ms"
server = "{server}"
[tls]
cert = "{cert}"
key = "{key}"
ca = "{ca}"
server_name = "localhost"
"#,
        server = dns.addr(),
        cert = pki.path("proxy.pem").display(),
        key = pki.path("proxy-key.pem").display(),
        ca = pki.path("operator-ca.pem").display(),
    );
    let cfg = AgentsConfig::parse(&text).expect("watcher config parses");
    let w = Running::start(Watcher::new(cfg).expect("watcher builds"));
    w.wait(SLOW, "the agent DNS lists", |inv| {
        holds(inv, &[("dns-a1", "dns-node-a")])
    })
    .await;

    dns.set_hosts("127.0.0.2 agents.lookout.test\n127.0.0.3 agents.lookout.test\n");
    w.wait(SLOW, "an agent added to DNS is watched", |inv| {
        holds(inv, &[("dns-a1", "dns-node-a"), ("dns-b1", "dns-node-b")])
    })
    .await;

    // An agent dropped from DNS goes away with its instances and node.
    dns.set_hosts("127.0.0.3 agents.lookout.test\n");
    w.wait(SLOW, "an agent removed from DNS is dropped", |inv| {
        holds(inv, &[("dns-b1", "dns-node-b")]) && inv.node("dns-node-a").is_none()
    })
    .await;
    assert!(w.status.agent(&addr1).is_none());
    assert!(w.status.agent(&addr2).is_some());
    assert_eq!(w.status.dns_error(), None);

    // DNS down: the failure is reported (a lookup is given up after DNS_TIMEOUT) and the
    // agents are kept.
    dns.stop();
    let deadline = Instant::now() + DNS_TIMEOUT + SLOW;
    while w.status.dns_error().is_none() {
        assert!(Instant::now() < deadline, "DNS failure not reported");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        w.shared.load().instance_count(),
        1,
        "a DNS outage keeps the agents"
    );
    assert!(w.status.agent(&addr2).is_some());

    w.stop().await;
    agent1.shutdown().await;
    agent2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_foreign_client_certificate_is_refused() {
    let pki = Pki::new("lookout-agents-pki-");
    let runc = Runc::new();
    let _c = runc.run(spec("foreign-c1"));
    let agent = start_agent(&pki, "node-f", runc.state_root(), "127.0.0.1:0").await;
    let addr = AgentAddr::from(agent.local_addr()).to_string();

    let cfg = watcher_config(&pki, "foreign", std::slice::from_ref(&addr), "");
    let w = Running::start(Watcher::new(cfg).expect("watcher builds"));
    let deadline = Instant::now() + SLOW;
    let status = loop {
        let s = w.status.agent(&addr).expect("agent is watched");
        if s.last_error.is_some() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "no refusal within {SLOW:?}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert!(!status.connected, "{status:?}");
    // Let it retry a few times: it must never get in.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        w.shared.load().instance_count() == 0,
        "refused, nothing learned"
    );
    assert!(!w.shared.ready(), "nothing published");
    let err = w.shared.status().last_error.unwrap_or_default();
    assert!(
        err.contains(&format!("agent {addr}")),
        "source error: {err:?}"
    );

    w.stop().await;
    agent.shutdown().await;
}
