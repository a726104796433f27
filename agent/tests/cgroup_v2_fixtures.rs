//! The agent's cgroup v2 path, end to end, on fixture trees in the kernel's formats.
//!
//! cgroup v2 controllers cannot be mounted on the machines these tests run on (the
//! controllers are on v1; the unified hierarchy carries only PSI), so each real v2 layout is
//! written as a fixture tree in the formats `Documentation/admin-guide/cgroup-v2.rst` and
//! `proc(5)` document (see `support/fixture.rs`), and the agent is pointed at it through its
//! configurable roots:
//!
//! 1. Docker, systemd driver: `system.slice/docker-<64hex>.scope`, runc `state.json`;
//! 2. Kubernetes with containerd: `kubepods.slice/…/kubepods-burstable-pod<uid>.slice/
//!    cri-containerd-<64hex>.scope`, limits on the pod slice, pause container skipped;
//! 3. Podman rootful with crun: `machine.slice/libpod-<64hex>.scope`, crun `status`;
//! 4. systemd-nspawn: `machine.slice/systemd-nspawn@web.service/payload`, no runtime state,
//!    found by the default cgroup path rule.
//!
//! Each test discovers with every source the agent runs (runc, crun, cgroup rules), collects
//! a snapshot, renders the node_exporter text and checks exact names, labels and values
//! derived from the fixture's numbers, and that `promtool check metrics` accepts the text.

#[path = "support/fixture.rs"]
mod fixture;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fixture::{
    boot_clock, CpuStat, Fixture, Limits, MemoryEvents, Placed, Psi, Spec, Stats, GIB, HOST_BTIME,
    HOST_CPUS, HOST_MEM_TOTAL_KB, HOST_SWAP_TOTAL_KB, MIB,
};
use lookout_agent::cache::{CollectError, Collector};
use lookout_agent::cgroup::Layout;
use lookout_agent::exposition::Format;
use lookout_agent::filesystem::Statfs;
use lookout_agent::host::Host;
use lookout_agent::loadavg;
use lookout_agent::registry::{Registry, Tracked};
use lookout_agent::render::{self, Selection};
use lookout_agent::source::crun::CrunSource;
use lookout_agent::source::rules::{self, RuleSource};
use lookout_agent::source::runc::RuncSource;
use lookout_agent::source::Source;
use lookout_agent::telemetry::Telemetry;

/// Docker container ids: 64 hex, too long for a DNS label.
const WEB_ID: &str = "3f4e1b2c5d6a7980a1b2c3d4e5f60718293a4b5c6d7e8f9012345678abcdef01";
const SIDECAR_ID: &str = "9b8a7c6d5e4f30211f2e3d4c5b6a79880716253443526170fedcba9876543210";
/// containerd ids of a pod's pause (sandbox) and app containers.
const PAUSE_ID: &str = "c0ffee00aa11bb22cc33dd44ee55ff66778899aabbccddeeff00112233445566";
const APP_ID: &str = "5a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
const POD_UID: &str = "9f3c2a7e-1b4d-4c8e-a5f6-2d7b9e0c1a3f";
/// Podman container id.
const PG_ID: &str = "e7d6c5b4a39281706f5e4d3c2b1a0f9e8d7c6b5a4938271605f4e3d2c1b0a998";

/// Every collector of the node view, by the names `node_scrape_collector_*` uses.
const ALL_COLLECTORS: [&str; 13] = [
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

/// A `Host` plus a registry with the agent's three sources over a fixture.
struct Agent {
    host: Arc<Host>,
    registry: Arc<Registry>,
}

impl Agent {
    fn over(fx: &Fixture) -> Agent {
        let host = fx.host();
        assert_eq!(
            host.layout,
            Layout::Unified,
            "cgroup.controllers at the root means pure v2"
        );
        assert_eq!(host.cpus, HOST_CPUS, "one CPU per cpuN line of /proc/stat");
        assert_eq!(host.mem_total, HOST_MEM_TOTAL_KB * 1024);
        assert_eq!(host.swap_total, HOST_SWAP_TOTAL_KB * 1024);
        assert_eq!(host.boot_time, HOST_BTIME);
        let sources: Vec<Box<dyn Source>> = vec![
            Box::new(RuncSource::new(fx.runc_roots())),
            Box::new(CrunSource::new(vec![fx.crun_state_root()])),
            Box::new(RuleSource::new(rules::defaults())),
        ];
        let registry = Arc::new(Registry::new(
            Arc::clone(&host),
            sources,
            Default::default(),
            "node-a".into(),
        ));
        registry.rescan();
        Agent { host, registry }
    }

    /// Instance ids in the inventory.
    fn ids(&self) -> BTreeSet<String> {
        self.registry
            .inventory()
            .containers
            .keys()
            .cloned()
            .collect()
    }

    /// The tracked container whose runtime id is `runtime_id`.
    fn tracked(&self, runtime_id: &str) -> Arc<Tracked> {
        let inv = self.registry.inventory();
        let found: Vec<_> = inv
            .containers
            .values()
            .filter(|t| t.container.instance.runtime_id == runtime_id)
            .cloned()
            .collect();
        assert_eq!(
            found.len(),
            1,
            "runtime id {runtime_id} tracked once; inventory: {:?}",
            inv.containers.keys().collect::<Vec<_>>()
        );
        found.into_iter().next().expect("one match")
    }

    fn collector(&self) -> Collector {
        // TTL zero: every call collects afresh, so tests see the fixture's current files.
        Collector::new(
            Arc::clone(&self.host),
            Statfs::new(Duration::from_secs(5)),
            Duration::ZERO,
            1,
            Arc::new(Telemetry::new()),
        )
    }

    /// Collects and renders one container, noting the boot clock around the collection.
    async fn scrape(&self, t: &Tracked) -> Scrape {
        let before = boot_clock();
        let snap = self
            .collector()
            .snapshot(t, Instant::now() + Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("snapshot of {}: {e}", t.container.instance.id));
        let after = boot_clock();
        let rendered = render::container(
            &snap,
            &t.container.instance,
            &self.host,
            &Selection::all(),
            Format::Text,
        );
        Scrape {
            view: View::parse(rendered.text, rendered.failed),
            before,
            after,
        }
    }
}

/// A rendered view and the boot-clock seconds just before and after its collection.
struct Scrape {
    view: View,
    before: f64,
    after: f64,
}

type Labels = BTreeMap<String, String>;

/// The Prometheus text 0.0.4 of one view, parsed.
struct View {
    text: String,
    /// Collectors the renderer reported as failed.
    failed: Vec<&'static str>,
    types: BTreeMap<String, String>,
    samples: BTreeMap<String, Vec<(Labels, f64)>>,
}

impl View {
    /// Parses the text; a series written twice is a failure.
    fn parse(text: String, failed: Vec<&'static str>) -> View {
        let mut types = BTreeMap::new();
        let mut samples: BTreeMap<String, Vec<(Labels, f64)>> = BTreeMap::new();
        for line in text.lines() {
            if let Some(t) = line.strip_prefix("# TYPE ") {
                let (name, kind) = t.split_once(' ').expect("TYPE name kind");
                assert!(
                    types.insert(name.to_string(), kind.to_string()).is_none(),
                    "TYPE of {name} written twice"
                );
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("series value");
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}"));
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, parse_labels(rest.strip_suffix('}').expect("}"))),
                None => (series, Labels::new()),
            };
            let list = samples.entry(name.to_string()).or_default();
            assert!(
                list.iter().all(|(l, _)| *l != labels),
                "series {series} written twice"
            );
            list.push((labels, value));
        }
        View {
            text,
            failed,
            types,
            samples,
        }
    }

    /// The sample of `name` with exactly these labels.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: Labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .get(name)?
            .iter()
            .find(|(l, _)| *l == want)
            .map(|(_, v)| *v)
    }

    /// Like [`View::get`], failing with the whole text when absent.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("{name}{labels:?} missing from the view:\n{}", self.text))
    }

    /// Every sample of a family.
    fn series(&self, name: &str) -> &[(Labels, f64)] {
        self.samples.get(name).map_or(&[], Vec::as_slice)
    }

    fn kind(&self, name: &str) -> &str {
        self.types
            .get(name)
            .unwrap_or_else(|| panic!("no TYPE for {name}"))
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.samples.keys().map(String::as_str)
    }
}

