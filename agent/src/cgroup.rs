//! Cgroup layout detection, where a container's cgroups are, and reading their stats.
//!
//! Linux has three layouts, detected once at start from what is mounted under the cgroup
//! root (the detection never changes while the agent runs; a host does not switch layouts
//! without a reboot):
//! - **unified** (pure v2): `<root>/cgroup.controllers` exists; every controller lives in one
//!   tree.
//! - **hybrid**: controllers are v1 hierarchies (`<root>/<controller>/`), and a v2 tree with
//!   no controllers is mounted at `<root>/unified`. Its only use to us is PSI
//!   (`cpu.pressure`, `memory.pressure`, `io.pressure`), which the kernel keeps per v2
//!   cgroup whether or not controllers are enabled there.
//! - **legacy** (pure v1): controller hierarchies only; no PSI per cgroup.
//!
//! Readers are in [`v1`] and [`v2`]; both fill the same [`CgroupStats`], so nothing above
//! this module knows which version it read.

pub mod v1;
pub mod v2;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::kernel_file::{Dir, KernelFileError};
use crate::process::CgroupLine;

/// Which cgroup layout the host uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Pure v2.
    Unified,
    /// v1 controllers plus a controller-less v2 tree at `<root>/unified`.
    Hybrid,
    /// Pure v1.
    Legacy,
}

impl Layout {
    /// Detects the layout under `root` (normally `/sys/fs/cgroup`).
    pub fn detect(root: &Path) -> Layout {
        if root.join("cgroup.controllers").exists() {
            Layout::Unified
        } else if root.join("unified/cgroup.controllers").exists() {
            Layout::Hybrid
        } else {
            Layout::Legacy
        }
    }

    /// Root of the v2 tree, if any.
    pub fn unified_root(self, root: &Path) -> Option<PathBuf> {
        match self {
            Layout::Unified => Some(root.to_path_buf()),
            Layout::Hybrid => Some(root.join("unified")),
            Layout::Legacy => None,
        }
    }
}

/// Where one container's cgroups are, as absolute directories under the configured root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupPaths {
    /// v2 directory (the whole story on unified hosts; PSI only on hybrid ones).
    pub unified: Option<PathBuf>,
    /// v1 directory per controller (`cpu`, `cpuacct`, `memory`, `blkio`, `pids`, `cpuset`).
    pub v1: BTreeMap<String, PathBuf>,
}

impl CgroupPaths {
    /// From runc's `cgroup_paths` (key `""` is v2), rebasing the absolute host paths it holds
    /// from `/sys/fs/cgroup` onto `root`, so fixture trees work the same as the real one.
    pub fn from_runc(paths: &BTreeMap<String, String>, root: &Path) -> CgroupPaths {
        let rebase = |p: &str| {
            let rel = p.strip_prefix("/sys/fs/cgroup").unwrap_or(p);
            root.join(rel.trim_start_matches('/'))
        };
        let mut out = CgroupPaths::default();
        for (ctrl, path) in paths {
            if ctrl.is_empty() {
                out.unified = Some(rebase(path));
            } else {
                out.v1.insert(ctrl.clone(), rebase(path));
            }
        }
        out
    }

    /// From `/proc/<pid>/cgroup`, for containers found without runtime state.
    pub fn from_proc(lines: &[CgroupLine], layout: Layout, root: &Path) -> CgroupPaths {
        let mut out = CgroupPaths::default();
        for line in lines {
            let rel = line.path.trim_start_matches('/');
            if line.controllers.is_empty() {
                out.unified = layout.unified_root(root).map(|u| u.join(rel));
                continue;
            }
            let mount = line.controllers.join(",");
            for ctrl in &line.controllers {
                let named = root.join(ctrl);
                let base = if named.exists() {
                    named
                } else {
                    root.join(&mount)
                };
                out.v1.insert(ctrl.clone(), base.join(rel));
            }
        }
        out
    }
}

/// v1 controllers whose files are read on every scrape (and so are held open).
const V1_PER_SCRAPE: &[&str] = &["cpuacct", "cpu", "memory", "blkio", "pids"];

/// A container's cgroup directories held open for the per-scrape reads (see [`Dir`]): the v2
/// directory, and each v1 controller read per scrape — one descriptor per distinct
/// directory, since `cpu` and `cpuacct` usually share one (`cpu,cpuacct`).
#[derive(Debug, Default)]
pub struct CgroupDirs {
    /// The v2 directory (everything on unified hosts; PSI on hybrid ones).
    pub unified: Option<Dir>,
    /// v1 directory per controller read per scrape.
    pub v1: BTreeMap<String, Arc<Dir>>,
}

