//! Fixture trees of a pure cgroup v2 host, written in the kernel's documented formats.
//!
//! The machines these tests run on mount the cgroup controllers on v1 (the unified hierarchy
//! carries only PSI), so the agent's v2 code path cannot be exercised on real cgroups. Instead
//! a [`Fixture`] writes, under one temp dir, what a v2 host shows for each real layout:
//!
//! - `proc/`: `stat` (`cpuN` lines, `btime`), `meminfo`, and per process `stat`, `cgroup`,
//!   `net/dev`, `mountinfo`, `task/<tid>/stat`, and `root` (a symlink to a real directory,
//!   so statfs works);
//! - `cgroup/`: the unified tree (`cgroup.controllers` at its root), with `cpu.stat`,
//!   `cpu.max`, `cpuset.cpus.effective`, `memory.{current,max,swap.current,swap.max,events,
//!   stat}`, `io.stat`, `pids.{current,max}`, `{cpu,memory,io}.pressure`, `cgroup.procs` and
//!   `cgroup.threads` per container, and limits on ancestor slices;
//! - `sys/dev/block/MAJ:MIN/uevent` for block device names;
//! - runtime state where the runtime keeps it: runc `state.json` (Docker, containerd), crun
//!   `status` plus the bundle's `config.json` (Podman), none at all (systemd-nspawn).
//!
//! Formats follow `Documentation/admin-guide/cgroup-v2.rst`, `proc(5)`, runc's
//! `libcontainer` state and crun's `src/libcrun/status.c`. Each builder is named after the
//! runtime whose layout it mimics (`reference/linux-container-stats.md` §1.1, §1.2).
#![allow(dead_code)]

use std::cell::Cell;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lookout_agent::config::Roots;
use lookout_agent::host::Host;
use serde_json::json;
use tempfile::TempDir;

/// One mebibyte.
pub const MIB: u64 = 1 << 20;
/// One gibibyte.
pub const GIB: u64 = 1 << 30;
/// Page size the fixture's memory numbers are multiples of.
pub const PAGE: u64 = 4096;
/// `cpuN` lines in the fixture's `/proc/stat`.
pub const HOST_CPUS: usize = 4;
/// `MemTotal` of the fixture's `/proc/meminfo`, kB.
pub const HOST_MEM_TOTAL_KB: u64 = 8_152_404;
/// `SwapTotal` of the fixture's `/proc/meminfo`, kB.
pub const HOST_SWAP_TOTAL_KB: u64 = 2_097_148;
/// `btime` of the fixture's `/proc/stat`.
pub const HOST_BTIME: u64 = 1_763_700_000;
/// Every container's init process started this many seconds before the fixture was built.
pub const AGE_SECS: f64 = 100.0;
/// The block device with a sysfs name (`sda`).
pub const SDA: (u32, u32) = (8, 0);
/// A device-mapper device without a sysfs entry in the fixture (named `253:0`).
pub const DM0: (u32, u32) = (253, 0);

/// Seconds since boot, `CLOCK_BOOTTIME`: the clock the agent compares start times with.
pub fn boot_clock() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// `cpu.stat` of a v2 cgroup, microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuStat {
    /// `usage_usec`.
    pub usage_usec: u64,
    /// `user_usec`.
    pub user_usec: u64,
    /// `system_usec`.
    pub system_usec: u64,
    /// `nr_periods`.
    pub nr_periods: u64,
    /// `nr_throttled`.
    pub nr_throttled: u64,
    /// `throttled_usec`.
    pub throttled_usec: u64,
    /// `nr_bursts`.
    pub nr_bursts: u64,
    /// `burst_usec`.
    pub burst_usec: u64,
}

impl CpuStat {
    /// Usage = user + system, with CFS throttling counters.
    pub fn new(
        user_usec: u64,
        system_usec: u64,
        periods: u64,
        throttled: u64,
        t_usec: u64,
    ) -> Self {
        CpuStat {
            usage_usec: user_usec + system_usec,
            user_usec,
            system_usec,
            nr_periods: periods,
            nr_throttled: throttled,
            throttled_usec: t_usec,
            nr_bursts: 0,
            burst_usec: 0,
        }
    }

    fn file(&self) -> String {
        format!(
            "usage_usec {}\nuser_usec {}\nsystem_usec {}\nnr_periods {}\nnr_throttled {}\n\
             throttled_usec {}\nnr_bursts {}\nburst_usec {}\n",
            self.usage_usec,
            self.user_usec,
            self.system_usec,
            self.nr_periods,
            self.nr_throttled,
            self.throttled_usec,
            self.nr_bursts,
            self.burst_usec
        )
    }
}

/// `memory.events`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryEvents {
    /// `low`.
    pub low: u64,
    /// `high`.
    pub high: u64,
    /// `max`: times usage was about to go over `memory.max`.
    pub max: u64,
    /// `oom`.
    pub oom: u64,
    /// `oom_kill`.
    pub oom_kill: u64,
    /// `oom_group_kill`.
    pub oom_group_kill: u64,
}

/// Stall totals of one `*.pressure` file, microseconds (`None`: the line is absent).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Psi {
    /// `some … total=`.
    pub some: Option<u64>,
    /// `full … total=`.
    pub full: Option<u64>,
}

impl Psi {
    /// Both lines.
    pub fn new(some: u64, full: u64) -> Self {
        Psi {
            some: Some(some),
            full: Some(full),
        }
    }

    fn file(&self) -> String {
        let line = |kind: &str, total: u64| {
            format!("{kind} avg10=0.12 avg60=0.08 avg300=0.02 total={total}\n")
        };
        let mut s = String::new();
        if let Some(t) = self.some {
            s += &line("some", t);
        }
        if let Some(t) = self.full {
            s += &line("full", t);
        }
        s
    }
}

