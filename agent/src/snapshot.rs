//! One container's readings at one instant: everything the node view renders, read from the
//! host side only (cgroupfs, `/proc/<pid>/…`, statfs through `/proc/<pid>/root`). Each part
//! carries its own success, so a failing file costs only its collector's metrics.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::cgroup::{self, CgroupStats, LimitFiles};
use crate::filesystem::{Filesystem, Statfs};
use crate::host::Host;
use crate::kernel_file::{Dir, KernelFileError};
use crate::loadavg::TaskStates;
use crate::mountinfo;
use crate::namespaces::SharedWithHost;
use crate::netdev::{self, NetDev};
use crate::registry::{Slow, Tracked};

/// Readings of one container.
#[derive(Debug)]
pub struct Snapshot {
    /// Wall-clock time of the reading (`node_time_seconds`).
    pub at: SystemTime,
    /// Cgroup stats.
    pub cgroup: CgroupStats,
    /// CPUs the container is shown to have.
    pub visible_cpus: usize,
    /// Synthesised idle seconds per virtual CPU.
    pub idle_seconds: f64,
    /// Container start, seconds since the epoch (`node_boot_time_seconds`).
    pub boot_time: f64,
    /// Interfaces of the container's network namespace.
    pub net: Result<Vec<NetDev>, KernelFileError>,
    /// Filesystems; `Err` when mountinfo itself could not be read.
    pub filesystems: Result<Vec<Filesystem>, KernelFileError>,
    /// Load averages (1, 5, 15 min; zero until the first sample, as the kernel's start at
    /// boot) and the last task-state sample.
    pub load: ([f64; 3], TaskStates),
    /// Seconds each collector's reads took.
    pub durations: Vec<(&'static str, f64)>,
    /// The container's namespaces that are the host's: their collectors are withheld
    /// ([`crate::namespaces`]).
    pub withheld: SharedWithHost,
}

/// Reads a container. Returns `Err(Gone)` when the container's init process is no longer the
/// one the registry knows (exited, or its pid reused): its held `/proc/<pid>` answers no
/// more (or, when not held, its start time differs).
///
/// The reads run inline on the calling task: they are small procfs and cgroupfs files that do
/// not block on I/O, and the node-wide collection budget keeps at most `max_concurrent`
/// runtime threads in them. Only `statfs` of network and FUSE filesystems, which can hang,
/// goes to a blocking thread under a deadline.
pub async fn collect(
    host: &Host,
    statfs: &Statfs,
    t: &Tracked,
    limit_files: &LimitFiles,
) -> Result<Snapshot, KernelFileError> {
    let c = &t.container;
    let pid_dir = t.proc.path();
    if !t.proc.is_held() && crate::source::live_start(host, c.pid, Some(c.start_ticks)).is_none() {
        return Err(KernelFileError::Gone(pid_dir.to_path_buf()));
    }
    // The process first: once it is gone, nothing else read would belong to the container.
    // Through the held `/proc/<pid>`, `net/dev` fails (ENOENT) for a process that has exited,
    // whether reaped or still a zombie (an exited task has no network namespace left), and
    // for a pid reused since: both mean the container is gone.
    let start = Instant::now();
    let net = read_netdev(&t.proc);
    let net_seconds = start.elapsed().as_secs_f64();
    if let Err(e) = &net {
        if e.is_gone() {
            return Err(KernelFileError::Gone(pid_dir.to_path_buf()));
        }
    }
    let slow = slow_facts(host, t, limit_files);
    let cgroup = cgroup::read(&t.dirs, host.layout, &host.cgroup, &slow.limits);
    let mut durations = Vec::with_capacity(8);
    durations.extend(cgroup.timings.iter().copied());
    durations.push(("netdev", net_seconds));

    let start = Instant::now();
    let filesystems = match &slow.mounts {
        // The host's own mounts: not stat'ed, never shown.
        _ if t.shared.mnt => Ok(Vec::new()),
        Ok(m) => Ok(statfs.stat_all(&pid_dir.join("root"), m).await),
        Err(e) => Err(KernelFileError::parse(
            &pid_dir.join("mountinfo"),
            e.clone(),
        )),
    };
    durations.push(("filesystem", start.elapsed().as_secs_f64()));

    let uptime_now = host.uptime();
    let started = c.start_ticks as f64 / host.clk_tck as f64;
    let age = (uptime_now - started).max(0.0);
    let visible_cpus = cgroup.cpu_limit.visible_cpus(host.cpus);
    let (idle_seconds, load) = {
        let mut v = t.view.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(cpu) = &cgroup.cpu {
            let busy = (cpu.user_ns + cpu.system_ns) as f64 / 1e9 / visible_cpus as f64;
            v.idle_seconds = v.idle_seconds.max(age - busy);
        }
        (v.idle_seconds, (v.load.values(), v.tasks))
    };
    Ok(Snapshot {
        at: SystemTime::now(),
        cgroup,
        visible_cpus,
        idle_seconds,
        boot_time: host.boot_time as f64 + started,
        net,
        filesystems,
        load,
        durations,
        withheld: t.shared,
    })
}

/// The container's limits and mounts, re-read once per `ttl`.
fn slow_facts(host: &Host, t: &Tracked, files: &LimitFiles) -> Slow {
    let mut slot = t.slow.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = slot.as_ref().filter(|s| s.at.elapsed() < files.ttl()) {
        return s.clone();
    }
    let limits = cgroup::read_limits(
        &t.container.cgroups,
        &t.dirs,
        host.layout,
        &host.cgroup,
        files,
    );
    let mounts = t
        .proc
        .read("mountinfo")
        .map_err(|e| e.to_string())
        .and_then(|text| mountinfo::parse(&text))
        .map(|all| Arc::new(crate::filesystem::reported(all)));
    let s = Slow {
        at: Instant::now(),
        limits,
        mounts,
    };
    *slot = Some(s.clone());
    s
}

fn read_netdev(proc: &Dir) -> Result<Vec<NetDev>, KernelFileError> {
    let bytes = proc.read_bytes("net/dev")?;
    netdev::parse_bytes(&bytes).map_err(|e| KernelFileError::parse(&proc.join("net/dev"), e))
}
