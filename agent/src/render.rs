//! The node_exporter view of one container: the same metric names, labels and types
//! node_exporter 1.x writes for a node, computed so that a container of N visible CPUs and a
//! memory limit looks like a machine of that size (per-CPU modes adding to 1 s/s, memory as
//! LXCFS computes it). What node_exporter has no name for uses cAdvisor's `container_*`.

use std::collections::BTreeSet;

use lookout_discovery::Instance;

use crate::cgroup::Memory;
use crate::exposition::{Exposition, Format, Kind};
use crate::host::Host;
use crate::netdev::{RX_NAMES, TX_NAMES};
use crate::snapshot::Snapshot;

/// Collector names, as `collect[]` / `exclude[]` and `node_scrape_collector_*` use them.
pub const COLLECTORS: &[&str] = &[
    "container",
    "cpu",
    "diskstats",
    "filesystem",
    "loadavg",
    "meminfo",
    "netdev",
    "pressure",
    "processes",
    "stat",
    "time",
    "uname",
    "vmstat",
];

/// Which collectors a request asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection(BTreeSet<&'static str>);

impl Selection {
    /// All collectors.
    pub fn all() -> Self {
        Selection(COLLECTORS.iter().copied().collect())
    }

    /// From a query string: `collect[]=a&collect[]=b` keeps only those, `exclude[]=…` drops
    /// those; both at once, or an unknown name, is an error (as in node_exporter).
    pub fn from_query(query: Option<&str>) -> Result<Self, String> {
        let mut collect = Vec::new();
        let mut exclude = Vec::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let list = match k {
                "collect[]" | "collect%5B%5D" => &mut collect,
                "exclude[]" | "exclude%5B%5D" => &mut exclude,
                _ => continue,
            };
            let name = COLLECTORS.iter().find(|c| **c == v).ok_or_else(|| {
                format!("unknown collector {v:?}; known: {}", COLLECTORS.join(", "))
            })?;
            list.push(*name);
        }
        match (collect.is_empty(), exclude.is_empty()) {
            (true, true) => Ok(Self::all()),
            (false, true) => Ok(Selection(collect.into_iter().collect())),
            (true, false) => {
                let mut all = Self::all();
                for e in exclude {
                    all.0.remove(e);
                }
                Ok(all)
            }
            (false, false) => Err("collect[] and exclude[] cannot be used together".into()),
        }
    }

    /// Whether a collector is selected.
    pub fn has(&self, name: &str) -> bool {
        self.0.contains(name)
    }
}

/// CPU modes node_exporter reports; only user, system and idle have a source per container.
const CPU_MODES: [&str; 8] = [
    "idle", "iowait", "irq", "nice", "softirq", "steal", "system", "user",
];

/// A rendered view and the collectors that failed in it.
pub struct View {
    /// The exposition text.
    pub text: String,
    /// Collectors whose success is 0.
    pub failed: Vec<&'static str>,
}

