//! cgroup v2 readers (`Documentation/admin-guide/cgroup-v2.rst`). Times are in µs, memory in
//! bytes, `max` means unlimited; files are parsed by key because new keys may appear.

use std::path::Path;

use super::{
    timed, CgroupStats, CpuLimit, CpuUsage, DeviceIo, LimitFiles, Limits, Memory, MemoryStat, Pids,
};
use crate::kernel_file::{self, flat_keyed, Dir, KernelFileError};

/// `memory.stat` keys the node view uses (v2 names).
pub const MEMORY_STAT_KEYS: &[&str] = &[
    "anon",
    "file",
    "kernel_stack",
    "pagetables",
    "percpu",
    "sock",
    "vmalloc",
    "shmem",
    "file_mapped",
    "file_dirty",
    "file_writeback",
    "swapcached",
    "anon_thp",
    "inactive_anon",
    "active_anon",
    "inactive_file",
    "active_file",
    "unevictable",
    "slab_reclaimable",
    "slab_unreclaimable",
    "slab",
    "pgfault",
    "pgmajfault",
    "pswpin",
    "pswpout",
];

/// Effective limits of a v2 directory; `root` is the v2 mount (bounds ancestor walks).
pub fn read_limits(dir: &Dir, root: &Path, files: &LimitFiles) -> Limits {
    let min_over = |file: &str| {
        files
            .walk(dir, root, file)
            .into_iter()
            .flatten()
            .filter_map(|t| kernel_file::parse_limit(t.trim()).flatten())
            .min()
    };
    Limits {
        cpu: cpu_limit(dir, root, files),
        memory: min_over("memory.max"),
        swap: min_over("memory.swap.max"),
        pids: min_over("pids.max"),
        irq_pressure: false,
    }
}

/// Reads one container's v2 cgroup directory.
pub fn read(dir: Option<&Dir>, root: &Path, limits: &Limits) -> CgroupStats {
    let Some(dir) = dir else {
        let gone = || KernelFileError::Gone(root.to_path_buf());
        return CgroupStats {
            cpu: Err(gone()),
            cpu_limit: CpuLimit::default(),
            memory: Err(gone()),
            io: Err(gone()),
            pids: Err(gone()),
            pressure: Err(gone()),
            timings: Vec::new(),
        };
    };
    let mut t = Vec::with_capacity(5);
    CgroupStats {
        cpu: timed(&mut t, "cpu", || cpu(dir)),
        cpu_limit: limits.cpu,
        memory: timed(&mut t, "meminfo", || memory(dir, limits)),
        io: timed(&mut t, "diskstats", || io(dir)),
        pids: timed(&mut t, "processes", || pids(dir, limits)),
        pressure: timed(&mut t, "pressure", || {
            super::read_pressure(dir, limits.irq_pressure).map(Some)
        }),
        timings: t,
    }
}

/// `cpu.stat`: usage, user, system, throttling.
pub fn cpu(dir: &Dir) -> Result<CpuUsage, KernelFileError> {
    let text = dir.read("cpu.stat")?;
    let mut u = CpuUsage::default();
    let mut seen = false;
    for (k, v) in flat_keyed(&text) {
        match k {
            "usage_usec" => {
                u.total_ns = v.saturating_mul(1000);
                seen = true;
            }
            "user_usec" => u.user_ns = v.saturating_mul(1000),
            "system_usec" => u.system_ns = v.saturating_mul(1000),
            "nr_periods" => u.periods = Some(v),
            "nr_throttled" => u.throttled_periods = Some(v),
            "throttled_usec" => u.throttled_ns = Some(v.saturating_mul(1000)),
            _ => {}
        }
    }
    if !seen {
        return Err(KernelFileError::parse(
            &dir.join("cpu.stat"),
            "no usage_usec",
        ));
    }
    Ok(u)
}

/// Effective CPU limit: the smallest `cpu.max` quota over ancestors, and the effective
/// cpuset. Missing files mean the controller is not enabled there: no limit from it.
pub fn cpu_limit(dir: &Dir, root: &Path, files: &LimitFiles) -> CpuLimit {
    let quota_cores = files
        .walk(dir, root, "cpu.max")
        .into_iter()
        .flatten()
        .filter_map(|t| parse_cpu_max(&t))
        .fold(None, |min: Option<f64>, q| {
            Some(min.map_or(q, |m| m.min(q)))
        });
    let cpuset_cpus = dir
        .read("cpuset.cpus.effective")
        .ok()
        .and_then(|t| kernel_file::cpu_list_count(&t))
        .filter(|&n| n > 0);
    CpuLimit {
        quota_cores,
        cpuset_cpus,
    }
}

