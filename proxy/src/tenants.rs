//! The tenants file: who may use the proxy, with which credentials, roles and rate limits.
//!
//! A TOML file parsed once into typed structs; every problem (bad key, duplicate name, a
//! credential registered to two tenants, …) is listed together before anything is used, and
//! the result carries the lookup indexes the identity layer needs (by certificate name, by
//! SPKI SHA-256, by token SHA-256). Secrets are never stored: tokens only as SHA-256 hashes,
//! keys only as public keys or their SPKI hashes.
//!
//! ```toml
//! [defaults]
//! rate_limit = { per_second = 100.0, burst = 1000 }
//!
//! [revoked]                      # refused even when otherwise valid (CA-issued or not)
//! spki_sha256 = ["9f86d081884c7d65…"]
//!
//! [[tenant]]
//! name = "alice"
//! roles = ["operator"]
//! rate_limit = { per_second = 10.0, burst = 20 }
//! cert_cn = ["alice", "alice.example.com"]   # default: [name]; [] accepts no CA certificate
//! spki_sha256 = ["hex, aa:bb:… or base64 (sha256//… accepted)"]
//! ssh_keys = ["ssh-ed25519 AAAAC3Nza… alice@laptop"]
//! token_sha256 = ["<sha256 of the bearer token, hex or base64>"]
//! ```
//!
//! The same records can live in etcd ([`etcd`]: one JSON value per `[[tenant]]` table, and
//! `[defaults]` and `[revoked]` as two more keys), managed with `lookout tenants` ([`admin`]).
//! Whatever they come from, records are decoded into [`TenantsDoc`]s and validated together
//! by one function ([`Tenants::from_sources`]), so etcd records obey exactly the file's rules
//! and a tenant or credential defined in both places is a problem like any other. [`reload`]
//! keeps the merged set in force and swaps it when either source changes.

pub mod admin;
pub mod etcd;
pub mod reload;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A SHA-256 digest: of a SubjectPublicKeyInfo DER, or of a bearer token.
pub type Sha256Hash = [u8; 32];

/// A rate: sustained requests per second and the burst allowed above it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained requests per second, cluster-wide (each replica enforces its share).
    pub per_second: f64,
    /// Requests allowed at once above the sustained rate, cluster-wide.
    pub burst: u32,
}

impl RateLimit {
    /// The default when the file names none: 100 r/s, burst 1000 (cmon's values).
    pub const DEFAULT: RateLimit = RateLimit {
        per_second: 100.0,
        burst: 1000,
    };

    fn problems(&self, what: &str, p: &mut Vec<String>) {
        if !(self.per_second.is_finite() && self.per_second > 0.0) {
            p.push(format!("{what}.per_second must be a positive number"));
        }
        if self.burst == 0 {
            p.push(format!("{what}.burst must be at least 1"));
        }
    }
}

/// What a tenant may do beyond seeing its own instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Node metrics and node discovery.
    Operator,
}

/// One tenant, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    /// The tenant's name, as containers' tenant labels carry it.
    pub name: String,
    /// Roles held.
    pub roles: Vec<Role>,
    /// Overrides the default rate limit.
    pub rate_limit: Option<RateLimit>,
    /// Names accepted in certificates issued by the tenant CA (subject CN or a SAN).
    pub cert_names: Vec<String>,
    /// SHA-256 of each registered public key's SubjectPublicKeyInfo DER (SSH keys included,
    /// converted to their X.509 SPKI form).
    pub spki_sha256: Vec<Sha256Hash>,
    /// SHA-256 of each accepted bearer token.
    pub token_sha256: Vec<Sha256Hash>,
}

impl Tenant {
    /// True when the tenant holds the `operator` role.
    pub fn is_operator(&self) -> bool {
        self.roles.contains(&Role::Operator)
    }
}

