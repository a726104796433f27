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
//! Not here: reloading on change (the caller re-parses and swaps), and tenants coming from a
//! discovery source instead of a file.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// A SHA-256 digest: of a SubjectPublicKeyInfo DER, or of a bearer token.
pub type Sha256Hash = [u8; 32];

/// A rate: sustained requests per second and the burst allowed above it.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
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

/// Everything wrong with a tenants file, one problem per entry.
#[derive(Debug, thiserror::Error)]
#[error("invalid tenants file {source_name}:\n  - {}", problems.join("\n  - "))]
pub struct TenantsError {
    /// The file (or `<text>` when parsed from a string).
    pub source_name: String,
    /// Each problem found.
    pub problems: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default)]
    revoked: RawRevoked,
    #[serde(default)]
    tenant: Vec<RawTenant>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    rate_limit: Option<RateLimit>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRevoked {
    #[serde(default)]
    spki_sha256: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    name: String,
    #[serde(default)]
    roles: Vec<String>,
    rate_limit: Option<RateLimit>,
    cert_cn: Option<Vec<String>>,
    #[serde(default)]
    spki_sha256: Vec<String>,
    #[serde(default)]
    ssh_keys: Vec<String>,
    #[serde(default)]
    token_sha256: Vec<String>,
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
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| TenantsError {
            source_name: name.clone(),
            problems: vec![format!("cannot read: {e}")],
        })?;
        Self::parse_named(&text, name)
    }

    /// Parses and validates tenants-file text without touching the filesystem.
    pub fn parse(text: &str) -> Result<Tenants, TenantsError> {
        Self::parse_named(text, "<text>".into())
    }

    fn parse_named(text: &str, source_name: String) -> Result<Tenants, TenantsError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| TenantsError {
            source_name: source_name.clone(),
            problems: vec![e.to_string()],
        })?;
        let mut problems = Vec::new();
        let t = build(raw, &mut problems);
        if problems.is_empty() {
            Ok(t)
        } else {
            Err(TenantsError {
                source_name,
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

fn build(raw: RawFile, p: &mut Vec<String>) -> Tenants {
    let mut out = Tenants::default();
    if let Some(r) = raw.defaults.rate_limit {
        r.problems("defaults.rate_limit", p);
        out.default_rate = Some(r);
    }
    for (i, s) in raw.revoked.spki_sha256.iter().enumerate() {
        match parse_sha256(s) {
            Ok(h) => {
                out.revoked.insert(h);
            }
            Err(e) => p.push(format!("revoked.spki_sha256[{i}]: {e}")),
        }
    }
    for raw_t in raw.tenant {
        let idx = out.tenants.len();
        let t = build_tenant(raw_t, p);
        let who = format!("tenant {:?}", t.name);
        if out.by_name.insert(t.name.clone(), idx).is_some() {
            p.push(format!("{who}: the name is used by more than one tenant"));
        }
        let quoted = |n: &String| format!("{n:?}");
        let short = |h: &Sha256Hash| format!("{}…", &hex(h)[..16]);
        let ctx = (&out.tenants[..], who.as_str());
        index(
            &mut out.by_cert_name,
            &t.cert_names,
            idx,
            ctx,
            "cert_cn",
            quoted,
            p,
        );
        index(&mut out.by_spki, &t.spki_sha256, idx, ctx, "key", short, p);
        index(
            &mut out.by_token,
            &t.token_sha256,
            idx,
            ctx,
            "token",
            short,
            p,
        );
        out.tenants.push(t);
    }
    out
}

/// Adds `keys` to `map` for tenant `idx`; a key already held by another tenant is a problem.
fn index<K: std::hash::Hash + Eq + Clone>(
    map: &mut HashMap<K, usize>,
    keys: &[K],
    idx: usize,
    (tenants, who): (&[Tenant], &str),
    what: &str,
    show: impl Fn(&K) -> String,
    p: &mut Vec<String>,
) {
    for k in keys {
        match map.get(k) {
            Some(&other) if other != idx => {
                let other = tenants.get(other).map_or("?", |t| t.name.as_str());
                p.push(format!(
                    "{who}: {what} {} is also registered to tenant {other:?}",
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

fn build_tenant(raw: RawTenant, p: &mut Vec<String>) -> Tenant {
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

fn valid_tenant_name(s: &str) -> bool {
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
