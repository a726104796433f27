//! The `etcd` source and registrars against a real etcd (Debian's `etcd-server`, started on
//! loopback by each test): incremental registration, lease expiry, restarts without
//! duplicates, recovery from a compacted watch, an etcd outage, and the proxy count.
//!
//! Needs `/usr/bin/etcd` (the helper panics naming the package when it is missing).

#[path = "support/etcd.rs"]
mod etcd_server;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, GetOptions};
use lookout_discovery::etcd::{
    agent_keys, proxy_keys, Desired, EtcdConfig, EtcdSource, EtcdStatus, Keys, ProxyRecord,
    Registrar, RegistrarStatus,
};
use lookout_discovery::{Instance, Node, Shared};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use etcd_server::{Etcd, ServerTls};

/// Bound for anything that should happen promptly (a write, a watch event).
const SOON: Duration = Duration::from_secs(10);
/// Test lease TTL (etcd's practical minimum).
const TTL: Duration = Duration::from_secs(2);

fn config(etcd: &Etcd) -> EtcdConfig {
    let mut c = EtcdConfig::new(vec![etcd.endpoint()]);
    c.lease_ttl = TTL;
    c.connect_timeout = Duration::from_secs(2);
    c.request_timeout = Duration::from_secs(2);
    c.backoff.min = Duration::from_millis(100);
    c.backoff.max = Duration::from_millis(500);
    c
}

fn inst(node: &str, id: &str) -> Instance {
    Instance {
        id: id.into(),
        runtime_id: format!("runtime-{id}"),
        generation: String::new(),
        node: node.into(),
        tenant: Some("acme".into()),
        alias: id.into(),
        groups: vec![],
        image: None,
        source: "runc".into(),
        labels: BTreeMap::new(),
    }
}

fn node(id: &str) -> Node {
    Node {
        id: id.into(),
        agent: format!("{id}.example:9164"),
        hostname: id.into(),
    }
}

fn agent_desired(node_id: &str, ids: &[&str]) -> Desired {
    let keys = Keys::new("/lookout/");
    let instances: Vec<Instance> = ids.iter().map(|i| inst(node_id, i)).collect();
    Arc::new(agent_keys(&keys, &node(node_id), &instances))
}

/// A running registrar and its handles.
struct Running {
    desired: watch::Sender<Desired>,
    status: watch::Receiver<RegistrarStatus>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Running {
    fn agent(cfg: EtcdConfig, node_id: &str, ids: &[&str]) -> Running {
        let r = Registrar::for_agent(cfg, node_id).expect("registrar");
        Running::start(r, agent_desired(node_id, ids))
    }

    fn proxy(cfg: EtcdConfig, id: &str) -> Running {
        let r = Registrar::for_proxy(cfg, id).expect("registrar");
        let keys = Keys::new("/lookout/");
        let d = Arc::new(proxy_keys(&keys, &ProxyRecord::starting_now(id, None)));
        Running::start(r, d)
    }

    fn start(r: Registrar, desired: Desired) -> Running {
        let status = r.status();
        let (desired, rx) = watch::channel(desired);
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(r.run(rx, stop_rx));
        Running {
            desired,
            status,
            stop,
            task,
        }
    }

    async fn registered(&self) -> RegistrarStatus {
        let want = self.desired.borrow().len();
        wait_for("registration", SOON, || {
            let s = self.status.borrow();
            s.registered && s.keys == want
        })
        .await;
        self.status.borrow().clone()
    }

    /// Stops cleanly: the lease is revoked.
    async fn shutdown(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(SOON, self.task)
            .await
            .expect("registrar stops")
            .expect("no panic");
    }

    /// Dies: no revoke, no more keep-alives. The task is gone before the shutdown sender is
    /// dropped, since a dropped sender means "stop cleanly" (revoke) to the registrar.
    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
        drop(self.stop);
    }
}

/// Polls `cond` every 20 ms until it holds, failing the test after `limit`.
async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every key under the prefix: key → (value, lease, mod_revision).
async fn dump(etcd: &Etcd) -> BTreeMap<String, (Vec<u8>, i64, i64)> {
    let mut c = Client::connect([etcd.endpoint()], None)
        .await
        .expect("client");
    let r = c
        .get("/lookout/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get");
    r.kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                (kv.value().to_vec(), kv.lease(), kv.mod_revision()),
            )
        })
        .collect()
}

