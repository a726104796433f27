//! Cgroup path rules: containers recognised by where their cgroup is, for runtimes that leave
//! no runc-style state (systemd-nspawn, libvirt LXC, LXC/Incus, Proxmox CT, …).
//!
//! A rule is a regular expression over the cgroup path relative to the hierarchy root (no
//! leading `/`), with a named capture `id` (required) and optional captures `alias` and
//! `tenant`. The init pid is the first pid in `cgroup.procs` of the matching cgroup or its
//! sub-cgroups; the container's cgroups then come from `/proc/<pid>/cgroup`.
//!
//! Virtual machines (libvirt QEMU, Proxmox `qemu.slice`) are deliberately not in the defaults:
//! their process sees the host's network and mounts, so the view would leak host data.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use regex::Regex;
use serde::Deserialize;

use super::{cgroups_of, live_start, Discovered, Source};
use crate::cgroup::Layout;
use crate::host::Host;

/// Deepest cgroup level searched for rule matches.
const MAX_DEPTH: usize = 8;

/// One cgroup path rule, as configured.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CgroupRule {
    /// Rule name, shown as `cgroup-rule:<name>` in the instance's source.
    pub name: String,
    /// Regex over the relative cgroup path; must have a named capture `id`.
    pub pattern: String,
    /// Tenant for every match (operator-set), unless the pattern captures `tenant`.
    #[serde(default)]
    pub tenant: Option<String>,
}

impl CgroupRule {
    /// Compiles the pattern, checking it captures `id`.
    pub fn compile(&self) -> Result<Regex, String> {
        let re = Regex::new(&self.pattern).map_err(|e| e.to_string())?;
        if !re.capture_names().any(|n| n == Some("id")) {
            return Err("pattern has no named capture `id`".into());
        }
        Ok(re)
    }
}

/// Built-in rules for the layouts of `reference/linux-container-stats.md` §1.1.
pub fn defaults() -> Vec<CgroupRule> {
    let rule = |name: &str, pattern: &str| CgroupRule {
        name: name.into(),
        pattern: pattern.into(),
        tenant: None,
    };
    vec![
        rule(
            "systemd-nspawn",
            r"^machine\.slice/systemd-nspawn@(?P<id>[^/]+)\.service(?:/payload)?$",
        ),
        rule(
            "libvirt-lxc",
            r"^machine\.slice/machine-lxc\\x2d\d+\\x2d(?P<id>[^/]+)\.scope$",
        ),
        rule("lxc", r"^lxc\.payload\.(?P<id>[^/]+)$"),
        rule("lxc-legacy", r"^lxc/(?P<id>[^/]+)$"),
    ]
}

/// Walks one cgroup hierarchy and applies the rules.
pub struct RuleSource {
    rules: Vec<(CgroupRule, Regex)>,
}

impl RuleSource {
    /// Compiles the rules; a rule that does not compile is reported by `--check-config` and
    /// skipped here.
    pub fn new(rules: Vec<CgroupRule>) -> Self {
        let rules = rules
            .into_iter()
            .filter_map(|r| r.compile().ok().map(|re| (r, re)))
            .collect();
        RuleSource { rules }
    }

    /// The hierarchy whose paths the rules are matched against: the v2 tree on unified
    /// hosts, else the first v1 hierarchy that exists.
    fn reference_root(host: &Host) -> Option<PathBuf> {
        if host.layout == Layout::Unified {
            return Some(host.cgroup.clone());
        }
        ["pids", "memory", "cpu", "systemd"]
            .iter()
            .map(|c| host.cgroup.join(c))
            .find(|p| p.is_dir())
    }

    fn walk(
        &self,
        root: &Path,
        dir: &Path,
        depth: usize,
        found: &mut Vec<(usize, String, PathBuf)>,
    ) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = e.path();
            let Some(rel) = path.strip_prefix(root).ok().and_then(Path::to_str) else {
                continue;
            };
            // systemd mount units exhaust watches and never hold containers (cAdvisor).
            if rel.ends_with(".mount") {
                continue;
            }
            if let Some(i) = self.rules.iter().position(|(_, re)| re.is_match(rel)) {
                found.push((i, rel.to_string(), path.clone()));
            }
            if depth < MAX_DEPTH {
                self.walk(root, &path, depth + 1, found);
            }
        }
    }

    fn discovered(&self, host: &Host, rule: usize, rel: &str, dir: &Path) -> Option<Discovered> {
        let (r, re) = &self.rules[rule];
        let caps = re.captures(rel)?;
        let id = unescape_systemd(caps.name("id")?.as_str());
        let pid = first_pid(dir, 0)?;
        let start = live_start(host, pid, None)?;
        let mut labels = BTreeMap::new();
        if let Some(a) = caps.name("alias") {
            labels.insert("lookout.alias".to_string(), unescape_systemd(a.as_str()));
        }
        if let Some(t) = caps
            .name("tenant")
            .map(|t| t.as_str().to_string())
            .or(r.tenant.clone())
        {
            labels.insert("lookout.tenant".to_string(), t);
        }
        Some(Discovered {
            runtime_id: id.clone(),
            pid,
            start_ticks: start,
            cgroups: cgroups_at(host, rel, pid)?,
            rootfs: None,
            hostname: Some(id),
            labels,
            source: format!("cgroup-rule:{}", r.name),
        })
    }
}