/// `$QUOTA $PERIOD` → cores, `max …` → `None`. Both are integers (µs) as the kernel
/// writes them; anything else, or a zero, is no limit rather than a nonsense one.
pub fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut it = text.split_ascii_whitespace();
    let quota: u64 = it.next()?.parse().ok()?;
    let period: u64 = it.next().unwrap_or("100000").parse().ok()?;
    (quota > 0 && period > 0).then(|| quota as f64 / period as f64)
}

/// Memory usage, events and breakdown, with the effective limits from `limits`.
pub fn memory(dir: &Dir, limits: &Limits) -> Result<Memory, KernelFileError> {
    let usage = dir.read_u64("memory.current")?;
    let stat_text = dir.read("memory.stat")?;
    let mut stat = MemoryStat::new();
    for (k, v) in flat_keyed(&stat_text) {
        if let Some(key) = MEMORY_STAT_KEYS.iter().find(|s| **s == k) {
            stat.insert(key, v);
        }
    }
    if stat.is_empty() {
        return Err(KernelFileError::parse(
            &dir.join("memory.stat"),
            "no known keys",
        ));
    }
    let events = dir.read("memory.events").ok();
    let event = |name: &str| {
        events
            .as_deref()
            .and_then(|t| flat_keyed(t).find(|(k, _)| *k == name).map(|(_, v)| v))
    };
    Ok(Memory {
        usage,
        limit: limits.memory,
        swap_usage: dir.read_u64("memory.swap.current").ok(),
        swap_limit: limits.swap,
        oom_kills: event("oom_kill"),
        limit_hits: event("max"),
        stat,
    })
}

/// `io.stat`: `MAJ:MIN rbytes= wbytes= rios= wios= …` per device.
pub fn io(dir: &Dir) -> Result<Vec<DeviceIo>, KernelFileError> {
    let text = dir.read("io.stat")?;
    parse_io_stat(&text).map_err(|e| KernelFileError::parse(&dir.join("io.stat"), e))
}

/// Parses `io.stat` content.
pub fn parse_io_stat(text: &str) -> Result<Vec<DeviceIo>, String> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut fields = line.split_ascii_whitespace();
        let dev = fields.next().ok_or("empty line")?;
        let (major, minor) = parse_dev(dev).ok_or_else(|| format!("bad device {dev:?}"))?;
        let mut d = DeviceIo {
            major,
            minor,
            ..DeviceIo::default()
        };
        for f in fields {
            let Some((k, v)) = f.split_once('=') else {
                continue;
            };
            let Ok(v) = v.parse::<u64>() else { continue };
            match k {
                "rbytes" => d.read_bytes = v,
                "wbytes" => d.write_bytes = v,
                "rios" => d.reads = v,
                "wios" => d.writes = v,
                _ => {}
            }
        }
        out.push(d);
    }
    Ok(out)
}

/// Parses `MAJ:MIN`.
pub fn parse_dev(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// `pids.current` and `pids.max`.
pub fn pids(dir: &Dir, limits: &Limits) -> Result<Pids, KernelFileError> {
    Ok(Pids {
        current: dir.read_u64("pids.current")?,
        processes: count_procs(dir, 0),
        max: limits.pids,
    })
}

/// `cgroup.procs` lines of `dir` and its sub-cgroups (a guest with its own init keeps its
/// processes below its cgroup), three levels deep at most. Sub-cgroups are rare and read by
/// path.
pub(crate) fn count_procs(dir: &Dir, depth: usize) -> u64 {
    let own = dir
        .read("cgroup.procs")
        .map(|t| t.lines().filter(|l| !l.is_empty()).count() as u64)
        .unwrap_or(0);
    if depth >= 3 || !dir.has_subdirs() {
        return own;
    }
    let children = std::fs::read_dir(dir.path())
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| count_procs(&Dir::unheld(e.path()), depth + 1))
                .sum()
        })
        .unwrap_or(0);
    own + children
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("50000 100000\n"), Some(0.5));
        assert_eq!(parse_cpu_max("200000 100000"), Some(2.0));
        assert_eq!(parse_cpu_max("x y"), None);
        assert_eq!(parse_cpu_max("0 0"), None);
    }

    #[test]
    fn io_stat() {
        let v = parse_io_stat(
            "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n259:0 rbytes=1\n",
        )
        .expect("valid");
        assert_eq!(v.len(), 2);
        assert_eq!(
            (v[0].major, v[0].minor, v[0].write_bytes, v[0].writes),
            (8, 0, 8192, 2)
        );
        assert!(parse_io_stat("sda rbytes=1").is_err());
    }
}
