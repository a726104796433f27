//! Fuzz harnesses for the proxy's parsers of untrusted bytes: what a client sends (Host and
//! SNI, the `Authorization` header, its certificate chain, the discovery query string, the
//! scrape-timeout header) and what an operator writes (the tenants file, with its key
//! fingerprints and `authorized_keys` lines).
//!
//! Like `agent.rs`, each `pub fn` takes the raw bytes of one fuzz input and asserts what the
//! parsers promise; `proxy/tests/parsers_never_panic.rs` includes this file (`#[path]`) to run
//! the same checks on stable Rust in CI, so it may use only crates `lookout-proxy` depends on.
//! Text parsers get the bytes through [`String::from_utf8_lossy`] (hyper hands the proxy
//! header values that `to_str` accepted, and the tenants file is read with
//! `read_to_string`); the `Authorization` header and certificates get the raw bytes.
//!
//! Everything here is pure: no filesystem (`Tenants::load`, `pki::Ca`, `pki::write_new` are
//! left out), no network, no wall clock — certificates are checked at [`NOW`], and the
//! fixtures they are checked against are seed files embedded at compile time. Not covered:
//! the request path routing (`Target::parse` in `server/handler.rs`), which is private.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::OnceLock;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use http::{HeaderMap, HeaderValue};
use lookout_discovery::sd::{
    http_sd, is_group_name, parse_groups, triton_containers, triton_error_body, SdError,
    MAX_GROUPS, MAX_GROUP_LEN,
};
use lookout_discovery::{is_dns_label, Instance, Inventory};
use lookout_proxy::host::{HostError, HostRules, Route};
use lookout_proxy::identity::{
    authenticate, bearer_token, spki_sha256, Identity, IdentityError, TenantCa, Via,
};
use lookout_proxy::pki::fingerprint;
use lookout_proxy::refusal::{self, Refusal};
use lookout_proxy::server::handler::scrape_deadline;
use lookout_proxy::tenants::{
    hex, parse_sha256, ssh_key_spki, RateLimit, Sha256Hash, Tenant, Tenants,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, SubjectPublicKeyInfoDer, UnixTime};
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

fn text(data: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(data)
}

fn sha256(data: &[u8]) -> Sha256Hash {
    Sha256::digest(data).into()
}

// ---------------------------------------------------------------------------------------------
// host_sni

/// A Host/SNI rule set, with the names it was built from (`HostRules` keeps them private).
struct Rules {
    rules: HostRules,
    /// Base names, lowercased, without the root dot.
    bases: Vec<String>,
    /// The instance zone, lowercased, without the root dot.
    suffix: String,
    ip_is_base: bool,
}

/// The deployments the proxy's docs and `lookout dev` describe: base = suffix; a separate
/// instance zone with a `localhost` alias and IP literals as the base; a base inside the zone.
fn fixed_rules() -> &'static [Rules] {
    static RULES: OnceLock<Vec<Rules>> = OnceLock::new();
    RULES.get_or_init(|| {
        // Invariant: these are valid DNS names, so the builders cannot fail.
        let same = HostRules::new("lookout.example.com", "lookout.example.com")
            .expect("valid fixed rules");
        let split = HostRules::new("Lookout.Example.COM.", "i.example.com")
            .and_then(|r| r.with_base_alias("localhost"))
            .expect("valid fixed rules")
            .ip_literals_are_base(true);
        let inside = HostRules::new("cmon.example.com", "example.com").expect("valid fixed rules");
        let names = |b: &[&str]| b.iter().map(|s| s.to_string()).collect();
        vec![
            Rules {
                rules: same,
                bases: names(&["lookout.example.com"]),
                suffix: "lookout.example.com".into(),
                ip_is_base: false,
            },
            Rules {
                rules: split,
                bases: names(&["lookout.example.com", "localhost"]),
                suffix: "i.example.com".into(),
                ip_is_base: true,
            },
            Rules {
                rules: inside,
                bases: names(&["cmon.example.com"]),
                suffix: "example.com".into(),
                ip_is_base: false,
            },
        ]
    })
}