/// One `io.stat` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoStat {
    /// `MAJ:MIN`.
    pub dev: (u32, u32),
    /// `rbytes`.
    pub rbytes: u64,
    /// `wbytes`.
    pub wbytes: u64,
    /// `rios`.
    pub rios: u64,
    /// `wios`.
    pub wios: u64,
}

/// One `/proc/<pid>/net/dev` interface: the 8 receive and 8 transmit counters in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetDev {
    /// Interface name.
    pub name: String,
    /// bytes packets errs drop fifo frame compressed multicast.
    pub rx: [u64; 8],
    /// bytes packets errs drop fifo colls carrier compressed.
    pub tx: [u64; 8],
}

/// Everything one container's cgroup and `/proc` files say.
#[derive(Debug, Clone)]
pub struct Stats {
    /// `cpu.stat`.
    pub cpu: CpuStat,
    /// Leaf `cpu.max` as (quota, period) µs; `None` writes `max 100000`.
    pub cpu_max: Option<(u64, u64)>,
    /// `cpuset.cpus.effective`.
    pub cpuset_cpus: String,
    /// `memory.current`.
    pub memory_current: u64,
    /// Leaf `memory.max`; `None` writes `max`.
    pub memory_max: Option<u64>,
    /// `memory.swap.current`.
    pub swap_current: u64,
    /// Leaf `memory.swap.max`; `None` writes `max`.
    pub swap_max: Option<u64>,
    /// `memory.events`.
    pub events: MemoryEvents,
    /// `memory.stat`, every key a 6.x kernel writes, in its order.
    pub memory_stat: Vec<(&'static str, u64)>,
    /// `io.stat`.
    pub io: Vec<IoStat>,
    /// `pids.max`; `None` writes `max`. `pids.current` is the number of threads.
    pub pids_max: Option<u64>,
    /// `cpu.pressure`.
    pub cpu_pressure: Psi,
    /// `memory.pressure`.
    pub memory_pressure: Psi,
    /// `io.pressure`.
    pub io_pressure: Psi,
    /// `irq.pressure` (only `full`; `None` = file absent, as on kernels without it).
    pub irq_pressure: Option<Psi>,
    /// Interfaces of the container's network namespace.
    pub net: Vec<NetDev>,
    /// Scheduler state of each thread (`R`, `S`, `D`, …); the first is the init process.
    pub threads: Vec<char>,
}

impl Stats {
    /// A container using `anon` bytes of anonymous memory and `file` bytes of page cache,
    /// with a consistent `memory.stat` breakdown (every key distinct, so swapped keys show)
    /// and `memory.current` = anon + file + kernel + sock, page-aligned; no limits.
    pub fn typical(anon: u64, file: u64) -> Stats {
        let memory_stat = memory_stat(anon, file);
        let get = |k: &str| {
            memory_stat
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| *v)
                .expect("memory_stat writes this key")
        };
        let used = get("anon") + get("file") + get("kernel") + get("sock");
        let memory_current = used.div_ceil(PAGE) * PAGE;
        Stats {
            cpu: CpuStat::new(8_000_000, 4_500_000, 0, 0, 0),
            cpu_max: None,
            cpuset_cpus: format!("0-{}", HOST_CPUS - 1),
            memory_current,
            memory_max: None,
            swap_current: 0,
            swap_max: None,
            events: MemoryEvents::default(),
            memory_stat,
            io: vec![
                IoStat {
                    dev: SDA,
                    rbytes: 1_048_576_000,
                    wbytes: 524_288_000,
                    rios: 25_600,
                    wios: 12_800,
                },
                IoStat {
                    dev: DM0,
                    rbytes: 4096,
                    wbytes: 8192,
                    rios: 1,
                    wios: 2,
                },
            ],
            pids_max: None,
            cpu_pressure: Psi::new(2_345_678, 1_200_000),
            memory_pressure: Psi::new(345_678, 123_456),
            io_pressure: Psi::new(4_567_890, 3_456_789),
            irq_pressure: None,
            net: vec![
                NetDev {
                    name: "lo".into(),
                    rx: [4200, 42, 0, 0, 0, 0, 0, 0],
                    tx: [4200, 42, 0, 0, 0, 0, 0, 0],
                },
                NetDev {
                    name: "eth0".into(),
                    rx: [987_654_321, 654_321, 3, 7, 1, 2, 4, 12],
                    tx: [123_456_789, 234_567, 5, 6, 8, 9, 10, 11],
                },
            ],
            threads: vec!['S', 'R', 'D'],
        }
    }

    /// A `memory.stat` value; panics if the key is not in the file.
    pub fn stat(&self, key: &str) -> u64 {
        self.memory_stat
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("fixture memory.stat has no {key}"))
    }

    /// The interface called `name`.
    pub fn netdev(&self, name: &str) -> &NetDev {
        self.net
            .iter()
            .find(|d| d.name == name)
            .unwrap_or_else(|| panic!("fixture has no interface {name}"))
    }
}

