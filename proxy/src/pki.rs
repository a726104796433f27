//! The certificates lookout needs, made without openssl recipes (`lookout certs`): a CA
//! (ECDSA P-256) and, signed by it, server certificates (proxy listener: DNS names, IPs and a
//! wildcard `*.<suffix>`), agent certificates (server auth, for proxies to connect to),
//! proxy certificates (client auth, towards agents) and tenant certificates (client auth,
//! CN = tenant). Plus the SPKI SHA-256 fingerprint of a certificate or public key, the value
//! the tenants file's `spki_sha256` holds.
//!
//! An existing CA is reloaded from its PEM files. rcgen signs with an in-memory issuer, so the
//! CA's subject name and key identifier are rebuilt from the certificate, and the rebuilt name
//! is checked byte-for-byte against the original — a CA whose name cannot be reproduced is
//! refused rather than issuing certificates that would not chain.
//!
//! Clocks are passed in. Not here: revocation lists, renewal, ACME.

use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, SubjectPublicKeyInfoDer};
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, ParsedExtension, X509Certificate};

use crate::tenants::Sha256Hash;

/// Why certificates could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused the parameters or key.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// Input PEM, certificate or key is not usable.
    #[error("{0}")]
    Input(String),
    /// A file could not be written (or already exists).
    #[error("{path}: {err}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What happened.
        err: std::io::Error,
    },
}

fn input(s: impl Into<String>) -> PkiError {
    PkiError::Input(s.into())
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The proxy's TLS listener: server auth, SANs from the name and `--san`s.
    Server,
    /// An agent's TLS listener: server auth.
    Agent,
    /// A proxy's client certificate towards agents: client auth.
    Proxy,
    /// A tenant's client certificate: client auth, CN = tenant.
    Tenant,
}

impl Kind {
    /// The lowercase name used on the command line and in file names.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Server => "server",
            Kind::Agent => "agent",
            Kind::Proxy => "proxy",
            Kind::Tenant => "tenant",
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "server" => Ok(Kind::Server),
            "agent" => Ok(Kind::Agent),
            "proxy" => Ok(Kind::Proxy),
            "tenant" => Ok(Kind::Tenant),
            _ => Err(format!("{s:?}: expected server, agent, proxy or tenant")),
        }
    }
}

/// A certificate and its private key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8). Secret.
    pub key_pem: String,
}

/// A CA able to issue certificates.
pub struct Ca {
    issuer: rcgen::Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

fn validity(params: &mut CertificateParams, now: SystemTime, valid_for: Duration) {
    let since_epoch = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    // Backdate a little so a peer whose clock is slightly behind accepts it at once.
    let start = since_epoch.saturating_sub(Duration::from_secs(300));
    params.not_before = rcgen::date_time_ymd(1970, 1, 1) + start;
    params.not_after = rcgen::date_time_ymd(1970, 1, 1) + since_epoch + valid_for;
}

impl Ca {
    /// Creates a CA named `name` (subject CN), valid for `valid_for` from `now`.
    pub fn create(
        name: &str,
        now: SystemTime,
        valid_for: Duration,
    ) -> Result<(Ca, Issued), PkiError> {
        if name.trim().is_empty() {
            return Err(input("the CA name is empty"));
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, now, valid_for);
        let issuer = params.self_signed(&key)?;
        let pem = Issued {
            cert_pem: issuer.pem(),
            key_pem: key.serialize_pem(),
        };
        Ok((Ca { issuer, key }, pem))
    }

    /// Loads a CA from its certificate and private key (PEM). The key must match the
    /// certificate, and the certificate must be a CA.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| input(format!("CA certificate: {e}")))?;
        let (_, cert) =
            X509Certificate::from_der(&der).map_err(|e| input(format!("CA certificate: {e}")))?;
        if !cert.is_ca() {
            return Err(input(
                "the certificate is not a CA (basicConstraints cA=false)",
            ));
        }
        let key = KeyPair::from_pem(key_pem).map_err(|e| input(format!("CA key: {e}")))?;
        if key.public_key_der() != cert.public_key().raw {
            return Err(input("the CA key does not match the CA certificate"));
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        for attr in cert.subject().iter_attributes() {
            let oid: Vec<u64> = attr
                .attr_type()
                .iter()
                .ok_or_else(|| input("CA subject: attribute OID too large"))?
                .collect();
            let text = attr
                .as_str()
                .map_err(|_| input("CA subject: only text attributes are supported"))?;
            let value = match attr.attr_value().tag() {
                x509_parser::der_parser::asn1_rs::Tag::PrintableString => DnValue::PrintableString(
                    text.try_into()
                        .map_err(|_| input("CA subject: bad PrintableString"))?,
                ),
                x509_parser::der_parser::asn1_rs::Tag::Ia5String => DnValue::Ia5String(
                    text.try_into()
                        .map_err(|_| input("CA subject: bad IA5String"))?,
                ),
                _ => DnValue::Utf8String(text.to_owned()),
            };
            params
                .distinguished_name
                .push(DnType::from_oid(&oid), value);
        }
        for ext in cert.extensions() {
            if let ParsedExtension::SubjectKeyIdentifier(ski) = ext.parsed_extension() {
                params.key_identifier_method = KeyIdMethod::PreSpecified(ski.0.to_vec());
            }
        }
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = params.self_signed(&key)?;
        let (_, rebuilt) = X509Certificate::from_der(issuer.der())
            .map_err(|e| input(format!("rebuilt CA: {e}")))?;
        if rebuilt.subject().as_raw() != cert.subject().as_raw() {
            return Err(input(
                "the CA's subject name cannot be reproduced exactly (multi-valued or repeated \
                 attributes?); issue with the tooling that made this CA",
            ));
        }
        Ok(Ca { issuer, key })
    }

