//! `tenants_file`: the tenants TOML through `lookout_proxy::tenants::Tenants::parse`, checked
//! against a second, independent reading of the same text.

use std::collections::BTreeSet;

use lookout_proxy::tenants::{
    hex, parse_sha256, ssh_key_spki, RateLimit, Sha256Hash, Tenant, Tenants,
};

use super::{sha256, text};

/// The tenants file (operator-written TOML).
///
/// Invariants: the file is read independently here (as a `toml::Table`, against the schema
/// `tenants.rs` documents) and every problem that reading predicts — bad names, roles, rate
/// limits, `cert_cn` entries, fingerprints, SSH keys and token hashes, duplicate names, and
/// credentials registered to two tenants — is listed, and nothing else; text that is not TOML
/// or does not fit the schema is one problem. A file that validates has exactly its tenants,
/// in order, with the credentials it lists, and every index lookup (by name, certificate
/// name, SPKI hash, token hash, revocation) answers according to the file.
pub fn tenants_file(data: &[u8]) {
    let t = text(data);
    let parsed = Tenants::parse(&t);
    let file = toml::from_str::<toml::Table>(&t)
        .ok()
        .and_then(|table| RawFile::read(&table));
    let Some(file) = file else {
        let e = parsed.expect_err("a file outside the schema validated");
        assert_eq!(e.problems.len(), 1, "a syntax or schema error comes alone");
        assert_eq!(e.source_name, "<text>");
        return;
    };
    let expected = file.problems();
    match parsed {
        Ok(tenants) => {
            assert!(expected.is_empty(), "validated despite {expected:#?}");
            check_indexes(&tenants, &file, data);
        }
        Err(e) => {
            let mut listed = e.problems.clone();
            for want in &expected {
                let at = listed.iter().position(|p| p.starts_with(want.as_str()));
                let at = at.unwrap_or_else(|| panic!("{want:?} not listed in {listed:#?}"));
                listed.remove(at);
            }
            assert!(listed.is_empty(), "unexpected problems {listed:#?}");
            assert!(!expected.is_empty(), "refused without a problem");
        }
    }
}

/// Credentials as problems show them, with the bytes that identify them.
type Shown = Vec<(String, Vec<u8>)>;

/// A rate limit as written: `per_second`, `burst`.
type RawRate = (f64, u32);

/// The tenants file as this harness reads it, independently of `tenants.rs`.
struct RawFile {
    default_rate: Option<RawRate>,
    revoked: Vec<String>,
    tenants: Vec<RawTenant>,
}

struct RawTenant {
    name: String,
    roles: Vec<String>,
    rate: Option<RawRate>,
    cert_cn: Option<Vec<String>>,
    spki: Vec<String>,
    ssh: Vec<String>,
    tokens: Vec<String>,
}

/// `true` when `table` has no keys but `allowed` (the parser denies unknown fields).
fn only_keys(table: &toml::Table, allowed: &[&str]) -> bool {
    table.keys().all(|k| allowed.contains(&k.as_str()))
}

fn strings(v: Option<&toml::Value>) -> Option<Vec<String>> {
    match v {
        None => Some(Vec::new()),
        Some(v) => v
            .as_array()?
            .iter()
            .map(|s| s.as_str().map(str::to_string))
            .collect(),
    }
}

fn rate(v: Option<&toml::Value>) -> Option<Option<RawRate>> {
    let Some(v) = v else { return Some(None) };
    let t = v.as_table()?;
    if !only_keys(t, &["per_second", "burst"]) {
        return None;
    }
    let per_second = t.get("per_second")?;
    // serde reads a TOML integer as f64 too.
    let per_second = per_second
        .as_float()
        .or_else(|| per_second.as_integer().map(|i| i as f64))?;
    let burst = u32::try_from(t.get("burst")?.as_integer()?).ok()?;
    Some(Some((per_second, burst)))
}