/// Host header and TLS SNI. Line 1 is the Host value, line 2 the SNI (empty: none); when a
/// line 3 is present it is the base name and line 4 (else line 3 again) the instance zone of
/// one more rule set, built from the input.
///
/// Invariants: an instance route's id is a DNS label, and `<id>.<suffix>` routes back to it;
/// once the Host parses, every spelling of its name — any case, any valid port, with the root
/// dot, with an SNI naming it in any case — gives the same outcome, and any other SNI is 421;
/// Host problems (400) come before SNI ones (421); `Unknown` names are really outside the
/// rules; each refusal maps to its status in `refusal::status`. A rule set that builds
/// routes its own base name to the base and `<label>.<suffix>` to that label.
pub fn host_sni(data: &[u8]) {
    let t = text(data);
    let mut lines = t.split('\n');
    let host = lines.next().unwrap_or_default();
    let sni = lines.next().filter(|s| !s.is_empty());
    let custom = lines
        .next()
        .map(|base| (base, lines.next().unwrap_or(base)));

    for r in fixed_rules() {
        assert_eq!(r.rules.route(None, sni), Err(HostError::Missing));
        check_route(r, host, sni);
        if sni.is_some() {
            check_route(r, host, None);
        }
    }
    if let Some((base, suffix)) = custom {
        check_custom_rules(base, suffix, host, sni);
    }
}

/// A route result with `Malformed`'s echo of the raw Host dropped: spellings of one malformed
/// Host echo differently but must be refused alike.
fn outcome(r: &Result<Route, HostError>) -> Result<Route, HostError> {
    match r {
        Err(HostError::Malformed(_)) => Err(HostError::Malformed(String::new())),
        other => other.clone(),
    }
}

/// Lowercased, one root dot dropped: how a host name compares.
fn norm_name(s: &str) -> String {
    let lower = s.to_ascii_lowercase();
    lower.strip_suffix('.').unwrap_or(&lower).to_string()
}