fn parse_labels(s: &str) -> Labels {
    let mut out = Labels::new();
    let mut chars = s.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        assert_eq!(
            chars.next(),
            Some('"'),
            "label {key} value starts with a quote"
        );
        let mut value = String::new();
        loop {
            match chars.next().expect("unterminated label value") {
                '\\' => match chars.next().expect("escape") {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        assert!(
            out.insert(key.clone(), value).is_none(),
            "label {key} twice"
        );
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    out
}

/// Values computed from fixture numbers by float division may differ in the last bit.
fn assert_close(got: f64, want: f64, what: &str) {
    let tol = 1e-9 * want.abs().max(1.0);
    assert!((got - want).abs() <= tol, "{what}: got {got}, want {want}");
}

/// What a view must show for one container, besides what its [`Stats`] say directly.
struct Expect<'a> {
    stats: &'a Stats,
    placed: &'a Placed,
    clk_tck: u64,
    /// Effective memory limit (min over ancestors, clamped to the host), bytes.
    mem_total: u64,
    /// True when some cgroup on the path has a `memory.max`.
    mem_limited: bool,
    /// min(effective `memory.swap.max`, host SwapTotal), bytes.
    swap_total: u64,
    /// Visible CPUs (LXCFS `max_cpu_count`).
    cpus: usize,
    /// Effective CFS quota in cores, if any.
    quota_cores: Option<f64>,
    /// `nodename` of `node_uname_info`.
    nodename: &'a str,
}

/// Everything a layout's view must show, exactly.
fn assert_node_view(s: &Scrape, e: &Expect) {
    let v = &s.view;
    let st = e.stats;

    // Collectors: all 13, all succeeded.
    let reported: BTreeSet<&str> = v
        .series("node_scrape_collector_success")
        .iter()
        .map(|(l, _)| l["collector"].as_str())
        .collect();
    assert_eq!(reported, ALL_COLLECTORS.into_iter().collect());
    for c in ALL_COLLECTORS {
        assert_eq!(
            v.value("node_scrape_collector_success", &[("collector", c)]),
            1.0,
            "collector {c} failed:\n{}",
            v.text
        );
        let took = v.value(
            "node_scrape_collector_duration_seconds",
            &[("collector", c)],
        );
        assert!(took.is_finite() && took < 30.0, "duration of {c}: {took}");
    }

    // CPU: N virtual CPUs, user/system spread evenly, idle synthesised from the age.
    let n = e.cpus;
    let cpu = v.series("node_cpu_seconds_total");
    assert_eq!(
        cpu.len(),
        n * 8,
        "8 modes for each of {n} CPUs:\n{}",
        v.text
    );
    let cpus: BTreeSet<String> = cpu.iter().map(|(l, _)| l["cpu"].clone()).collect();
    assert_eq!(cpus, (0..n).map(|i| i.to_string()).collect());
    let user = st.cpu.user_usec as f64 / 1e6 / n as f64;
    let system = st.cpu.system_usec as f64 / 1e6 / n as f64;
    let busy = (st.cpu.user_usec + st.cpu.system_usec) as f64 / 1e6 / n as f64;
    let started = e.placed.start_ticks as f64 / e.clk_tck as f64;
    let idle_lo = (s.before - started - busy).max(0.0) - 1e-6;
    let idle_hi = s.after - started - busy + 1e-6;
    for i in 0..n {
        let c = i.to_string();
        let mode = |m: &str| v.value("node_cpu_seconds_total", &[("cpu", &c), ("mode", m)]);
        assert_close(mode("user"), user, "user per CPU");
        assert_close(mode("system"), system, "system per CPU");
        let idle = mode("idle");
        assert!(
            (idle_lo..=idle_hi).contains(&idle),
            "cpu {c} idle {idle} not in [{idle_lo}, {idle_hi}] (age − busy/N)"
        );
        // The fixture's init started AGE_SECS before the fixture was written.
        assert!((idle - (fixture::AGE_SECS - busy)).abs() < 60.0);
        for m in ["iowait", "irq", "nice", "softirq", "steal"] {
            assert_eq!(mode(m), 0.0, "mode {m} has no per-container source");
        }
    }
    assert_eq!(v.kind("node_cpu_seconds_total"), "counter");

    // Memory, the LXCFS way (reference §12).
    let total = e.mem_total;
    let free = total - st.memory_current;
    let available =
        (free + st.stat("active_file") + st.stat("inactive_file") + st.stat("slab_reclaimable"))
            .min(total);
    let swap_free = e.swap_total.saturating_sub(st.swap_current);
    let mem = |f: &str| v.value(&format!("node_memory_{f}_bytes"), &[]);
    for (field, want) in [
        ("MemTotal", total),
        ("MemFree", free),
        ("MemAvailable", available),
        ("Buffers", 0),
        ("Cached", st.stat("file")),
        ("SwapCached", st.stat("swapcached")),
        ("Active", st.stat("active_anon") + st.stat("active_file")),
        (
            "Inactive",
            st.stat("inactive_anon") + st.stat("inactive_file"),
        ),
        ("Active_anon", st.stat("active_anon")),
        ("Inactive_anon", st.stat("inactive_anon")),
        ("Active_file", st.stat("active_file")),
        ("Inactive_file", st.stat("inactive_file")),
        ("Unevictable", st.stat("unevictable")),
        ("SwapTotal", e.swap_total),
        ("SwapFree", swap_free),
        ("Dirty", st.stat("file_dirty")),
        ("Writeback", st.stat("file_writeback")),
        ("AnonPages", st.stat("anon")),
        ("Mapped", st.stat("file_mapped")),
        ("Shmem", st.stat("shmem")),
        ("Slab", st.stat("slab")),
        ("SReclaimable", st.stat("slab_reclaimable")),
        ("SUnreclaim", st.stat("slab_unreclaimable")),
        ("KernelStack", st.stat("kernel_stack")),
        ("PageTables", st.stat("pagetables")),
        ("AnonHugePages", st.stat("anon_thp")),
    ] {
        assert_eq!(mem(field), want as f64, "node_memory_{field}_bytes");
        assert_eq!(v.kind(&format!("node_memory_{field}_bytes")), "gauge");
    }

    // vmstat from memory.stat and memory.events.
    for (key, want) in [
        ("pgfault", st.stat("pgfault")),
        ("pgmajfault", st.stat("pgmajfault")),
        ("pswpin", st.stat("pswpin")),
        ("pswpout", st.stat("pswpout")),
        ("oom_kill", st.events.oom_kill),
    ] {
        let name = format!("node_vmstat_{key}");
        assert_eq!(v.value(&name, &[]), want as f64, "{name}");
        assert_eq!(
            v.kind(&name),
            "untyped",
            "node_exporter types vmstat untyped"
        );
    }

    // PSI: total µs → seconds; waiting = some, stalled = full.
    let secs = |us: Option<u64>| us.expect("fixture writes this line") as f64 / 1e6;
    for (name, want) in [
        (
            "node_pressure_cpu_waiting_seconds_total",
            secs(st.cpu_pressure.some),
        ),
        (
            "node_pressure_memory_waiting_seconds_total",
            secs(st.memory_pressure.some),
        ),
        (
            "node_pressure_memory_stalled_seconds_total",
            secs(st.memory_pressure.full),
        ),
        (
            "node_pressure_io_waiting_seconds_total",
            secs(st.io_pressure.some),
        ),
        (
            "node_pressure_io_stalled_seconds_total",
            secs(st.io_pressure.full),
        ),
    ] {
        assert_close(v.value(name, &[]), want, name);
        assert_eq!(v.kind(name), "counter");
    }
    match st.irq_pressure {
        Some(irq) => assert_close(
            v.value("node_pressure_irq_stalled_seconds_total", &[]),
            secs(irq.full),
            "irq stalled",
        ),
        None => assert!(
            v.series("node_pressure_irq_stalled_seconds_total")
                .is_empty(),
            "no irq.pressure file, no irq series"
        ),
    }

    // Disks from io.stat, named from /sys/dev/block/MAJ:MIN/uevent (else MAJ:MIN).
    let devices: BTreeSet<&str> = v
        .series("node_disk_read_bytes_total")
        .iter()
        .map(|(l, _)| l["device"].as_str())
        .collect();
    assert_eq!(devices, ["253:0", "sda"].into_iter().collect());
    for d in &st.io {
        let dev = if d.dev == fixture::SDA {
            "sda".to_string()
        } else {
            format!("{}:{}", d.dev.0, d.dev.1)
        };
        let l = [("device", dev.as_str())];
        assert_eq!(v.value("node_disk_read_bytes_total", &l), d.rbytes as f64);
        assert_eq!(
            v.value("node_disk_written_bytes_total", &l),
            d.wbytes as f64
        );
        assert_eq!(
            v.value("node_disk_reads_completed_total", &l),
            d.rios as f64
        );
        assert_eq!(
            v.value("node_disk_writes_completed_total", &l),
            d.wios as f64
        );
    }
    assert_eq!(v.kind("node_disk_read_bytes_total"), "counter");

    // Network of the container's netns.
    let rx = [
        "bytes",
        "packets",
        "errs",
        "drop",
        "fifo",
        "frame",
        "compressed",
        "multicast",
    ];
    let tx = [
        "bytes",
        "packets",
        "errs",
        "drop",
        "fifo",
        "colls",
        "carrier",
        "compressed",
    ];
    for dev in &st.net {
        let l = [("device", dev.name.as_str())];
        for (i, what) in rx.iter().enumerate() {
            let name = format!("node_network_receive_{what}_total");
            assert_eq!(v.value(&name, &l), dev.rx[i] as f64, "{name} {}", dev.name);
        }
        for (i, what) in tx.iter().enumerate() {
            let name = format!("node_network_transmit_{what}_total");
            assert_eq!(v.value(&name, &l), dev.tx[i] as f64, "{name} {}", dev.name);
        }
    }
    assert_eq!(
        v.series("node_network_receive_bytes_total").len(),
        st.net.len()
    );
    assert_eq!(v.kind("node_network_receive_bytes_total"), "counter");

    // cAdvisor names for what node_exporter cannot say.
    let ws = st.memory_current - st.stat("inactive_file");
    for (name, want) in [
        (
            "container_cpu_usage_seconds_total",
            st.cpu.usage_usec as f64 / 1e6,
        ),
        (
            "container_cpu_user_seconds_total",
            st.cpu.user_usec as f64 / 1e6,
        ),
        (
            "container_cpu_system_seconds_total",
            st.cpu.system_usec as f64 / 1e6,
        ),
        ("container_cpu_cfs_periods_total", st.cpu.nr_periods as f64),
        (
            "container_cpu_cfs_throttled_periods_total",
            st.cpu.nr_throttled as f64,
        ),
        (
            "container_cpu_cfs_throttled_seconds_total",
            st.cpu.throttled_usec as f64 / 1e6,
        ),
        ("container_memory_usage_bytes", st.memory_current as f64),
        ("container_memory_working_set_bytes", ws as f64),
        ("container_memory_cache", st.stat("file") as f64),
        ("container_memory_rss", st.stat("anon") as f64),
        ("container_memory_swap", st.swap_current as f64),
        ("container_memory_failcnt", st.events.max as f64),
        ("container_oom_events_total", st.events.oom_kill as f64),
        ("lookout_container_visible_cpus", n as f64),
    ] {
        assert_close(v.value(name, &[]), want, name);
    }
    if e.mem_limited {
        assert_eq!(
            v.value("container_spec_memory_limit_bytes", &[]),
            total as f64
        );
    } else {
        assert!(v.series("container_spec_memory_limit_bytes").is_empty());
    }
    match e.quota_cores {
        Some(q) => assert_close(
            v.value("lookout_container_cpu_limit_cores", &[]),
            q,
            "quota",
        ),
        None => assert!(v.series("lookout_container_cpu_limit_cores").is_empty()),
    }

    // Processes.
    assert_eq!(
        v.value("node_processes_threads", &[]),
        st.threads.len() as f64
    );

    // Identity and clocks.
    let u = rustix::system::uname();
    let s_ = |c: &std::ffi::CStr| c.to_string_lossy().into_owned();
    let uname = v.series("node_uname_info");
    assert_eq!(uname.len(), 1);
    let want: Labels = [
        ("domainname", s_(u.domainname())),
        ("machine", s_(u.machine())),
        ("nodename", e.nodename.to_string()),
        ("release", s_(u.release())),
        ("sysname", "Linux".to_string()),
        ("version", s_(u.version())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(uname[0], (want, 1.0));
    assert_eq!(
        v.value("node_boot_time_seconds", &[]),
        (HOST_BTIME as f64 + started).floor(),
        "btime + start ticks / CLK_TCK"
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64();
    let t = v.value("node_time_seconds", &[]);
    assert!((now - 60.0..=now).contains(&t), "node_time_seconds {t}");

    // Filesystems: overlay root and the volumes; pseudo filesystems left out.
    let mounts: BTreeMap<&str, &Labels> = v
        .series("node_filesystem_readonly")
        .iter()
        .map(|(l, _)| (l["mountpoint"].as_str(), l))
        .collect();
    assert_eq!(
        mounts.keys().copied().collect::<Vec<_>>(),
        ["/", "/data", "/etc/hostname"]
    );
    let labels_of = |mp: &str| -> Vec<(String, String)> {
        mounts[mp]
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(
        labels_of("/"),
        pairs(&[
            ("device", "overlay"),
            ("fstype", "overlay"),
            ("mountpoint", "/")
        ])
    );
    assert_eq!(
        labels_of("/data"),
        pairs(&[
            ("device", "/dev/sda1"),
            ("fstype", "ext4"),
            ("mountpoint", "/data")
        ])
    );
    for mp in ["/", "/data", "/etc/hostname"] {
        let owned = labels_of(mp);
        let l: Vec<(&str, &str)> = owned
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let size = v.value("node_filesystem_size_bytes", &l);
        let free = v.value("node_filesystem_free_bytes", &l);
        let avail = v.value("node_filesystem_avail_bytes", &l);
        assert!(size > 0.0, "{mp} size {size}");
        assert!(
            avail <= free && free <= size,
            "{mp}: {avail} ≤ {free} ≤ {size}"
        );
        assert!(v.value("node_filesystem_files", &l) > 0.0);
        assert_eq!(v.value("node_filesystem_device_error", &l), 0.0);
        let ro = if mp == "/data" { 1.0 } else { 0.0 };
        assert_eq!(v.value("node_filesystem_readonly", &l), ro, "{mp} readonly");
    }
    assert!(v.failed.is_empty(), "failed collectors {:?}", v.failed);

    promtool_check(&v.text);
}

/// promtool lint findings the view inherits from the exporters whose names it keeps, as
/// (metric name prefix, finding): node_exporter's `/proc/meminfo` field names
/// (`node_memory_MemTotal_bytes`) are not snake_case, and cAdvisor types its
/// `container_memory_failcnt` a counter without `_total`. Any other finding fails.
const ACCEPTED_LINT: [(&str, &str); 2] = [
    (
        "node_memory_",
        "metric names should be written in 'snake_case' not 'camelCase'",
    ),
    (
        "container_memory_failcnt ",
        "counter metrics should have \"_total\" suffix",
    ),
];

/// Pipes the text into `promtool check metrics` (Debian package `prometheus`). Parse errors
/// fail; lint findings fail unless listed in [`ACCEPTED_LINT`].
fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}): install the prometheus package (apt-get install prometheus)")
        });
    child
        .stdin
        .take()
        .expect("stdin piped")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => {}
        // 3: lint problems only; every one must be an accepted one.
        Some(3) => {
            for line in stdout.lines().chain(stderr.lines()) {
                let ok = ACCEPTED_LINT.iter().any(|(prefix, finding)| {
                    line.strip_prefix(prefix)
                        .is_some_and(|rest| rest.ends_with(finding))
                });
                assert!(ok, "promtool lint finding: {line}\n{text}");
            }
        }
        _ => panic!(
            "promtool check metrics failed ({}):\n{stdout}{stderr}\n--- text ---\n{text}",
            out.status
        ),
    }
}