/// A full v2 `memory.stat` (6.x key set and order) for the given anon and file sizes.
fn memory_stat(anon: u64, file: u64) -> Vec<(&'static str, u64)> {
    let pages = |bytes: u64| bytes / PAGE * PAGE;
    let shmem = 300 * PAGE;
    let active_anon = pages(anon * 5 / 8);
    let inactive_anon = anon - active_anon + shmem;
    let active_file = pages((file - shmem) * 3 / 5);
    let inactive_file = file - shmem - active_file;
    let kernel_stack = 36 * 16384;
    let pagetables = 61 * PAGE;
    let percpu = 9360;
    let vmalloc = 5 * PAGE;
    let slab_reclaimable = 1_626_480;
    let slab_unreclaimable = 744_120;
    let slab = slab_reclaimable + slab_unreclaimable;
    let kernel = kernel_stack + pagetables + percpu + vmalloc + slab;
    vec![
        ("anon", anon),
        ("file", file),
        ("kernel", kernel),
        ("kernel_stack", kernel_stack),
        ("pagetables", pagetables),
        ("sec_pagetables", 0),
        ("percpu", percpu),
        ("sock", 3 * PAGE),
        ("vmalloc", vmalloc),
        ("shmem", shmem),
        ("zswap", 0),
        ("zswapped", 0),
        ("file_mapped", pages(file / 5)),
        ("file_dirty", 33 * PAGE),
        ("file_writeback", 2 * PAGE),
        ("swapcached", 4 * PAGE),
        ("anon_thp", 2 * MIB),
        ("file_thp", 0),
        ("shmem_thp", 0),
        ("inactive_anon", inactive_anon),
        ("active_anon", active_anon),
        ("inactive_file", inactive_file),
        ("active_file", active_file),
        ("unevictable", 7 * PAGE),
        ("slab_reclaimable", slab_reclaimable),
        ("slab_unreclaimable", slab_unreclaimable),
        ("slab", slab),
        ("workingset_refault_anon", 0),
        ("workingset_refault_file", 211),
        ("workingset_activate_anon", 0),
        ("workingset_activate_file", 57),
        ("workingset_restore_anon", 0),
        ("workingset_restore_file", 13),
        ("workingset_nodereclaim", 0),
        ("pgscan", 4410),
        ("pgsteal", 4380),
        ("pgscan_kswapd", 4100),
        ("pgscan_direct", 310),
        ("pgscan_khugepaged", 0),
        ("pgsteal_kswapd", 4080),
        ("pgsteal_direct", 300),
        ("pgsteal_khugepaged", 0),
        ("pgfault", anon / PAGE * 3 + 1234),
        ("pgmajfault", file / PAGE / 7 + 11),
        ("pgrefill", 2220),
        ("pgactivate", 15_012),
        ("pgdeactivate", 1904),
        ("pglazyfree", 0),
        ("pglazyfreed", 0),
        ("swpin_zero", 0),
        ("swpout_zero", 0),
        ("zswpin", 0),
        ("zswpout", 0),
        ("zswpwb", 0),
        ("pswpin", 17),
        ("pswpout", 42),
        ("thp_fault_alloc", 1),
        ("thp_collapse_alloc", 0),
        ("thp_swpout", 0),
        ("thp_swpout_fallback", 0),
    ]
}

/// Limits on an ancestor slice (Kubernetes pod slice, a systemd service); `None` = `max`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// `memory.max`.
    pub memory_max: Option<u64>,
    /// `memory.swap.max`.
    pub swap_max: Option<u64>,
    /// `cpu.max` (quota, period) µs.
    pub cpu_max: Option<(u64, u64)>,
    /// `pids.max`.
    pub pids_max: Option<u64>,
}

/// What a runtime knows about a container besides its stats.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The numbers.
    pub stats: Stats,
    /// OCI annotations.
    pub annotations: Vec<(String, String)>,
    /// UTS hostname in the runtime config (`None` or empty: not set).
    pub hostname: Option<String>,
    /// Command name of the init process (`/proc/<pid>/stat` field 2).
    pub comm: String,
}

impl Spec {
    /// A container with these stats, no annotations, no hostname.
    pub fn new(stats: Stats, comm: &str) -> Spec {
        Spec {
            stats,
            annotations: Vec::new(),
            hostname: None,
            comm: comm.into(),
        }
    }

    /// Adds an annotation.
    pub fn annotate(mut self, key: &str, value: &str) -> Spec {
        self.annotations.push((key.into(), value.into()));
        self
    }

    /// Sets the hostname.
    pub fn hostname(mut self, name: &str) -> Spec {
        self.hostname = Some(name.into());
        self
    }
}

/// A container written into the fixture.
#[derive(Debug, Clone)]
pub struct Placed {
    /// The runtime's id.
    pub runtime_id: String,
    /// Init pid.
    pub pid: u32,
    /// Thread ids, init first.
    pub tids: Vec<u32>,
    /// Init start, clock ticks since boot (field 22 of its stat).
    pub start_ticks: u64,
    /// Its v2 cgroup directory (absolute, in the fixture).
    pub cgroup: PathBuf,
    /// Its cgroup path relative to the hierarchy root, no leading `/`.
    pub cgroup_rel: String,
    /// The real directory `/proc/<pid>/root` points at.
    pub rootfs: PathBuf,
    /// Runtime state file or dir written for it, if the runtime keeps one.
    pub state: Option<PathBuf>,
}

/// A Kubernetes pod slice (systemd cgroup driver).
#[derive(Debug, Clone)]
pub struct Pod {
    /// Pod UID (with dashes).
    pub uid: String,
    /// Slice path relative to the hierarchy root.
    pub slice_rel: String,
}