/// A lowercase DNS name as the proxy accepts one: labels of [`is_dns_label`], at most 253
/// characters.
fn is_dns_name(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn check_route(r: &Rules, host: &str, sni: Option<&str>) {
    let got = r.rules.route(Some(host), sni);
    assert_eq!(
        got,
        r.rules.route(Some(host), sni),
        "routing is deterministic"
    );

    match &got {
        Ok(Route::Instance(id)) => {
            assert!(is_dns_label(id), "instance id {id:?} is not a DNS label");
            let name = format!("{id}.{}", r.suffix);
            assert!(
                !r.bases.contains(&name),
                "base name {name:?} routed as an instance"
            );
        }
        Ok(Route::Base) => {}
        Err(HostError::Missing) => panic!("Missing with a Host {host:?}"),
        Err(HostError::Malformed(echo)) => {
            assert!(echo.chars().count() <= 100, "echo of {} chars", echo.len());
            assert!(host.starts_with(echo.as_str()), "echo {echo:?} of {host:?}");
        }
        Err(HostError::Misdirected {
            sni: said,
            host: name,
        }) => {
            let given = sni.expect("421 without an SNI");
            assert_eq!(*said, norm_name(given), "SNI reported as {said:?}");
            assert_ne!(said, name, "421 for an SNI that names the Host");
        }
        Err(HostError::Unknown(name)) => {
            if name.parse::<IpAddr>().is_ok() {
                assert!(!r.ip_is_base, "IP {name:?} unknown though IPs are the base");
            } else {
                assert!(is_dns_name(name), "unknown name {name:?} is not a DNS name");
                assert!(!r.bases.contains(name), "base name {name:?} unknown");
                if let Some((label, zone)) = name.split_once('.') {
                    assert!(
                        zone != r.suffix || !is_dns_label(label),
                        "instance name {name:?} unknown"
                    );
                }
            }
        }
    }
    if let Err(e) = &got {
        let want = match e {
            HostError::Missing | HostError::Malformed(_) => 400,
            HostError::Misdirected { .. } => 421,
            HostError::Unknown(_) => 404,
        };
        assert_eq!(
            refusal::status(&Refusal::Host(e.clone())),
            (want, None),
            "{e:?}"
        );
    }

    // Case never matters, in the Host nor in the SNI.
    let upper = sni.map(str::to_ascii_uppercase);
    let shouted = r
        .rules
        .route(Some(&host.to_ascii_uppercase()), upper.as_deref());
    assert_eq!(outcome(&shouted), outcome(&got), "upper-cased {host:?}");

    let alone = r.rules.route(Some(host), None);
    // "-" is never a host name, so it is a 421 exactly when the Host parsed, and the 421
    // reports the name the Host was parsed to.
    let probe = r.rules.route(Some(host), Some("-"));
    let Err(HostError::Misdirected { host: name, .. }) = probe else {
        assert!(
            matches!(probe, Err(HostError::Malformed(_))),
            "{host:?} with SNI \"-\": {probe:?}"
        );
        assert_eq!(
            got, alone,
            "an SNI changed how an unparsable Host is refused"
        );
        return;
    };
    assert!(
        matches!(alone, Ok(_) | Err(HostError::Unknown(_))),
        "{host:?} parsed to {name:?}, then {alone:?}"
    );
    if !matches!(got, Err(HostError::Misdirected { .. })) {
        assert_eq!(got, alone, "an agreeing SNI {sni:?} changed the outcome");
    }

    // Every spelling of the name routes alike, with or without an SNI that names it.
    let (forms, snis) = spellings(&name);
    for form in &forms {
        assert_eq!(
            r.rules.route(Some(form), None),
            alone,
            "{form:?} (from {host:?})"
        );
        for s in &snis {
            assert_eq!(
                r.rules.route(Some(form), Some(s)),
                alone,
                "{form:?} with SNI {s:?}"
            );
        }
        let has_port = match form.strip_prefix('[') {
            Some(v6) => v6.contains("]:"),
            None => form.contains(':'),
        };
        for bad_port in [":0", ":65536", ":", ":+1", ":0x50"] {
            let bad = format!("{form}{bad_port}");
            if !has_port {
                assert!(
                    matches!(
                        r.rules.route(Some(&bad), None),
                        Err(HostError::Malformed(_))
                    ),
                    "port in {bad:?} accepted"
                );
            }
        }
    }
    if let Ok(Route::Instance(id)) = &alone {
        let name = format!("{id}.{}", r.suffix);
        assert_eq!(r.rules.route(Some(&name), None), alone, "{name:?}");
    }
}

/// Host headers and SNIs that name `name` (as a 421 reports it): any case, valid ports, the
/// root dot; IPv6 in brackets.
fn spellings(name: &str) -> (Vec<String>, Vec<String>) {
    let upper = name.to_ascii_uppercase();
    if name.parse::<Ipv6Addr>().is_ok() {
        let forms = vec![
            format!("[{name}]"),
            format!("[{upper}]:9163"),
            format!("[{name}]:1"),
        ];
        return (forms, vec![name.to_string()]);
    }
    let snis = vec![name.to_string(), upper.clone(), format!("{upper}.")];
    if name.parse::<IpAddr>().is_ok() {
        let forms = vec![name.to_string(), format!("{name}:9163")];
        return (forms, snis);
    }
    let forms = vec![
        name.to_string(),
        upper.clone(),
        format!("{name}."),
        format!("{upper}.:9163"),
        format!("{name}:65535"),
        format!("{name}:00443"),
    ];
    (forms, snis)
}

fn check_custom_rules(base: &str, suffix: &str, host: &str, sni: Option<&str>) {
    let rules = match HostRules::new(base, suffix) {
        Ok(rules) => rules,
        Err(e) => {
            assert!(matches!(e, HostError::Malformed(_)), "{e:?}");
            return;
        }
    };
    let r = Rules {
        rules,
        bases: vec![norm_name(base)],
        suffix: norm_name(suffix),
        ip_is_base: false,
    };
    assert!(is_dns_name(&r.bases[0]), "base {base:?} accepted");
    assert!(is_dns_name(&r.suffix), "suffix {suffix:?} accepted");
    // The configured names route: the base to the base, `<label>.<suffix>` to the label.
    for b in [
        base.to_string(),
        format!("{}:9163", base.to_ascii_uppercase()),
    ] {
        assert_eq!(r.rules.route(Some(&b), None), Ok(Route::Base), "base {b:?}");
        assert_eq!(
            r.rules.route(Some(&b), Some(base)),
            Ok(Route::Base),
            "base {b:?} with SNI {base:?}"
        );
    }
    for label in ["a", "0", "web-1", &"z".repeat(63)] {
        let name = format!("{label}.{}", r.suffix);
        if name.len() > 253 {
            continue;
        }
        let want = if r.bases.contains(&name) {
            Route::Base
        } else {
            Route::Instance(label.to_string())
        };
        assert_eq!(
            r.rules.route(Some(&name), None),
            Ok(want),
            "{name:?} under base {base:?}, suffix {suffix:?}"
        );
    }
    check_route(&r, host, sni);
    if sni.is_some() {
        check_route(&r, host, None);
    }
}

// ---------------------------------------------------------------------------------------------
// tenants_file

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

// ---------------------------------------------------------------------------------------------
// credentials

/// The fixed clock of [`credentials`]: 2027-06-01T00:00:00Z, inside the validity of the seed
/// certificates (`lookout certs` and openssl, 2026-11-21 + 3650 days).
pub const NOW: u64 = 1_811_808_000;

fn now() -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(NOW))
}