/// SHA-256 of `s`, hex, computed by coreutils (not by the code under test).
fn sha256_hex(s: &str) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum (coreutils) runs");
    child
        .stdin
        .take()
        .expect("stdin piped")
        .write_all(s.as_bytes())
        .expect("write to sha256sum");
    let out = child.wait_with_output().expect("sha256sum finishes");
    String::from_utf8(out.stdout).expect("hex")[..64].to_string()
}

/// The derived instance id of a 64-hex runtime id: its first 40 characters, `-`, and 12 hex
/// digits of its SHA-256.
fn derived_id(runtime_id: &str) -> String {
    format!("{}-{}", &runtime_id[..40], &sha256_hex(runtime_id)[..12])
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Docker's web container: 0.5 CPU, 256 MiB + 256 MiB swap, OOM history, irq PSI; plus an
/// unlabelled sidecar with no hostname.
fn docker_fixture(fx: &Fixture) -> (Placed, Stats, Placed) {
    let mut s = Stats::typical(150 * MIB, 60 * MIB);
    s.cpu = CpuStat::new(8_000_000, 4_500_000, 5_000, 120, 3_250_000);
    s.cpu_max = Some((50_000, 100_000));
    s.memory_max = Some(256 * MIB);
    s.swap_max = Some(256 * MIB);
    s.swap_current = 12 * MIB;
    s.events = MemoryEvents {
        low: 0,
        high: 0,
        max: 17,
        oom: 3,
        oom_kill: 2,
        oom_group_kill: 0,
    };
    s.pids_max = Some(4096);
    s.irq_pressure = Some(Psi {
        some: None,
        full: Some(98_765),
    });
    let web = fx.docker_systemd(
        WEB_ID,
        &Spec::new(s.clone(), "nginx")
            .annotate("lookout.tenant", "acme")
            .annotate("lookout.alias", "web-1")
            .annotate("lookout.groups", "web,frontend")
            .hostname(&WEB_ID[..12]),
    );
    let sidecar = fx.docker_systemd(
        SIDECAR_ID,
        &Spec::new(Stats::typical(20 * MIB, 5 * MIB), "envoy"),
    );
    (web, s, sidecar)
}

#[tokio::test]
async fn docker_with_the_systemd_driver() {
    let fx = Fixture::new();
    let (web, s, sidecar) = docker_fixture(&fx);
    let agent = Agent::over(&fx);

    // Both found once, by runc state, with routable ids derived from the 64-hex ids.
    assert_eq!(
        agent.ids(),
        [derived_id(WEB_ID), derived_id(SIDECAR_ID)]
            .into_iter()
            .collect()
    );
    let t = agent.tracked(WEB_ID);
    let inst = &t.container.instance;
    assert_eq!(inst.id, derived_id(WEB_ID));
    assert!(is_dns_label(&inst.id), "{}", inst.id);
    assert_eq!(inst.source, "runc");
    assert_eq!(inst.node, "node-a");
    assert_eq!(inst.tenant.as_deref(), Some("acme"));
    assert_eq!(inst.alias, "web-1", "lookout.alias wins over the hostname");
    assert_eq!(inst.groups, ["frontend", "web"]);
    assert_eq!(t.container.pid, web.pid);
    assert_eq!(t.container.start_ticks, web.start_ticks);
    assert_eq!(
        t.container.cgroups.unified.as_deref(),
        Some(web.cgroup.as_path()),
        "state.json's /sys/fs/cgroup path rebased onto the fixture root"
    );
    assert_eq!(t.container.rootfs.as_deref(), Some(web.rootfs.as_path()));

    let side = agent.tracked(SIDECAR_ID);
    assert_eq!(side.container.instance.tenant, None, "no label, no owner");
    assert_eq!(
        side.container.instance.alias, SIDECAR_ID,
        "no alias label, no k8s names, no hostname: the runtime id"
    );
    assert_eq!(side.container.pid, sidecar.pid);

    let scrape = agent.scrape(&t).await;
    assert_node_view(
        &scrape,
        &Expect {
            stats: &s,
            placed: &web,
            clk_tck: fx.clk_tck,
            mem_total: 256 * MIB,
            mem_limited: true,
            swap_total: 256 * MIB,
            // quota 0.5 → ceil = 1; cpuset 0-3 → 4; min = 1.
            cpus: 1,
            quota_cores: Some(0.5),
            nodename: "web-1",
        },
    );
    assert_eq!(scrape.view.value("node_processes_max_threads", &[]), 4096.0);
    // Not sampled yet: load averages start at zero, like the kernel's at boot.
    for name in ["node_load1", "node_load5", "node_load15"] {
        assert_eq!(scrape.view.value(name, &[]), 0.0, "{name}");
    }
    assert_eq!(scrape.view.value("node_procs_running", &[]), 0.0);
    assert_eq!(scrape.view.value("node_procs_blocked", &[]), 0.0);
}

#[tokio::test]
async fn kubernetes_pod_slice_limits_apply_to_containerd_containers() {
    let fx = Fixture::new();
    let pod = fx.kubernetes_pod(
        "burstable",
        POD_UID,
        7 * GIB,
        Limits {
            memory_max: Some(512 * MIB),
            swap_max: None,
            cpu_max: Some((150_000, 100_000)),
            pids_max: None,
        },
    );
    let cri = |spec: Spec, kind: &str, sandbox_id: &str| {
        spec.annotate("io.kubernetes.cri.container-type", kind)
            .annotate("io.kubernetes.cri.sandbox-id", sandbox_id)
            .annotate("io.kubernetes.cri.sandbox-name", "api-7d9f8c6b5-x2x4q")
            .annotate("io.kubernetes.cri.sandbox-namespace", "team-a")
            .annotate("io.kubernetes.cri.sandbox-uid", POD_UID)
    };
    let pause = fx.containerd_cri(
        &pod,
        PAUSE_ID,
        &cri(
            Spec::new(Stats::typical(4 * MIB, 2 * MIB), "pause"),
            "sandbox",
            PAUSE_ID,
        )
        .annotate(
            "io.kubernetes.cri.sandbox-log-directory",
            &format!("/var/log/pods/team-a_api-7d9f8c6b5-x2x4q_{POD_UID}"),
        )
        .hostname("api-7d9f8c6b5-x2x4q"),
    );
    // The app container: no limits of its own (kubelet puts them on the pod slice), no swap.
    let mut s = Stats::typical(300 * MIB, 120 * MIB);
    s.cpu = CpuStat::new(90_000_000, 30_000_000, 80_000, 4_100, 61_500_000);
    s.swap_max = Some(0);
    s.events = MemoryEvents {
        low: 0,
        high: 0,
        max: 5,
        oom: 1,
        oom_kill: 1,
        oom_group_kill: 0,
    };
    s.threads = vec!['S', 'S', 'R', 'S'];
    let app = fx.containerd_cri(
        &pod,
        APP_ID,
        &cri(Spec::new(s.clone(), "api"), "container", PAUSE_ID)
            .annotate("io.kubernetes.cri.container-name", "app")
            .annotate(
                "io.kubernetes.cri.image-name",
                "registry.example.com/team-a/api:1.4.2",
            )
            .hostname("api-7d9f8c6b5-x2x4q"),
    );
    assert_eq!(
        app.cgroup_rel,
        format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/\
             cri-containerd-{APP_ID}.scope",
            POD_UID.replace('-', "_")
        )
    );
    let agent = Agent::over(&fx);

    // Only the app: the pause container is the pod's sandbox, not a workload.
    assert_eq!(agent.ids(), [derived_id(APP_ID)].into_iter().collect());
    let inv = agent.registry.inventory();
    assert!(inv
        .containers
        .values()
        .all(|t| t.container.pid != pause.pid && t.container.instance.runtime_id != PAUSE_ID));
    let t = agent.tracked(APP_ID);
    let inst = &t.container.instance;
    assert!(is_dns_label(&inst.id));
    assert_eq!(inst.source, "runc");
    assert_eq!(inst.tenant.as_deref(), Some("team-a"), "the pod namespace");
    assert_eq!(inst.alias, "api-7d9f8c6b5-x2x4q/app", "<pod>/<container>");
    assert_eq!(
        inst.image.as_deref(),
        Some("registry.example.com/team-a/api:1.4.2")
    );

    let scrape = agent.scrape(&t).await;
    assert_node_view(
        &scrape,
        &Expect {
            stats: &s,
            placed: &app,
            clk_tck: fx.clk_tck,
            // The pod slice's 512 MiB, not the leaf's `max` nor kubepods' 7 GiB.
            mem_total: 512 * MIB,
            mem_limited: true,
            // Leaf memory.swap.max 0 (kubelet without NodeSwap).
            swap_total: 0,
            // Pod quota 1.5 cores → ceil = 2; cpuset 0-3 → 4; min = 2.
            cpus: 2,
            quota_cores: Some(1.5),
            nodename: "api-7d9f8c6b5-x2x4q/app",
        },
    );
}

