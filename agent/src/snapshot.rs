//! One container's readings at one instant: everything the node view renders, read from the
//! host side only (cgroupfs, `/proc/<pid>/…`, statfs through `/proc/<pid>/root`). Each part
//! carries its own success, so a failing file costs only its collector's metrics.

use std::path::Path;
use std::time::{Instant, SystemTime};

use crate::cgroup::{self, CgroupStats};
use crate::filesystem::{Filesystem, Statfs};
use crate::host::Host;
use crate::kernel_file::{self, KernelFileError};
use crate::loadavg::TaskStates;
use crate::mountinfo;
use crate::netdev::{self, NetDev};
use crate::registry::Tracked;

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
}

/// Reads a container. Returns `Err(Gone)` when the container's init process is no longer the
/// one the registry knows (exited, or its pid reused).
pub async fn collect(
    host: &Host,
    statfs: &Statfs,
    t: &Tracked,
) -> Result<Snapshot, KernelFileError> {
    let c = &t.container;
    let pid_dir = host.pid_dir(c.pid);
    if crate::source::live_start(host, c.pid, Some(c.start_ticks)).is_none() {
        return Err(KernelFileError::Gone(pid_dir));
    }
    let mut durations = Vec::with_capacity(8);
    let paths = c.cgroups.clone();
    let (layout, root) = (host.layout, host.cgroup.clone());
    let pid_dir2 = pid_dir.clone();
    let (cgroup, net, mounts) = tokio::task::spawn_blocking(move || {
        let stats = cgroup::read(&paths, layout, &root);
        let t_net = Instant::now();
        let net = read_netdev(&pid_dir2);
        let net_secs = t_net.elapsed().as_secs_f64();
        let mounts = kernel_file::read(&pid_dir2.join("mountinfo")).and_then(|text| {
            mountinfo::parse(&text)
                .map_err(|e| KernelFileError::parse(&pid_dir2.join("mountinfo"), e))
        });
        (stats, (net, net_secs), mounts)
    })
    .await
    .map_err(|e| KernelFileError::Io {
        path: pid_dir.clone(),
        source: std::io::Error::other(e),
    })?;
    let (net, net_secs) = net;
    durations.extend(cgroup.timings.iter().copied());
    durations.push(("netdev", net_secs));

    let start = Instant::now();
    let filesystems = match mounts {
        Ok(m) => Ok(statfs.stat_all(pid_dir.join("root"), m).await),
        Err(e) => Err(e),
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
    })
}

fn read_netdev(pid_dir: &Path) -> Result<Vec<NetDev>, KernelFileError> {
    let path = pid_dir.join("net/dev");
    let text = kernel_file::read(&path)?;
    netdev::parse(&text).map_err(|e| KernelFileError::parse(&path, e))
}