/// Everything wrong with a tenants file (or the tenants of etcd, or both together), one
/// problem per entry.
#[derive(Debug, thiserror::Error)]
#[error("invalid tenants file {source_name}:\n  - {}", problems.join("\n  - "))]
pub struct TenantsError {
    /// The file (or `<text>` when parsed from a string); with several sources, their names
    /// joined by ` + `.
    pub source_name: String,
    /// Each problem found.
    pub problems: Vec<String>,
}

/// The tables of a tenants file, decoded but not validated. Also what the tenants of etcd
/// decode into ([`etcd`]), so both go through one validator ([`Tenants::from_sources`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantsDoc {
    /// `[defaults]`.
    #[serde(default)]
    pub defaults: Defaults,
    /// `[revoked]`.
    #[serde(default)]
    pub revoked: Revoked,
    /// The `[[tenant]]` tables, in order.
    #[serde(default)]
    pub tenant: Vec<TenantRecord>,
}

/// `[defaults]` (in etcd: the value of `<prefix>tenants-config/defaults`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// The rate limit of tenants that name none. Unset: [`RateLimit::DEFAULT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// `[revoked]` (in etcd: the value of `<prefix>tenants-config/revoked`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revoked {
    /// SPKI SHA-256 of keys refused even when otherwise valid.
    #[serde(default)]
    pub spki_sha256: Vec<String>,
}

/// One `[[tenant]]` table as written (in etcd: the JSON value of `<prefix>tenants/<name>`),
/// before validation. Field meanings: the module documentation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRecord {
    /// The tenant's name.
    pub name: String,
    /// Role names (`operator`).
    #[serde(default)]
    pub roles: Vec<String>,
    /// Overrides the default rate limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Names accepted in tenant-CA certificates. Unset: the tenant's name; empty: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_cn: Option<Vec<String>>,
    /// Registered keys by SPKI SHA-256 (hex or base64).
    #[serde(default)]
    pub spki_sha256: Vec<String>,
    /// Registered SSH public keys (`authorized_keys` lines without options).
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    /// SHA-256 of accepted bearer tokens (hex or base64).
    #[serde(default)]
    pub token_sha256: Vec<String>,
}

impl TenantRecord {
    /// A record with only a name: no roles, the default rate limit, `cert_cn` = its name.
    pub fn named(name: impl Into<String>) -> TenantRecord {
        TenantRecord {
            name: name.into(),
            ..TenantRecord::default()
        }
    }
}

/// Tenant records from one place — the tenants file or etcd — with the problems found while
/// decoding them (a file that is not TOML, an etcd value that is not a record).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Source {
    /// Where the records come from, as problems name it: the file's path, or etcd's range.
    pub name: String,
    /// The records.
    pub doc: TenantsDoc,
    /// Problems found before validation; any of them makes the set invalid.
    pub problems: Vec<String>,
}

impl Source {
    /// The records of a tenants file; a file that cannot be read or parsed is a source with
    /// that one problem.
    pub fn from_file(path: &Path) -> Source {
        let name = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Source::from_toml(&text, name),
            Err(e) => Source {
                name,
                doc: TenantsDoc::default(),
                problems: vec![format!("cannot read: {e}")],
            },
        }
    }

    /// The records of tenants-file text.
    pub fn from_toml(text: &str, name: String) -> Source {
        match toml::from_str::<TenantsDoc>(text) {
            Ok(doc) => Source {
                name,
                doc,
                problems: Vec::new(),
            },
            Err(e) => Source {
                name,
                doc: TenantsDoc::default(),
                problems: vec![e.to_string()],
            },
        }
    }
}

/// The validated tenants file with its lookup indexes. Immutable: a reload builds a new one.
#[derive(Debug, Clone, Default)]
pub struct Tenants {
    default_rate: Option<RateLimit>,
    tenants: Vec<Tenant>,
    by_name: HashMap<String, usize>,
    by_cert_name: HashMap<String, usize>,
    by_spki: HashMap<Sha256Hash, usize>,
    by_token: HashMap<Sha256Hash, usize>,
    revoked: HashSet<Sha256Hash>,
}