#[tokio::test]
async fn podman_rootful_with_crun_status_files() {
    let fx = Fixture::new();
    let mut s = Stats::typical(80 * MIB, 400 * MIB);
    s.cpu = CpuStat::new(150_000_000, 30_000_000, 0, 0, 0);
    s.cpuset_cpus = "0-2".into();
    s.swap_current = 3 * MIB;
    s.events.max = 0;
    s.threads = vec!['S', 'S', 'S', 'S', 'R'];
    let pg = fx.podman_crun(
        PG_ID,
        &Spec::new(s.clone(), "postgres")
            .annotate("io.container.manager", "libpod")
            .annotate("org.opencontainers.image.stopSignal", "15")
            .annotate("lookout.tenant", "data-team")
            .hostname("pg-primary"),
    );
    let agent = Agent::over(&fx);

    // Only the container: conmon's scope holds a process but is no container.
    assert_eq!(agent.ids(), [derived_id(PG_ID)].into_iter().collect());
    let t = agent.tracked(PG_ID);
    let inst = &t.container.instance;
    assert_eq!(inst.source, "crun");
    assert_eq!(inst.tenant.as_deref(), Some("data-team"));
    assert_eq!(inst.alias, "pg-primary", "the bundle's hostname");
    assert_eq!(
        inst.labels.get("io.container.manager").map(String::as_str),
        Some("libpod")
    );
    assert_eq!(t.container.pid, pg.pid);
    assert_eq!(
        t.container.cgroups.unified.as_deref(),
        Some(pg.cgroup.as_path()),
        "cgroup from /proc/<pid>/cgroup `0::/machine.slice/libpod-….scope`"
    );

    let scrape = agent.scrape(&t).await;
    assert_node_view(
        &scrape,
        &Expect {
            stats: &s,
            placed: &pg,
            clk_tck: fx.clk_tck,
            // No memory.max anywhere: the host's MemTotal.
            mem_total: HOST_MEM_TOTAL_KB * 1024,
            mem_limited: false,
            swap_total: HOST_SWAP_TOTAL_KB * 1024,
            // No quota; cpuset 0-2 → 3.
            cpus: 3,
            quota_cores: None,
            nodename: "pg-primary",
        },
    );
    assert!(
        scrape.view.series("node_processes_max_threads").is_empty(),
        "pids.max is max"
    );
}

