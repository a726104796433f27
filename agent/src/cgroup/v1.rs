//! cgroup v1 readers: one hierarchy per controller, each with its own path for the container.
//! CPU time is in USER_HZ ticks (`cpuacct.stat`); "unlimited" is a huge sentinel number. PSI,
//! if any, comes from the hybrid layout's v2 tree.

use std::path::{Path, PathBuf};

use super::{
    timed, CgroupDirs, CgroupPaths, CgroupStats, CpuLimit, CpuUsage, DeviceIo, LimitFiles, Limits,
    Memory, MemoryStat, Pids,
};
use crate::kernel_file::{self, flat_keyed, Dir, KernelFileError};

/// v1 `memory.stat` hierarchical keys and the v2 names they are stored under.
const MEMORY_STAT_MAP: &[(&str, &str)] = &[
    ("total_cache", "file"),
    ("total_rss", "anon"),
    ("total_rss_huge", "anon_thp"),
    ("total_shmem", "shmem"),
    ("total_mapped_file", "file_mapped"),
    ("total_dirty", "file_dirty"),
    ("total_writeback", "file_writeback"),
    ("total_swapcached", "swapcached"),
    ("total_inactive_anon", "inactive_anon"),
    ("total_active_anon", "active_anon"),
    ("total_inactive_file", "inactive_file"),
    ("total_active_file", "active_file"),
    ("total_unevictable", "unevictable"),
    ("total_pgfault", "pgfault"),
    ("total_pgmajfault", "pgmajfault"),
];

/// USER_HZ: the unit of `cpuacct.stat`, fixed at 100 by the kernel ABI.
const NS_PER_USER_HZ_TICK: u64 = 10_000_000;

fn controller<'a>(paths: &'a CgroupPaths, name: &str) -> Option<&'a Path> {
    paths.v1.get(name).map(PathBuf::as_path)
}

fn held<'a>(dirs: &'a CgroupDirs, root: &Path, name: &str) -> Result<&'a Dir, KernelFileError> {
    dirs.v1
        .get(name)
        .map(|d| &**d)
        .ok_or_else(|| KernelFileError::Gone(root.join(name)))
}

/// Effective limits of a v1 container (the memory limit needs none: `memory.stat` carries
/// `hierarchical_memory_limit`). The container's own files are read through `dirs` where
/// held.
pub fn read_limits(
    paths: &CgroupPaths,
    dirs: &CgroupDirs,
    root: &Path,
    files: &LimitFiles,
) -> Limits {
    // The container's own directory (`CgroupDirs` has every per-scrape controller).
    let leaf = |name: &str| dirs.v1.get(name).map(|d| &**d);
    Limits {
        cpu: cpu_limit(leaf("cpu"), controller(paths, "cpuset"), root, files),
        memory: None,
        swap: None,
        pids: leaf("pids").and_then(|dir| {
            let mount = hierarchy_root(dir.path(), root);
            files
                .walk(dir, &mount, "pids.max")
                .into_iter()
                .flatten()
                .filter_map(|t| kernel_file::parse_limit(t.trim()).flatten())
                .min()
        }),
        irq_pressure: false,
    }
}

/// Reads a v1 container; PSI from the hybrid layout's v2 directory when there is one.
pub fn read(dirs: &CgroupDirs, root: &Path, limits: &Limits) -> CgroupStats {
    let ctrl = |name| held(dirs, root, name);
    let mut t = Vec::with_capacity(5);
    CgroupStats {
        cpu: timed(&mut t, "cpu", || {
            ctrl("cpuacct").and_then(|acct| cpu(acct, ctrl("cpu").ok()))
        }),
        cpu_limit: limits.cpu,
        memory: timed(&mut t, "meminfo", || ctrl("memory").and_then(memory)),
        io: timed(&mut t, "diskstats", || ctrl("blkio").and_then(io)),
        pids: timed(&mut t, "processes", || {
            ctrl("pids").and_then(|d| pids(d, limits))
        }),
        pressure: timed(&mut t, "pressure", || match dirs.unified.as_ref() {
            Some(dir) => super::read_pressure(dir, limits.irq_pressure).map(Some),
            None => Ok(None),
        }),
        timings: t,
    }
}

