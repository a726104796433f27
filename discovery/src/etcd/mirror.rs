//! A level-triggered copy of one etcd key range: a full read at one revision, then a watch
//! from the next; any break (compaction, cancellation, a lost stream or connection) starts
//! over with a fresh full read that *replaces* the copy, so it never drifts from etcd.
//!
//! The inventory source ([`super::source`]) does the same for the whole prefix with typed
//! records; this one keeps raw bytes and leaves decoding to its consumer, for ranges whose
//! meaning lives elsewhere (the proxy's tenants: `lookout_proxy::tenants::etcd`).
//!
//! - Each consistent view is published as a [`Snapshot`] — only when the keys or values
//!   changed, so a recovery that finds nothing new publishes nothing.
//! - While etcd is unreachable the last snapshot stays published; the failure is in
//!   [`MirrorStatus::last_error`] and attempts repeat with backoff.
//! - Bounds: full reads are paginated at one revision ([`super::range::read_range`]); every
//!   unary call runs under `request_timeout`; messages up to [`MAX_MESSAGE_BYTES`]. Values
//!   are not size-checked here: the consumer decides what a too-large value means.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use etcd_client::{Client, EventType, WatchOptions};
use tokio::sync::watch;

use super::client::{bounded, connect, EtcdError, MAX_MESSAGE_BYTES};
use super::config::EtcdConfig;
use super::follow::{next_batch, End};
use super::range::read_range;
use crate::agents::Backoff;

/// One consistent view of the range.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The etcd revision it reflects.
    pub revision: i64,
    /// Every key in the range with its value.
    pub kvs: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// How the mirror is doing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MirrorStatus {
    /// True while a watch is established on top of a successful full read.
    pub connected: bool,
    /// The revision last seen (0: nothing read yet).
    pub revision: i64,
    /// Full reads done since start (the first, then one per recovery).
    pub full_reads: u64,
    /// The current failure, while etcd is unreachable or the watch broke and has not
    /// recovered.
    pub last_error: Option<String>,
}

/// Called with the revision of each full read before the watch starts (tests).
type AfterRead = Arc<dyn Fn(i64) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Mirrors `[start, end)`. Build with [`Mirror::new`], keep [`Mirror::status`] and a
/// receiver of the snapshots, then [`Mirror::run`] it.
pub struct Mirror {
    config: EtcdConfig,
    start: Vec<u8>,
    end: Vec<u8>,
    status: watch::Sender<MirrorStatus>,
    snapshots: watch::Sender<Option<Arc<Snapshot>>>,
    after_read: Option<AfterRead>,
}

impl Mirror {
    /// A mirror of the keys in `[start, end)` (see [`super::keys::prefix_end`]), connecting
    /// as `config` says. Checks the configuration ([`EtcdConfig::problems`]).
    pub fn new(config: EtcdConfig, start: Vec<u8>, end: Vec<u8>) -> Result<Mirror, String> {
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(Mirror {
            config,
            start,
            end,
            status: watch::Sender::new(MirrorStatus::default()),
            snapshots: watch::Sender::new(None),
            after_read: None,
        })
    }

    /// The mirror's status, live while it runs.
    pub fn status(&self) -> watch::Receiver<MirrorStatus> {
        self.status.subscribe()
    }

    /// The snapshots: `None` until the first full read, then each changed view.
    pub fn snapshots(&self) -> watch::Receiver<Option<Arc<Snapshot>>> {
        self.snapshots.subscribe()
    }

    /// Test seam: `hook(revision)` runs after each full read and before the watch from
    /// `revision + 1` is created (see [`super::EtcdSource::after_full_read`]).
    #[doc(hidden)]
    pub fn after_full_read<F, Fut>(mut self, hook: F) -> Mirror
    where
        F: Fn(i64) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.after_read = Some(Arc::new(move |rev| Box::pin(hook(rev))));
        self
    }

    /// Follows etcd until `shutdown` turns true (or its sender is dropped). The last
    /// snapshot stays published.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(self.config.backoff);
        let mut client: Option<Client> = None;
        loop {
            if *shutdown.borrow_and_update() {
                break;
            }
            let end = tokio::select! {
                end = self.follow(&mut client, &mut backoff) => end,
                r = shutdown.changed() => {
                    if r.is_err() || *shutdown.borrow_and_update() {
                        break;
                    }
                    continue;
                }
            };
            let delay = match end {
                End::Compacted(rev) => {
                    tracing::info!(
                        compacted = rev,
                        "etcd mirror: watch start compacted; reading again"
                    );
                    self.status.send_modify(|s| s.connected = false);
                    self.config.backoff.min
                }
                End::Failed(e) => {
                    tracing::warn!(error = %e, "etcd mirror: failed; keeping the last snapshot");
                    self.status.send_modify(|s| {
                        s.connected = false;
                        s.last_error = Some(format!("etcd: {e}"));
                    });
                    backoff.next_delay()
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                r = shutdown.changed() => {
                    if r.is_err() {
                        break;
                    }
                }
            }
        }
    }

    /// One full read and the watch after it, until something breaks.
    async fn follow(&self, client: &mut Option<Client>, backoff: &mut Backoff) -> End {
        let c = match client {
            Some(c) => c.clone(),
            None => match connect(&self.config).await {
                Ok(c) => client.insert(c).clone(),
                Err(e) => return e.into(),
            },
        };
        let mut view = match self.full_read(&c).await {
            Ok(v) => v,
            Err(e) => return e.into(),
        };
        if let Some(hook) = &self.after_read {
            hook(view.revision).await;
        }
        self.publish(&view);
        self.status.send_modify(|s| {
            s.full_reads += 1;
            s.revision = view.revision;
        });
        let opts = WatchOptions::new()
            .with_range(self.end.clone())
            .with_start_revision(view.revision + 1);
        let mut watch_client = c
            .watch_client()
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let watching = watch_client.watch(self.start.clone(), Some(opts));
        let mut stream = match bounded("watch", self.config.request_timeout, watching).await {
            Ok(s) => s,
            Err(e) => return e.into(),
        };
        loop {
            let mut dirty = false;
            let applied = next_batch(&mut stream, |resp| {
                if resp.created() {
                    backoff.reset();
                    self.status.send_modify(|s| {
                        s.connected = true;
                        s.last_error = None;
                    });
                }
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    dirty = true;
                    match ev.event_type() {
                        EventType::Put => {
                            view.kvs.insert(kv.key().to_vec(), kv.value().to_vec());
                        }
                        EventType::Delete => {
                            view.kvs.remove(kv.key());
                        }
                    }
                }
                if let Some(h) = resp.header() {
                    view.revision = view.revision.max(h.revision());
                }
            })
            .await;
            if let Err(end) = applied {
                return end;
            }
            if dirty {
                self.publish(&view);
            }
            let revision = view.revision;
            self.status.send_if_modified(|s| {
                let changed = s.revision != revision;
                s.revision = revision;
                changed
            });
        }
    }

    /// Reads every key of the range at one revision.
    async fn full_read(&self, c: &Client) -> Result<Snapshot, EtcdError> {
        let timeout = self.config.request_timeout;
        let read = read_range(c, &self.start, &self.end, timeout).await?;
        Ok(Snapshot {
            revision: read.revision,
            kvs: read.kvs,
        })
    }

    /// Publishes `view` unless its keys and values are what was last published.
    fn publish(&self, view: &Snapshot) {
        self.snapshots.send_if_modified(|last| {
            if last.as_ref().is_some_and(|l| l.kvs == view.kvs) {
                return false;
            }
            *last = Some(Arc::new(view.clone()));
            true
        });
    }
}