/// A host as a pure cgroup v2 machine shows it, in a temp dir.
pub struct Fixture {
    dir: TempDir,
    /// Roots to hand the agent.
    pub roots: Roots,
    /// `CLK_TCK` of this machine (start ticks are in it).
    pub clk_tck: u64,
    /// Boot-clock second every container's init started at (real uptime − [`AGE_SECS`]).
    started_at: f64,
    next_pid: Cell<u32>,
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

impl Fixture {
    /// The host part: `/proc/stat`, `/proc/meminfo`, the v2 root, sysfs block names.
    pub fn new() -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("lookout-cgroup-v2-")
            .tempdir()
            .expect("create fixture temp dir");
        let roots = Roots {
            proc: dir.path().join("proc"),
            cgroup: dir.path().join("sys/fs/cgroup"),
            sys: dir.path().join("sys"),
        };
        let uptime = boot_clock();
        assert!(
            uptime > AGE_SECS + 1.0,
            "this machine booted {uptime:.0} s ago; the fixtures need containers {AGE_SECS} s old"
        );
        let fx = Fixture {
            roots,
            clk_tck: rustix::param::clock_ticks_per_second(),
            started_at: uptime - AGE_SECS,
            next_pid: Cell::new(4100),
            dir,
        };
        fx.write("proc/stat", &proc_stat());
        fx.write("proc/meminfo", &proc_meminfo());
        fx.write(
            "sys/fs/cgroup/cgroup.controllers",
            "cpuset cpu io memory hugetlb pids rdma misc\n",
        );
        fx.write(
            "sys/fs/cgroup/cgroup.subtree_control",
            "cpuset cpu io memory pids\n",
        );
        fx.write("sys/fs/cgroup/cgroup.procs", "1\n");
        fx.write("sys/fs/cgroup/cgroup.threads", "1\n");
        fx.write(
            "sys/dev/block/8:0/uevent",
            "MAJOR=8\nMINOR=0\nDEVNAME=sda\nDEVTYPE=disk\nDISKSEQ=1\n",
        );
        fx
    }

    /// A path under the fixture's temp dir.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The host as the agent probes it from these roots.
    pub fn host(&self) -> Arc<Host> {
        Arc::new(Host::probe(&self.roots).expect("fixture /proc/stat and /proc/meminfo probe"))
    }

    /// Docker's runc state root (`/run/docker/runtime-runc/moby`).
    pub fn docker_state_root(&self) -> PathBuf {
        self.path("run/docker/runtime-runc/moby")
    }

    /// containerd's runc state root for the CRI namespace (`/run/containerd/runc/k8s.io`).
    pub fn containerd_state_root(&self) -> PathBuf {
        self.path("run/containerd/runc/k8s.io")
    }

    /// crun's state root (`/run/crun`).
    pub fn crun_state_root(&self) -> PathBuf {
        self.path("run/crun")
    }

    /// Every runc-family root, as the agent's defaults list them.
    pub fn runc_roots(&self) -> Vec<PathBuf> {
        vec![self.docker_state_root(), self.containerd_state_root()]
    }

    /// Writes `text` at `rel`, creating parents.
    pub fn write(&self, rel: &str, text: &str) {
        write(&self.path(rel), text);
    }