/// Renders one container.
pub fn container(
    snap: &Snapshot,
    inst: &Instance,
    host: &Host,
    sel: &Selection,
    format: Format,
) -> View {
    let mut e = Exposition::new(format, 32 * 1024);
    let mut outcome: Vec<(&'static str, bool)> = Vec::new();
    let cg = &snap.cgroup;

    if sel.has("cpu") {
        outcome.push(("cpu", cg.cpu.is_ok()));
        if let Ok(cpu) = &cg.cpu {
            let n = snap.visible_cpus;
            let user = cpu.user_ns as f64 / 1e9 / n as f64;
            let system = cpu.system_ns as f64 / 1e9 / n as f64;
            let mut f = e.family(
                "node_cpu_seconds_total",
                Kind::Counter,
                "Seconds the CPUs spent in each mode.",
            );
            for i in 0..n {
                let cpu_label = i.to_string();
                for mode in CPU_MODES {
                    let v = match mode {
                        "idle" => snap.idle_seconds,
                        "user" => user,
                        "system" => system,
                        _ => 0.0,
                    };
                    f.sample(&[("cpu", &cpu_label), ("mode", mode)], v);
                }
            }
        }
    }
    if sel.has("meminfo") {
        outcome.push(("meminfo", cg.memory.is_ok()));
        if let Ok(m) = &cg.memory {
            meminfo(&mut e, m, host);
        }
    }
    if sel.has("loadavg") {
        outcome.push(("loadavg", true));
        let ([l1, l5, l15], _) = snap.load;
        for (name, v) in [("node_load1", l1), ("node_load5", l5), ("node_load15", l15)] {
            e.family(name, Kind::Gauge, &format!("{}m load average.", &name[9..]))
                .sample(&[], v);
        }
    }
    if sel.has("stat") {
        outcome.push(("stat", true));
        let (_, tasks) = snap.load;
        e.family(
            "node_boot_time_seconds",
            Kind::Gauge,
            "Node boot time, in unixtime.",
        )
        .sample(&[], snap.boot_time.floor());
        e.family(
            "node_procs_running",
            Kind::Gauge,
            "Number of processes in runnable state.",
        )
        .sample(&[], tasks.running as f64);
        e.family(
            "node_procs_blocked",
            Kind::Gauge,
            "Number of processes blocked waiting for I/O to complete.",
        )
        .sample(&[], tasks.blocked as f64);
    }
    if sel.has("time") {
        outcome.push(("time", true));
        let now = snap
            .at
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        e.family(
            "node_time_seconds",
            Kind::Gauge,
            "System time in seconds since epoch (1970).",
        )
        .sample(&[], now);
    }
    if sel.has("uname") {
        outcome.push(("uname", true));
        let u = &host.uname;
        e.family(
            "node_uname_info",
            Kind::Gauge,
            "Labeled system information as provided by the uname system call.",
        )
        .sample(
            &[
                ("domainname", &u.domainname),
                ("machine", &u.machine),
                ("nodename", &inst.alias),
                ("release", &u.release),
                ("sysname", &u.sysname),
                ("version", &u.version),
            ],
            1.0,
        );
    }
    // Collectors whose namespace is the host's: success 0, no series, not an error.
    let mut withheld: Vec<&'static str> = Vec::new();
    if sel.has("filesystem") && snap.withheld.mnt {
        outcome.push(("filesystem", false));
        withheld.push("filesystem");
    } else if sel.has("filesystem") {
        outcome.push(("filesystem", snap.filesystems.is_ok()));
        if let Ok(fss) = &snap.filesystems {
            filesystems(&mut e, fss);
        }
    }
    if sel.has("netdev") && snap.withheld.net {
        outcome.push(("netdev", false));
        withheld.push("netdev");
    } else if sel.has("netdev") {
        outcome.push(("netdev", snap.net.is_ok()));
        if let Ok(devs) = &snap.net {
            for (dir, names, pick) in [
                ("receive", RX_NAMES, 0usize),
                ("transmit", TX_NAMES, 1usize),
            ] {
                for (i, what) in names.iter().enumerate() {
                    let name = format!("node_network_{dir}_{what}_total");
                    let help = format!("Network device statistic {dir}_{what}.");
                    let mut f = e.family(&name, Kind::Counter, &help);
                    for d in devs {
                        let v = if pick == 0 { d.rx[i] } else { d.tx[i] };
                        f.sample(&[("device", &d.device)], v as f64);
                    }
                }
            }
        }
    }
    if sel.has("diskstats") {
        outcome.push(("diskstats", cg.io.is_ok()));
        if let Ok(io) = &cg.io {
            let named: Vec<(String, &crate::cgroup::DeviceIo)> = io
                .iter()
                .map(|d| (host.block_device_name(d.major, d.minor), d))
                .collect();
            type Get = fn(&crate::cgroup::DeviceIo) -> u64;
            let families: [(&str, &str, Get); 4] = [
                (
                    "node_disk_reads_completed_total",
                    "The total number of reads completed successfully.",
                    |d| d.reads,
                ),
                (
                    "node_disk_writes_completed_total",
                    "The total number of writes completed successfully.",
                    |d| d.writes,
                ),
                (
                    "node_disk_read_bytes_total",
                    "The total number of bytes read successfully.",
                    |d| d.read_bytes,
                ),
                (
                    "node_disk_written_bytes_total",
                    "The total number of bytes written successfully.",
                    |d| d.write_bytes,
                ),
            ];
            for (name, help, get) in families {
                let mut f = e.family(name, Kind::Counter, help);
                for (dev, d) in &named {
                    f.sample(&[("device", dev)], get(d) as f64);
                }
            }
        }
    }
    if sel.has("pressure") {
        let psi = cg.pressure.as_ref().ok().and_then(Option::as_ref);
        outcome.push(("pressure", psi.is_some()));
        if let Some(p) = psi {
            let us = |v: Option<u64>| v.map(|v| v as f64 / 1e6);
            let rows = [
                (
                    "node_pressure_cpu_waiting_seconds_total",
                    "Total time in seconds that processes have waited for CPU time",
                    p.cpu.and_then(|s| us(s.some_us)),
                ),
                (
                    "node_pressure_memory_waiting_seconds_total",
                    "Total time in seconds that processes have waited for memory",
                    p.memory.and_then(|s| us(s.some_us)),
                ),
                (
                    "node_pressure_memory_stalled_seconds_total",
                    "Total time in seconds no process could make progress due to memory congestion",
                    p.memory.and_then(|s| us(s.full_us)),
                ),
                (
                    "node_pressure_io_waiting_seconds_total",
                    "Total time in seconds that processes have waited due to IO congestion",
                    p.io.and_then(|s| us(s.some_us)),
                ),
                (
                    "node_pressure_io_stalled_seconds_total",
                    "Total time in seconds no process could make progress due to IO congestion",
                    p.io.and_then(|s| us(s.full_us)),
                ),
                (
                    "node_pressure_irq_stalled_seconds_total",
                    "Total time in seconds no process could make progress due to IRQ congestion",
                    p.irq.and_then(|s| us(s.full_us)),
                ),
            ];
            for (name, help, v) in rows {
                if let Some(v) = v {
                    e.family(name, Kind::Counter, help).sample(&[], v);
                }
            }
        }
    }
    if sel.has("vmstat") {
        outcome.push(("vmstat", cg.memory.is_ok()));
        if let Ok(m) = &cg.memory {
            for key in ["pgfault", "pgmajfault", "pswpin", "pswpout"] {
                if let Some(v) = m.stat.get(key) {
                    let name = format!("node_vmstat_{key}");
                    e.family(
                        &name,
                        Kind::Untyped,
                        &format!("/proc/vmstat information field {key}."),
                    )
                    .sample(&[], *v as f64);
                }
            }
            if let Some(v) = m.oom_kills {
                e.family(
                    "node_vmstat_oom_kill",
                    Kind::Untyped,
                    "/proc/vmstat information field oom_kill.",
                )
                .sample(&[], v as f64);
            }
        }
    }
    if sel.has("processes") {
        outcome.push(("processes", cg.pids.is_ok()));
        if let Ok(p) = &cg.pids {
            e.family("node_processes_pids", Kind::Gauge, "Number of PIDs")
                .sample(&[], p.processes as f64);
            e.family(
                "node_processes_threads",
                Kind::Gauge,
                "Allocated threads in system",
            )
            .sample(&[], p.current as f64);
            if let Some(max) = p.max {
                e.family(
                    "node_processes_max_threads",
                    Kind::Gauge,
                    "Limit of threads in the system",
                )
                .sample(&[], max as f64);
            }
        }
    }
    if sel.has("container") {
        outcome.push(("container", cg.cpu.is_ok() || cg.memory.is_ok()));
        container_extras(&mut e, snap);
    }

    let mut f = e.family(
        "node_scrape_collector_duration_seconds",
        Kind::Gauge,
        "node_exporter: Duration of a collector scrape.",
    );
    for (name, _) in &outcome {
        let secs: f64 = snap
            .durations
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, s)| s)
            .sum();
        f.sample(&[("collector", name)], secs);
    }
    let mut f = e.family(
        "node_scrape_collector_success",
        Kind::Gauge,
        "node_exporter: Whether a collector succeeded.",
    );
    for (name, ok) in &outcome {
        f.sample(&[("collector", name)], if *ok { 1.0 } else { 0.0 });
    }
    View {
        text: e.finish(),
        failed: outcome
            .iter()
            .filter(|(n, ok)| !ok && !withheld.contains(n))
            .map(|(n, _)| *n)
            .collect(),
    }
}