/// `cpuacct.usage` (ns) and `cpuacct.stat` user/system (USER_HZ ticks: two reads instead of
/// the three of `cpuacct.usage_{user,sys}`), and `cpu.stat` throttling. The total is read,
/// not summed: only kernels from 5.15 scale `cpuacct.stat` to the precise usage; before, its
/// values are tick samples that can sit at zero for a lightly loaded container.
pub fn cpu(acct: &Dir, cpu: Option<&Dir>) -> Result<CpuUsage, KernelFileError> {
    let total_ns = acct.read_u64("cpuacct.usage")?;
    let text = acct.read("cpuacct.stat")?;
    let get = |key| flat_keyed(&text).find(|(k, _)| *k == key).map(|(_, v)| v);
    let (Some(user), Some(system)) = (get("user"), get("system")) else {
        return Err(KernelFileError::parse(
            &acct.join("cpuacct.stat"),
            "no user/system",
        ));
    };
    let mut usage = CpuUsage {
        total_ns,
        user_ns: user.saturating_mul(NS_PER_USER_HZ_TICK),
        system_ns: system.saturating_mul(NS_PER_USER_HZ_TICK),
        ..CpuUsage::default()
    };
    if let Some(text) = cpu.and_then(|d| d.read("cpu.stat").ok()) {
        for (k, v) in flat_keyed(&text) {
            match k {
                "nr_periods" => usage.periods = Some(v),
                "nr_throttled" => usage.throttled_periods = Some(v),
                "throttled_time" => usage.throttled_ns = Some(v),
                _ => {}
            }
        }
    }
    Ok(usage)
}

/// Smallest CFS quota over ancestors in the cpu hierarchy, and the cpuset size.
pub fn cpu_limit(
    cpu: Option<&Dir>,
    cpuset: Option<&Path>,
    root: &Path,
    files: &LimitFiles,
) -> CpuLimit {
    let quota_cores = cpu.and_then(|dir| {
        let mount = hierarchy_root(dir.path(), root);
        let quotas = files.walk(dir, &mount, "cpu.cfs_quota_us");
        let periods = files.walk(dir, &mount, "cpu.cfs_period_us");
        quotas
            .into_iter()
            .zip(periods)
            .filter_map(|(quota, period)| {
                let quota: i64 = quota?.trim().parse().ok()?;
                let period: u64 = period?.trim().parse().ok()?;
                (quota > 0 && period > 0).then(|| quota as f64 / period as f64)
            })
            .fold(None, |min: Option<f64>, q| {
                Some(min.map_or(q, |m| m.min(q)))
            })
    });
    let cpuset_cpus = cpuset.and_then(|d| {
        ["cpuset.effective_cpus", "cpuset.cpus"]
            .iter()
            .find_map(|f| kernel_file::read(&d.join(f)).ok())
            .and_then(|t| kernel_file::cpu_list_count(&t))
            .filter(|&n| n > 0)
    });
    CpuLimit {
        quota_cores,
        cpuset_cpus,
    }
}

/// The mount of the hierarchy `dir` is in: `<root>/<first component>`.
fn hierarchy_root(dir: &Path, root: &Path) -> PathBuf {
    match dir
        .strip_prefix(root)
        .ok()
        .and_then(|r| r.components().next())
    {
        Some(first) => root.join(first),
        None => root.to_path_buf(),
    }
}