impl Source for RuleSource {
    fn scan(&self, host: &Host) -> Vec<Discovered> {
        if self.rules.is_empty() {
            return Vec::new();
        }
        let Some(root) = Self::reference_root(host) else {
            return Vec::new();
        };
        let mut found = Vec::new();
        self.walk(&root, &root, 0, &mut found);
        // The deepest match of an id wins (nspawn's `payload` over its service cgroup).
        found.sort_by_key(|f| std::cmp::Reverse(f.1.len()));
        let mut seen = HashSet::new();
        found
            .into_iter()
            .filter_map(|(rule, rel, dir)| self.discovered(host, rule, &rel, &dir))
            .filter(|d| seen.insert((d.source.clone(), d.runtime_id.clone())))
            .collect()
    }

    fn watch_dirs(&self) -> Vec<PathBuf> {
        // Cgroup trees are large; the periodic rescan covers rule-found containers.
        Vec::new()
    }
}

/// The matched cgroup itself in every hierarchy where it exists: a guest that runs its own
/// init (nspawn `--boot`, LXC) keeps its processes in sub-cgroups, and the container is the
/// whole subtree, not the sub-cgroup of whichever process was found first. Hierarchies
/// without that path (v1 controllers the manager did not delegate) fall back to where the
/// init process sits.
fn cgroups_at(host: &Host, rel: &str, pid: u32) -> Option<crate::cgroup::CgroupPaths> {
    let mut paths = cgroups_of(host, pid)?;
    match host.layout {
        Layout::Unified => paths.unified = Some(host.cgroup.join(rel)),
        Layout::Hybrid | Layout::Legacy => {
            for ctrl in ["cpu", "cpuacct", "cpuset", "memory", "blkio", "pids"] {
                let dir = host.cgroup.join(ctrl).join(rel);
                if dir.is_dir() {
                    paths.v1.insert(ctrl.to_string(), dir);
                }
            }
            let unified = host.cgroup.join("unified").join(rel);
            if host.layout == Layout::Hybrid && unified.is_dir() {
                paths.unified = Some(unified);
            }
        }
    }
    Some(paths)
}

/// The container's init: the first pid in `cgroup.procs` of `dir`, else of its `init.scope`
/// (where a booted systemd guest keeps pid 1), else of any sub-cgroup (netdata's rule).
fn first_pid(dir: &Path, depth: usize) -> Option<u32> {
    for candidate in [dir.to_path_buf(), dir.join("init.scope")] {
        if let Ok(text) = crate::kernel_file::read(&candidate.join("cgroup.procs")) {
            if let Some(pid) = text.lines().find_map(|l| l.trim().parse().ok()) {
                return Some(pid);
            }
        }
    }
    if depth >= 3 {
        return None;
    }
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .find_map(|e| first_pid(&e.path(), depth + 1))
}

/// Undoes systemd's `\x2d` escaping of `-` inside unit name components.
fn unescape_systemd(s: &str) -> String {
    s.replace("\\x2d", "-")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(rel: &str) -> Option<(String, String)> {
        defaults().into_iter().find_map(|r| {
            let re = r.compile().expect("default rules compile");
            re.captures(rel)
                .map(|c| (r.name.clone(), unescape_systemd(&c["id"])))
        })
    }

    #[test]
    fn default_rules_cover_known_layouts() {
        assert_eq!(
            matches("machine.slice/systemd-nspawn@web.service/payload"),
            Some(("systemd-nspawn".into(), "web".into()))
        );
        assert_eq!(
            matches(r"machine.slice/machine-lxc\x2d12\x2dmy\x2dct.scope"),
            Some(("libvirt-lxc".into(), "my-ct".into()))
        );
        assert_eq!(
            matches("lxc.payload.db1"),
            Some(("lxc".into(), "db1".into()))
        );
        assert_eq!(
            matches("lxc/101"),
            Some(("lxc-legacy".into(), "101".into()))
        );
        assert_eq!(matches("lxc.monitor.db1"), None);
        assert_eq!(
            matches(r"machine.slice/machine-qemu\x2d1\x2dvm.scope"),
            None
        );
        assert_eq!(matches("system.slice/sshd.service"), None);
    }

    #[test]
    fn rules_need_an_id_capture() {
        let r = CgroupRule {
            name: "x".into(),
            pattern: "^foo/(.*)$".into(),
            tenant: None,
        };
        assert!(r.compile().is_err());
    }
}