    /// The cgroup directory `rel` (relative to the v2 root), created with the files every
    /// non-root v2 cgroup has, as `max` where a limit goes, if it does not exist yet; its
    /// missing ancestors are created the same way.
    pub fn cgroup_dir(&self, rel: &str) -> PathBuf {
        let mut dir = self.roots.cgroup.clone();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            dir.push(part);
            if !dir.exists() {
                fs::create_dir_all(&dir).expect("create cgroup dir");
                for (file, text) in [
                    ("cgroup.procs", ""),
                    ("cgroup.threads", ""),
                    ("cgroup.controllers", "cpuset cpu io memory pids\n"),
                    ("cgroup.subtree_control", "cpuset cpu io memory pids\n"),
                    ("cgroup.type", "domain\n"),
                    ("cpu.max", "max 100000\n"),
                    ("memory.max", "max\n"),
                    ("memory.swap.max", "max\n"),
                    ("pids.max", "max\n"),
                ] {
                    write(&dir.join(file), text);
                }
            }
        }
        dir
    }

    /// An ancestor slice with limits (created if needed).
    pub fn slice(&self, rel: &str, limits: Limits) -> PathBuf {
        let dir = self.cgroup_dir(rel);
        write_limits(&dir, limits);
        dir
    }

    /// Docker with the systemd cgroup driver: `system.slice/docker-<id>.scope`, state in
    /// `/run/docker/runtime-runc/moby/<id>/state.json` (runc, via containerd's shim).
    pub fn docker_systemd(&self, id: &str, spec: &Spec) -> Placed {
        let rel = format!("system.slice/docker-{id}.scope");
        let mut p = self.place(id, &rel, spec);
        let bundle = format!("/run/containerd/io.containerd.runtime.v2.task/moby/{id}");
        let state = self.docker_state_root().join(id).join("state.json");
        write(
            &state,
            &runc_state(id, &p, spec, &bundle, "docker", "system.slice"),
        );
        p.state = Some(state);
        p
    }

    /// A Kubernetes pod slice with the systemd driver:
    /// `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_with_underscores>.slice`,
    /// carrying the pod's limits. `kubepods.slice` gets `node_allocatable` bytes of memory.
    pub fn kubernetes_pod(&self, qos: &str, uid: &str, node_allocatable: u64, pod: Limits) -> Pod {
        self.slice(
            "kubepods.slice",
            Limits {
                memory_max: Some(node_allocatable),
                ..Limits::default()
            },
        );
        let slice_rel = format!(
            "kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{}.slice",
            uid.replace('-', "_")
        );
        self.slice(&slice_rel, pod);
        Pod {
            uid: uid.into(),
            slice_rel,
        }
    }

    /// A container of a pod, run by containerd's CRI with runc:
    /// `<pod slice>/cri-containerd-<id>.scope`, state in
    /// `/run/containerd/runc/k8s.io/<id>/state.json`.
    pub fn containerd_cri(&self, pod: &Pod, id: &str, spec: &Spec) -> Placed {
        let rel = format!("{}/cri-containerd-{id}.scope", pod.slice_rel);
        let mut p = self.place(id, &rel, spec);
        let bundle = format!("/run/containerd/io.containerd.runtime.v2.task/k8s.io/{id}");
        let state = self.containerd_state_root().join(id).join("state.json");
        write(
            &state,
            &runc_state(id, &p, spec, &bundle, "cri-containerd", &pod.slice_rel),
        );
        p.state = Some(state);
        p
    }

    /// Podman (rootful) with crun: `machine.slice/libpod-<id>.scope` plus the
    /// `libpod-conmon-<id>.scope` of its monitor; crun's `/run/crun/<id>/status` and the
    /// bundle's `config.json` (annotations, hostname) under Podman's storage.
    pub fn podman_crun(&self, id: &str, spec: &Spec) -> Placed {
        let rel = format!("machine.slice/libpod-{id}.scope");
        let mut p = self.place(id, &rel, spec);
        // conmon, the container monitor: a process in a sibling scope, no container.
        let conmon = self.process(
            "conmon",
            &format!("machine.slice/libpod-conmon-{id}.scope"),
            &['S'],
            None,
            0.0,
        );
        let conmon_dir = self.cgroup_dir(&format!("machine.slice/libpod-conmon-{id}.scope"));
        write(&conmon_dir.join("cgroup.procs"), &format!("{}\n", conmon.0));
        write(
            &conmon_dir.join("cgroup.threads"),
            &format!("{}\n", conmon.0),
        );

        let bundle = self.path(&format!(
            "var/lib/containers/storage/overlay-containers/{id}/userdata"
        ));
        let annotations: serde_json::Map<String, serde_json::Value> = spec
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        let config = json!({
            "ociVersion": "1.0.2-dev",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": [spec.comm],
                "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                        "container=podman"],
                "cwd": "/"
            },
            "root": {"path": p.rootfs.display().to_string()},
            "hostname": spec.hostname.clone().unwrap_or_default(),
            "annotations": annotations,
            "linux": {
                "cgroupsPath": format!("machine.slice:libpod:{id}"),
                "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                               {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}]
            }
        });
        write(
            &bundle.join("config.json"),
            &serde_json::to_string_pretty(&config).expect("config.json serialises"),
        );
        // crun's status file (src/libcrun/status.c write_container_status).
        let status = format!(
            "{{\n    \"pid\" : {pid},\n    \"process-start-time\" : {start},\n    \
             \"cgroup-path\" : \"/{rel}\",\n    \"scope\" : \"libpod-{id}.scope\",\n    \
             \"rootfs\" : \"{rootfs}\",\n    \"systemd-cgroup\" : true,\n    \
             \"bundle\" : \"{bundle}\",\n    \"created\" : \"2026-11-21T05:10:43.512376241Z\",\n    \
             \"owner\" : \"root\",\n    \"detached\" : true,\n    \
             \"external_descriptors\" : \"[\\\"/dev/null\\\",\\\"/dev/null\\\",\\\"/dev/null\\\"]\"\n}}\n",
            pid = p.pid,
            start = p.start_ticks,
            rootfs = p.rootfs.display(),
            bundle = bundle.display(),
        );
        let state = self.crun_state_root().join(id).join("status");
        write(&state, &status);
        p.state = Some(state);
        p
    }

    /// systemd-nspawn in `systemd-nspawn@<machine>.service` without `--boot`: the
    /// container's init directly in `payload/`, the nspawn process in `supervisor/`, the
    /// unit's limits on the service cgroup, and no runtime state at all (found by the
    /// default cgroup path rule).
    pub fn systemd_nspawn(&self, machine: &str, service: Limits, spec: &Spec) -> Placed {
        let service_rel = format!("machine.slice/systemd-nspawn@{machine}.service");
        self.slice(&service_rel, service);
        let supervisor_rel = format!("{service_rel}/supervisor");
        let (sup, _) = self.process("systemd-nspawn", &supervisor_rel, &['S'], None, 0.0);
        let sup_dir = self.cgroup_dir(&supervisor_rel);
        write(&sup_dir.join("cgroup.procs"), &format!("{sup}\n"));
        write(&sup_dir.join("cgroup.threads"), &format!("{sup}\n"));
        self.place(machine, &format!("{service_rel}/payload"), spec)
    }

    /// systemd-nspawn as `systemd-nspawn@<machine>.service` runs it: `--boot`, so the guest's
    /// systemd moves itself into `payload/init.scope` and starts its services in
    /// `payload/system.slice/<unit>`; `payload` itself holds no process (v2's no-internal-
    /// process rule) and its files account the whole subtree (`spec.stats`). Each sub-cgroup
    /// gets its own, smaller numbers (`init` and `service`); the service (`nginx`) started
    /// 5 s after the guest's init. Returns the container as `payload` with the guest's init.
    pub fn systemd_nspawn_booted(
        &self,
        machine: &str,
        service_limits: Limits,
        spec: &Spec,
        init: &Stats,
        service: &Stats,
    ) -> Placed {
        let service_rel = format!("machine.slice/systemd-nspawn@{machine}.service");
        self.slice(&service_rel, service_limits);
        let supervisor_rel = format!("{service_rel}/supervisor");
        let (sup, _) = self.process("systemd-nspawn", &supervisor_rel, &['S'], None, 0.0);
        let sup_dir = self.cgroup_dir(&supervisor_rel);
        write(&sup_dir.join("cgroup.procs"), &format!("{sup}\n"));
        write(&sup_dir.join("cgroup.threads"), &format!("{sup}\n"));

        let payload_rel = format!("{service_rel}/payload");
        let payload = self.cgroup_dir(&payload_rel);
        let mut leaves = Vec::new();
        for (rel, comm, stats, later) in [
            (format!("{payload_rel}/init.scope"), "systemd", init, 0.0),
            (
                format!("{payload_rel}/system.slice/nginx.service"),
                "nginx",
                service,
                5.0,
            ),
        ] {
            let (pid, start) =
                self.process(comm, &rel, &stats.threads, Some(&spec.stats.net), later);
            let tids: Vec<u32> = (0..stats.threads.len() as u32).map(|i| pid + i).collect();
            write_stats(&self.cgroup_dir(&rel), stats, &[pid], &tids, tids.len());
            leaves.push((pid, start, tids));
        }
        let tasks: usize = leaves.iter().map(|(_, _, t)| t.len()).sum();
        write_stats(&payload, &spec.stats, &[], &[], tasks);
        write(
            &payload.join("cgroup.subtree_control"),
            "cpu io memory pids\n",
        );
        let (pid, start_ticks, tids) = leaves.swap_remove(0);
        Placed {
            runtime_id: machine.into(),
            pid,
            tids,
            start_ticks,
            cgroup: payload,
            cgroup_rel: payload_rel,
            rootfs: self.path(&format!("rootfs/{pid}")),
            state: None,
        }
    }

    /// Removes `/proc/<pid>` (and its threads' entries): the process exited.
    pub fn exit_process(&self, p: &Placed) {
        for tid in &p.tids {
            let dir = self.roots.proc.join(tid.to_string());
            if dir.exists() {
                fs::remove_dir_all(&dir).expect("remove /proc/<tid>");
            }
        }
    }

    /// Rewrites the init's `/proc/<pid>/stat` with another state letter (`Z`: a zombie) or
    /// start time (another process that reused the pid).
    pub fn rewrite_stat(&self, p: &Placed, state: char, start_ticks: u64) {
        write(
            &self.roots.proc.join(p.pid.to_string()).join("stat"),
            &stat_line(p.pid, "init", state, start_ticks, p.tids.len()),
        );
    }

    /// Writes the container's cgroup files and processes; returns where they are.
    fn place(&self, runtime_id: &str, rel: &str, spec: &Spec) -> Placed {
        let s = &spec.stats;
        let (pid, start_ticks) = self.process(&spec.comm, rel, &s.threads, Some(&s.net), 0.0);
        let tids: Vec<u32> = (0..s.threads.len() as u32).map(|i| pid + i).collect();
        let dir = self.cgroup_dir(rel);
        write_stats(&dir, s, &[pid], &tids, s.threads.len());
        Placed {
            runtime_id: runtime_id.into(),
            pid,
            tids,
            start_ticks,
            cgroup: dir,
            cgroup_rel: rel.into(),
            rootfs: self.path(&format!("rootfs/{pid}")),
            state: None,
        }
    }

    /// Writes `/proc/<pid>` for a process in cgroup `rel` with threads in `states` (init
    /// first): `stat`, `cgroup`, `mountinfo`, `net/dev` (when given), `task/<tid>/stat`, the
    /// hidden `/proc/<tid>` of each thread, and `root` → a real directory. The process
    /// started `later` seconds after the container's init. Returns the pid and its start
    /// ticks.
    fn process(
        &self,
        comm: &str,
        rel: &str,
        states: &[char],
        net: Option<&[NetDev]>,
        later: f64,
    ) -> (u32, u64) {
        let pid = self.next_pid.get();
        self.next_pid.set(pid + 100);
        let start_ticks = ((self.started_at + later) * self.clk_tck as f64) as u64;
        let pdir = self.roots.proc.join(pid.to_string());
        for (i, state) in states.iter().enumerate() {
            let tid = pid + i as u32;
            let line = stat_line(tid, comm, *state, start_ticks, states.len());
            write(&pdir.join(format!("task/{tid}/stat")), &line);
            write(&self.roots.proc.join(format!("{tid}/stat")), &line);
        }
        write(&pdir.join("cgroup"), &format!("0::/{rel}\n"));
        let rootfs = self.path(&format!("rootfs/{pid}"));
        for d in ["data", "etc", "tmp"] {
            fs::create_dir_all(rootfs.join(d)).expect("create rootfs dir");
        }
        write(&rootfs.join("etc/hostname"), "container\n");
        symlink(&rootfs, pdir.join("root")).expect("symlink /proc/<pid>/root");
        write(&pdir.join("mountinfo"), MOUNTINFO);
        if let Some(net) = net {
            let mut text = String::from(
                "Inter-|   Receive                                                |  Transmit\n \
                 face |bytes    packets errs drop fifo frame compressed multicast|bytes    \
                 packets errs drop fifo colls carrier compressed\n",
            );
            for d in net {
                text += &format!("{:>6}:", d.name);
                for v in d.rx.iter().chain(d.tx.iter()) {
                    text += &format!(" {v:>7}");
                }
                text.push('\n');
            }
            write(&pdir.join("net/dev"), &text);
        }
        (pid, start_ticks)
    }
}