fn names(d: &BTreeMap<String, (Vec<u8>, i64, i64)>) -> Vec<&str> {
    d.keys().map(String::as_str).collect()
}

/// A running source.
struct Source {
    shared: Arc<Shared>,
    status: watch::Receiver<EtcdStatus>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Source {
    fn start(source: EtcdSource) -> Source {
        let shared = Shared::new();
        let status = source.status();
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(source.run(Arc::clone(&shared), rx));
        Source {
            shared,
            status,
            stop,
            task,
        }
    }

    fn instances(&self) -> BTreeSet<String> {
        self.shared
            .load()
            .instances()
            .map(|i| i.id.clone())
            .collect()
    }

    fn nodes(&self) -> BTreeSet<String> {
        self.shared.load().nodes().map(|n| n.id.clone()).collect()
    }

    async fn until_instances(&self, want: &[&str]) {
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        let deadline = Instant::now() + SOON;
        while self.instances() != want {
            assert!(
                Instant::now() < deadline,
                "inventory {:?}, wanted {want:?} (status {:?})",
                self.instances(),
                *self.status.borrow()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn shutdown(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(SOON, self.task)
            .await
            .expect("source stops")
            .expect("no panic");
    }
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn registrar_writes_incrementally_and_revokes_on_shutdown() {
    let etcd = Etcd::start();
    let agent = Running::agent(config(&etcd), "n1", &["a", "b"]);
    let st = agent.registered().await;
    let lease = st.lease.expect("a lease");
    let before = dump(&etcd).await;
    assert_eq!(
        names(&before),
        [
            "/lookout/instances/n1/a",
            "/lookout/instances/n1/b",
            "/lookout/nodes/n1"
        ]
    );
    assert!(before.values().all(|(_, l, _)| *l == lease), "{before:?}");
    let value: Instance =
        serde_json::from_slice(&before["/lookout/instances/n1/a"].0).expect("instance JSON");
    assert_eq!(value, inst("n1", "a"));
    let n: Node = serde_json::from_slice(&before["/lookout/nodes/n1"].0).expect("node JSON");
    assert_eq!(n, node("n1"));

    // b goes, c comes; a and the node key must not be rewritten.
    agent.desired.send_replace(agent_desired("n1", &["a", "c"]));
    let deadline = Instant::now() + SOON;
    let after = loop {
        let d = dump(&etcd).await;
        if d.contains_key("/lookout/instances/n1/c") && !d.contains_key("/lookout/instances/n1/b") {
            break d;
        }
        assert!(Instant::now() < deadline, "change not written: {d:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for untouched in ["/lookout/instances/n1/a", "/lookout/nodes/n1"] {
        assert_eq!(
            after[untouched].2, before[untouched].2,
            "{untouched} was rewritten"
        );
    }
    assert_eq!(after["/lookout/instances/n1/c"].1, lease);
    assert_eq!(agent.status.borrow().leases_granted, 1);

    // A clean shutdown revokes the lease: everything vanishes at once.
    agent.shutdown().await;
    assert!(dump(&etcd).await.is_empty(), "{:?}", dump(&etcd).await);
}

#[tokio::test]
async fn a_restarted_registrar_leaves_no_duplicates_or_stale_keys() {
    let etcd = Etcd::start();
    let first = Running::agent(config(&etcd), "n1", &["a", "b", "c"]);
    let old_lease = first.registered().await.lease.expect("lease");
    first.kill().await; // the keys stay, under the old lease, until it expires

    // Another node's keys must not be touched by n1's reconcile.
    let other = Running::agent(config(&etcd), "n2", &["z"]);
    other.registered().await;

    let second = Running::agent(config(&etcd), "n1", &["b", "d"]);
    let new_lease = second.registered().await.lease.expect("lease");
    assert_ne!(new_lease, old_lease);
    let d = dump(&etcd).await;
    assert_eq!(
        names(&d),
        [
            "/lookout/instances/n1/b",
            "/lookout/instances/n1/d",
            "/lookout/instances/n2/z",
            "/lookout/nodes/n1",
            "/lookout/nodes/n2"
        ]
    );
    for (k, (_, lease, _)) in &d {
        if k.contains("n1") {
            assert_eq!(*lease, new_lease, "{k} is not under the new lease");
        }
    }
    // The old lease expiring takes nothing with it.
    tokio::time::sleep(TTL * 2).await;
    assert_eq!(dump(&etcd).await.len(), 5);
    second.shutdown().await;
    other.shutdown().await;
}

#[tokio::test]
async fn an_expired_lease_takes_a_dead_nodes_instances_out_of_the_inventory() {
    let etcd = Etcd::start();
    let n1 = Running::agent(config(&etcd), "n1", &["a1", "a2"]);
    let n2 = Running::agent(config(&etcd), "n2", &["b1"]);
    n1.registered().await;
    n2.registered().await;
    let src = Source::start(EtcdSource::new(config(&etcd)).expect("source"));
    src.until_instances(&["a1", "a2", "b1"]).await;
    assert_eq!(src.nodes(), set(&["n1", "n2"]));
    let inv = src.shared.load();
    assert_eq!(
        inv.node("n1").map(|n| n.agent.as_str()),
        Some("n1.example:9164")
    );
    assert_eq!(inv.instance("a1").map(|i| &**i), Some(&inst("n1", "a1")));

    // n1 dies: within the TTL (plus etcd's expiry tick and a margin) it is gone everywhere.
    let died = Instant::now();
    n1.kill().await;
    src.until_instances(&["b1"]).await;
    assert_eq!(src.nodes(), set(&["n2"]));
    assert!(
        died.elapsed() >= TTL / 2,
        "gone after {:?}, before its lease could expire",
        died.elapsed()
    );
    assert!(src.status.borrow().connected);
    assert_eq!(
        src.status.borrow().full_reads,
        1,
        "followed by the watch alone"
    );

    // n1 comes back.
    let n1 = Running::agent(config(&etcd), "n1", &["a1"]);
    src.until_instances(&["a1", "b1"]).await;
    n1.shutdown().await;
    src.until_instances(&["b1"]).await;
    n2.shutdown().await;
    src.shutdown().await;
}

#[tokio::test]
async fn a_compacted_watch_start_recovers_by_a_full_read() {
    let etcd = Etcd::start();
    let n1 = Running::agent(config(&etcd), "n1", &["a"]);
    n1.registered().await;

    // Between the first full read and its watch, write and compact past the read's
    // revision: the watch from revision + 1 is answered "compacted".
    let calls = Arc::new(AtomicUsize::new(0));
    let endpoint = etcd.endpoint();
    let hook_calls = Arc::clone(&calls);
    let source = EtcdSource::new(config(&etcd))
        .expect("source")
        .after_full_read(move |_revision| {
            let endpoint = endpoint.clone();
            let calls = Arc::clone(&hook_calls);
            async move {
                if calls.fetch_add(1, Ordering::SeqCst) > 0 {
                    return;
                }
                let mut c = Client::connect([endpoint], None).await.expect("client");
                let keys = Keys::new("/lookout/");
                let n = serde_json::to_vec(&node("n9")).expect("json");
                c.put(keys.node("n9"), n, None).await.expect("put");
                let i = serde_json::to_vec(&inst("n9", "late")).expect("json");
                let put = c
                    .put(keys.instance("n9", "late"), i, None)
                    .await
                    .expect("put");
                let rev = put.header().expect("header").revision();
                c.compact(rev, None).await.expect("compact");
            }
        });
    let src = Source::start(source);
    src.until_instances(&["a", "late"]).await;
    assert!(
        src.status.borrow().full_reads >= 2,
        "{:?}",
        *src.status.borrow()
    );
    assert!(calls.load(Ordering::SeqCst) >= 2);
    // And the new watch works.
    n1.desired.send_replace(agent_desired("n1", &["a", "b"]));
    src.until_instances(&["a", "b", "late"]).await;
    n1.shutdown().await;
    src.shutdown().await;
}

#[tokio::test]
async fn etcd_down_keeps_the_last_inventory_and_its_return_brings_the_changes() {
    let mut etcd = Etcd::start();
    let n1 = Running::agent(config(&etcd), "n1", &["a", "b"]);
    n1.registered().await;
    let src = Source::start(EtcdSource::new(config(&etcd)).expect("source"));
    src.until_instances(&["a", "b"]).await;
    assert_eq!(src.shared.status().last_error, None);

    etcd.stop();
    wait_for("the outage reported", SOON, || {
        src.shared.status().last_error.is_some() && !src.status.borrow().connected
    })
    .await;
    // Well past the lease TTL: nothing expires on the proxy's side without etcd.
    tokio::time::sleep(TTL * 2).await;
    assert_eq!(src.instances(), set(&["a", "b"]), "last inventory kept");
    assert!(src.shared.ready());
    let err = src.shared.status().last_error.expect("error");
    assert!(err.starts_with("etcd: "), "{err}");

    // The node changes while etcd is down; the change arrives once it is back.
    n1.desired.send_replace(agent_desired("n1", &["a", "c"]));
    etcd.restart();
    src.until_instances(&["a", "c"]).await;
    wait_for("recovery reported", SOON, || {
        src.shared.status().last_error.is_none() && src.status.borrow().connected
    })
    .await;
    wait_for("registrar recovered", SOON, || {
        n1.status.borrow().registered && n1.status.borrow().last_error.is_none()
    })
    .await;
    n1.shutdown().await;
    src.until_instances(&[]).await;
    src.shutdown().await;
}

#[tokio::test]
async fn the_proxy_count_follows_registered_proxies() {
    let etcd = Etcd::start();
    let src = Source::start(EtcdSource::new(config(&etcd)).expect("source"));
    // p1 stops cleanly: with a 60 s lease, only its revocation can make it leave within
    // SOON. p2 is killed: its short lease expires.
    let mut long_lease = config(&etcd);
    long_lease.lease_ttl = Duration::from_secs(60);
    let p1 = Running::proxy(long_lease, "p1");
    let p2 = Running::proxy(config(&etcd), "p2");
    let p3 = Running::proxy(config(&etcd), "p3");
    let proxies = |n: usize| {
        let status = src.status.clone();
        async move {
            wait_for(&format!("{n} proxies"), SOON, || {
                status.borrow().proxies == n
            })
            .await
        }
    };
    proxies(3).await;
    let d = dump(&etcd).await;
    let rec: ProxyRecord = serde_json::from_slice(&d["/lookout/proxies/p2"].0).expect("json");
    assert_eq!(rec.id, "p2");
    assert!(rec.started > 0);
    p1.shutdown().await; // revoked: at once
    proxies(2).await;
    p2.kill().await; // expires after the TTL
    proxies(1).await;
    p3.shutdown().await;
    proxies(0).await;
    assert!(src.shared.ready(), "an empty fleet is a valid inventory");
    src.shutdown().await;
}

#[tokio::test]
async fn bad_values_orphans_and_excess_instances_are_skipped_not_fatal() {
    let etcd = Etcd::start();
    let mut c = Client::connect([etcd.endpoint()], None)
        .await
        .expect("client");
    let keys = Keys::new("/lookout/");
    let json = |v: &dyn erased::Json| v.to_json();
    c.put(keys.node("n1"), json(&node("n1")), None)
        .await
        .expect("put");
    for id in ["a", "b"] {
        c.put(keys.instance("n1", id), json(&inst("n1", id)), None)
            .await
            .expect("put");
    }
    // Garbage, a value contradicting its key, an oversized value, an orphan, a tenant key.
    c.put(keys.instance("n1", "garbage"), "{nope", None)
        .await
        .expect("put");
    c.put(
        keys.instance("n1", "liar"),
        json(&inst("n1", "other")),
        None,
    )
    .await
    .expect("put");
    let mut big = inst("n1", "big");
    big.labels.insert("x".into(), "y".repeat(4096));
    c.put(keys.instance("n1", "big"), json(&big), None)
        .await
        .expect("put");
    c.put(
        keys.instance("n7", "orphan"),
        json(&inst("n7", "orphan")),
        None,
    )
    .await
    .expect("put");
    c.put("/lookout/tenants/acme", "{}", None)
        .await
        .expect("put");

    let mut cfg = config(&etcd);
    cfg.max_value_bytes = 2048;
    cfg.max_instances = 3; // a, b, orphan fit; the next is refused
    let src = Source::start(EtcdSource::new(cfg).expect("source"));
    src.until_instances(&["a", "b"]).await;
    let st = src.status.borrow().clone();
    assert_eq!(st.skipped, 3, "{st:?}");
    assert_eq!(st.orphans, 1, "{st:?}");
    assert_eq!(st.instances, 2, "{st:?}");

    // Over max_instances: skipped and counted, the rest keeps flowing.
    c.put(keys.instance("n1", "c"), json(&inst("n1", "c")), None)
        .await
        .expect("put");
    wait_for("excess counted", SOON, || src.status.borrow().skipped == 4).await;
    assert_eq!(src.instances(), set(&["a", "b"]));
    // A good value overwritten with garbage stops being served.
    c.put(keys.instance("n1", "a"), "[]", None)
        .await
        .expect("put");
    src.until_instances(&["b"]).await;
    // The orphan's node appears: it is served.
    c.put(keys.node("n7"), json(&node("n7")), None)
        .await
        .expect("put");
    src.until_instances(&["b", "orphan"]).await;
    assert_eq!(src.shared.status().last_error, None);
    src.shutdown().await;
}

/// etcd with TLS and client certificates required: the registrar and the source connect with
/// rustls (a CA, a client certificate); without a client certificate etcd refuses the source,
/// which reports it and publishes nothing.
#[tokio::test]
async fn tls_with_client_certificates() {
    use lookout_discovery::etcd::EtcdTlsConfig;
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = p.self_signed(&ca_key).expect("ca");
    let leaf = |usage: ExtendedKeyUsagePurpose, name: &str| {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        p.subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        p.extended_key_usages = vec![usage];
        let cert = p.signed_by(&key, &ca, &ca_key).expect("sign");
        let (c, k) = (
            dir.path().join(format!("{name}.pem")),
            dir.path().join(format!("{name}-key.pem")),
        );
        std::fs::write(&c, cert.pem()).expect("write");
        std::fs::write(&k, key.serialize_pem()).expect("write");
        (c, k)
    };
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).expect("write");
    let (server_cert, server_key) = leaf(ExtendedKeyUsagePurpose::ServerAuth, "server");
    let (client_cert, client_key) = leaf(ExtendedKeyUsagePurpose::ClientAuth, "client");
    let etcd = Etcd::start_tls(ServerTls {
        cert: server_cert,
        key: server_key,
        client_ca: ca_path.clone(),
    });
    assert!(etcd.endpoint().starts_with("https://"));
    let mut cfg = config(&etcd);
    cfg.tls = Some(EtcdTlsConfig {
        ca: ca_path.clone(),
        cert: Some(client_cert),
        key: Some(client_key),
        server_name: None,
    });
    assert!(cfg.problems().is_empty(), "{:?}", cfg.problems());

    let n1 = Running::agent(cfg.clone(), "n1", &["a"]);
    n1.registered().await;
    let src = Source::start(EtcdSource::new(cfg.clone()).expect("source"));
    src.until_instances(&["a"]).await;

    let mut anonymous = cfg;
    anonymous.tls = Some(EtcdTlsConfig {
        ca: ca_path,
        cert: None,
        key: None,
        server_name: None,
    });
    let refused = Source::start(EtcdSource::new(anonymous).expect("source"));
    wait_for("the refusal reported", SOON, || {
        refused.shared.status().last_error.is_some()
    })
    .await;
    assert!(!refused.shared.ready());
    refused.shutdown().await;
    n1.shutdown().await;
    src.until_instances(&[]).await;
    src.shutdown().await;
}

/// `serde_json::to_vec` behind a trait object, so one closure serves nodes and instances.
mod erased {
    pub trait Json {
        fn to_json(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> Vec<u8> {
            serde_json::to_vec(self).expect("json")
        }
    }
}