impl CgroupDirs {
    /// Opens the directories of `paths` that scrapes read.
    pub fn open(paths: &CgroupPaths) -> CgroupDirs {
        let mut v1: BTreeMap<String, Arc<Dir>> = BTreeMap::new();
        for ctrl in V1_PER_SCRAPE {
            let Some(path) = paths.v1.get(*ctrl) else {
                continue;
            };
            // `cpu` and `cpuacct` are one directory, often under two names (symlinks).
            let dir = Dir::open(path.clone());
            let dir = match v1.values().find(|d| d.path() == path || d.same_as(&dir)) {
                Some(same) => Arc::clone(same),
                None => Arc::new(dir),
            };
            v1.insert((*ctrl).to_string(), dir);
        }
        CgroupDirs {
            unified: paths.unified.clone().map(Dir::open),
            v1,
        }
    }

    /// The directory whose task list counts for load sampling.
    pub fn tasks_dir(&self, layout: Layout) -> Option<&Dir> {
        match layout {
            Layout::Unified => self.unified.as_ref(),
            _ => ["cpuacct", "cpu", "pids", "memory"]
                .iter()
                .find_map(|c| self.v1.get(*c))
                .map(|d| &**d),
        }
    }
}

/// CPU time used, in nanoseconds, plus CFS throttling.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuUsage {
    /// Total CPU time.
    pub total_ns: u64,
    /// User time.
    pub user_ns: u64,
    /// System time.
    pub system_ns: u64,
    /// CFS enforcement periods elapsed.
    pub periods: Option<u64>,
    /// Periods in which the cgroup was throttled.
    pub throttled_periods: Option<u64>,
    /// Total time throttled.
    pub throttled_ns: Option<u64>,
}

/// How much CPU the container may use.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuLimit {
    /// Smallest quota/period over the cgroup and its ancestors, in cores.
    pub quota_cores: Option<f64>,
    /// CPUs in the effective cpuset.
    pub cpuset_cpus: Option<usize>,
}

impl CpuLimit {
    /// The CPUs the container should see (LXCFS `max_cpu_count`): `ceil(quota)`, the cpuset
    /// size, or the smaller of both; never more than the host has, never less than one.
    pub fn visible_cpus(&self, host_cpus: usize) -> usize {
        let from_quota = self.quota_cores.map(|q| q.ceil().max(1.0) as usize);
        let n = match (from_quota, self.cpuset_cpus.filter(|&c| c > 0)) {
            (Some(q), Some(s)) => q.min(s),
            (Some(q), None) => q,
            (None, Some(s)) => s,
            (None, None) => host_cpus,
        };
        n.clamp(1, host_cpus.max(1))
    }
}

/// `memory.stat`, normalised to v2 key names (v1 `total_*` keys are mapped onto them).
pub type MemoryStat = BTreeMap<&'static str, u64>;

/// Memory usage and limits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Memory {
    /// Current usage (includes page cache).
    pub usage: u64,
    /// Effective limit: the smallest over the cgroup and its ancestors; `None` if unlimited.
    pub limit: Option<u64>,
    /// Swap in use, if accounted.
    pub swap_usage: Option<u64>,
    /// Effective swap limit (v2: swap alone; v1: RAM + swap, as the kernel reports it).
    pub swap_limit: Option<u64>,
    /// OOM kills in this cgroup, if the kernel reports them.
    pub oom_kills: Option<u64>,
    /// Times usage hit the limit (v1 `failcnt`, v2 `memory.events max`).
    pub limit_hits: Option<u64>,
    /// Breakdown.
    pub stat: MemoryStat,
}

impl Memory {
    /// cAdvisor's working set (what the kubelet evicts on): usage − inactive file cache.
    pub fn working_set(&self) -> u64 {
        self.usage
            .saturating_sub(self.stat.get("inactive_file").copied().unwrap_or(0))
    }
}

/// IO of one block device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceIo {
    /// Major device number.
    pub major: u32,
    /// Minor device number.
    pub minor: u32,
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Read operations.
    pub reads: u64,
    /// Write operations.
    pub writes: u64,
}

/// Task counts and limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pids {
    /// Tasks (threads) now.
    pub current: u64,
    /// Processes in the cgroup and its sub-cgroups (`cgroup.procs` lines).
    pub processes: u64,
    /// Effective limit (smallest over ancestors), if any.
    pub max: Option<u64>,
}

/// Stall totals for each resource, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pressure {
    /// `cpu.pressure`.
    pub cpu: Option<crate::pressure::Stall>,
    /// `memory.pressure`.
    pub memory: Option<crate::pressure::Stall>,
    /// `io.pressure`.
    pub io: Option<crate::pressure::Stall>,
    /// `irq.pressure` (newer kernels).
    pub irq: Option<crate::pressure::Stall>,
}