/// `/proc/<pid>/mountinfo` of a container: overlay root, a read-only ext4 volume at `/data`,
/// a bind-mounted file, and pseudo filesystems the view must leave out.
pub const MOUNTINFO: &str = "\
1082 1040 0:97 / / rw,relatime master:1 - overlay overlay rw,lowerdir=/var/lib/docker/overlay2/l/A:/var/lib/docker/overlay2/l/B,upperdir=/var/lib/docker/overlay2/x/diff,workdir=/var/lib/docker/overlay2/x/work
1083 1082 0:100 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
1084 1082 0:101 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
1085 1084 0:102 / /dev/pts rw,nosuid,noexec,relatime - devpts devpts rw,gid=5,mode=620,ptmxmode=666
1086 1082 0:103 / /sys ro,nosuid,nodev,noexec,relatime - sysfs sysfs ro
1087 1086 0:30 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup rw,nsdelegate,memory_recursiveprot
1088 1082 8:1 /srv/volumes/data /data ro,relatime - ext4 /dev/sda1 rw
1089 1082 8:1 /var/lib/docker/containers/x/hostname /etc/hostname rw,relatime - ext4 /dev/sda1 rw
1090 1084 0:104 / /dev/shm rw,nosuid,nodev,noexec,relatime - tmpfs shm rw,size=65536k
";