const CA_PEM: &str = include_str!("../seeds/credentials/ca.pem");
const SELF_SIGNED_PEM: &str = include_str!("../seeds/credentials/self_signed.pem");
const SSH_ED25519: &str = include_str!("../seeds/credentials/ssh_ed25519.pub");
const AUTHORIZATION: &str = include_str!("../seeds/credentials/authorization_bearer");

/// What [`credentials`] authenticates against: a tenant CA (the `ca.pem` seed) and a tenants
/// file naming the seeds' credentials.
pub struct Fixture {
    /// `acme` (CA-issued certificates, CN or SAN), `ops` (operator: the self-signed seed's
    /// key, the bearer seed's token), `alice` (the ed25519 SSH key seed, no certificate names);
    /// the CA's own key is revoked.
    pub tenants: Tenants,
    /// The `ca.pem` seed.
    pub ca: TenantCa,
    /// The `Authorization` value of the bearer seed, without its newline.
    pub authorization: &'static [u8],
}

/// The fixture, built once from the seed files.
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        // Invariant: the seed files are valid credentials (the proxy's seed test checks it).
        let ca = CertificateDer::from_pem_slice(CA_PEM.as_bytes()).expect("ca.pem seed");
        let ca_key = spki_sha256(&ca).expect("ca.pem seed parses");
        let own_key = fingerprint(SELF_SIGNED_PEM).expect("self_signed.pem seed parses");
        let authorization = AUTHORIZATION.trim_end().as_bytes();
        let token = bearer_token(authorization).expect("authorization_bearer seed");
        let text = format!(
            r#"
[revoked]
spki_sha256 = ["{ca_key}"]

[[tenant]]
name = "acme"
cert_cn = ["acme", "acme.example.com"]

[[tenant]]
name = "ops"
roles = ["operator"]
spki_sha256 = ["{own_key}"]
token_sha256 = ["{token}"]

[[tenant]]
name = "alice"
cert_cn = []
ssh_keys = ["{ssh}"]
"#,
            ca_key = hex(&ca_key),
            own_key = hex(&own_key),
            token = hex(&sha256(token)),
            ssh = SSH_ED25519.trim(),
        );
        Fixture {
            tenants: Tenants::parse(&text).expect("fixture tenants file"),
            ca: TenantCa::new(&[ca]).expect("ca.pem seed is a CA"),
            authorization,
        }
    })
}

/// Credentials: the input (and each of its lines) as an `Authorization` header, as an SPKI
/// fingerprint (`spki_sha256` in the tenants file), as an `authorized_keys` line; the input
/// as a DER certificate, and the PEM certificates in it as a chain; each authenticated
/// against [`fixture`] at [`NOW`].
///
/// Invariants: a bearer token is the visible-ASCII run after `Bearer` (any case), or a bare
/// one, and round-trips; an `Authorization` alone authenticates exactly when its token's hash is
/// registered, else 401 `UnknownToken`/`MalformedAuthorization`. A fingerprint that parses
/// is the same digest in hex, `:`-hex, upper case, base64 and `sha256//` form, and a 64-digit
/// hex input parses to itself. An SSH key that converts gives DER that x509-parser reads as
/// an SPKI of the line's algorithm with the line's key (RSA ≥ 2048 bits), independent of the
/// comment, and `lookout certs fingerprint` hashes that SPKI. A certificate is refused as
/// malformed exactly when `spki_sha256` cannot read it; otherwise its fingerprint is the same
/// through PEM and `PUBLIC KEY` PEM, validity is enforced at `NOW`, revocation and key
/// lookups agree with the tenants file, and a token for another tenant conflicts.
pub fn credentials(data: &[u8]) {
    let f = fixture();
    let t = text(data);

    for h in std::iter::once(data).chain(data.split(|&b| b == b'\n')) {
        check_authorization(f, h);
    }
    for s in std::iter::once(t.as_ref()).chain(t.lines()) {
        check_fingerprint_text(s);
        check_ssh_key(s);
    }
    check_public_key_pem(&t);

    check_chain(f, &[CertificateDer::from(data)]);
    let pems: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(data)
        .take(4)
        .map_while(Result::ok)
        .collect();
    for leaf in &pems {
        check_chain(f, std::slice::from_ref(leaf));
    }
    if pems.len() > 1 {
        check_chain(f, &pems);
    }
}