/// Memory: usage, the hierarchical (effective) limit, swap and RAM+swap limit (when swap
/// accounting is on: only then does `memory.stat` carry `total_swap` and
/// `hierarchical_memsw_limit`), OOM kills, breakdown.
pub fn memory(dir: &Dir) -> Result<Memory, KernelFileError> {
    let usage = dir.read_u64("memory.usage_in_bytes")?;
    let text = dir.read("memory.stat")?;
    let mut stat = MemoryStat::new();
    let mut hier_limit = None;
    let mut hier_memsw = None;
    let mut swap = None;
    for (k, v) in flat_keyed(&text) {
        match k {
            "hierarchical_memory_limit" => hier_limit = Some(v).filter(|&v| v < 1 << 62),
            "hierarchical_memsw_limit" => hier_memsw = Some(v),
            "total_swap" => swap = Some(v),
            _ => {
                if let Some((_, v2)) = MEMORY_STAT_MAP.iter().find(|(v1, _)| *v1 == k) {
                    stat.insert(v2, v);
                }
            }
        }
    }
    if stat.is_empty() {
        return Err(KernelFileError::parse(
            &dir.join("memory.stat"),
            "no total_* keys",
        ));
    }
    // `hierarchical_memory_limit` is the smallest limit of the cgroup and its ancestors.
    let limit = hier_limit;
    let oom_kills = dir.read("memory.oom_control").ok().and_then(|t| {
        flat_keyed(&t)
            .find(|(k, _)| *k == "oom_kill")
            .map(|(_, v)| v)
    });
    Ok(Memory {
        usage,
        limit,
        swap_usage: swap,
        swap_limit: swap.and(hier_memsw).filter(|&v| v < 1 << 62),
        oom_kills,
        // `memory.failcnt` would cost one more read per scrape for a counter nobody alerts on;
        // v2 gets it free from `memory.events`.
        limit_hits: None,
        stat,
    })
}

/// `blkio.throttle.io_service_bytes_recursive` and `…io_serviced_recursive` (the plain
/// files when the recursive ones do not exist).
pub fn io(dir: &Dir) -> Result<Vec<DeviceIo>, KernelFileError> {
    let read_either = |name: &str| {
        dir.read(&format!("{name}_recursive"))
            .or_else(|_| dir.read(name))
    };
    let bytes = read_either("blkio.throttle.io_service_bytes")?;
    let ops = read_either("blkio.throttle.io_serviced")?;
    let mut devices: Vec<DeviceIo> = Vec::new();
    for (text, is_bytes) in [(&bytes, true), (&ops, false)] {
        for (dev, op, v) in parse_blkio(text)
            .map_err(|e| KernelFileError::parse(&dir.join("blkio.throttle.*"), e))?
        {
            let d = match devices.iter_mut().find(|d| (d.major, d.minor) == dev) {
                Some(d) => d,
                None => {
                    devices.push(DeviceIo {
                        major: dev.0,
                        minor: dev.1,
                        ..DeviceIo::default()
                    });
                    // Invariant: just pushed.
                    let last = devices.len() - 1;
                    &mut devices[last]
                }
            };
            match (op, is_bytes) {
                ("Read", true) => d.read_bytes = v,
                ("Write", true) => d.write_bytes = v,
                ("Read", false) => d.reads = v,
                ("Write", false) => d.writes = v,
                _ => {}
            }
        }
    }
    Ok(devices)
}

/// One blkio line: device, operation, value.
pub type BlkioLine<'a> = ((u32, u32), &'a str, u64);

/// Parses blkio lines `MAJ:MIN Op N`; the trailing `Total N` line is skipped.
pub fn parse_blkio(text: &str) -> Result<Vec<BlkioLine<'_>>, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_ascii_whitespace().collect();
        match f.as_slice() {
            [] | ["Total", _] => {}
            [dev, op, v] => {
                let dev = super::v2::parse_dev(dev).ok_or_else(|| format!("bad device {dev:?}"))?;
                let v = v.parse().map_err(|_| format!("bad value {v:?}"))?;
                out.push((dev, *op, v));
            }
            _ => return Err(format!("malformed line {line:?}")),
        }
    }
    Ok(out)
}