impl Tenants {
    /// Reads and validates a tenants file.
    pub fn load(path: &Path) -> Result<Tenants, TenantsError> {
        Self::from_sources(&[Source::from_file(path)])
    }

    /// Parses and validates tenants-file text without touching the filesystem.
    pub fn parse(text: &str) -> Result<Tenants, TenantsError> {
        Self::from_sources(&[Source::from_toml(text, "<text>".into())])
    }

    /// Validates the records of every source together — the one validator of tenants,
    /// whatever they come from — listing every problem: each source's own, and those of the
    /// merged set (a name or a credential used by two tenants, within one source or across
    /// two; `[defaults]` set differently in two). `[revoked]` lists are merged: revoking is
    /// never less safe. Tenants keep the sources' order.
    pub fn from_sources(sources: &[Source]) -> Result<Tenants, TenantsError> {
        let mut problems = Vec::new();
        let t = build(sources, &mut problems);
        if problems.is_empty() {
            Ok(t)
        } else {
            let names: Vec<&str> = sources.iter().map(|s| s.name.as_str()).collect();
            Err(TenantsError {
                source_name: names.join(" + "),
                problems,
            })
        }
    }

    /// Every tenant, in file order.
    pub fn tenants(&self) -> &[Tenant] {
        &self.tenants
    }

    /// The default rate limit (the file's, else [`RateLimit::DEFAULT`]).
    pub fn default_rate_limit(&self) -> RateLimit {
        self.default_rate.unwrap_or(RateLimit::DEFAULT)
    }

    /// Per-tenant overrides of the default rate limit, by tenant name.
    pub fn rate_overrides(&self) -> BTreeMap<String, RateLimit> {
        self.tenants
            .iter()
            .filter_map(|t| t.rate_limit.map(|r| (t.name.clone(), r)))
            .collect()
    }

    /// The tenant with this name.
    pub fn by_name(&self, name: &str) -> Option<&Tenant> {
        self.by_name.get(name).map(|&i| &self.tenants[i])
    }

    /// The tenant that accepts this name (CN or SAN) in tenant-CA certificates.
    pub fn by_cert_name(&self, name: &str) -> Option<&Tenant> {
        self.by_cert_name.get(name).map(|&i| &self.tenants[i])
    }

    /// The tenant a public key (by SPKI SHA-256) is registered to.
    pub fn by_spki(&self, hash: &Sha256Hash) -> Option<&Tenant> {
        self.by_spki.get(hash).map(|&i| &self.tenants[i])
    }

    /// The tenant a bearer token is registered to, by the token's SHA-256.
    pub fn by_token_hash(&self, hash: &Sha256Hash) -> Option<&Tenant> {
        self.by_token.get(hash).map(|&i| &self.tenants[i])
    }

    /// True when a key (by SPKI SHA-256) is revoked.
    pub fn is_revoked(&self, spki: &Sha256Hash) -> bool {
        self.revoked.contains(spki)
    }
}

