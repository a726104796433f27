//! Per-container load average, the LXCFS way: there is no per-cgroup run queue length, so the
//! agent samples how many of the container's threads are runnable (`R`) or in uninterruptible
//! sleep (`D`) every few seconds and feeds the kernel's fixed-point exponential decay.
//!
//! Reading every thread's state costs one `/proc/<tid>/stat` per thread. Most containers are
//! idle most of the time, and an idle one can skip it: a thread only enters `D` (or forks, or
//! exits) by running, so if the cgroup's CPU time has not moved since a sample that found no
//! thread active, none is active now ([`unchanged_since`]). One small counter file replaces
//! the task list and every thread's stat. (What this can miss is a thread woken but not yet
//! scheduled at the very instant of the sample, with no CPU used in the cgroup for the whole
//! interval — which the next sample after it runs sees anyway.)

use std::path::Path;

use crate::cgroup::{CgroupDirs, Layout};
use crate::kernel_file::{Dir, KernelFileError};
use crate::process;

/// Fixed-point one (`FIXED_1` in `include/linux/sched/loadavg.h`).
const FIXED_1: u64 = 1 << 11;
/// The averages' periods: 1, 5 and 15 minutes.
const PERIODS_S: [f64; 3] = [60.0, 300.0, 900.0];

/// The fixed-point decay factors for one sample every `interval`: `FIXED_1 · e^(−interval /
/// period)` for each period. At the kernel's 5 s (`LOAD_FREQ`) they are its `EXP_1`,
/// `EXP_5`, `EXP_15` (1884, 2014, 2037); another `load_interval` gets its own, so that
/// `node_load1` is a one-minute average whatever the sampling rate.
pub fn decay_factors(interval: std::time::Duration) -> [u64; 3] {
    let secs = interval.as_secs_f64().max(0.001);
    PERIODS_S.map(|period| ((FIXED_1 as f64) * (-secs / period).exp()).round() as u64)
}
/// Sub-cgroup depth visited below the container's own cgroup, as LXCFS does.
const MAX_DEPTH: usize = 3;

/// The decaying averages of one container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadAvg {
    fixed: [u64; 3],
}

impl LoadAvg {
    /// Feeds one sample of active (R + D) tasks (`calc_load` in `kernel/sched/loadavg.c`),
    /// with the [`decay_factors`] of the sampling interval.
    pub fn update(&mut self, active: u64, exp: [u64; 3]) {
        let active = active.saturating_mul(FIXED_1);
        for (load, exp) in self.fixed.iter_mut().zip(exp) {
            let mut new = load
                .saturating_mul(exp)
                .saturating_add(active.saturating_mul(FIXED_1 - exp));
            if active >= *load {
                new = new.saturating_add(FIXED_1 - 1);
            }
            *load = new / FIXED_1;
        }
    }

    /// load1, load5, load15.
    pub fn values(&self) -> [f64; 3] {
        self.fixed.map(|f| f as f64 / FIXED_1 as f64)
    }
}

/// Threads of a cgroup (and its sub-cgroups) counted by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskStates {
    /// Runnable.
    pub running: u64,
    /// Uninterruptible.
    pub blocked: u64,
    /// All threads seen.
    pub threads: u64,
}

/// CPU time used so far by the cgroup whose tasks [`sample`] counts (`cpuacct.usage` on v1,
/// `usage_usec` of `cpu.stat` on v2), in ns; `None` where there is no such counter.
pub fn cpu_time_ns(dirs: &CgroupDirs, layout: Layout) -> Option<u64> {
    match layout {
        Layout::Unified => crate::cgroup::v2::cpu(dirs.unified.as_ref()?)
            .ok()
            .map(|u| u.total_ns),
        // Only when the tasks sampled are the cpuacct directory's (see `tasks_dir`).
        _ => dirs.v1.get("cpuacct")?.read_u64("cpuacct.usage").ok(),
    }
}

/// Whether a sample can be skipped: the last one found nothing active and the cgroup's CPU
/// time (read *before* this sample would be taken) is what it was then.
pub fn unchanged_since(last: &TaskStates, last_cpu: Option<u64>, now_cpu: Option<u64>) -> bool {
    last.running + last.blocked == 0 && now_cpu.is_some() && now_cpu == last_cpu
}

/// Counts the threads of the cgroup at `dir` by state. Threads that exit while being read are
/// skipped; only a vanished cgroup is an error.
pub fn sample(dir: &Dir, layout: Layout, proc: &Path) -> Result<TaskStates, KernelFileError> {
    let list = if layout == Layout::Unified {
        "cgroup.threads"
    } else {
        "tasks"
    };
    let mut states = TaskStates::default();
    visit(dir, list, proc, 0, &mut states)?;
    Ok(states)
}

fn visit(
    dir: &Dir,
    list: &str,
    proc: &Path,
    depth: usize,
    states: &mut TaskStates,
) -> Result<(), KernelFileError> {
    let tids = dir.read(list)?;
    let mut path = proc.to_path_buf();
    for tid in tids.lines().filter(|l| !l.is_empty()) {
        path.push(tid);
        path.push("stat");
        if let Ok(stat) = process::read_stat(&path) {
            states.threads += 1;
            match stat.state {
                b'R' => states.running += 1,
                b'D' => states.blocked += 1,
                _ => {}
            }
        }
        path.pop();
        path.pop();
    }
    if depth < MAX_DEPTH && dir.has_subdirs() {
        if let Ok(entries) = std::fs::read_dir(dir.path()) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    // A sub-cgroup removed meanwhile is not an error of the parent.
                    let sub = Dir::unheld(e.path());
                    let _ = visit(&sub, list, proc, depth + 1, states);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernels_factors_at_its_interval_and_a_minute_at_any_other() {
        use std::time::Duration;
        assert_eq!(decay_factors(Duration::from_secs(5)), [1884, 2014, 2037]);
        // One busy task for 30 s: load1 reaches 1 - e^(-1/2) ≈ 0.39 whether sampled
        // every 5 s or every 1 s.
        for (interval, samples) in [(5, 6), (1, 30)] {
            let exp = decay_factors(Duration::from_secs(interval));
            let mut l = LoadAvg::default();
            for _ in 0..samples {
                l.update(1, exp);
            }
            let l1 = l.values()[0];
            assert!((0.37..=0.42).contains(&l1), "every {interval} s: {l1}");
        }
    }

    #[test]
    fn converges_like_the_kernel() {
        let exp = decay_factors(std::time::Duration::from_secs(5));
        let mut l = LoadAvg::default();
        // One busy task for 5 minutes of 5 s samples: load1 ≈ 1, load5 ≈ 0.63, load15 < 0.3.
        for _ in 0..60 {
            l.update(1, exp);
        }
        let [l1, l5, l15] = l.values();
        assert!((0.95..=1.01).contains(&l1), "{l1}");
        assert!((0.55..=0.70).contains(&l5), "{l5}");
        assert!((0.20..=0.35).contains(&l15), "{l15}");
        // Then idle: decays towards zero.
        for _ in 0..60 {
            l.update(0, exp);
        }
        assert!(l.values()[0] < 0.05);
    }
}