/// `node_memory_*` as LXCFS computes `/proc/meminfo` for a container.
fn meminfo(e: &mut Exposition, m: &Memory, host: &Host) {
    let s = |k: &str| m.stat.get(k).copied().unwrap_or(0);
    let total = m.limit.map_or(host.mem_total, |l| l.min(host.mem_total));
    let free = total.saturating_sub(m.usage);
    let available =
        (free + s("active_file") + s("inactive_file") + s("slab_reclaimable")).min(total);
    // v2 reports the swap limit alone; v1 reports RAM + swap, so the swap part is the
    // difference. Unlimited swap is the host's.
    let swap_limit = match (m.swap_limit, host.layout) {
        (Some(l), crate::cgroup::Layout::Unified) => Some(l),
        (Some(l), _) => Some(l.saturating_sub(m.limit.unwrap_or(0))),
        (None, _) => None,
    };
    let swap_total = swap_limit.map_or(host.swap_total, |l| l.min(host.swap_total));
    let swap_free = swap_total.saturating_sub(m.swap_usage.unwrap_or(0));
    let rows: [(&str, u64); 28] = [
        ("MemTotal", total),
        ("MemFree", free),
        ("MemAvailable", available),
        ("Buffers", 0),
        ("Cached", s("file")),
        ("SwapCached", s("swapcached")),
        ("Active", s("active_anon") + s("active_file")),
        ("Inactive", s("inactive_anon") + s("inactive_file")),
        ("Active_anon", s("active_anon")),
        ("Inactive_anon", s("inactive_anon")),
        ("Active_file", s("active_file")),
        ("Inactive_file", s("inactive_file")),
        ("Unevictable", s("unevictable")),
        ("SwapTotal", swap_total),
        ("SwapFree", swap_free),
        ("Dirty", s("file_dirty")),
        ("Writeback", s("file_writeback")),
        ("AnonPages", s("anon")),
        ("Mapped", s("file_mapped")),
        ("Shmem", s("shmem")),
        (
            "Slab",
            s("slab").max(s("slab_reclaimable") + s("slab_unreclaimable")),
        ),
        ("SReclaimable", s("slab_reclaimable")),
        ("SUnreclaim", s("slab_unreclaimable")),
        ("KernelStack", s("kernel_stack")),
        ("PageTables", s("pagetables")),
        ("AnonHugePages", s("anon_thp")),
        ("Percpu", s("percpu")),
        ("VmallocUsed", s("vmalloc")),
    ];
    for (field, v) in rows {
        let name = format!("node_memory_{field}_bytes");
        let help = format!("Memory information field {field}_bytes.");
        e.family(&name, Kind::Gauge, &help).sample(&[], v as f64);
    }
}