impl RawFile {
    /// `None` when the table does not fit the schema.
    fn read(table: &toml::Table) -> Option<RawFile> {
        if !only_keys(table, &["defaults", "revoked", "tenant"]) {
            return None;
        }
        let empty = toml::Table::new();
        let section = |key| match table.get(key) {
            None => Some(&empty),
            Some(v) => v.as_table(),
        };
        let defaults = section("defaults")?;
        let revoked = section("revoked")?;
        if !only_keys(defaults, &["rate_limit"]) || !only_keys(revoked, &["spki_sha256"]) {
            return None;
        }
        let tenants = match table.get("tenant") {
            None => Vec::new(),
            Some(v) => v
                .as_array()?
                .iter()
                .map(|t| RawTenant::read(t.as_table()?))
                .collect::<Option<_>>()?,
        };
        Some(RawFile {
            default_rate: rate(defaults.get("rate_limit"))?,
            revoked: strings(revoked.get("spki_sha256"))?,
            tenants,
        })
    }

    /// The beginning of every problem `Tenants::parse` must list for this file.
    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Some(r) = self.default_rate {
            rate_problems(r, "defaults.rate_limit", &mut p);
        }
        for (i, s) in self.revoked.iter().enumerate() {
            if parse_sha256(s).is_err() {
                p.push(format!("revoked.spki_sha256[{i}]: "));
            }
        }
        let mut names = BTreeSet::new();
        // First owner (tenant index) of each credential; a later other owner is a conflict.
        let mut owners: [Vec<(Vec<u8>, usize)>; 3] = Default::default();
        for (idx, t) in self.tenants.iter().enumerate() {
            let who = format!("tenant {:?}", t.name);
            let credentials = t.problems(&who, &mut p);
            if !names.insert(t.name.as_str()) {
                p.push(format!("{who}: the name is used by more than one tenant"));
            }
            for ((what, keys), seen) in credentials.into_iter().zip(&mut owners) {
                for (shown, key) in keys {
                    match seen.iter().find(|(k, _)| *k == key) {
                        Some((_, other)) if *other != idx => {
                            let other = &self.tenants[*other].name;
                            p.push(format!(
                                "{who}: {what} {shown} is also registered to tenant {other:?}"
                            ));
                        }
                        Some(_) => {}
                        None => seen.push((key, idx)),
                    }
                }
            }
        }
        p
    }
}

fn rate_problems((per_second, burst): RawRate, what: &str, p: &mut Vec<String>) {
    if !(per_second.is_finite() && per_second > 0.0) {
        p.push(format!("{what}.per_second must"));
    }
    if burst == 0 {
        p.push(format!("{what}.burst must"));
    }
}

impl RawTenant {
    fn read(t: &toml::Table) -> Option<RawTenant> {
        let keys = [
            "name",
            "roles",
            "rate_limit",
            "cert_cn",
            "spki_sha256",
            "ssh_keys",
            "token_sha256",
        ];
        if !only_keys(t, &keys) {
            return None;
        }
        Some(RawTenant {
            name: t.get("name")?.as_str()?.to_string(),
            roles: strings(t.get("roles"))?,
            rate: rate(t.get("rate_limit"))?,
            cert_cn: match t.get("cert_cn") {
                None => None,
                v => Some(strings(v)?),
            },
            spki: strings(t.get("spki_sha256"))?,
            ssh: strings(t.get("ssh_keys"))?,
            tokens: strings(t.get("token_sha256"))?,
        })
    }

    fn cert_names(&self) -> Vec<String> {
        self.cert_cn
            .clone()
            .unwrap_or_else(|| vec![self.name.clone()])
    }

