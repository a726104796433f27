//! Where containers come from. Each source answers one question — which containers exist
//! right now — behind the [`Source`] trait; the [`crate::registry`] merges them, notices
//! changes and names the results.
//!
//! - [`runc`]: runc-family `state.json` (runc, containerd, Docker, Podman with runc, CRI-O).
//! - [`crun`]: crun's `status` files.
//! - [`rules`]: cgroup path rules for runtimes without such state (nspawn, libvirt LXC,
//!   LXC/Incus, anything with a recognisable cgroup path).

pub mod crun;
pub mod rules;
pub mod runc;

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::cgroup::CgroupPaths;
use crate::host::Host;
use crate::process;

/// A container as a source found it, before naming and ownership are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    /// The runtime's id.
    pub runtime_id: String,
    /// Init pid in the host pid namespace.
    pub pid: u32,
    /// Init start time (clock ticks since boot); guards against pid reuse.
    pub start_ticks: u64,
    /// Its cgroups.
    pub cgroups: CgroupPaths,
    /// Root filesystem path on the host, if known.
    pub rootfs: Option<PathBuf>,
    /// UTS hostname from the runtime config, if set.
    pub hostname: Option<String>,
    /// Labels (OCI annotations), as set by the orchestrator.
    pub labels: BTreeMap<String, String>,
    /// `runc`, `crun` or `cgroup-rule:<name>`.
    pub source: String,
}

/// A way of finding containers.
pub trait Source: Send + Sync {
    /// Every live container this source knows. Never fails as a whole: unreadable entries
    /// are skipped (and logged), because one broken container must not hide the others.
    fn scan(&self, host: &Host) -> Vec<Discovered>;

    /// Directories whose changes mean "rescan now" (inotify).
    fn watch_dirs(&self) -> Vec<PathBuf>;
}

/// The start time of a live `pid`, if it is alive and (when `expected` is given) still the
/// same process that started at `expected` ticks.
pub fn live_start(host: &Host, pid: u32, expected: Option<u64>) -> Option<u64> {
    let stat = process::read_stat(&host.pid_dir(pid).join("stat")).ok()?;
    if stat.state == b'Z' || expected.is_some_and(|e| e != stat.start_ticks) {
        return None;
    }
    Some(stat.start_ticks)
}

/// A container's cgroups from `/proc/<pid>/cgroup`.
pub fn cgroups_of(host: &Host, pid: u32) -> Option<CgroupPaths> {
    let text = crate::kernel_file::read(&host.pid_dir(pid).join("cgroup")).ok()?;
    let lines = process::parse_cgroup(&text)?;
    Some(CgroupPaths::from_proc(&lines, host.layout, &host.cgroup))
}
