//! runc-family state: `<root>/<id>/state.json`, written by runc (`libcontainer`) for runc
//! itself, containerd's shim (`/run/containerd/runc/<namespace>`), Docker
//! (`/run/docker/runtime-runc/moby`), Podman with runc and CRI-O's runc handler.
//!
//! A stopped container keeps its state file, so a state is live only when its init pid
//! exists *and* started at the recorded `init_process_start` (pid reuse check, as runc does).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{live_start, Discovered, Source};
use crate::cgroup::CgroupPaths;
use crate::host::Host;
use crate::kernel_file::MAX_STATE_FILE;

/// The parts of `state.json` the agent uses.
#[derive(Debug, Deserialize)]
pub struct State {
    /// Container id.
    pub id: String,
    /// Init pid (host namespace).
    pub init_process_pid: u32,
    /// Init start, clock ticks since boot.
    pub init_process_start: u64,
    /// Per-controller cgroup directories (`""` = v2).
    #[serde(default)]
    pub cgroup_paths: BTreeMap<String, String>,
    /// The container's config.
    pub config: StateConfig,
}

/// `state.json` `config`.
#[derive(Debug, Deserialize)]
pub struct StateConfig {
    /// Root filesystem on the host.
    #[serde(default)]
    pub rootfs: Option<String>,
    /// `key=value` OCI annotations, then `bundle=<dir>`.
    #[serde(default)]
    pub labels: Vec<String>,
    /// UTS hostname, if the container has its own.
    #[serde(default)]
    pub hostname: Option<String>,
}

/// Parses a state file's bytes.
pub fn parse(bytes: &[u8]) -> Result<State, serde_json::Error> {
    serde_json::from_slice(bytes)
}

/// Splits runc's `key=value` labels. A label without `=` keeps an empty value.
pub fn labels(raw: &[String]) -> BTreeMap<String, String> {
    raw.iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (l.clone(), String::new()),
        })
        .collect()
}

/// Reads every `state.json` under a set of roots.
pub struct RuncSource {
    roots: Vec<PathBuf>,
}

impl RuncSource {
    /// A source over these state roots.
    pub fn new(roots: Vec<PathBuf>) -> Self {
        RuncSource { roots }
    }

    fn read_one(&self, host: &Host, file: &Path) -> Option<Discovered> {
        let bytes = match crate::kernel_file::read_regular(file, MAX_STATE_FILE) {
            Ok(b) => b,
            Err(e) if e.is_gone() => return None,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable runc state");
                return None;
            }
        };
        let state = match parse(&bytes) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "unreadable runc state");
                return None;
            }
        };
        let start = live_start(host, state.init_process_pid, Some(state.init_process_start))?;
        let hostname = state.config.hostname.filter(|h| !h.is_empty());
        Some(Discovered {
            runtime_id: state.id,
            pid: state.init_process_pid,
            start_ticks: start,
            cgroups: CgroupPaths::from_runc(&state.cgroup_paths, &host.cgroup),
            rootfs: state.config.rootfs.map(PathBuf::from),
            hostname,
            labels: labels(&state.config.labels),
            source: "runc".into(),
        })
    }
}

impl Source for RuncSource {
    fn scan(&self, host: &Host) -> Vec<Discovered> {
        let mut out = Vec::new();
        for root in &self.roots {
            let Ok(entries) = std::fs::read_dir(root) else {
                continue;
            };
            for entry in entries.flatten() {
                if let Some(d) = self.read_one(host, &entry.path().join("state.json")) {
                    out.push(d);
                }
            }
        }
        out
    }

    fn watch_dirs(&self) -> Vec<PathBuf> {
        self.roots.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_fields_we_use() {
        let s = parse(
            br#"{"id":"c1","init_process_pid":42,"init_process_start":9631,
            "created":"2026-11-21T05:10:43Z",
            "cgroup_paths":{"":"/sys/fs/cgroup/unified/x/c1","memory":"/sys/fs/cgroup/memory/x/c1"},
            "config":{"rootfs":"/b/rootfs","labels":["lookout.tenant=acme","a=b=c","bundle=/b"],"hostname":"web"},
            "namespace_paths":{"NEWNET":"/proc/42/ns/net"}}"#,
        )
        .expect("valid state");
        assert_eq!(s.id, "c1");
        assert_eq!(s.init_process_start, 9631);
        let l = labels(&s.config.labels);
        assert_eq!(l["lookout.tenant"], "acme");
        assert_eq!(l["a"], "b=c");
        assert_eq!(l["bundle"], "/b");
    }

    #[test]
    fn rejects_broken_state() {
        assert!(parse(b"{").is_err());
        assert!(parse(br#"{"id":"x"}"#).is_err());
    }
}
