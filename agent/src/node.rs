//! The node's own view (`GET /v1/node/metrics`, operators only): the host read the way
//! node_exporter reads it — `/proc/stat`, `/proc/meminfo`, `/proc/loadavg`, the host's
//! `/proc/net/dev` — plus filesystems through sysinfo.

use sysinfo::Disks;

use crate::exposition::{Exposition, Format, Kind};
use crate::host::{parse_meminfo, Host};
use crate::kernel_file::{self, KernelFileError};
use crate::netdev;

/// USER_HZ, the unit of `/proc/stat` CPU times.
const USER_HZ: f64 = 100.0;

/// Renders the host. Blocking I/O.
pub fn render(host: &Host, node_id: &str, format: Format) -> Result<String, KernelFileError> {
    let mut e = Exposition::new(format, 32 * 1024);
    let stat = kernel_file::read(&host.proc.join("stat"))?;
    let modes = [
        "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
    ];
    {
        let mut f = e.family(
            "node_cpu_seconds_total",
            Kind::Counter,
            "Seconds the CPUs spent in each mode.",
        );
        for line in stat
            .lines()
            .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        {
            let mut it = line.split_ascii_whitespace();
            let cpu = it
                .next()
                .unwrap_or("cpu")
                .trim_start_matches("cpu")
                .to_string();
            for (mode, v) in modes.iter().zip(it) {
                let v: f64 = v.parse().unwrap_or(0.0);
                f.sample(&[("cpu", &cpu), ("mode", mode)], v / USER_HZ);
            }
        }
    }
    for (key, name, kind, help) in [
        (
            "btime",
            "node_boot_time_seconds",
            Kind::Gauge,
            "Node boot time, in unixtime.",
        ),
        (
            "ctxt",
            "node_context_switches_total",
            Kind::Counter,
            "Total number of context switches.",
        ),
        (
            "processes",
            "node_forks_total",
            Kind::Counter,
            "Total number of forks.",
        ),
        (
            "procs_running",
            "node_procs_running",
            Kind::Gauge,
            "Number of processes in runnable state.",
        ),
        (
            "procs_blocked",
            "node_procs_blocked",
            Kind::Gauge,
            "Number of processes blocked waiting for I/O to complete.",
        ),
    ] {
        if let Some((_, v)) = kernel_file::flat_keyed(&stat).find(|(k, _)| *k == key) {
            e.family(name, kind, help).sample(&[], v as f64);
        }
    }
    let meminfo = kernel_file::read(&host.proc.join("meminfo"))?;
    for (field, v) in parse_meminfo(&meminfo) {
        let field = field.replace(['(', ')'], "_");
        let name = format!("node_memory_{field}_bytes");
        e.family(
            &name,
            Kind::Gauge,
            &format!("Memory information field {field}_bytes."),
        )
        .sample(&[], v as f64);
    }
    let loadavg = kernel_file::read(&host.proc.join("loadavg"))?;
    for (name, v) in ["node_load1", "node_load5", "node_load15"]
        .iter()
        .zip(loadavg.split_ascii_whitespace())
    {
        e.family(name, Kind::Gauge, "Load average.")
            .sample(&[], v.parse().unwrap_or(0.0));
    }
    let net_path = host.proc.join("net/dev");
    let devs = netdev::parse(&kernel_file::read(&net_path)?)
        .map_err(|w| KernelFileError::parse(&net_path, w))?;
    for (dir, names, rx) in [
        ("receive", netdev::RX_NAMES, true),
        ("transmit", netdev::TX_NAMES, false),
    ] {
        for (i, what) in names.iter().enumerate() {
            let name = format!("node_network_{dir}_{what}_total");
            let mut f = e.family(
                &name,
                Kind::Counter,
                &format!("Network device statistic {dir}_{what}."),
            );
            for d in &devs {
                f.sample(
                    &[("device", &d.device)],
                    (if rx { d.rx[i] } else { d.tx[i] }) as f64,
                );
            }
        }
    }
    let disks = Disks::new_with_refreshed_list();
    let list: Vec<_> = disks
        .list()
        .iter()
        .map(|d| {
            (
                d.name().to_string_lossy().into_owned(),
                d.file_system().to_string_lossy().into_owned(),
                d.mount_point().to_string_lossy().into_owned(),
                d.total_space(),
                d.available_space(),
            )
        })
        .collect();
    for (name, help, size) in [
        (
            "node_filesystem_size_bytes",
            "Filesystem size in bytes.",
            true,
        ),
        (
            "node_filesystem_avail_bytes",
            "Filesystem space available to non-root users in bytes.",
            false,
        ),
    ] {
        let mut f = e.family(name, Kind::Gauge, help);
        for (dev, fstype, mp, total, avail) in &list {
            f.sample(
                &[("device", dev), ("fstype", fstype), ("mountpoint", mp)],
                (if size { *total } else { *avail }) as f64,
            );
        }
    }
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
            ("nodename", node_id),
            ("release", &u.release),
            ("sysname", &u.sysname),
            ("version", &u.version),
        ],
        1.0,
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    e.family(
        "node_time_seconds",
        Kind::Gauge,
        "System time in seconds since epoch (1970).",
    )
    .sample(&[], now);
    Ok(e.finish())
}
