//! Facts about the host that every container view needs: roots, cgroup layout, clock ticks,
//! boot time, CPU count, memory and swap totals, kernel identity.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::cgroup::Layout;
use crate::config::Roots;
use crate::kernel_file::{self, flat_keyed, KernelFileError};

/// The host as the agent sees it. Built once at start; `mem_total`/`swap_total` are what
/// an unlimited container is clamped to.
#[derive(Debug, Clone)]
pub struct Host {
    /// procfs root.
    pub proc: PathBuf,
    /// cgroup root.
    pub cgroup: PathBuf,
    /// sysfs root.
    pub sys: PathBuf,
    /// Detected cgroup layout.
    pub layout: Layout,
    /// Clock ticks per second (`CLK_TCK`), the unit of process start times.
    pub clk_tck: u64,
    /// Boot time, seconds since the epoch (`btime` in `/proc/stat`).
    pub boot_time: u64,
    /// Online CPUs.
    pub cpus: usize,
    /// Host memory, bytes.
    pub mem_total: u64,
    /// Host swap, bytes.
    pub swap_total: u64,
    /// Kernel identity for `node_uname_info` (all but `nodename`).
    pub uname: Uname,
    /// The host's namespaces ([`crate::namespaces::NamespaceIds::host`]), which no view may
    /// show a tenant.
    pub namespaces: crate::namespaces::NamespaceIds,
    /// Block device names by `MAJ:MIN`, read from sysfs once each.
    devices: Arc<Mutex<HashMap<(u32, u32), String>>>,
}

/// `uname(2)` fields.
#[derive(Debug, Clone, Default)]
pub struct Uname {
    /// `sysname`.
    pub sysname: String,
    /// `release`.
    pub release: String,
    /// `version`.
    pub version: String,
    /// `machine`.
    pub machine: String,
    /// `domainname`.
    pub domainname: String,
}

impl Host {
    /// Reads the host facts under `roots`.
    pub fn probe(roots: &Roots) -> Result<Host, KernelFileError> {
        let stat_path = roots.proc.join("stat");
        let stat = kernel_file::read(&stat_path)?;
        let boot_time = flat_keyed(&stat)
            .find(|(k, _)| *k == "btime")
            .map(|(_, v)| v)
            .ok_or_else(|| KernelFileError::parse(&stat_path, "no btime"))?;
        let cpus = stat
            .lines()
            .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
            .count()
            .max(1);
        let (mem_total, swap_total) = meminfo_totals(&roots.proc.join("meminfo"))?;
        let u = rustix::system::uname();
        let s = |c: &std::ffi::CStr| c.to_string_lossy().into_owned();
        Ok(Host {
            proc: roots.proc.clone(),
            cgroup: roots.cgroup.clone(),
            sys: roots.sys.clone(),
            layout: Layout::detect(&roots.cgroup),
            namespaces: crate::namespaces::NamespaceIds::host(&roots.proc),
            clk_tck: rustix::param::clock_ticks_per_second(),
            boot_time,
            cpus,
            mem_total,
            swap_total,
            uname: Uname {
                sysname: s(u.sysname()),
                release: s(u.release()),
                version: s(u.version()),
                machine: s(u.machine()),
                domainname: s(u.domainname()),
            },
            devices: Arc::default(),
        })
    }

    /// `/proc/<pid>`.
    pub fn pid_dir(&self, pid: u32) -> PathBuf {
        self.proc.join(pid.to_string())
    }

    /// Seconds since boot now (`CLOCK_BOOTTIME`, which keeps counting in suspend, like the
    /// start times it is compared with).
    pub fn uptime(&self) -> f64 {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
        t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
    }

    /// Block device name for `MAJ:MIN` from `/sys/dev/block/MAJ:MIN/uevent` (`DEVNAME=`), or
    /// `MAJ:MIN` itself when sysfs does not say.
    pub fn block_device_name(&self, major: u32, minor: u32) -> String {
        let mut names = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(name) = names.get(&(major, minor)) {
            return name.clone();
        }
        let path = self.sys.join(format!("dev/block/{major}:{minor}/uevent"));
        let name = kernel_file::read(&path)
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("DEVNAME="))
                    .map(str::to_string)
            })
            .unwrap_or_else(|| format!("{major}:{minor}"));
        names.insert((major, minor), name.clone());
        name
    }
}

/// `MemTotal` and `SwapTotal` from a meminfo file, in bytes.
pub fn meminfo_totals(path: &Path) -> Result<(u64, u64), KernelFileError> {
    let text = kernel_file::read(path)?;
    let fields = parse_meminfo(&text);
    let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
    let mem = get("MemTotal").ok_or_else(|| KernelFileError::parse(path, "no MemTotal"))?;
    Ok((mem, get("SwapTotal").unwrap_or(0)))
}

/// Parses `/proc/meminfo` into `(field, value)`; `kB` values are converted to bytes.
pub fn parse_meminfo(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let mut it = rest.split_ascii_whitespace();
            let v: u64 = it.next()?.parse().ok()?;
            let v = if it.next() == Some("kB") {
                v.saturating_mul(1024)
            } else {
                v
            };
            Some((name.trim().to_string(), v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_this_host() {
        let h = Host::probe(&Roots::default()).expect("host /proc readable");
        // The very numbers the kernel states: MemTotal in bytes (kB × 1024), one CPU per
        // `cpuN` line of /proc/stat.
        let meminfo = std::fs::read_to_string("/proc/meminfo").expect("meminfo");
        let kb: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("MemTotal");
        assert_eq!(h.mem_total, kb * 1024);
        let stat = std::fs::read_to_string("/proc/stat").expect("stat");
        let cpus = stat
            .lines()
            .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
            .count();
        assert_eq!(h.cpus, cpus);
        assert!(h.boot_time > 1_000_000_000);
        assert_eq!(h.uname.sysname, "Linux");
        assert!(h.uptime() > 0.0);
    }

    #[test]
    fn meminfo_units() {
        let v = parse_meminfo("MemTotal:       16384 kB\nHugePages_Total:       0\nbad line\n");
        assert_eq!(
            v,
            vec![
                ("MemTotal".into(), 16384 * 1024),
                ("HugePages_Total".into(), 0)
            ]
        );
    }
}
