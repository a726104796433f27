//! How the agent protects the node: a container's snapshot is reused for a short TTL, scrapes
//! of one container that arrive together share one collection, and a node-wide budget bounds
//! how many collections run at once — so the agent's CPU is bounded whatever the request rate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::cgroup::LimitFiles;
use crate::filesystem::Statfs;
use crate::host::Host;
use crate::kernel_file::KernelFileError;
use crate::registry::Tracked;
use crate::snapshot::{self, Snapshot};
use crate::telemetry::Telemetry;

/// A snapshot and when it was taken.
#[derive(Debug, Clone)]
pub struct Cached {
    /// When the collection finished.
    pub at: Instant,
    /// The readings.
    pub snapshot: Arc<Snapshot>,
}

/// Why no snapshot could be served.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// The container exited (or its pid was reused) since discovery.
    #[error("container is gone")]
    Gone,
    /// The deadline passed while waiting for the budget or the collection.
    #[error("collection did not finish within {0:?}")]
    Timeout(Duration),
    /// A failure that is not the container's (should not happen).
    #[error("collection failed: {0}")]
    Failed(String),
}

/// Collects snapshots under the TTL, single-flight and budget rules.
pub struct Collector {
    host: Arc<Host>,
    statfs: Statfs,
    ttl: Duration,
    budget: Arc<Semaphore>,
    telemetry: Arc<Telemetry>,
    limit_files: LimitFiles,
}

impl Collector {
    /// A collector with `max_concurrent` collections node-wide.
    pub fn new(
        host: Arc<Host>,
        statfs: Statfs,
        ttl: Duration,
        max_concurrent: usize,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        Collector {
            host,
            statfs,
            ttl,
            budget: Arc::new(Semaphore::new(max_concurrent.max(1))),
            telemetry,
            limit_files: LimitFiles::new(crate::cgroup::DEFAULT_LIMITS_TTL),
        }
    }

    /// How long limits and mount lists are reused (default
    /// [`crate::cgroup::DEFAULT_LIMITS_TTL`]).
    pub fn with_limits_ttl(mut self, ttl: Duration) -> Self {
        self.limit_files = LimitFiles::new(ttl);
        self
    }

    /// The host the collector reads.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// A fresh-enough snapshot of `t`, collected at most once per TTL however many callers
    /// ask at once, finished before `deadline` or not at all.
    pub async fn snapshot(
        &self,
        t: &Tracked,
        deadline: Instant,
    ) -> Result<Arc<Snapshot>, CollectError> {
        let budget = deadline.saturating_duration_since(Instant::now());
        let work = async {
            let mut slot = t.cache.lock().await;
            if let Some(c) = slot.as_ref() {
                if c.at.elapsed() < self.ttl {
                    self.telemetry.cache_hits.inc();
                    return Ok(Arc::clone(&c.snapshot));
                }
            }
            self.telemetry.cache_misses.inc();
            let _permit = self
                .budget
                .acquire()
                .await
                .map_err(|e| CollectError::Failed(e.to_string()))?;
            let start = Instant::now();
            let result = snapshot::collect(&self.host, &self.statfs, t, &self.limit_files).await;
            self.telemetry
                .collection_seconds
                .observe(start.elapsed().as_secs_f64());
            match result {
                Ok(s) => {
                    let s = Arc::new(s);
                    *slot = Some(Cached {
                        at: Instant::now(),
                        snapshot: Arc::clone(&s),
                    });
                    Ok(s)
                }
                Err(e) if e.is_gone() => Err(CollectError::Gone),
                Err(e) => Err(CollectError::Failed(e.to_string())),
            }
        };
        tokio::time::timeout(budget, work)
            .await
            .unwrap_or(Err(CollectError::Timeout(budget)))
    }
}

impl From<KernelFileError> for CollectError {
    fn from(e: KernelFileError) -> Self {
        if e.is_gone() {
            CollectError::Gone
        } else {
            CollectError::Failed(e.to_string())
        }
    }
}