fn check_authorization(f: &Fixture, header: &[u8]) {
    let token = bearer_token(header);
    let trimmed = header.trim_ascii();
    // `Bearer <token>` (any case, then spaces), or a bare token (Prometheus 2.42's HTTP SD).
    let graphic = |t: &[u8]| !t.is_empty() && t.iter().all(u8::is_ascii_graphic);
    let looks_right = match trimmed.iter().position(|&b| b == b' ') {
        Some(at) => {
            trimmed[..at].eq_ignore_ascii_case(b"bearer")
                && graphic(trimmed[at..].trim_ascii_start())
        }
        None => !trimmed.eq_ignore_ascii_case(b"bearer") && graphic(trimmed),
    };
    assert_eq!(
        token.is_some(),
        looks_right,
        "bearer_token({header:?}) = {token:?}"
    );

    let alone = authenticate(&[], Some(header), now(), &f.ca, &f.tenants);
    let Some(token) = token else {
        assert_eq!(alone, Err(IdentityError::MalformedAuthorization));
        return;
    };
    assert!(
        trimmed.ends_with(token),
        "token {token:?} is not the end of {header:?}"
    );
    if !token.eq_ignore_ascii_case(b"bearer") {
        assert_eq!(bearer_token(token), Some(token), "bare {token:?}");
    }
    for spelled in [&b"Bearer "[..], b"bearer  ", b" BEARER \t"] {
        let h = [spelled, token, b"\r\n"].concat();
        assert_eq!(bearer_token(&h), Some(token), "{h:?}");
    }
    match f.tenants.by_token_hash(&sha256(token)) {
        Some(t) => assert_eq!(
            alone,
            Ok(Identity {
                tenant: t.name.clone(),
                operator: t.is_operator(),
                via: Via::Token
            })
        ),
        None => assert_eq!(alone, Err(IdentityError::UnknownToken)),
    }
}

fn check_fingerprint_text(s: &str) {
    let digits: String = s.trim().chars().filter(|&c| c != ':').collect();
    let is_hex = digits.len() == 64 && digits.bytes().all(|b| b.is_ascii_hexdigit());
    let h = match parse_sha256(s) {
        Ok(h) => h,
        Err(e) => {
            assert!(!is_hex, "hex digest {s:?} refused: {e}");
            assert!(!e.is_empty());
            return;
        }
    };
    let hx = hex(&h);
    if is_hex {
        assert_eq!(hx, digits.to_ascii_lowercase(), "{s:?}");
    }
    let colons: Vec<String> = h.iter().map(|b| format!("{b:02X}")).collect();
    for spelled in [
        hx.clone(),
        format!(" {}\n", hx.to_ascii_uppercase()),
        colons.join(":"),
        STANDARD.encode(h),
        STANDARD_NO_PAD.encode(h),
        URL_SAFE_NO_PAD.encode(h),
        format!("sha256//{}", STANDARD.encode(h)),
    ] {
        assert_eq!(parse_sha256(&spelled), Ok(h), "{spelled:?} (from {s:?})");
    }
}

/// The `AlgorithmIdentifier` OIDs an SSH key's SPKI must carry, by SSH algorithm name.
fn spki_algorithm(ssh_algorithm: &str) -> Option<&'static str> {
    match ssh_algorithm {
        "ssh-ed25519" => Some("1.3.101.112"),
        "ecdsa-sha2-nistp256" => Some("1.2.840.10045.2.1"),
        "ssh-rsa" => Some("1.2.840.113549.1.1.1"),
        _ => None,
    }
}

