//! What one container's per-scrape cgroup reads cost, read by path and through held
//! directories (the agent's way), measured side by side in one run. A report, not a test.
//!
//! Needs root and a cgroup hierarchy it may write: it makes `COUNT` empty cgroups
//! `lookout-bench-kernel-reads-<pid>/c<i>` in every controller the agent reads per scrape
//! (v1 `cpu`, `cpuacct`, `memory`, `blkio`, `pids` and the v2 tree; or the v2 tree alone on
//! a unified host), reads them round-robin — so caches are as cold as on a node with many
//! containers, where one scrape never follows another of the same container — and removes
//! them when done, also on panic.
//!
//! A third row reads the same files through descriptors held open on the files themselves
//! (`pread`), which the agent does not do: it prints what that would buy, and what it would
//! cost in kernel memory (each open cgroup file keeps a page-sized seq_file buffer).
//!
//! ```sh
//! sudo cargo bench -p lookout-agent --bench kernel_reads
//! ```

// `criterion_group!` defines a public function without documentation.
#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use lookout_agent::cgroup::{self, CgroupDirs, CgroupPaths, Layout, Limits};
use lookout_agent::kernel_file::Dir;

/// Cgroups read round-robin.
const COUNT: usize = 500;
/// v1 controllers the agent reads on every scrape.
const V1: &[&str] = &["cpu", "cpuacct", "memory", "blkio", "pids"];

/// The files the agent reads per scrape on v1 and hybrid hosts, by controller.
const V1_FILES: &[(&str, &str)] = &[
    ("cpuacct", "cpuacct.usage"),
    ("cpuacct", "cpuacct.stat"),
    ("cpu", "cpu.stat"),
    ("memory", "memory.usage_in_bytes"),
    ("memory", "memory.stat"),
    ("memory", "memory.oom_control"),
    ("blkio", "blkio.throttle.io_service_bytes_recursive"),
    ("blkio", "blkio.throttle.io_serviced_recursive"),
    ("pids", "pids.current"),
    ("pids", "cgroup.procs"),
    ("unified", "cpu.pressure"),
    ("unified", "memory.pressure"),
    ("unified", "io.pressure"),
];

/// `Slab` of `/proc/meminfo`, KiB.
fn slab_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .expect("meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("Slab:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("Slab line")
}

/// The cgroups made for the run; removed on drop.
struct Cgroups {
    tops: Vec<PathBuf>,
    paths: Vec<CgroupPaths>,
}

impl Cgroups {
    fn create(root: &Path, layout: Layout) -> Cgroups {
        let name = format!("lookout-bench-kernel-reads-{}", std::process::id());
        let mut tops = Vec::new();
        let v1: Vec<(&str, PathBuf)> = match layout {
            Layout::Unified => Vec::new(),
            _ => V1.iter().map(|c| (*c, root.join(c).join(&name))).collect(),
        };
        let unified = layout.unified_root(root).map(|u| u.join(&name));
        for top in v1.iter().map(|(_, p)| p).chain(unified.iter()) {
            std::fs::create_dir(top)
                .unwrap_or_else(|e| panic!("cannot create {} (root needed): {e}", top.display()));
            tops.push(top.clone());
        }
        let me = Cgroups {
            tops,
            paths: Vec::new(),
        };
        if layout == Layout::Unified {
            if let Some(top) = &unified {
                // Children of the run's cgroup get the controllers the agent reads.
                std::fs::write(top.join("cgroup.subtree_control"), "+cpu +memory +io +pids")
                    .expect("enable controllers for the run's cgroups");
            }
        }
        let mut me = me;
        for i in 0..COUNT {
            let child = format!("c{i}");
            let mut p = CgroupPaths::default();
            for (ctrl, top) in &v1 {
                let dir = top.join(&child);
                std::fs::create_dir(&dir).expect("create a v1 cgroup");
                p.v1.insert((*ctrl).to_string(), dir);
            }
            if let Some(top) = &unified {
                let dir = top.join(&child);
                std::fs::create_dir(&dir).expect("create a v2 cgroup");
                p.unified = Some(dir);
            }
            me.paths.push(p);
        }
        me
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for top in &self.tops {
            for i in 0..COUNT {
                let _ = std::fs::remove_dir(top.join(format!("c{i}")));
            }
            if let Err(e) = std::fs::remove_dir(top) {
                eprintln!("could not remove {}: {e}", top.display());
            }
        }
    }
}