/// nspawn running a plain command (no `--boot`): its init sits in `payload` itself, next to
/// the `supervisor` cgroup of the nspawn process; limits are the unit's, on the service.
#[tokio::test]
async fn systemd_nspawn_found_by_the_default_cgroup_rule() {
    let fx = Fixture::new();
    let mut s = Stats::typical(200 * MIB, 300 * MIB);
    s.cpu = CpuStat::new(40_000_000, 20_000_000, 12_000, 0, 0);
    s.swap_current = 40 * MIB;
    let web = fx.systemd_nspawn(
        "web",
        Limits {
            memory_max: Some(GIB),
            swap_max: Some(512 * MIB),
            cpu_max: Some((600_000, 100_000)),
            pids_max: Some(16_384),
        },
        &Spec::new(s.clone(), "systemd"),
    );
    assert_eq!(
        web.cgroup_rel,
        "machine.slice/systemd-nspawn@web.service/payload"
    );
    assert!(web.state.is_none(), "nspawn leaves no runtime state");
    let agent = Agent::over(&fx);

    assert_eq!(agent.ids(), ["web".to_string()].into_iter().collect());
    let t = agent.tracked("web");
    let inst = &t.container.instance;
    assert_eq!(inst.id, "web", "a DNS label already");
    assert_eq!(inst.source, "cgroup-rule:systemd-nspawn");
    assert_eq!(inst.tenant, None, "the default rules grant no ownership");
    assert_eq!(inst.alias, "web");
    assert_eq!(
        t.container.pid, web.pid,
        "the payload's init, not the supervisor"
    );
    assert_eq!(
        t.container.cgroups.unified.as_deref(),
        Some(web.cgroup.as_path())
    );

    let scrape = agent.scrape(&t).await;
    assert_node_view(
        &scrape,
        &Expect {
            stats: &s,
            placed: &web,
            clk_tck: fx.clk_tck,
            // The service's MemoryMax=1G; the payload's own memory.max is `max`.
            mem_total: GIB,
            mem_limited: true,
            // The service's memory.swap.max.
            swap_total: 512 * MIB,
            // Quota 6 cores on the service; cpuset 0-3 → 4; min = 4 = all host CPUs.
            cpus: 4,
            quota_cores: Some(6.0),
            nodename: "web",
        },
    );
}