fn check_ssh_key(line: &str) {
    let Ok(der) = ssh_key_spki(line) else {
        return;
    };
    let (rest, spki) =
        SubjectPublicKeyInfo::from_der(&der).expect("ssh_key_spki wrote an unreadable SPKI");
    assert!(rest.is_empty(), "bytes after the SPKI");
    let mut words = line.split_ascii_whitespace();
    let (algorithm, blob) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let oid = spki.algorithm.algorithm.to_id_string();
    assert_eq!(
        Some(oid.as_str()),
        spki_algorithm(algorithm),
        "{algorithm:?} key converted to {oid}"
    );
    let key = &spki.subject_public_key.data;
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => {
            let n = rsa.modulus;
            let n = &n[n.iter().take_while(|&&b| b == 0).count()..];
            let bits = n
                .first()
                .map_or(0, |top| n.len() * 8 - top.leading_zeros() as usize);
            assert!(bits >= 2048, "RSA key of {bits} bits accepted");
        }
        Ok(PublicKey::EC(point)) => {
            assert_eq!(point.data().len(), 65, "P-256 point");
            assert_eq!(point.data()[0], 4, "uncompressed point");
        }
        _ => {
            // Ed25519: the raw key is the last 32 bytes of the SSH blob.
            assert_eq!(key.len(), 32, "Ed25519 key");
            if let Ok(raw) = STANDARD.decode(blob) {
                assert!(raw.ends_with(key), "Ed25519 key is not the line's");
            }
        }
    }
    // The comment is no part of the key; `lookout certs fingerprint` hashes the same SPKI.
    let bare = format!("{algorithm} {blob}");
    assert_eq!(ssh_key_spki(&bare).as_ref(), Ok(&der), "{bare:?}");
    if !line.trim_start().starts_with('#') {
        assert_eq!(
            fingerprint(line).ok(),
            Some(sha256(&der)),
            "fingerprint {line:?}"
        );
    }
}

/// `PUBLIC KEY` PEM: when the text has no certificate, its fingerprint is the SPKI's hash.
fn check_public_key_pem(t: &str) {
    if CertificateDer::from_pem_slice(t.as_bytes()).is_ok() {
        return;
    }
    if let Ok(spki) = SubjectPublicKeyInfoDer::from_pem_slice(t.as_bytes()) {
        let got = fingerprint(t).ok();
        assert_eq!(got, Some(sha256(spki.as_ref())), "PUBLIC KEY fingerprint");
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out + &format!("-----END {label}-----\n")
}

/// Subject CNs and SAN DNS names, emails and URIs: what a tenant CA vouches for.
fn names_in(cert: &X509Certificate<'_>) -> Vec<String> {
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for g in &san.value.general_names {
            if let GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) = g {
                names.push(s.to_string());
            }
        }
    }
    names
}