/// Field 3…52 of `/proc/<pid>/stat` around the given values (`proc(5)`).
fn stat_line(pid: u32, comm: &str, state: char, start_ticks: u64, threads: usize) -> String {
    let fields: Vec<String> = [
        state.to_string(),             // 3 state
        "1".into(),                    // 4 ppid
        pid.to_string(),               // 5 pgrp
        pid.to_string(),               // 6 session
        "0".into(),                    // 7 tty_nr
        "-1".into(),                   // 8 tpgid
        "4194560".into(),              // 9 flags
        "1532".into(),                 // 10 minflt
        "0".into(),                    // 11 cminflt
        "12".into(),                   // 12 majflt
        "0".into(),                    // 13 cmajflt
        "37".into(),                   // 14 utime
        "21".into(),                   // 15 stime
        "0".into(),                    // 16 cutime
        "0".into(),                    // 17 cstime
        "20".into(),                   // 18 priority
        "0".into(),                    // 19 nice
        threads.to_string(),           // 20 num_threads
        "0".into(),                    // 21 itrealvalue
        start_ticks.to_string(),       // 22 starttime
        "12582912".into(),             // 23 vsize
        "812".into(),                  // 24 rss
        "18446744073709551615".into(), // 25 rsslim
        "94000000000000".into(),       // 26 startcode
        "94000000100000".into(),       // 27 endcode
        "140700000000000".into(),      // 28 startstack
        "0".into(),                    // 29 kstkesp
        "0".into(),                    // 30 kstkeip
        "0".into(),                    // 31 signal
        "0".into(),                    // 32 blocked
        "0".into(),                    // 33 sigignore
        "81922".into(),                // 34 sigcatch
        "1".into(),                    // 35 wchan
        "0".into(),                    // 36 nswap
        "0".into(),                    // 37 cnswap
        "17".into(),                   // 38 exit_signal
        "1".into(),                    // 39 processor
        "0".into(),                    // 40 rt_priority
        "0".into(),                    // 41 policy
        "0".into(),                    // 42 delayacct_blkio_ticks
        "0".into(),                    // 43 guest_time
        "0".into(),                    // 44 cguest_time
        "94000000200000".into(),       // 45 start_data
        "94000000300000".into(),       // 46 end_data
        "94000001000000".into(),       // 47 start_brk
        "140700000100000".into(),      // 48 arg_start
        "140700000100020".into(),      // 49 arg_end
        "140700000100020".into(),      // 50 env_start
        "140700000100900".into(),      // 51 env_end
        "0".into(),                    // 52 exit_code
    ]
    .into();
    assert_eq!(fields.len(), 50, "stat fields 3..=52");
    format!("{pid} ({comm}) {}\n", fields.join(" "))
}

/// The fixture host's `/proc/stat`: [`HOST_CPUS`] CPUs and [`HOST_BTIME`].
fn proc_stat() -> String {
    let mut s = String::from("cpu  4705 356 584 3699176 23060 0 277 0 0 0\n");
    for i in 0..HOST_CPUS {
        s += &format!("cpu{i} 1176 89 146 924794 5765 0 69 0 0 0\n");
    }
    s += "intr 114930548 113199788 3 0 5 263 0 4 [...]\n";
    s += "ctxt 1990473\n";
    s += &format!("btime {HOST_BTIME}\n");
    s += "processes 2915\nprocs_running 1\nprocs_blocked 0\n";
    s += "softirq 183433 0 21755 12 39 0 0 50 66282 0 95295\n";
    s
}

/// The fixture host's `/proc/meminfo`.
fn proc_meminfo() -> String {
    format!(
        "MemTotal:       {HOST_MEM_TOTAL_KB} kB\n\
         MemFree:         5213340 kB\n\
         MemAvailable:    7012360 kB\n\
         Buffers:          112412 kB\n\
         Cached:          1794512 kB\n\
         SwapCached:            0 kB\n\
         Active:          1182948 kB\n\
         Inactive:        1240992 kB\n\
         SwapTotal:       {HOST_SWAP_TOTAL_KB} kB\n\
         SwapFree:        {HOST_SWAP_TOTAL_KB} kB\n\
         Dirty:               132 kB\n\
         HugePages_Total:       0\n\
         HugePages_Free:        0\n\
         Hugepagesize:       2048 kB\n"
    )
}