fn build(sources: &[Source], p: &mut Vec<String>) -> Tenants {
    let many = sources.len() > 1;
    let mut out = Tenants::default();
    // The source of each tenant, by index, and of the default rate limit.
    let mut origin: Vec<usize> = Vec::new();
    let mut default_from: Option<usize> = None;
    for (s_idx, source) in sources.iter().enumerate() {
        p.extend(source.problems.iter().cloned());
        let doc = &source.doc;
        // With one source, problems read exactly as the file's always have.
        let at = |what: String| {
            if many {
                format!("{}: {what}", source.name)
            } else {
                what
            }
        };
        if let Some(r) = doc.defaults.rate_limit {
            r.problems(&at("defaults.rate_limit".into()), p);
            match (default_from, out.default_rate) {
                (Some(other), Some(prev)) if prev != r => p.push(format!(
                    "defaults.rate_limit is set differently in {} and in {}",
                    sources[other].name, source.name
                )),
                _ => {
                    out.default_rate = Some(r);
                    default_from = Some(s_idx);
                }
            }
        }
        for (i, s) in doc.revoked.spki_sha256.iter().enumerate() {
            match parse_sha256(s) {
                Ok(h) => {
                    out.revoked.insert(h);
                }
                Err(e) => p.push(at(format!("revoked.spki_sha256[{i}]: {e}"))),
            }
        }
        for raw_t in &doc.tenant {
            let idx = out.tenants.len();
            let t = build_tenant(raw_t.clone(), p);
            let who = format!("tenant {:?}", t.name);
            if let Some(&other) = out.by_name.get(&t.name) {
                let also = match origin.get(other) {
                    Some(&o) if o != s_idx => {
                        format!(" (in {} and in {})", sources[o].name, source.name)
                    }
                    _ => String::new(),
                };
                p.push(format!(
                    "{who}: the name is used by more than one tenant{also}"
                ));
            } else {
                out.by_name.insert(t.name.clone(), idx);
            }
            let quoted = |n: &String| format!("{n:?}");
            let short = |h: &Sha256Hash| format!("{}…", &hex(h)[..16]);
            let ctx = Owners {
                tenants: &out.tenants,
                origin: &origin,
                sources,
                this: (idx, s_idx),
                who: &who,
            };
            ctx.index(&mut out.by_cert_name, &t.cert_names, "cert_cn", quoted, p);
            ctx.index(&mut out.by_spki, &t.spki_sha256, "key", short, p);
            ctx.index(&mut out.by_token, &t.token_sha256, "token", short, p);
            out.tenants.push(t);
            origin.push(s_idx);
        }
    }
    out
}

/// Who holds what so far, while indexing one more tenant.
struct Owners<'a> {
    tenants: &'a [Tenant],
    /// The source of each tenant.
    origin: &'a [usize],
    sources: &'a [Source],
    /// The tenant being indexed, and its source.
    this: (usize, usize),
    /// How problems name it.
    who: &'a str,
}

impl Owners<'_> {
    /// Adds `keys` to `map` for this tenant; a key already held by another tenant is a
    /// problem (naming the other's source when it differs).
    fn index<K: std::hash::Hash + Eq + Clone>(
        &self,
        map: &mut HashMap<K, usize>,
        keys: &[K],
        what: &str,
        show: impl Fn(&K) -> String,
        p: &mut Vec<String>,
    ) {
        let (idx, s_idx) = self.this;
        for k in keys {
            match map.get(k) {
                Some(&other) if other != idx => {
                    let name = self.tenants.get(other).map_or("?", |t| t.name.as_str());
                    let also = match self.origin.get(other) {
                        Some(&o) if o != s_idx => format!(" in {}", self.sources[o].name),
                        _ => String::new(),
                    };
                    p.push(format!(
                        "{}: {what} {} is also registered to tenant {name:?}{also}",
                        self.who,
                        show(k)
                    ));
                }
                Some(_) => {}
                None => {
                    map.insert(k.clone(), idx);
                }
            }
        }
    }
}