fn check_chain(f: &Fixture, chain: &[CertificateDer<'_>]) {
    let Some(leaf) = chain.first() else { return };
    let got = authenticate(chain, None, now(), &f.ca, &f.tenants);
    let key = match spki_sha256(leaf) {
        Ok(key) => key,
        Err(e) => {
            assert!(matches!(e, IdentityError::MalformedCertificate(_)), "{e:?}");
            assert_eq!(got, Err(e), "certificate parsers disagree");
            return;
        }
    };
    assert!(
        !matches!(got, Err(IdentityError::MalformedCertificate(_))),
        "spki_sha256 read what authenticate calls malformed: {got:?}"
    );
    let (_, cert) = X509Certificate::from_der(leaf).expect("spki_sha256 read it");
    assert_eq!(sha256(cert.public_key().raw), key);
    // The same key through `lookout certs fingerprint`: certificate PEM, public-key PEM.
    assert_eq!(
        fingerprint(&pem("CERTIFICATE", leaf)).ok(),
        Some(key),
        "PEM path"
    );
    let public_key = pem("PUBLIC KEY", cert.public_key().raw);
    assert_eq!(fingerprint(&public_key).ok(), Some(key), "PUBLIC KEY path");

    let secs = i64::try_from(NOW).unwrap_or(i64::MAX);
    let validity = cert.validity();
    let (from, until) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    match &got {
        Err(IdentityError::NotYetValid) => assert!(secs < from, "{from} ≤ now"),
        Err(IdentityError::Expired) => assert!(from <= secs && until < secs, "now ≤ {until}"),
        other => {
            assert!(
                from <= secs && secs <= until,
                "validity [{from}, {until}] not enforced"
            );
            let revoked = matches!(other, Err(IdentityError::Revoked));
            assert_eq!(revoked, f.tenants.is_revoked(&key), "revocation: {other:?}");
        }
    }
    match &got {
        Ok(id) => {
            let t = f
                .tenants
                .by_name(&id.tenant)
                .expect("identity of an unknown tenant");
            assert_eq!(id.operator, t.is_operator());
            match id.via {
                Via::Key => same_tenant(f.tenants.by_spki(&key), id),
                Via::Cert => {
                    let names = names_in(&cert);
                    assert!(
                        t.cert_names.iter().any(|n| names.contains(n)),
                        "{names:?} named tenant {:?}",
                        id.tenant
                    );
                }
                Via::Token => panic!("a token identity without a token"),
            }
        }
        Err(IdentityError::UnknownKey(_) | IdentityError::UnknownName(_)) => {
            assert!(f.tenants.by_spki(&key).is_none(), "registered key refused");
        }
        Err(_) => {}
    }

    // Every credential must hold, and name one tenant: a token of `ops` changes nothing for
    // `ops`, conflicts with anyone else, and never rescues a refused certificate.
    let with_token = authenticate(chain, Some(f.authorization), now(), &f.ca, &f.tenants);
    match &got {
        Ok(id) if id.tenant == "ops" => assert_eq!(with_token, got),
        Ok(_) => assert_eq!(with_token, Err(IdentityError::Conflict)),
        Err(_) => assert_eq!(with_token, got),
    }
}

fn same_tenant(found: Option<&Tenant>, id: &Identity) {
    assert_eq!(found.map(|t| t.name.as_str()), Some(id.tenant.as_str()));
}

// ---------------------------------------------------------------------------------------------
// sd_query

/// The scrape deadline used when the client names none.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);
/// The cap `scrape_deadline` documents.
const MAX_DEADLINE: Duration = Duration::from_secs(300);

/// A discovery request's query string (the whole input, then its first line) for
/// `?groups=`; the first line as `X-Prometheus-Scrape-Timeout-Seconds`; the input as the
/// message of a Triton error body.
///
/// Invariants: accepted groups are 1 to 100 unique valid names that round-trip through a
/// literal comma, `%2C`/`%2c` and a leading `?`; unrelated parameters change nothing; a
/// second `groups` is always refused; a query without `groups` gets one when it is appended;
/// each refusal is consistent with its reason. The Triton and HTTP SD bodies for the parsed
/// filter list exactly the tenant's instances sharing a group with it (cmon's OR). The
/// deadline is the client's positive number capped at 300 s, else the default. A Triton
/// error body never decodes as JSON.
pub fn sd_query(data: &[u8]) {
    let t = text(data);
    check_groups(&t);
    let first = t.split('\n').next().unwrap_or_default();
    if first.len() != t.len() {
        check_groups(first);
    }
    let first_bytes = data.split(|&b| b == b'\n').next().unwrap_or_default();
    check_scrape_timeout(first_bytes);

    let body = triton_error_body(&t);
    assert!(body.starts_with(b"error: ") && body.ends_with(b"\n"));
    assert!(
        serde_json::from_slice::<serde_json::Value>(&body).is_err(),
        "a Triton error body decodes as JSON"
    );
}

fn check_groups(q: &str) {
    let got = parse_groups(Some(q));
    assert_eq!(got, parse_groups(Some(q)), "deterministic");
    let with = |extra: &str| parse_groups(Some(&format!("{q}&{extra}")));
    assert_eq!(
        with("other=1"),
        got,
        "an unrelated parameter changed the result"
    );
    assert_eq!(with("groupsx=web"), got, "`groupsx` taken for `groups`");
    if !q.starts_with('?') {
        assert_eq!(parse_groups(Some(&format!("?{q}"))), got, "leading ?");
    }
    let repeated = Err(SdError::RepeatedGroups);
    match &got {
        Ok(None) => {
            let web = Ok(Some(vec!["web".to_string()]));
            assert_eq!(with("groups=web"), web, "appended groups ignored");
            assert_eq!(with("%67roup%73=web"), web, "encoded key ignored");
        }
        Ok(Some(groups)) => {
            assert!(
                (1..=MAX_GROUPS).contains(&groups.len()),
                "{} groups",
                groups.len()
            );
            for (i, g) in groups.iter().enumerate() {
                assert!(is_group_name(g), "group {g:?}");
                assert!(!groups[..i].contains(g), "{g:?} twice");
            }
            for sep in [",", "%2C", "%2c"] {
                let q2 = format!("groups={}", groups.join(sep));
                assert_eq!(parse_groups(Some(&q2)), got, "{q2:?}");
            }
            let q3 = format!("?x=1&groups={}&y", groups.join("%2C"));
            assert_eq!(parse_groups(Some(&q3)), got, "{q3:?}");
            assert_eq!(with("groups=web"), repeated, "second groups accepted");
            assert_eq!(
                with("%67roups=web"),
                repeated,
                "second, encoded groups accepted"
            );
            check_filter(groups);
        }
        Err(SdError::RepeatedGroups) => {
            assert_eq!(with("groups=web"), repeated);
        }
        Err(e) => {
            assert_eq!(
                with("groups=web"),
                repeated,
                "a second groups reported as {e:?}"
            );
            match e {
                SdError::GroupCount(n) => assert!(*n == 0 || *n > MAX_GROUPS, "{n}"),
                SdError::BadGroupName(g) => assert!(
                    !is_group_name(g) || g.chars().count() == MAX_GROUP_LEN,
                    "{g:?} refused"
                ),
                SdError::DuplicateGroup(g) => assert!(is_group_name(g), "{g:?}"),
                SdError::BadEncoding | SdError::RepeatedGroups => {}
            }
        }
    }
}

fn instance(id: &str, tenant: &str, groups: &[&str]) -> Instance {
    Instance {
        id: id.into(),
        runtime_id: id.into(),
        node: "node-1".into(),
        tenant: Some(tenant.into()),
        alias: id.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        image: None,
        source: "runc".into(),
        labels: Default::default(),
    }
}

/// Discovery bodies for a parsed filter list exactly the instances it selects.
fn check_filter(groups: &[String]) {
    let mut inv = Inventory::default();
    for i in [
        instance("web-1", "acme", &["web"]),
        instance("db-1", "acme", &["db", "web"]),
        instance("cache-1", "acme", &["cache"]),
        instance("lone-1", "acme", &[]),
        // Not a group name, so no filter can select it.
        instance("odd-1", "acme", &["not a group"]),
        instance("other-1", "globex", &["web", "db"]),
    ] {
        inv.instances.insert(i.id.clone(), i);
    }
    let last = groups.last().map_or("", String::as_str);
    let picked = instance("picked-1", "acme", &["zz no", last]);
    inv.instances.insert(picked.id.clone(), picked);

    let want: BTreeSet<String> = inv
        .owned_by("acme")
        .filter(|i| i.groups.iter().any(|g| groups.contains(g)))
        .map(|i| i.id.clone())
        .collect();
    assert!(want.contains("picked-1"));

    let triton: serde_json::Value =
        serde_json::from_slice(&triton_containers(&inv, "acme", Some(groups)))
            .expect("Triton body is JSON");
    let listed: BTreeSet<String> = triton["containers"]
        .as_array()
        .expect("a containers array")
        .iter()
        .filter_map(|c| c["vm_uuid"].as_str().map(str::to_string))
        .collect();
    assert_eq!(listed, want, "Triton SD for groups {groups:?}");

    let suffix = "lookout.example.com";
    let http: serde_json::Value =
        serde_json::from_slice(&http_sd(&inv, "acme", Some(groups), suffix, 9163))
            .expect("HTTP SD body is JSON");
    let mut listed = BTreeSet::new();
    for g in http.as_array().expect("an array of groups") {
        let id = g["labels"]["__meta_triton_machine_id"]
            .as_str()
            .expect("a machine id");
        assert_eq!(g["targets"][0], format!("{id}.{suffix}:9163"));
        let inst = &inv.instances[id];
        let label = format!(",{},", inst.groups.join(","));
        assert_eq!(g["labels"]["__meta_triton_groups"], label);
        listed.insert(id.to_string());
    }
    assert_eq!(listed, want, "HTTP SD for groups {groups:?}");
}

fn check_scrape_timeout(value: &[u8]) {
    assert_eq!(
        scrape_deadline(&HeaderMap::new(), DEFAULT_DEADLINE),
        DEFAULT_DEADLINE
    );
    let Ok(v) = HeaderValue::from_bytes(value) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert("x-prometheus-scrape-timeout-seconds", v.clone());
    let got = scrape_deadline(&headers, DEFAULT_DEADLINE);
    let asked = v
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0);
    match asked {
        None => assert_eq!(got, DEFAULT_DEADLINE, "{v:?}"),
        Some(s) if s >= MAX_DEADLINE.as_secs_f64() => assert_eq!(got, MAX_DEADLINE, "{v:?}"),
        Some(s) => assert!((got.as_secs_f64() - s).abs() < 1e-6, "{v:?} gave {got:?}"),
    }
}