/// What changes rarely: effective limits (each an ancestor walk) and which optional files
/// exist. Read once per `collection.limits_ttl` per container instead of on every scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// CPU quota and cpuset.
    pub cpu: CpuLimit,
    /// v2: smallest `memory.max` over ancestors (v1 reads `hierarchical_memory_limit` from
    /// `memory.stat` on every scrape at no extra cost).
    pub memory: Option<u64>,
    /// v2: smallest `memory.swap.max` over ancestors.
    pub swap: Option<u64>,
    /// Smallest `pids.max` over ancestors.
    pub pids: Option<u64>,
    /// `irq.pressure` exists (newer kernels with PSI for IRQs).
    pub irq_pressure: bool,
}

/// Default for how long [`Limits`] (and a container's mount list) are reused: a changed
/// limit or a new mount shows within this time. Longer than common scrape intervals, or the
/// reuse would never happen.
pub const DEFAULT_LIMITS_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// Everything read from a container's cgroups. Each part is a `Result` of its own so a failing
/// file drops only its metrics.
#[derive(Debug)]
pub struct CgroupStats {
    /// CPU time.
    pub cpu: Result<CpuUsage, KernelFileError>,
    /// CPU limits.
    pub cpu_limit: CpuLimit,
    /// Memory.
    pub memory: Result<Memory, KernelFileError>,
    /// Block IO per device.
    pub io: Result<Vec<DeviceIo>, KernelFileError>,
    /// Task counts.
    pub pids: Result<Pids, KernelFileError>,
    /// PSI; `Ok(None)` when the layout has no per-cgroup PSI (pure v1).
    pub pressure: Result<Option<Pressure>, KernelFileError>,
    /// Seconds spent reading each part, by collector name.
    pub timings: Vec<(&'static str, f64)>,
}

/// Runs `f`, recording how long it took under `name`.
pub(crate) fn timed<T>(
    timings: &mut Vec<(&'static str, f64)>,
    name: &'static str,
    f: impl FnOnce() -> T,
) -> T {
    let start = std::time::Instant::now();
    let r = f();
    timings.push((name, start.elapsed().as_secs_f64()));
    r
}

/// Reads the limit files of a container and its ancestor cgroups for [`read_limits`]: the
/// container's own through its held [`Dir`], the ancestors' (slices, pod cgroups — shared by
/// many containers) through a node-wide cache, so each ancestor is read once per half `ttl`
/// rather than once per container. A changed limit thus shows within `ttl` when it is the
/// container's own and within 1.5 × `ttl` when it is an ancestor's.
#[derive(Debug)]
pub struct LimitFiles {
    ttl: Duration,
    cache: Mutex<AncestorCache>,
}

#[derive(Debug, Default)]
struct AncestorCache {
    files: HashMap<PathBuf, (Instant, Option<Arc<str>>)>,
    swept: Option<Instant>,
}

impl LimitFiles {
    /// Limit files re-read by containers every `ttl` (`collection.limits_ttl`).
    pub fn new(ttl: Duration) -> LimitFiles {
        LimitFiles {
            ttl,
            cache: Mutex::default(),
        }
    }

    /// How long a container's limits are reused.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The text of `name` in `leaf` and in each ancestor up to (not including) `top`, the
    /// leaf first; `None` where the file cannot be read.
    pub fn walk(&self, leaf: &Dir, top: &Path, name: &str) -> Vec<Option<Arc<str>>> {
        let mut out = vec![leaf.read(name).ok().map(Arc::from)];
        out.extend(
            ancestors(leaf.path(), top)
                .skip(1)
                .map(|d| self.ancestor(d.join(name))),
        );
        out
    }

    fn ancestor(&self, path: PathBuf) -> Option<Arc<str>> {
        let fresh_for = self.ttl / 2;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, text)) = cache.files.get(&path) {
            if at.elapsed() < fresh_for {
                return text.clone();
            }
        }
        let text = crate::kernel_file::read(&path).ok().map(Arc::from);
        let now = Instant::now();
        if cache.swept.is_none_or(|s| now - s > fresh_for) {
            cache.files.retain(|_, (at, _)| now - *at < fresh_for);
            cache.swept = Some(now);
        }
        cache.files.insert(path, (now, text.clone()));
        text
    }
}

/// Reads the slowly changing part of one container's cgroups. `root` bounds ancestor walks.
pub fn read_limits(
    paths: &CgroupPaths,
    dirs: &CgroupDirs,
    layout: Layout,
    root: &Path,
    files: &LimitFiles,
) -> Limits {
    let mut limits = match layout {
        Layout::Unified => dirs
            .unified
            .as_ref()
            .map(|dir| v2::read_limits(dir, root, files))
            .unwrap_or_default(),
        Layout::Hybrid | Layout::Legacy => v1::read_limits(paths, dirs, root, files),
    };
    limits.irq_pressure = dirs
        .unified
        .as_ref()
        .is_some_and(|d| d.read("irq.pressure").is_ok());
    limits
}

