//! The etcd [`Mirror`] of one key range against a real etcd (Debian's `etcd-server`, started
//! by the test): it follows puts and deletes inside its range only, publishes only changes,
//! and recovers from a compacted watch by reading again.
//!
//! Needs `/usr/bin/etcd` (the helper panics naming the package when it is missing).

#[path = "support/etcd.rs"]
mod etcd_server;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use lookout_discovery::etcd::{EtcdConfig, Keys, Mirror, Snapshot};
use tokio::sync::watch;

use etcd_server::Etcd;

const WAIT: Duration = Duration::from_secs(10);

fn config(etcd: &Etcd) -> EtcdConfig {
    let mut cfg = EtcdConfig::new(vec![etcd.endpoint()]);
    cfg.backoff.min = Duration::from_millis(50);
    cfg.backoff.max = Duration::from_millis(200);
    cfg
}

fn tenants_mirror(etcd: &Etcd) -> Mirror {
    let (start, end) = Keys::new("/lookout/").tenants_range();
    Mirror::new(config(etcd), start, end).expect("mirror")
}

/// Waits for a snapshot holding exactly `want` (key → value).
async fn until(rx: &mut watch::Receiver<Option<Arc<Snapshot>>>, want: &[(&str, &str)]) {
    let want: BTreeMap<Vec<u8>, Vec<u8>> = want
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
    let seen = tokio::time::timeout(
        WAIT,
        rx.wait_for(|s| s.as_ref().is_some_and(|s| s.kvs == want)),
    )
    .await
    .is_ok();
    assert!(seen, "never saw {want:?}; last {:?}", *rx.borrow());
}

#[tokio::test]
async fn follows_its_range_only_and_publishes_changes_only() {
    let etcd = Etcd::start();
    let mut c = Client::connect([etcd.endpoint()], None)
        .await
        .expect("client");
    c.put("/lookout/tenants/a", "1", None).await.expect("put");
    c.put("/lookout/nodes/n1", "outside", None)
        .await
        .expect("put");
    let mirror = tenants_mirror(&etcd);
    let mut rx = mirror.snapshots();
    let status = mirror.status();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(mirror.run(stopped));
    until(&mut rx, &[("/lookout/tenants/a", "1")]).await;

    c.put("/lookout/tenants-config/defaults", "d", None)
        .await
        .expect("put");
    c.put("/lookout/tenants/b", "2", None).await.expect("put");
    c.put("/lookout/proxies/p", "outside", None)
        .await
        .expect("put");
    c.delete("/lookout/tenants/a", None).await.expect("delete");
    until(
        &mut rx,
        &[
            ("/lookout/tenants-config/defaults", "d"),
            ("/lookout/tenants/b", "2"),
        ],
    )
    .await;
    // An in-range write that changes nothing (a key put again with its value): the mirror
    // sees it — its revision reaches the put's — and publishes nothing.
    rx.borrow_and_update();
    let put = c.put("/lookout/tenants/b", "2", None).await.expect("put");
    let rev = put.header().expect("header").revision();
    let mut st = status.clone();
    tokio::time::timeout(WAIT, st.wait_for(|s| s.connected && s.revision >= rev))
        .await
        .expect("the mirror saw the put")
        .expect("status");
    assert!(
        !rx.has_changed().expect("open"),
        "published a snapshot whose content did not change"
    );
    // A write outside the range is never seen at all: the snapshot stays, and the next
    // in-range change is the next publish.
    c.put("/lookout/nodes/n2", "x", None).await.expect("put");
    c.put("/lookout/tenants/c", "3", None).await.expect("put");
    until(
        &mut rx,
        &[
            ("/lookout/tenants-config/defaults", "d"),
            ("/lookout/tenants/b", "2"),
            ("/lookout/tenants/c", "3"),
        ],
    )
    .await;
    let _ = stop.send(true);
    task.await.expect("mirror stops");
}

#[tokio::test]
async fn a_compacted_watch_start_is_recovered_by_reading_again() {
    let etcd = Etcd::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let (endpoint, hook_calls) = (etcd.endpoint(), Arc::clone(&calls));
    // Between the first read and its watch: writes, then a compaction past the first, so the
    // watch from the read's revision + 1 is refused as compacted.
    let mirror = tenants_mirror(&etcd).after_full_read(move |_| {
        let (endpoint, calls) = (endpoint.clone(), Arc::clone(&hook_calls));
        async move {
            if calls.fetch_add(1, Ordering::SeqCst) > 0 {
                return;
            }
            let mut c = Client::connect([endpoint], None).await.expect("client");
            c.put("/lookout/tenants/late", "0", None)
                .await
                .expect("put");
            // Compacting at the second write's revision removes the first, where the watch
            // would start.
            let put = c
                .put("/lookout/tenants/late", "1", None)
                .await
                .expect("put");
            let rev = put.header().expect("header").revision();
            c.compact(rev, None).await.expect("compact");
        }
    });
    let mut rx = mirror.snapshots();
    let status = mirror.status();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(mirror.run(stopped));
    until(&mut rx, &[("/lookout/tenants/late", "1")]).await;
    assert!(status.borrow().full_reads >= 2, "{:?}", *status.borrow());
    // And the new watch works.
    let mut c = Client::connect([etcd.endpoint()], None)
        .await
        .expect("client");
    c.delete("/lookout/tenants/late", None)
        .await
        .expect("delete");
    until(&mut rx, &[]).await;
    let _ = stop.send(true);
    task.await.expect("mirror stops");
}