/// The directories of `p`, every read by path.
fn by_path(p: &CgroupPaths) -> CgroupDirs {
    CgroupDirs {
        unified: p.unified.clone().map(Dir::unheld),
        v1: p
            .v1
            .iter()
            .map(|(k, v)| (k.clone(), Arc::new(Dir::unheld(v.clone()))))
            .collect::<BTreeMap<_, _>>(),
    }
}

fn kernel_reads(c: &mut Criterion) {
    assert!(
        rustix::process::geteuid().is_root(),
        "this benchmark makes cgroups: run it as root (sudo cargo bench -p lookout-agent --bench kernel_reads)"
    );
    let root = Path::new("/sys/fs/cgroup");
    let layout = Layout::detect(root);
    let cgroups = Cgroups::create(root, layout);
    lookout_agent::kernel_file::set_dir_budget(usize::MAX);
    let paths: Vec<CgroupDirs> = cgroups.paths.iter().map(by_path).collect();
    let held: Vec<CgroupDirs> = cgroups.paths.iter().map(CgroupDirs::open).collect();
    let limits = Limits::default();

    let mut group = c.benchmark_group("one container's per-scrape cgroup reads");
    for (name, dirs) in [("by path", &paths), ("held directories", &held)] {
        let mut i = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % COUNT;
                let stats = cgroup::read(&dirs[i], layout, root, &limits);
                assert!(stats.memory.is_ok(), "{:?}", stats.memory);
                stats
            })
        });
    }
    // The same files held open themselves and re-read with pread (v1 and hybrid layouts).
    if layout != Layout::Unified {
        let slab_before = slab_kib();
        let held_files: Vec<Vec<std::fs::File>> = cgroups
            .paths
            .iter()
            .map(|p| {
                V1_FILES
                    .iter()
                    .map(|(ctrl, file)| {
                        let dir = match *ctrl {
                            "unified" => p.unified.clone().expect("hybrid: a v2 directory"),
                            c => p.v1[c].clone(),
                        };
                        std::fs::File::open(dir.join(file)).expect("open a cgroup file")
                    })
                    .collect()
            })
            .collect();
        let mut buf = vec![0u8; 8192];
        // The first read allocates each file's buffer.
        for files in &held_files {
            for f in files {
                let _ = std::os::unix::fs::FileExt::read_at(f, &mut buf, 0);
            }
        }
        let slab_after = slab_kib();
        let n = held_files.len() * V1_FILES.len();
        eprintln!(
            "held files: {n} open cgroup files raised the kernel's Slab by {} KiB ({:.1} KiB a file)",
            slab_after.saturating_sub(slab_before),
            slab_after.saturating_sub(slab_before) as f64 / n as f64
        );
        let mut i = 0;
        group.bench_function("held files (pread)", |b| {
            b.iter(|| {
                i = (i + 1) % COUNT;
                let mut total = 0;
                for f in &held_files[i] {
                    total += std::os::unix::fs::FileExt::read_at(f, &mut buf, 0).expect("pread");
                }
                total
            })
        });
    }
    group.finish();
    drop(held);
    drop(paths);
    drop(cgroups);
}

/// The process side of a scrape: `net/dev` through the held `/proc/<pid>` and one `statfs`
/// through `/proc/<pid>/root` (the agent's own process stands in for a container's).
fn process_reads(c: &mut Criterion) {
    let proc = Dir::open(PathBuf::from(format!("/proc/{}", std::process::id())));
    let root = PathBuf::from(format!("/proc/{}/root/", std::process::id()));
    let mut group = c.benchmark_group("one container's per-scrape process reads");
    group.bench_function("net/dev (held /proc/<pid>)", |b| {
        b.iter(|| proc.read("net/dev").expect("net/dev").len())
    });
    group.bench_function("statfs through /proc/<pid>/root", |b| {
        b.iter(|| rustix::fs::statfs(&root).expect("statfs").f_blocks)
    });
    group.finish();
}

criterion_group!(benches, kernel_reads, process_reads);
criterion_main!(benches);
