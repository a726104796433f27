//! The read-only commands: `list` (a table of the tenants, the default rate limit, the
//! revoked keys, and any problem that makes proxies refuse the set) and `show`.

use std::fmt::Write as _;

use super::{decode_kvs, no_tenant, Admin, AdminError, Outcome};
use crate::tenants::{RateLimit, TenantRecord};

impl Admin {
    pub(super) async fn list(&self, out: &mut Outcome) -> Result<(), AdminError> {
        let read = self.read().await?;
        let source = decode_kvs(&self.keys, &read.kvs, self.config.max_value_bytes);
        let rows: Vec<[String; 6]> = source
            .doc
            .tenant
            .iter()
            .map(|t| {
                [
                    t.name.clone(),
                    join_or(&t.roles, "-"),
                    t.rate_limit.map_or("default".into(), show_rate),
                    t.cert_cn
                        .as_ref()
                        .map_or(t.name.clone(), |c| join_or(c, "(none)")),
                    (t.spki_sha256.len() + t.ssh_keys.len()).to_string(),
                    t.token_sha256.len().to_string(),
                ]
            })
            .collect();
        let header = ["NAME", "ROLES", "RATE_LIMIT", "CERT_CN", "KEYS", "TOKENS"].map(String::from);
        let mut widths = [0; 6];
        for row in std::iter::once(&header).chain(&rows) {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        for row in std::iter::once(&header).chain(&rows) {
            let mut line = String::new();
            for (w, cell) in widths.iter().zip(row) {
                let _ = write!(line, "{cell:<w$}  ");
            }
            let _ = writeln!(out.stdout, "{}", line.trim_end());
        }
        let default = source.doc.defaults.rate_limit.map_or_else(
            || format!("{} (built in)", show_rate(RateLimit::DEFAULT)),
            show_rate,
        );
        let _ = writeln!(out.stdout, "\ndefault rate limit: {default}");
        let _ = writeln!(
            out.stdout,
            "revoked keys: {}",
            source.doc.revoked.spki_sha256.len()
        );
        let problems = self.problems(&read.kvs);
        if !problems.is_empty() {
            out.notes.push(format!(
                "warning: proxies refuse these tenants (keeping their last good ones) until \
                 this is fixed:\n  - {}",
                problems.join("\n  - ")
            ));
        }
        Ok(())
    }

    pub(super) async fn show(&self, name: &str, out: &mut Outcome) -> Result<(), AdminError> {
        let read = self.read().await?;
        let value = read
            .kvs
            .get(self.keys.tenant(name).as_bytes())
            .ok_or_else(|| no_tenant(name))?;
        // As a record, so the fields keep the tenants file's order; else as any JSON.
        let pretty = match serde_json::from_slice::<TenantRecord>(value) {
            Ok(r) => serde_json::to_string_pretty(&r),
            Err(_) => serde_json::from_slice::<serde_json::Value>(value)
                .and_then(|v| serde_json::to_string_pretty(&v)),
        };
        match pretty {
            Ok(text) => {
                let _ = writeln!(out.stdout, "{text}");
            }
            Err(e) => {
                let _ = writeln!(out.stdout, "{}", String::from_utf8_lossy(value));
                out.notes
                    .push(format!("warning: the stored value is not JSON ({e})"));
            }
        }
        Ok(())
    }
}

fn join_or(items: &[String], empty: &str) -> String {
    if items.is_empty() {
        empty.into()
    } else {
        items.join(",")
    }
}

pub(super) fn show_rate(r: RateLimit) -> String {
    format!("{}/s burst {}", r.per_second, r.burst)
}
