//! crun state: `<root>/<id>/status` (crun `src/libcrun/status.c`), with annotations and
//! hostname in the bundle's `config.json`. Cgroups come from `/proc/<pid>/cgroup`, which is
//! authoritative and the same on every layout.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{cgroups_of, live_start, Discovered, Source};
use crate::host::Host;
use crate::kernel_file::{read_regular, MAX_STATE_FILE};

/// The parts of crun's `status` the agent uses.
#[derive(Debug, Deserialize)]
pub struct Status {
    /// Init pid.
    pub pid: u32,
    /// Init start (clock ticks since boot).
    #[serde(rename = "process-start-time", default)]
    pub process_start_time: Option<u64>,
    /// Root filesystem.
    #[serde(default)]
    pub rootfs: Option<String>,
    /// OCI bundle directory.
    #[serde(default)]
    pub bundle: Option<String>,
}

/// The parts of an OCI `config.json` the agent uses.
#[derive(Debug, Default, Deserialize)]
pub struct BundleConfig {
    /// OCI annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// UTS hostname.
    #[serde(default)]
    pub hostname: Option<String>,
}

/// Parses a `status` file.
pub fn parse(bytes: &[u8]) -> Result<Status, serde_json::Error> {
    serde_json::from_slice(bytes)
}

/// Reads every crun `status` under a set of roots.
pub struct CrunSource {
    roots: Vec<PathBuf>,
}

impl CrunSource {
    /// A source over these state roots.
    pub fn new(roots: Vec<PathBuf>) -> Self {
        CrunSource { roots }
    }

    fn read_one(&self, host: &Host, dir: &Path) -> Option<Discovered> {
        let id = dir.file_name()?.to_str()?.to_string();
        let status = parse(&read_regular(&dir.join("status"), MAX_STATE_FILE).ok()?)
            .map_err(|e| tracing::warn!(dir = %dir.display(), error = %e, "unreadable crun status"))
            .ok()?;
        let start = live_start(host, status.pid, status.process_start_time)?;
        let config: BundleConfig = status
            .bundle
            .as_ref()
            .and_then(|b| read_regular(&Path::new(b).join("config.json"), MAX_STATE_FILE).ok())
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        Some(Discovered {
            runtime_id: id,
            pid: status.pid,
            start_ticks: start,
            cgroups: cgroups_of(host, status.pid)?,
            rootfs: status.rootfs.map(PathBuf::from),
            hostname: config.hostname.filter(|h| !h.is_empty()),
            labels: config.annotations,
            source: "crun".into(),
        })
    }
}

impl Source for CrunSource {
    fn scan(&self, host: &Host) -> Vec<Discovered> {
        let mut out = Vec::new();
        for root in &self.roots {
            let Ok(entries) = std::fs::read_dir(root) else {
                continue;
            };
            out.extend(
                entries
                    .flatten()
                    .filter_map(|e| self.read_one(host, &e.path())),
            );
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
    fn parses_status() {
        let s = parse(
            br#"{"pid":77,"process-start-time":1234,"cgroup-path":"/machine.slice/libpod-x.scope",
            "rootfs":"/r","bundle":"/b","systemd-cgroup":true,"created":"x","owner":"root","detached":true}"#,
        )
        .expect("valid");
        assert_eq!((s.pid, s.process_start_time), (77, Some(1234)));
        assert!(parse(b"[]").is_err());
    }
}