fn build_tenant(raw: TenantRecord, p: &mut Vec<String>) -> Tenant {
    let who = format!("tenant {:?}", raw.name);
    if !valid_tenant_name(&raw.name) {
        p.push(format!(
            "{who}: name must be 1–63 characters of a-z, A-Z, 0-9, '.', '_', '-'"
        ));
    }
    let mut roles = Vec::new();
    for r in &raw.roles {
        match r.as_str() {
            "operator" => roles.push(Role::Operator),
            other => p.push(format!("{who}: unknown role {other:?} (known: operator)")),
        }
    }
    if let Some(r) = &raw.rate_limit {
        r.problems(&format!("{who}: rate_limit"), p);
    }
    let cert_names = raw.cert_cn.unwrap_or_else(|| vec![raw.name.clone()]);
    for n in &cert_names {
        if n.is_empty() || n.chars().any(char::is_control) {
            p.push(format!(
                "{who}: cert_cn {n:?} is empty or has control characters"
            ));
        }
    }
    let mut spki = Vec::new();
    for (i, s) in raw.spki_sha256.iter().enumerate() {
        match parse_sha256(s) {
            Ok(h) => spki.push(h),
            Err(e) => p.push(format!("{who}: spki_sha256[{i}]: {e}")),
        }
    }
    for (i, line) in raw.ssh_keys.iter().enumerate() {
        match ssh_key_spki(line) {
            Ok(der) => spki.push(Sha256::digest(&der).into()),
            Err(e) => p.push(format!("{who}: ssh_keys[{i}]: {e}")),
        }
    }
    let mut tokens = Vec::new();
    for (i, s) in raw.token_sha256.iter().enumerate() {
        match parse_sha256(s) {
            Ok(h) => tokens.push(h),
            Err(e) => p.push(format!("{who}: token_sha256[{i}]: {e}")),
        }
    }
    Tenant {
        name: raw.name,
        roles,
        rate_limit: raw.rate_limit,
        cert_names,
        spki_sha256: spki,
        token_sha256: tokens,
    }
}

/// True for names of 1–63 characters of `a-z`, `A-Z`, `0-9`, `.`, `_`, `-`.
pub(crate) fn valid_tenant_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Parses a SHA-256 digest written as hex (optionally `:`-separated, any case) or base64
/// (standard or URL-safe, padded or not, optionally prefixed `sha256//` as curl pins are).
pub fn parse_sha256(s: &str) -> Result<Sha256Hash, String> {
    let s = s.trim();
    let hex: String = s.chars().filter(|&c| c != ':').collect();
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            // Slicing is safe: the string is 64 ASCII hex digits.
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|e| format!("bad hex: {e}"))?;
        }
        return Ok(out);
    }
    let b64 = s
        .strip_prefix("sha256//")
        .unwrap_or(s)
        .trim_end_matches('=');
    let engines = [
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    for e in engines {
        if let Ok(bytes) = e.decode(b64) {
            return <[u8; 32]>::try_from(bytes.as_slice())
                .map_err(|_| format!("decodes to {} bytes, not 32", bytes.len()));
        }
    }
    Err("not a SHA-256 digest in hex (64 digits) or base64".into())
}

