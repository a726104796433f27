//! Debian's Prometheus (2.42) as a real client: its configuration checked with `promtool`,
//! started on a free loopback port, queried through its HTTP API (with `curl`), killed on
//! drop. Its log is kept in its temp dir and shown when a wait fails. Needs the Debian
//! packages `prometheus` and `curl`; panics naming them when missing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::net::free_port;

/// A running Prometheus.
pub struct Prometheus {
    child: Child,
    /// Its web/API port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
    name: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One active target, as `/api/v1/targets` reports it.
#[derive(Debug, Clone)]
pub struct Target {
    /// Labels after relabeling.
    pub labels: BTreeMap<String, String>,
    /// Labels before relabeling (`__meta_*`, `__address__`, …).
    pub discovered: BTreeMap<String, String>,
    /// `up`, `down` or `unknown`.
    pub health: String,
    /// The last scrape's error, if any.
    pub last_error: String,
    /// The URL it scrapes.
    pub scrape_url: String,
}

fn labels(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

impl Prometheus {
    /// Starts Prometheus with `config` (YAML) written into a fresh temp dir.
    pub fn start(name: &str, config: &str) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("prometheus.yml");
        std::fs::write(&file, config).expect("write prometheus.yml");
        Self::start_in(name, dir, &file)
    }

    /// Starts Prometheus with an existing configuration file.
    pub fn start_with_file(name: &str, config: &Path) -> Prometheus {
        Self::start_in(name, tempfile::tempdir().expect("tempdir"), config)
    }

    fn start_in(name: &str, dir: tempfile::TempDir, config: &Path) -> Prometheus {
        let check = Command::new("promtool")
            .args(["check", "config"])
            .arg(config)
            .output()
            .expect(
                "promtool missing: install Debian's `prometheus` package (deploy/test.sh does)",
            );
        assert!(
            check.status.success(),
            "{name}: promtool rejects {}:\n{}{}",
            config.display(),
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect(
                "prometheus missing: install Debian's `prometheus` package (deploy/test.sh does)",
            );
        Prometheus {
            child,
            port,
            dir,
            name: name.to_string(),
        }
    }

    /// The directory holding its data and log.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn api(&self, path: &str, query: Option<&str>) -> Option<Value> {
        let mut cmd = Command::new("curl");
        cmd.args(["-sf", "--max-time", "5"]);
        if let Some(q) = query {
            cmd.args(["--get", "--data-urlencode"])
                .arg(format!("query={q}"));
        }
        let out = cmd
            .arg(format!("http://127.0.0.1:{}{path}", self.port))
            .output()
            .expect("curl missing: install Debian's `curl`");
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["status"] == "success").then(|| v["data"].clone())
    }

    /// The active targets (empty until Prometheus answers).
    pub fn targets(&self) -> Vec<Target> {
        let Some(data) = self.api("/api/v1/targets?state=active", None) else {
            return Vec::new();
        };
        data["activeTargets"]
            .as_array()
            .map(|ts| {
                ts.iter()
                    .map(|t| Target {
                        labels: labels(&t["labels"]),
                        discovered: labels(&t["discoveredLabels"]),
                        health: t["health"].as_str().unwrap_or_default().to_string(),
                        last_error: t["lastError"].as_str().unwrap_or_default().to_string(),
                        scrape_url: t["scrapeUrl"].as_str().unwrap_or_default().to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// An instant query's samples: labels and value (a scalar result is one sample without
    /// labels).
    pub fn query(&self, promql: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let Some(data) = self.api("/api/v1/query", Some(promql)) else {
            return Vec::new();
        };
        if data["resultType"] == "scalar" {
            let value = data["result"][1].as_str().and_then(|v| v.parse().ok());
            return value.map(|v| (BTreeMap::new(), v)).into_iter().collect();
        }
        data["result"]
            .as_array()
            .map(|rs| {
                rs.iter()
                    .filter_map(|r| {
                        let v = r["value"][1].as_str()?.parse().ok()?;
                        Some((labels(&r["metric"]), v))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The first sample of `promql` once it has a finite value, within `within`.
    pub fn wait_value(&self, promql: &str, within: Duration) -> f64 {
        let start = Instant::now();
        loop {
            if let Some((_, v)) = self.query(promql).into_iter().find(|(_, v)| v.is_finite()) {
                return v;
            }
            assert!(
                start.elapsed() < within,
                "{}: no value for {promql} within {within:?}; log:\n{}",
                self.name,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Polls the targets until `done` holds, checking `always` on every poll (a violation
    /// fails at once). Returns the targets that satisfied `done`.
    pub fn wait_targets(
        &self,
        what: &str,
        within: Duration,
        always: impl Fn(&[Target]) -> Result<(), String>,
        done: impl Fn(&[Target]) -> bool,
    ) -> Vec<Target> {
        let start = Instant::now();
        loop {
            let ts = self.targets();
            if let Err(e) = always(&ts) {
                panic!("{}: {e}; targets: {ts:#?}", self.name);
            }
            if done(&ts) {
                return ts;
            }
            assert!(
                start.elapsed() < within,
                "{}: not {what} within {within:?}; targets: {ts:#?}\nlog:\n{}",
                self.name,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// Runs `promtool check service-discovery` (Debian's `prometheus`) for `job` in `config`:
/// the targets it discovered, as JSON, and its log (stderr). Blocking.
pub fn check_service_discovery(config: &str, job: &str) -> (Vec<Value>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("prometheus.yml");
    std::fs::write(&path, config).expect("write config");
    let out = Command::new("promtool")
        .args(["check", "service-discovery", "--timeout=2s"])
        .arg(&path)
        .arg(job)
        .output()
        .expect("promtool missing: install Debian's `prometheus` (deploy/test.sh does)");
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "promtool failed: {log}");
    let targets: Vec<Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("promtool printed no JSON ({e}): {log}"));
    (targets, log)
}

/// The discovered `__address__` and `__meta_triton_*` labels of each target of a
/// [`check_service_discovery`], sorted by address.
pub fn triton_labels(targets: &[Value]) -> Vec<(String, Vec<(String, String)>)> {
    let mut out: Vec<_> = targets
        .iter()
        .map(|t| {
            let labels = t["discoveredLabels"].as_object().expect("discoveredLabels");
            let meta = labels
                .iter()
                .filter(|(k, _)| k.starts_with("__meta_triton_"))
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect();
            let address = labels["__address__"].as_str().unwrap_or("").to_string();
            (address, meta)
        })
        .collect();
    out.sort();
    out
}