fn fs_labels(f: &crate::filesystem::Filesystem) -> [(&'static str, &str); 3] {
    let m = &f.mount;
    [
        ("device", m.device.as_str()),
        ("fstype", m.fstype.as_str()),
        ("mountpoint", m.mountpoint.as_str()),
    ]
}

fn filesystems(e: &mut Exposition, fss: &[crate::filesystem::Filesystem]) {
    let labels = fs_labels;
    type Get = fn(&crate::filesystem::Usage) -> u64;
    let sized: [(&str, &str, Get); 5] = [
        (
            "node_filesystem_size_bytes",
            "Filesystem size in bytes.",
            |u| u.size,
        ),
        (
            "node_filesystem_free_bytes",
            "Filesystem free space in bytes.",
            |u| u.free,
        ),
        (
            "node_filesystem_avail_bytes",
            "Filesystem space available to non-root users in bytes.",
            |u| u.avail,
        ),
        (
            "node_filesystem_files",
            "Filesystem total file nodes.",
            |u| u.files,
        ),
        (
            "node_filesystem_files_free",
            "Filesystem total free file nodes.",
            |u| u.files_free,
        ),
    ];
    for (name, help, get) in sized {
        let mut fam = e.family(name, Kind::Gauge, help);
        for f in fss {
            if let Ok(u) = &f.usage {
                fam.sample(&labels(f), get(u) as f64);
            }
        }
    }
    type Flag = fn(&crate::filesystem::Filesystem) -> bool;
    let flags: [(&str, &str, Flag); 2] = [
        (
            "node_filesystem_readonly",
            "Filesystem read-only status.",
            |f| f.mount.readonly,
        ),
        (
            "node_filesystem_device_error",
            "Whether an error occurred while getting statistics for the given device.",
            |f| f.usage.is_err(),
        ),
    ];
    for (name, help, flag) in flags {
        let mut fam = e.family(name, Kind::Gauge, help);
        for f in fss {
            fam.sample(&labels(f), if flag(f) { 1.0 } else { 0.0 });
        }
    }
}

/// Container facts node_exporter has no name for, under cAdvisor's names.
fn container_extras(e: &mut Exposition, snap: &Snapshot) {
    let cg = &snap.cgroup;
    if let Ok(cpu) = &cg.cpu {
        e.family(
            "container_cpu_usage_seconds_total",
            Kind::Counter,
            "Cumulative cpu time consumed in seconds.",
        )
        .sample(&[], cpu.total_ns as f64 / 1e9);
        e.family(
            "container_cpu_user_seconds_total",
            Kind::Counter,
            "Cumulative user cpu time consumed in seconds.",
        )
        .sample(&[], cpu.user_ns as f64 / 1e9);
        e.family(
            "container_cpu_system_seconds_total",
            Kind::Counter,
            "Cumulative system cpu time consumed in seconds.",
        )
        .sample(&[], cpu.system_ns as f64 / 1e9);
        let throttle = [
            (
                "container_cpu_cfs_periods_total",
                "Number of elapsed enforcement period intervals.",
                cpu.periods.map(|v| v as f64),
            ),
            (
                "container_cpu_cfs_throttled_periods_total",
                "Number of throttled period intervals.",
                cpu.throttled_periods.map(|v| v as f64),
            ),
            (
                "container_cpu_cfs_throttled_seconds_total",
                "Total time duration the container has been throttled.",
                cpu.throttled_ns.map(|v| v as f64 / 1e9),
            ),
        ];
        for (name, help, v) in throttle {
            if let Some(v) = v {
                e.family(name, Kind::Counter, help).sample(&[], v);
            }
        }
    }
    if let Some(q) = cg.cpu_limit.quota_cores {
        e.family(
            "lookout_container_cpu_limit_cores",
            Kind::Gauge,
            "Effective CFS quota in cores (smallest over the cgroup and its ancestors).",
        )
        .sample(&[], q);
    }
    e.family(
        "lookout_container_visible_cpus",
        Kind::Gauge,
        "CPUs this container is shown to have (node_cpu_seconds_total's cpu labels).",
    )
    .sample(&[], snap.visible_cpus as f64);
    if let Ok(m) = &cg.memory {
        e.family("container_memory_usage_bytes", Kind::Gauge, "Current memory usage in bytes, including all memory regardless of when it was accessed.")
            .sample(&[], m.usage as f64);
        e.family(
            "container_memory_working_set_bytes",
            Kind::Gauge,
            "Current working set in bytes.",
        )
        .sample(&[], m.working_set() as f64);
        e.family(
            "container_memory_cache",
            Kind::Gauge,
            "Number of bytes of page cache memory.",
        )
        .sample(&[], m.stat.get("file").copied().unwrap_or(0) as f64);
        e.family("container_memory_rss", Kind::Gauge, "Size of RSS in bytes.")
            .sample(&[], m.stat.get("anon").copied().unwrap_or(0) as f64);
        if let Some(s) = m.swap_usage {
            e.family(
                "container_memory_swap",
                Kind::Gauge,
                "Container swap usage in bytes.",
            )
            .sample(&[], s as f64);
        }
        if let Some(l) = m.limit {
            e.family(
                "container_spec_memory_limit_bytes",
                Kind::Gauge,
                "Memory limit for the container (effective: smallest over ancestors).",
            )
            .sample(&[], l as f64);
        }
        if let Some(v) = m.limit_hits {
            e.family(
                "container_memory_failcnt",
                Kind::Counter,
                "Number of memory usage hits limits",
            )
            .sample(&[], v as f64);
        }
        if let Some(v) = m.oom_kills {
            e.family(
                "container_oom_events_total",
                Kind::Counter,
                "Count of out of memory events observed for the container",
            )
            .sample(&[], v as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_rules() {
        assert!(Selection::from_query(None).expect("ok").has("cpu"));
        let s = Selection::from_query(Some("collect[]=cpu&collect[]=meminfo")).expect("ok");
        assert!(s.has("cpu") && s.has("meminfo") && !s.has("netdev"));
        let s = Selection::from_query(Some("exclude[]=filesystem")).expect("ok");
        assert!(!s.has("filesystem") && s.has("cpu"));
        assert!(Selection::from_query(Some("collect[]=nope")).is_err());
        assert!(Selection::from_query(Some("collect[]=cpu&exclude[]=meminfo")).is_err());
        assert!(Selection::from_query(Some("collect%5B%5D=cpu"))
            .expect("encoded")
            .has("cpu"));
    }
}