/// Lowercase hex of a digest (the form `sha256sum` prints).
pub fn hex(hash: &[u8]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// Converts one `authorized_keys` line (`ssh-ed25519`, `ecdsa-sha2-nistp256` or `ssh-rsa`
/// of at least 2048 bits; no options) to the DER SubjectPublicKeyInfo an X.509 certificate
/// with the same key carries, so SSH keys and certificate keys share one index.
pub fn ssh_key_spki(line: &str) -> Result<Vec<u8>, String> {
    let line = line.trim();
    let entry: ssh_key::authorized_keys::Entry = line.parse().map_err(|e| format!("{e}"))?;
    if !entry.config_opts().is_empty() {
        return Err("authorized_keys options are not supported".into());
    }
    use ssh_key::public::{EcdsaPublicKey, KeyData};
    match entry.public_key().key_data() {
        KeyData::Ed25519(k) => Ok(crate::der::ed25519_spki(&k.0)),
        KeyData::Ecdsa(EcdsaPublicKey::NistP256(point)) => {
            let b = point.as_bytes();
            if b.len() != 65 || b[0] != 4 {
                return Err("ECDSA point is not in uncompressed form".into());
            }
            Ok(crate::der::p256_spki(b))
        }
        KeyData::Rsa(k) => {
            let n =
                k.n.as_positive_bytes()
                    .ok_or("RSA modulus is not positive")?;
            // Count bits, not bytes: a 256-byte modulus starting 0x01 is a 2041-bit key.
            let n = &n[n.iter().take_while(|&&b| b == 0).count()..];
            let bits = n
                .first()
                .map_or(0, |top| n.len() * 8 - top.leading_zeros() as usize);
            if bits < 2048 {
                return Err(format!("RSA key of {bits} bits; at least 2048 required"));
            }
            Ok(crate::der::rsa_spki(k.n.as_bytes(), k.e.as_bytes()))
        }
        other => Err(format!(
            "key type {} not supported (ssh-ed25519, ecdsa-sha2-nistp256, ssh-rsa)",
            other.algorithm()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(name: &str, text: &str) -> Source {
        Source::from_toml(text, name.into())
    }

    const FILE: &str = r#"
[defaults]
rate_limit = { per_second = 10.0, burst = 20 }
[revoked]
spki_sha256 = ["0101010101010101010101010101010101010101010101010101010101010101"]
[[tenant]]
name = "acme"
token_sha256 = ["0202020202020202020202020202020202020202020202020202020202020202"]
"#;

    #[test]
    fn sources_merge_into_one_set() {
        let etcd = r#"
[revoked]
spki_sha256 = ["0303030303030303030303030303030303030303030303030303030303030303"]
[[tenant]]
name = "globex"
roles = ["operator"]
"#;
        let t = Tenants::from_sources(&[source("file", FILE), source("etcd", etcd)])
            .expect("no conflict");
        let names: Vec<&str> = t.tenants().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["acme", "globex"]);
        assert_eq!(t.default_rate_limit().burst, 20, "the file's default");
        assert!(
            t.is_revoked(&[1; 32]) && t.is_revoked(&[3; 32]),
            "revocations add up"
        );
        assert!(t.by_token_hash(&[2; 32]).is_some());
        assert!(t.by_name("globex").is_some_and(Tenant::is_operator));
        assert!(Tenants::from_sources(&[]).is_ok_and(|t| t.tenants().is_empty()));
    }

    #[test]
    fn conflicts_across_sources_name_both() {
        let etcd = r#"
[defaults]
rate_limit = { per_second = 1.0, burst = 2 }
[revoked]
spki_sha256 = ["nope"]
[[tenant]]
name = "acme"
[[tenant]]
name = "initech"
cert_cn = ["acme"]
token_sha256 = ["0202020202020202020202020202020202020202020202020202020202020202"]
"#;
        let e = Tenants::from_sources(&[source("file", FILE), source("etcd", etcd)])
            .expect_err("conflicts");
        assert_eq!(e.source_name, "file + etcd");
        let want = [
            "defaults.rate_limit is set differently in file and in etcd",
            "etcd: revoked.spki_sha256[0]: ",
            "tenant \"acme\": the name is used by more than one tenant (in file and in etcd)",
            // Its default cert_cn is the name, so that is taken too (as within one file).
            "tenant \"acme\": cert_cn \"acme\" is also registered to tenant \"acme\" in file",
            "tenant \"initech\": cert_cn \"acme\" is also registered to tenant \"acme\" in file",
            "tenant \"initech\": token 0202020202020202… is also registered to tenant \"acme\" in file",
        ];
        for w in want {
            assert!(
                e.problems.iter().any(|p| p.starts_with(w)),
                "missing {w:?} in {:#?}",
                e.problems
            );
        }
        assert_eq!(e.problems.len(), want.len(), "{:#?}", e.problems);
        // A source's own problems count too, and a broken file is one problem.
        let broken = Source {
            problems: vec!["etcd key x: not a valid record".into()],
            ..source("etcd", "")
        };
        let e = Tenants::from_sources(&[source("file", "[[tenant]"), broken]).expect_err("bad");
        assert_eq!(e.problems.len(), 2, "{:#?}", e.problems);
    }
}
