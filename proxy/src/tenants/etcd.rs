//! Tenants in etcd: the keys, and the decoding of what a [`Snapshot`] of them holds into a
//! [`Source`] for the one validator ([`Tenants::from_sources`](super::Tenants::from_sources)).
//!
//! | key | value |
//! |---|---|
//! | `<prefix>tenants/<name>` | one [`TenantRecord`] as JSON: exactly the fields of a `[[tenant]]` table (`name`, `roles`, `rate_limit`, `cert_cn`, `spki_sha256`, `ssh_keys`, `token_sha256`) |
//! | `<prefix>tenants-config/defaults` | [`Defaults`]: `{"rate_limit":{"per_second":…,"burst":…}}` |
//! | `<prefix>tenants-config/revoked` | [`Revoked`]: `{"spki_sha256":["<hex>",…]}` |
//!
//! One key per tenant, so that editing one tenant rewrites only its key; `defaults` and
//! `revoked` sit under a sibling prefix rather than under `tenants/`, where they would take
//! two valid tenant names. Both prefixes fall in one key range
//! ([`Keys::tenants_range`]), read and watched at one revision.
//!
//! Decoding turns every flaw into a problem of the source, never a skipped key: a value that
//! is not the JSON of its record (unknown fields included), a record whose `name` differs
//! from its key, a value over `max_value_bytes`. Skipping would silently drop a tenant, or
//! a revocation; instead the whole set is refused, like a broken tenants file, and the proxy
//! keeps its last good one. Keys in the range of another form (`tenants-config/<other>`) are
//! ignored, so later versions can add some.

use std::collections::BTreeMap;

use lookout_discovery::etcd::{Key, Keys, Snapshot};
use serde::de::DeserializeOwned;

use super::{Defaults, Revoked, Source, TenantRecord, TenantsDoc};

/// The `tenants-config/` item holding `[defaults]`.
pub const DEFAULTS: &str = "defaults";
/// The `tenants-config/` item holding `[revoked]`.
pub const REVOKED: &str = "revoked";

/// How problems name the tenants of etcd under `keys`' prefix.
pub fn source_name(keys: &Keys) -> String {
    format!("etcd {}tenants*", keys.prefix())
}

/// Decodes the tenants keys of a snapshot (keys outside the tenants range are ignored).
pub fn decode(keys: &Keys, snapshot: &Snapshot, max_value_bytes: usize) -> Source {
    decode_kvs(keys, &snapshot.kvs, max_value_bytes)
}

/// [`decode`] over raw key-value pairs.
pub fn decode_kvs(keys: &Keys, kvs: &BTreeMap<Vec<u8>, Vec<u8>>, max_value_bytes: usize) -> Source {
    let mut source = Source {
        name: source_name(keys),
        doc: TenantsDoc::default(),
        problems: Vec::new(),
    };
    for (key, value) in kvs {
        let shown = String::from_utf8_lossy(key);
        let mut problem = |what: String| source.problems.push(format!("etcd key {shown}: {what}"));
        if value.len() > max_value_bytes {
            problem(format!(
                "value of {} bytes is over max_value_bytes ({max_value_bytes})",
                value.len()
            ));
            continue;
        }
        match keys.parse(key) {
            Key::Tenant(name) => match json::<TenantRecord>(value) {
                Ok(r) if r.name == name => source.doc.tenant.push(r),
                Ok(r) => problem(format!(
                    "the record's name {:?} differs from the key",
                    r.name
                )),
                Err(e) => problem(e),
            },
            Key::TenantsConfig(DEFAULTS) => match json::<Defaults>(value) {
                Ok(d) => source.doc.defaults = d,
                Err(e) => problem(e),
            },
            Key::TenantsConfig(REVOKED) => match json::<Revoked>(value) {
                Ok(r) => source.doc.revoked = r,
                Err(e) => problem(e),
            },
            _ => {}
        }
    }
    source
}

fn json<T: DeserializeOwned>(value: &[u8]) -> Result<T, String> {
    serde_json::from_slice(value).map_err(|e| format!("not a valid record: {e}"))
}

/// The JSON stored for a record. Serialising these plain structs cannot fail; an empty
/// value (which decoding refuses) stands in should it ever.
pub fn encode<T: serde::Serialize>(record: &T) -> Vec<u8> {
    serde_json::to_vec(record).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenants::{RateLimit, Tenants};

    fn kvs(pairs: &[(String, Vec<u8>)]) -> BTreeMap<Vec<u8>, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| (k.clone().into_bytes(), v.clone()))
            .collect()
    }

    #[test]
    fn records_round_trip_and_validate_like_the_file() {
        let keys = Keys::new("/lookout/");
        let mut ops = TenantRecord::named("ops");
        ops.roles = vec!["operator".into()];
        ops.rate_limit = Some(RateLimit {
            per_second: 5.0,
            burst: 7,
        });
        ops.token_sha256 = vec![crate::tenants::hex(&[7; 32])];
        let defaults = Defaults {
            rate_limit: Some(RateLimit {
                per_second: 1.0,
                burst: 2,
            }),
        };
        let src = decode_kvs(
            &keys,
            &kvs(&[
                (keys.tenant("ops"), encode(&ops)),
                (keys.tenant("acme"), encode(&TenantRecord::named("acme"))),
                (keys.tenants_config(DEFAULTS), encode(&defaults)),
                (keys.tenants_config("later"), b"anything".to_vec()),
            ]),
            64 * 1024,
        );
        assert!(src.problems.is_empty(), "{:?}", src.problems);
        let names: Vec<&str> = src.doc.tenant.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["acme", "ops"], "in key order");
        assert_eq!(src.doc.tenant[1], ops);
        let t = Tenants::from_sources(&[src]).expect("valid");
        assert!(t.by_token_hash(&[7; 32]).is_some_and(|t| t.is_operator()));
        assert_eq!(t.default_rate_limit().burst, 2);
        assert_eq!(
            t.by_cert_name("acme").map(|t| t.name.as_str()),
            Some("acme")
        );
    }

    #[test]
    fn every_flaw_is_a_problem_not_a_skipped_key() {
        let keys = Keys::new("/lookout/");
        let mut bad_key = TenantRecord::named("acme");
        bad_key.spki_sha256 = vec!["nope".into()];
        let src = decode_kvs(
            &keys,
            &kvs(&[
                (keys.tenant("acme"), encode(&bad_key)),
                (keys.tenant("other"), encode(&TenantRecord::named("globex"))),
                (keys.tenant("x"), br#"{"name":"x","colour":"red"}"#.to_vec()),
                (keys.tenant("big"), vec![b' '; 2000]),
                (keys.tenants_config(REVOKED), br#"{"spki":[]}"#.to_vec()),
            ]),
            1024,
        );
        let p = src.problems.join("\n");
        for needle in [
            "/lookout/tenants/other: the record's name \"globex\" differs",
            "/lookout/tenants/x: not a valid record: unknown field `colour`",
            "/lookout/tenants/big: value of 2000 bytes",
            "/lookout/tenants-config/revoked: not a valid record",
        ] {
            assert!(p.contains(needle), "missing {needle:?} in\n{p}");
        }
        let e = Tenants::from_sources(&[src]).expect_err("refused");
        let all = e.problems.join("\n");
        assert!(all.contains("tenant \"acme\": spki_sha256[0]"), "{all}");
        assert_eq!(e.problems.len(), 5, "{all}");
    }
}