/// A runc `state.json` (libcontainer `State`, systemd cgroup driver, pure v2: only the
/// `""` key in `cgroup_paths`), as written for a container under `parent`.
fn runc_state(
    id: &str,
    p: &Placed,
    spec: &Spec,
    bundle: &str,
    scope_prefix: &str,
    parent: &str,
) -> String {
    let mut labels: Vec<String> = spec
        .annotations
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    labels.push(format!("bundle={bundle}"));
    let ns = |t: &str| format!("/proc/{}/ns/{t}", p.pid);
    let state = json!({
        "id": id,
        "init_process_pid": p.pid,
        "init_process_start": p.start_ticks,
        "created": "2026-11-21T05:10:43.123456789Z",
        "config": {
            "no_pivot_root": false,
            "parent_death_signal": 0,
            "rootfs": p.rootfs.display().to_string(),
            "umask": null,
            "readonlyfs": false,
            "rootPropagation": 0,
            "mounts": [],
            "devices": [],
            "mount_label": "",
            "hostname": spec.hostname.clone().unwrap_or_default(),
            "namespaces": [
                {"type": "NEWNS", "path": ""}, {"type": "NEWNET", "path": ""},
                {"type": "NEWUTS", "path": ""}, {"type": "NEWIPC", "path": ""},
                {"type": "NEWPID", "path": ""}, {"type": "NEWCGROUP", "path": ""}
            ],
            "capabilities": null,
            "networks": null,
            "routes": null,
            "cgroups": {
                "path": "",
                "scope_prefix": scope_prefix,
                "name": id,
                "parent": parent,
                "Resources": {"memory": spec.stats.memory_max.unwrap_or(0)},
                "Systemd": true,
                "Rootless": false
            },
            "oom_score_adj": 0,
            "labels": labels,
            "no_new_keyring": false
        },
        "rootless": false,
        "cgroup_paths": {"": format!("/sys/fs/cgroup/{}", p.cgroup_rel)},
        "namespace_paths": {
            "NEWCGROUP": ns("cgroup"), "NEWIPC": ns("ipc"), "NEWNET": ns("net"),
            "NEWNS": ns("mnt"), "NEWPID": ns("pid"), "NEWUSER": ns("user"),
            "NEWUTS": ns("uts")
        },
        "external_descriptors": ["/dev/null", "pipe:[91344]", "pipe:[91345]"],
        "intel_rdt_path": ""
    });
    serde_json::to_string(&state).expect("state.json serialises")
}

/// Writes a v2 cgroup directory's files from `s`, with these processes and threads listed
/// and `pids_current` tasks counted (the subtree's, as the kernel counts).
fn write_stats(dir: &Path, s: &Stats, procs: &[u32], tids: &[u32], pids_current: usize) {
    let lines = |v: &[u32]| v.iter().map(|t| format!("{t}\n")).collect::<String>();
    let max = |v: Option<u64>| v.map_or("max".to_string(), |n| n.to_string());
    let io: String =
        s.io.iter()
            .map(|d| {
                format!(
                    "{}:{} rbytes={} wbytes={} rios={} wios={} dbytes=0 dios=0\n",
                    d.dev.0, d.dev.1, d.rbytes, d.wbytes, d.rios, d.wios
                )
            })
            .collect();
    let e = &s.events;
    let files = [
        ("cgroup.procs", lines(procs)),
        ("cgroup.threads", lines(tids)),
        ("cgroup.controllers", "cpuset cpu io memory pids\n".into()),
        ("cgroup.subtree_control", String::new()),
        ("cgroup.type", "domain\n".into()),
        ("cpu.stat", s.cpu.file()),
        (
            "cpu.max",
            match s.cpu_max {
                Some((q, p)) => format!("{q} {p}\n"),
                None => "max 100000\n".into(),
            },
        ),
        ("cpu.weight", "100\n".into()),
        ("cpuset.cpus.effective", format!("{}\n", s.cpuset_cpus)),
        ("cpuset.mems.effective", "0\n".into()),
        ("memory.current", format!("{}\n", s.memory_current)),
        ("memory.max", format!("{}\n", max(s.memory_max))),
        ("memory.high", "max\n".into()),
        ("memory.low", "0\n".into()),
        ("memory.min", "0\n".into()),
        ("memory.swap.current", format!("{}\n", s.swap_current)),
        ("memory.swap.max", format!("{}\n", max(s.swap_max))),
        (
            "memory.events",
            format!(
                "low {}\nhigh {}\nmax {}\noom {}\noom_kill {}\noom_group_kill {}\n",
                e.low, e.high, e.max, e.oom, e.oom_kill, e.oom_group_kill
            ),
        ),
        (
            "memory.stat",
            s.memory_stat
                .iter()
                .map(|(k, v)| format!("{k} {v}\n"))
                .collect(),
        ),
        ("io.stat", io),
        ("pids.current", format!("{pids_current}\n")),
        ("pids.max", format!("{}\n", max(s.pids_max))),
        ("cpu.pressure", s.cpu_pressure.file()),
        ("memory.pressure", s.memory_pressure.file()),
        ("io.pressure", s.io_pressure.file()),
    ];
    for (name, text) in files {
        write(&dir.join(name), &text);
    }
    if let Some(irq) = s.irq_pressure {
        write(&dir.join("irq.pressure"), &irq.file());
    }
}

fn write_limits(dir: &Path, l: Limits) {
    let max = |v: Option<u64>| v.map_or("max".to_string(), |n| n.to_string());
    write(&dir.join("memory.max"), &format!("{}\n", max(l.memory_max)));
    write(
        &dir.join("memory.swap.max"),
        &format!("{}\n", max(l.swap_max)),
    );
    write(&dir.join("pids.max"), &format!("{}\n", max(l.pids_max)));
    let cpu = match l.cpu_max {
        Some((q, p)) => format!("{q} {p}\n"),
        None => "max 100000\n".into(),
    };
    write(&dir.join("cpu.max"), &cpu);
}

fn write(path: &Path, text: &str) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap_or_else(|e| panic!("create {}: {e}", parent.display()));
    }
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