/// Reads every per-scrape stat of one container's cgroups, with `limits` from
/// [`read_limits`].
pub fn read(dirs: &CgroupDirs, layout: Layout, root: &Path, limits: &Limits) -> CgroupStats {
    match layout {
        Layout::Unified => v2::read(dirs.unified.as_ref(), root, limits),
        Layout::Hybrid | Layout::Legacy => v1::read(dirs, root, limits),
    }
}

/// Reads PSI files of a v2 directory (`irq.pressure` only where it exists).
pub fn read_pressure(dir: &Dir, irq: bool) -> Result<Pressure, KernelFileError> {
    let one = |name: &str| -> Result<crate::pressure::Stall, KernelFileError> {
        let text = dir.read(name)?;
        crate::pressure::parse(&text).map_err(|e| KernelFileError::parse(&dir.join(name), e))
    };
    Ok(Pressure {
        cpu: Some(one("cpu.pressure")?),
        memory: Some(one("memory.pressure")?),
        io: Some(one("io.pressure")?),
        irq: if irq {
            Some(one("irq.pressure")?)
        } else {
            None
        },
    })
}

/// Walks from `dir` up to (not above) `root`, yielding each directory: the leaf first.
pub(crate) fn ancestors<'a>(dir: &'a Path, root: &'a Path) -> impl Iterator<Item = &'a Path> {
    dir.ancestors()
        .take_while(move |d| d.starts_with(root) && *d != root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visible_cpus_follow_lxcfs() {
        let l = |q: Option<f64>, s: Option<usize>| CpuLimit {
            quota_cores: q,
            cpuset_cpus: s,
        };
        assert_eq!(l(None, None).visible_cpus(8), 8);
        assert_eq!(l(Some(0.5), None).visible_cpus(8), 1);
        assert_eq!(l(Some(1.5), None).visible_cpus(8), 2);
        assert_eq!(l(Some(3.0), Some(2)).visible_cpus(8), 2);
        assert_eq!(l(None, Some(3)).visible_cpus(8), 3);
        assert_eq!(l(Some(16.0), None).visible_cpus(8), 8);
    }

    #[test]
    fn runc_paths_are_rebased() {
        let mut m = BTreeMap::new();
        m.insert("".to_string(), "/sys/fs/cgroup/unified/x/c1".to_string());
        m.insert(
            "memory".to_string(),
            "/sys/fs/cgroup/memory/x/c1".to_string(),
        );
        let p = CgroupPaths::from_runc(&m, Path::new("/fixture"));
        assert_eq!(
            p.unified.as_deref(),
            Some(Path::new("/fixture/unified/x/c1"))
        );
        assert_eq!(p.v1["memory"], Path::new("/fixture/memory/x/c1"));
    }

    #[test]
    fn limit_files_read_the_leaf_always_and_ancestors_once_per_half_ttl() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        let slice = root.join("pod.slice");
        let (a, b) = (slice.join("a"), slice.join("b"));
        for d in [&a, &b] {
            std::fs::create_dir_all(d).expect("mkdir");
            std::fs::write(d.join("pids.max"), "max\n").expect("write");
        }
        std::fs::write(slice.join("pids.max"), "100\n").expect("write");
        let files = LimitFiles::new(Duration::from_secs(2));
        let texts = |leaf: &Path| -> Vec<Option<String>> {
            files
                .walk(&Dir::open(leaf.to_path_buf()), root, "pids.max")
                .into_iter()
                .map(|t| t.map(|t| t.trim().to_string()))
                .collect()
        };
        assert_eq!(texts(&a), [Some("max".into()), Some("100".into())]);
        // A sibling shares the cached ancestor; its own file is read fresh.
        std::fs::write(slice.join("pids.max"), "50\n").expect("write");
        std::fs::write(b.join("pids.max"), "7\n").expect("write");
        assert_eq!(texts(&b), [Some("7".into()), Some("100".into())]);
        // After half the TTL the ancestor is read again.
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(texts(&b), [Some("7".into()), Some("50".into())]);
        // A missing file is `None`, level by level.
        std::fs::remove_file(a.join("pids.max")).expect("rm");
        assert_eq!(texts(&a), [None, Some("50".into())]);
    }

    #[test]
    fn ancestors_stop_at_root() {
        let v: Vec<_> = ancestors(Path::new("/r/a/b"), Path::new("/r")).collect();
        assert_eq!(v, [Path::new("/r/a/b"), Path::new("/r/a")]);
    }
}