/// `pids.current`, processes, and the effective `pids.max` from `limits`.
pub fn pids(dir: &Dir, limits: &Limits) -> Result<Pids, KernelFileError> {
    super::v2::pids(dir, limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blkio_lines() {
        let v = parse_blkio("8:0 Read 4096\n8:0 Write 512\n8:0 Total 4608\nTotal 4608\n")
            .expect("valid");
        assert_eq!(
            v,
            vec![
                ((8, 0), "Read", 4096),
                ((8, 0), "Write", 512),
                ((8, 0), "Total", 4608)
            ]
        );
        assert!(parse_blkio("8:0 Read").is_err());
    }

    /// A v1 directory in the kernel's formats, read through a held [`Dir`].
    fn v1_dir(files: &[(&str, &str)]) -> (tempfile::TempDir, Dir) {
        let tmp = tempfile::tempdir().expect("tempdir");
        for (name, text) in files {
            std::fs::write(tmp.path().join(name), text).expect("write");
        }
        let dir = Dir::open(tmp.path().to_path_buf());
        (tmp, dir)
    }

    #[test]
    fn memory_swap_comes_from_memory_stat_and_swapcached_is_not_swap() {
        let stat = "cache 0\nrss 0\nswap 0\nswapcached 0\n\
                    hierarchical_memory_limit 268435456\nhierarchical_memsw_limit 536870912\n\
                    total_cache 4096\ntotal_rss 8192\ntotal_swap 65536\ntotal_swapcached 12288\n\
                    total_inactive_file 1024\n";
        let (_tmp, dir) = v1_dir(&[
            ("memory.usage_in_bytes", "16384\n"),
            ("memory.stat", stat),
            (
                "memory.oom_control",
                "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
            ),
        ]);
        let m = memory(&dir).expect("readable");
        assert_eq!(m.usage, 16384);
        assert_eq!(m.limit, Some(268435456));
        assert_eq!(m.swap_usage, Some(65536));
        assert_eq!(m.swap_limit, Some(536870912));
        assert_eq!(m.stat.get("swapcached"), Some(&12288));
        assert_eq!(m.stat.get("file"), Some(&4096));
        assert_eq!(m.oom_kills, Some(3));
        assert_eq!(m.working_set(), 16384 - 1024);

        // Without swap accounting the kernel writes no swap lines: no swap figures at all.
        let (_tmp, dir) = v1_dir(&[
            ("memory.usage_in_bytes", "16384\n"),
            (
                "memory.stat",
                "hierarchical_memory_limit 9223372036854771712\ntotal_cache 1\ntotal_rss 2\n",
            ),
        ]);
        let m = memory(&dir).expect("readable");
        assert_eq!((m.limit, m.swap_usage, m.swap_limit), (None, None, None));
        assert_eq!(m.oom_kills, None);
    }

    #[test]
    fn cpu_total_is_the_precise_usage() {
        let (_tmp, acct) = v1_dir(&[
            ("cpuacct.usage", "1753000000\n"),
            ("cpuacct.stat", "user 150\nsystem 25\n"),
        ]);
        let (_tmp2, cpu_dir) = v1_dir(&[(
            "cpu.stat",
            "nr_periods 10\nnr_throttled 4\nthrottled_time 5000\n",
        )]);
        let u = cpu(&acct, Some(&cpu_dir)).expect("readable");
        assert_eq!(u.user_ns, 1_500_000_000);
        assert_eq!(u.system_ns, 250_000_000);
        assert_eq!(u.total_ns, 1_753_000_000, "cpuacct.usage, not the tick sum");
        assert_eq!(
            (u.periods, u.throttled_periods, u.throttled_ns),
            (Some(10), Some(4), Some(5000))
        );
        let (_tmp3, bad) = v1_dir(&[("cpuacct.usage", "1\n"), ("cpuacct.stat", "user 1\n")]);
        assert!(cpu(&bad, None).is_err());
    }

    #[test]
    fn hierarchy_roots() {
        assert_eq!(
            hierarchy_root(
                Path::new("/sys/fs/cgroup/cpu/a/b"),
                Path::new("/sys/fs/cgroup")
            ),
            Path::new("/sys/fs/cgroup/cpu")
        );
    }
}
