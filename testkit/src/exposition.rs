//! Reading Prometheus exposition text in assertions: samples by name and labels, and
//! `promtool check metrics` as the reference validator. A reader for tests of well-formed
//! output, not a parser of untrusted text: lines it does not understand are passed over.

use std::io::Write;
use std::process::{Command, Stdio};

/// Labels and value of one sample.
pub type Sample = (Vec<(String, String)>, f64);

/// Every sample of `name` (exactly that name: `name_total` is another), in order.
pub fn samples(text: &str, name: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labels, value) = if let Some(r) = rest.strip_prefix('{') {
            let Some((l, v)) = r.split_once("} ") else {
                continue;
            };
            (l, v)
        } else if let Some(v) = rest.strip_prefix(' ') {
            ("", v)
        } else {
            continue;
        };
        let labels = labels
            .split("\",")
            .filter(|p| !p.is_empty())
            .filter_map(|p| {
                let (k, v) = p.split_once("=\"")?;
                Some((k.to_string(), v.trim_end_matches('"').to_string()))
            })
            .collect();
        let Ok(v) = value.trim().parse::<f64>() else {
            continue;
        };
        out.push((labels, v));
    }
    out
}

/// The value of the first sample of `name` carrying all of `labels` (others ignored).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(text, name)
        .into_iter()
        .find(|(ls, _)| {
            labels
                .iter()
                .all(|(k, v)| ls.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, v)| v)
}

/// The value of the sample of `name` that has no labels at all.
pub fn unlabelled(text: &str, name: &str) -> Option<f64> {
    samples(text, name)
        .into_iter()
        .find(|(ls, _)| ls.is_empty())
        .map(|(_, v)| v)
}

/// Pipes exposition text through `promtool check metrics`; panics with its output on errors
/// (lint warnings alone pass). Returns the report.
pub fn promtool_check(text: &str) -> String {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool missing: install Debian's `prometheus` package (deploy/test.sh does)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool ran");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() || !report.contains("error"),
        "promtool check metrics failed:\n{report}"
    );
    report
}