/// `systemd-nspawn@.service` always boots the guest (`--boot`): the guest's systemd sits in
/// `payload/init.scope`, its services in `payload/system.slice/…`, and `payload` holds no
/// process of its own but accounts them all. The container is `payload`.
///
/// Regression: the agent once took the first pid found below `payload` and then that pid's
/// own cgroup, so one service's memory, CPU, IO, PIDs and PSI were shown as the whole
/// machine's. Rule-found containers are now read at the matched cgroup.
#[tokio::test]
async fn systemd_nspawn_booted_guest_is_read_at_its_payload_cgroup() {
    let fx = Fixture::new();
    // The payload's files account the whole guest…
    let mut s = Stats::typical(200 * MIB, 300 * MIB);
    s.cpu = CpuStat::new(40_000_000, 20_000_000, 0, 0, 0);
    s.threads = vec!['S', 'S', 'R'];
    // …its sub-cgroups only their part.
    let mut init = Stats::typical(8 * MIB, 12 * MIB);
    init.cpu = CpuStat::new(1_500_000, 900_000, 0, 0, 0);
    init.threads = vec!['S'];
    let mut nginx = Stats::typical(60 * MIB, 90 * MIB);
    nginx.cpu = CpuStat::new(30_000_000, 15_000_000, 0, 0, 0);
    nginx.threads = vec!['S', 'R'];
    let web = fx.systemd_nspawn_booted(
        "web",
        Limits {
            memory_max: Some(GIB),
            ..Limits::default()
        },
        &Spec::new(s.clone(), "systemd"),
        &init,
        &nginx,
    );
    let agent = Agent::over(&fx);

    assert_eq!(agent.ids(), ["web".to_string()].into_iter().collect());
    let t = agent.tracked("web");
    assert_eq!(t.container.instance.source, "cgroup-rule:systemd-nspawn");
    assert_eq!(
        t.container.cgroups.unified.as_deref(),
        Some(web.cgroup.as_path()),
        "the matched payload cgroup, not a sub-cgroup of the guest"
    );
    assert_eq!(
        t.container.pid, web.pid,
        "the guest's init (payload/init.scope), whose start time is the machine's"
    );
    let scrape = agent.scrape(&t).await;
    assert_node_view(
        &scrape,
        &Expect {
            stats: &s,
            placed: &web,
            clk_tck: fx.clk_tck,
            mem_total: GIB,
            mem_limited: true,
            swap_total: HOST_SWAP_TOTAL_KB * 1024,
            // No quota anywhere; cpuset 0-3 → 4.
            cpus: 4,
            quota_cores: None,
            nodename: "web",
        },
    );
}