    /// Pushes this tenant's own problems; returns its credentials by kind, each as the
    /// conflict messages show it (certificate names quoted, hashes as 16 hex digits and `…`)
    /// and as the bytes an index compares.
    fn problems(&self, who: &str, p: &mut Vec<String>) -> [(&'static str, Shown); 3] {
        let n = &self.name;
        let name_ok = (1..=63).contains(&n.len())
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
        if !name_ok {
            p.push(format!("{who}: name must"));
        }
        for r in self.roles.iter().filter(|r| *r != "operator") {
            p.push(format!("{who}: unknown role {r:?}"));
        }
        if let Some(r) = self.rate {
            rate_problems(r, &format!("{who}: rate_limit"), p);
        }
        let names = self.cert_names();
        for c in &names {
            if c.is_empty() || c.chars().any(char::is_control) {
                p.push(format!("{who}: cert_cn {c:?} is empty"));
            }
        }
        let short = |h: Sha256Hash| (format!("{}…", &hex(&h)[..16]), h.to_vec());
        let mut keys = Vec::new();
        for (i, s) in self.spki.iter().enumerate() {
            match parse_sha256(s) {
                Ok(h) => keys.push(short(h)),
                Err(_) => p.push(format!("{who}: spki_sha256[{i}]: ")),
            }
        }
        for (i, line) in self.ssh.iter().enumerate() {
            match ssh_key_spki(line) {
                Ok(der) => keys.push(short(sha256(&der))),
                Err(_) => p.push(format!("{who}: ssh_keys[{i}]: ")),
            }
        }
        let mut tokens = Vec::new();
        for (i, s) in self.tokens.iter().enumerate() {
            match parse_sha256(s) {
                Ok(h) => tokens.push(short(h)),
                Err(_) => p.push(format!("{who}: token_sha256[{i}]: ")),
            }
        }
        let quoted = names
            .iter()
            .map(|c| (format!("{c:?}"), c.as_bytes().to_vec()))
            .collect();
        [("cert_cn", quoted), ("key", keys), ("token", tokens)]
    }
}

fn check_indexes(tenants: &Tenants, file: &RawFile, data: &[u8]) {
    assert_eq!(tenants.tenants().len(), file.tenants.len(), "tenant count");
    let default = file
        .default_rate
        .map(|(per_second, burst)| RateLimit { per_second, burst });
    assert_eq!(
        tenants.default_rate_limit(),
        default.unwrap_or(RateLimit::DEFAULT)
    );
    let overrides = tenants.rate_overrides();
    let same = |found: Option<&Tenant>, t: &Tenant, what: &str| {
        assert_eq!(
            found.map(|f| &f.name),
            Some(&t.name),
            "{what} of {:?}",
            t.name
        );
    };
    for (t, raw) in tenants.tenants().iter().zip(&file.tenants) {
        assert_eq!(t.name, raw.name, "tenants in file order");
        assert_eq!(t.is_operator(), raw.roles.iter().any(|r| r == "operator"));
        let rate = raw
            .rate
            .map(|(per_second, burst)| RateLimit { per_second, burst });
        assert_eq!(t.rate_limit, rate);
        assert_eq!(overrides.get(&t.name).copied(), rate, "rate override");
        assert_eq!(t.cert_names, raw.cert_names());
        let mut keys: Vec<Sha256Hash> = raw
            .spki
            .iter()
            .filter_map(|s| parse_sha256(s).ok())
            .collect();
        keys.extend(
            raw.ssh
                .iter()
                .filter_map(|l| ssh_key_spki(l).ok())
                .map(|d| sha256(&d)),
        );
        assert_eq!(t.spki_sha256, keys, "keys of {:?}", t.name);
        let tokens: Vec<Sha256Hash> = raw
            .tokens
            .iter()
            .filter_map(|s| parse_sha256(s).ok())
            .collect();
        assert_eq!(t.token_sha256, tokens, "tokens of {:?}", t.name);

        same(tenants.by_name(&t.name), t, "by_name");
        for n in &t.cert_names {
            same(tenants.by_cert_name(n), t, "by_cert_name");
        }
        for k in &t.spki_sha256 {
            same(tenants.by_spki(k), t, "by_spki");
            assert!(
                !tenants.is_revoked(k)
                    || file
                        .revoked
                        .iter()
                        .any(|r| parse_sha256(r).ok() == Some(*k))
            );
        }
        for k in &t.token_sha256 {
            same(tenants.by_token_hash(k), t, "by_token_hash");
        }
    }
    assert_eq!(
        overrides.len(),
        file.tenants.iter().filter(|t| t.rate.is_some()).count()
    );
    for r in &file.revoked {
        let h = parse_sha256(r).expect("a revoked entry of a valid file parses");
        assert!(tenants.is_revoked(&h), "revoked {r:?} not revoked");
    }
    // Nothing the file does not name is found: not the empty name, not the hash of the file
    // itself (which the file cannot contain).
    let stranger = sha256(data);
    assert!(tenants.by_name("").is_none() && tenants.by_cert_name("").is_none());
    assert!(tenants.by_spki(&stranger).is_none());
    assert!(tenants.by_token_hash(&stranger).is_none());
    assert!(!tenants.is_revoked(&stranger));
}