    /// Issues a certificate of `kind` for `name` with extra SANs (DNS names, `*.` wildcards
    /// or IP addresses), valid for `valid_for` from `now`, with a fresh P-256 key.
    pub fn issue(
        &self,
        kind: Kind,
        name: &str,
        extra_sans: &[String],
        now: SystemTime,
        valid_for: Duration,
    ) -> Result<Issued, PkiError> {
        if name.trim().is_empty() {
            return Err(input("the name is empty"));
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let mut sans: Vec<&str> = Vec::new();
        match kind {
            Kind::Server | Kind::Agent => {
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
                sans.push(name);
            }
            Kind::Proxy | Kind::Tenant => {
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            }
        }
        sans.extend(extra_sans.iter().map(String::as_str));
        for s in sans {
            let san = san(s)?;
            if !params.subject_alt_names.contains(&san) {
                params.subject_alt_names.push(san);
            }
        }
        validity(&mut params, now, valid_for);
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.issuer, &self.key)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A SAN: an IP address, or a DNS name (lowercased; a leading `*.` wildcard allowed).
fn san(s: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let bad = || {
        input(format!(
            "SAN {s:?} is not a DNS name, `*.` wildcard or IP address"
        ))
    };
    let lower = s.to_ascii_lowercase();
    let rest = lower.strip_prefix("*.").unwrap_or(&lower);
    if rest.len() > 253 || !rest.split('.').all(lookout_discovery::is_dns_label) {
        return Err(bad());
    }
    Ok(SanType::DnsName(lower.try_into().map_err(|_| bad())?))
}

/// SPKI SHA-256 of the first thing found in `text`: an SSH public key line (`ssh-ed25519 …`,
/// converted to SPKI form) when it is the first line that is neither blank nor a comment,
/// else the first PEM certificate, else the first PEM public key (`PUBLIC KEY`). An SSH line
/// followed by PEM blocks is the SSH key's: the order of the text decides, never the kind.
pub fn fingerprint(text: &str) -> Result<Sha256Hash, PkiError> {
    let first_line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'));
    if let Some(line) = first_line.filter(|l| !l.starts_with("-----BEGIN")) {
        if let Ok(der) = crate::tenants::ssh_key_spki(line) {
            return Ok(Sha256::digest(&der).into());
        }
    }
    if let Ok(der) = CertificateDer::from_pem_slice(text.as_bytes()) {
        return crate::identity::spki_sha256(&der).map_err(|e| input(e.to_string()));
    }
    if let Ok(spki) = SubjectPublicKeyInfoDer::from_pem_slice(text.as_bytes()) {
        return Ok(Sha256::digest(spki.as_ref()).into());
    }
    Err(input(
        "no CERTIFICATE or PUBLIC KEY PEM block and no supported SSH public key found",
    ))
}

/// A file to write: name inside the directory, contents, and whether it is secret (0600).
pub struct NewFile<'a> {
    /// File name (no directories).
    pub name: String,
    /// Contents.
    pub contents: &'a str,
    /// Secret files are created with mode 0600, others 0644.
    pub secret: bool,
}

/// Writes `files` into `dir` (created if missing), refusing to overwrite: if any file exists,
/// nothing is written. Returns the paths written.
pub fn write_new(dir: &Path, files: &[NewFile<'_>]) -> Result<Vec<PathBuf>, PkiError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::create_dir_all(dir).map_err(|err| PkiError::Io {
        path: dir.to_path_buf(),
        err,
    })?;
    let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(&f.name)).collect();
    for p in &paths {
        if p.exists() {
            return Err(PkiError::Io {
                path: p.clone(),
                err: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "already exists; not overwritten",
                ),
            });
        }
    }
    for (f, p) in files.iter().zip(&paths) {
        let io = |err| PkiError::Io {
            path: p.clone(),
            err,
        };
        // create_new closes the race between the check above and this open.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if f.secret { 0o600 } else { 0o644 })
            .open(p)
            .map_err(io)?;
        file.write_all(f.contents.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    Ok(paths)
}

/// True when `name` is usable in a file name: 1–100 of `A-Za-z0-9._-`, not starting with `.`.
pub fn safe_file_stem(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression for bug ssh-line-then-pem, found by the `credentials` fuzz target: the
    /// text's order decides which key is fingerprinted, not the kind of block.
    #[test]
    fn an_ssh_line_before_pem_blocks_is_the_key_fingerprinted() {
        let ssh = include_str!("../../fuzz/seeds/credentials/ssh_ecdsa.pub");
        let pem = include_str!("../../fuzz/seeds/credentials/public_key.pem");
        let alone = fingerprint(ssh).expect("ssh");
        assert_eq!(fingerprint(&format!("{ssh}\n{pem}")).expect("both"), alone);
        assert_eq!(
            fingerprint(&format!("{pem}\n{ssh}")).expect("both"),
            fingerprint(pem).expect("pem"),
            "a PEM block first is the PEM's key"
        );
        assert_ne!(alone, fingerprint(pem).expect("pem"));
    }
}
