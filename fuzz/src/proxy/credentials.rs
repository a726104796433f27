//! `credentials`: bearer tokens, SPKI fingerprints, `authorized_keys` lines and certificates,
//! each authenticated against a fixture built from the seeds at a fixed clock.

use std::sync::OnceLock;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use lookout_proxy::identity::{
    authenticate, bearer_token, spki_sha256, Identity, IdentityError, TenantCa, Via,
};
use lookout_proxy::pki::fingerprint;
use lookout_proxy::tenants::{hex, parse_sha256, ssh_key_spki, Tenant, Tenants};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, SubjectPublicKeyInfoDer, UnixTime};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::{sha256, text};

/// The fixed clock of [`credentials`]: 2027-06-01T00:00:00Z, inside the validity of the seed
/// certificates (`lookout certs` and openssl, 2026-11-21 + 3650 days).
pub const NOW: u64 = 1_811_808_000;

fn now() -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(NOW))
}

const CA_PEM: &str = include_str!("../../seeds/credentials/ca.pem");
const SELF_SIGNED_PEM: &str = include_str!("../../seeds/credentials/self_signed.pem");
const SSH_ED25519: &str = include_str!("../../seeds/credentials/ssh_ed25519.pub");
const AUTHORIZATION: &str = include_str!("../../seeds/credentials/authorization_bearer");

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

/// `PUBLIC KEY` PEM: when the text has no certificate and does not start with an SSH key
/// line (which comes first: `pki::fingerprint` goes by the text's order), its fingerprint is
/// the SPKI's hash.
fn check_public_key_pem(t: &str) {
    if CertificateDer::from_pem_slice(t.as_bytes()).is_ok() {
        return;
    }
    let first = t
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'));
    if first.is_some_and(|l| !l.starts_with("-----BEGIN") && ssh_key_spki(l).is_ok()) {
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