#[tokio::test]
async fn load_average_follows_sampled_task_states() {
    let fx = Fixture::new();
    let (web, _, _) = docker_fixture(&fx);
    let agent = Agent::over(&fx);
    let t = agent.tracked(WEB_ID);

    // Threads S, R, D: one runnable, one uninterruptible.
    let dir = lookout_agent::kernel_file::Dir::open(web.cgroup.clone());
    assert!(dir.is_held(), "the fixture cgroup directory is held open");
    let states = loadavg::sample(&dir, Layout::Unified, &fx.roots.proc)
        .expect("cgroup.threads and /proc/<tid>/stat readable");
    assert_eq!(
        (states.running, states.blocked, states.threads),
        (1, 1, 3),
        "{states:?}"
    );

    // The registry's sampler, once: the first tick of its interval fires at once (the
    // kernel's 5 s, so the kernel's decay factors; the second tick is 5 s away).
    let (stop, rx) = tokio::sync::watch::channel(false);
    let sampler = tokio::spawn(Arc::clone(&agent.registry).sample_load(Duration::from_secs(5), rx));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !t.view.lock().expect("view lock").sampled {
        assert!(Instant::now() < deadline, "sampler never ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(true).expect("sampler listening");
    sampler.await.expect("sampler ends");

    // calc_load from 0 with active = 2 (fixed point 4096), FIXED_1 = 2048:
    // (4096·(2048 − e) + 2047) / 2048 → 328, 68, 22 for e = 1884, 2014, 2037.
    let v = agent.scrape(&t).await.view;
    assert_eq!(v.value("node_load1", &[]), 328.0 / 2048.0);
    assert_eq!(v.value("node_load5", &[]), 68.0 / 2048.0);
    assert_eq!(v.value("node_load15", &[]), 22.0 / 2048.0);
    assert_eq!(v.value("node_procs_running", &[]), 1.0);
    assert_eq!(v.value("node_procs_blocked", &[]), 1.0);
    promtool_check(&v.text);
}

/// Rewrites the state letter of thread `tid` in the fixture's `/proc/<tid>/stat`.
fn set_thread_state(fx: &Fixture, tid: u32, state: char) {
    let path = fx.roots.proc.join(format!("{tid}/stat"));
    let text = std::fs::read_to_string(&path).expect("thread stat");
    let at = text.rfind(')').expect("comm ends") + 2;
    let mut out = text.clone();
    out.replace_range(at..at + 1, &state.to_string());
    std::fs::write(&path, out).expect("write thread stat");
}

/// Adds `usec` to `usage_usec` in the fixture cgroup's `cpu.stat`.
fn add_cpu_time(dir: &std::path::Path, usec: u64) {
    let path = dir.join("cpu.stat");
    let text = std::fs::read_to_string(&path).expect("cpu.stat");
    let out: String = text
        .lines()
        .map(|l| match l.strip_prefix("usage_usec ") {
            Some(v) => format!("usage_usec {}\n", v.parse::<u64>().expect("usec") + usec),
            None => format!("{l}\n"),
        })
        .collect();
    std::fs::write(&path, out).expect("write cpu.stat");
}

// Multi-threaded: the test polls with blocking sleeps while the sampler runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_container_is_sampled_from_its_cpu_time_alone() {
    let fx = Fixture::new();
    let (web, _, _) = docker_fixture(&fx);
    for tid in &web.tids {
        set_thread_state(&fx, *tid, 'S');
    }
    let agent = Agent::over(&fx);
    let t = agent.tracked(WEB_ID);
    let (stop, rx) = tokio::sync::watch::channel(false);
    let sampler =
        tokio::spawn(Arc::clone(&agent.registry).sample_load(Duration::from_millis(20), rx));
    let wait_for = |what: &str, ok: &dyn Fn(&lookout_agent::registry::ViewState) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = *t.view.lock().expect("view lock");
            if ok(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "{what}: {v:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    };

    // The first sample reads every thread: all sleeping.
    let v = wait_for("first sample", &|v| v.sampled);
    assert_eq!((v.tasks.running, v.tasks.threads), (0, 3), "{v:?}");
    // Nothing ran since: later samples read only cpu.stat, and count nothing active.
    let v = wait_for("quiet samples", &|v| v.quiet_samples >= 3);
    assert_eq!(v.load.values(), [0.0; 3]);
    // Proof that the threads were not read: a thread marked runnable without any CPU time
    // used (which the kernel cannot do) goes unseen...
    set_thread_state(&fx, web.tids[1], 'R');
    let before = t.view.lock().expect("view lock").quiet_samples;
    let v = wait_for("still quiet", &|v| v.quiet_samples >= before + 3);
    assert_eq!(v.tasks.running, 0);
    // ...until the cgroup's CPU time moves: then the threads are read again.
    add_cpu_time(&web.cgroup, 20_000);
    let v = wait_for("read after CPU time moved", &|v| v.tasks.running == 1);
    assert_eq!(v.sampled_cpu_ns, Some(web_usage_usec(&web) * 1000));
    // With a thread active, every sample reads the threads even though the CPU time is still.
    let quiet = v.quiet_samples;
    std::thread::sleep(Duration::from_millis(200));
    let v = *t.view.lock().expect("view lock");
    assert_eq!(
        v.quiet_samples, quiet,
        "no sample skipped while a thread is runnable"
    );
    assert!(v.load.values()[0] > 0.0);
    stop.send(true).expect("sampler listening");
    sampler.await.expect("sampler ends");
}

/// `usage_usec` of the fixture cgroup's `cpu.stat` now.
fn web_usage_usec(web: &Placed) -> u64 {
    let text = std::fs::read_to_string(web.cgroup.join("cpu.stat")).expect("cpu.stat");
    text.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .expect("usage_usec")
        .parse()
        .expect("number")
}

#[tokio::test]
async fn a_failing_memory_stat_drops_only_the_memory_metrics() {
    let fx = Fixture::new();
    let (web, s, _) = docker_fixture(&fx);
    let agent = Agent::over(&fx);
    let t = agent.tracked(WEB_ID);
    let v = agent.scrape(&t).await.view;
    assert_eq!(
        v.value("node_scrape_collector_success", &[("collector", "meminfo")]),
        1.0
    );
    assert!(v.names().any(|n| n.starts_with("node_memory_")));

    std::fs::remove_file(web.cgroup.join("memory.stat")).expect("remove memory.stat");
    let v = agent.scrape(&t).await.view;
    assert_eq!(
        v.value("node_scrape_collector_success", &[("collector", "meminfo")]),
        0.0,
        "{}",
        v.text
    );
    assert!(v.failed.contains(&"meminfo"), "{:?}", v.failed);
    assert!(!v.failed.contains(&"cpu"), "{:?}", v.failed);
    let memory: Vec<&str> = v
        .names()
        .filter(|n| n.starts_with("node_memory_"))
        .collect();
    assert!(
        memory.is_empty(),
        "no node_memory_* without memory.stat: {memory:?}"
    );
    assert!(
        v.series("container_memory_working_set_bytes").is_empty(),
        "working set needs inactive_file from memory.stat"
    );
    // CPU is untouched.
    for c in [
        "cpu",
        "diskstats",
        "netdev",
        "pressure",
        "filesystem",
        "container",
    ] {
        assert_eq!(
            v.value("node_scrape_collector_success", &[("collector", c)]),
            1.0,
            "{c}"
        );
    }
    assert_close(
        v.value("node_cpu_seconds_total", &[("cpu", "0"), ("mode", "user")]),
        s.cpu.user_usec as f64 / 1e6,
        "user",
    );
    assert_close(
        v.value("container_cpu_cfs_throttled_seconds_total", &[]),
        s.cpu.throttled_usec as f64 / 1e6,
        "throttled",
    );
    promtool_check(&v.text);
}

#[tokio::test]
async fn a_vanished_container_is_gone() {
    let fx = Fixture::new();
    let (web, _, _) = docker_fixture(&fx);
    let agent = Agent::over(&fx);
    let t = agent.tracked(WEB_ID);
    let side = agent.tracked(SIDECAR_ID);
    agent.scrape(&t).await;

    fx.exit_process(&web);
    let r = agent
        .collector()
        .snapshot(&t, Instant::now() + Duration::from_secs(30))
        .await;
    assert!(matches!(r, Err(CollectError::Gone)), "{r:?}");
    // The other container still answers.
    agent.scrape(&side).await;
    // The state file is left behind (as runc leaves it), but the next scan drops it.
    assert!(web.state.as_ref().is_some_and(|p| p.exists()));
    agent.registry.rescan();
    assert_eq!(agent.ids(), [derived_id(SIDECAR_ID)].into_iter().collect());
}

#[test]
fn stale_runtime_state_is_not_a_container() {
    let fx = Fixture::new();
    let (web, _, sidecar) = docker_fixture(&fx);
    let pg = fx.podman_crun(
        PG_ID,
        &Spec::new(Stats::typical(80 * MIB, 400 * MIB), "postgres"),
    );
    let agent = Agent::over(&fx);
    assert_eq!(agent.ids().len(), 3);

    // The pid now belongs to a process that started later (pid reuse), for runc and crun.
    fx.rewrite_stat(&web, 'S', web.start_ticks + 1);
    fx.rewrite_stat(&pg, 'S', pg.start_ticks + 250);
    // A zombie init is no running container either.
    fx.rewrite_stat(&sidecar, 'Z', sidecar.start_ticks);
    agent.registry.rescan();
    assert_eq!(agent.ids(), BTreeSet::new());
}

/// Regression: `node_memory_Percpu_bytes`, `node_memory_VmallocUsed_bytes` and
/// `node_processes_pids` were once missing although their sources were read. (The other
/// rows of the reference mapping are checked by `assert_node_view`; this test checks only
/// these three, as its name says.)
#[tokio::test]
async fn node_view_has_the_percpu_vmalloc_and_pids_rows_once_missing() {
    let fx = Fixture::new();
    let (web, s, _) = docker_fixture(&fx);
    let agent = Agent::over(&fx);
    let v = agent.scrape(&agent.tracked(WEB_ID)).await.view;
    let procs = std::fs::read_to_string(web.cgroup.join("cgroup.procs"))
        .expect("cgroup.procs")
        .lines()
        .count();
    let mut missing = Vec::new();
    for (name, want) in [
        ("node_memory_Percpu_bytes", s.stat("percpu") as f64),
        ("node_memory_VmallocUsed_bytes", s.stat("vmalloc") as f64),
        ("node_processes_pids", procs as f64),
    ] {
        match v.get(name, &[]) {
            Some(got) => assert_eq!(got, want, "{name}"),
            None => missing.push(name),
        }
    }
    assert!(
        missing.is_empty(),
        "reference §12 maps these from cgroup v2 but the view lacks them: {missing:?}"
    );
}
