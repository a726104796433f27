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
    // Writes outside the range move the revision, never the snapshot.
    rx.borrow_and_update();
    let put = c.put("/lookout/nodes/n2", "x", None).await.expect("put");
    let rev = put.header().expect("header").revision();
    let mut st = status.clone();
    tokio::time::timeout(WAIT, st.wait_for(|s| s.connected))
        .await
        .expect("connected")
        .expect("status");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !rx.has_changed().expect("open"),
        "published without a change"
    );
    assert!(status.borrow().revision <= rev);
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
