//! Who is calling: a tenant identity from the peer's certificate chain (as rustls hands it
//! after a handshake that requested but did not require a client certificate) and/or an
//! `Authorization: Bearer` header.
//!
//! Rules, in order:
//! 1. A presented certificate must parse and be inside its validity period at `now` —
//!    **always**, whoever issued it (cmon ignored expiry on self-signed certificates). A
//!    certificate whose SPKI is listed in the tenants file's `revoked` section is refused.
//! 2. If it chains to a tenant CA, the tenant is the one whose `cert_cn` names the subject CN
//!    or a SAN (DNS, email or URI). Names of two different tenants in one certificate are
//!    refused as ambiguous.
//! 3. Otherwise (or when no tenant claims its names) the certificate's public key is looked up
//!    by SPKI SHA-256 among registered keys (SPKI hashes and SSH keys, which the tenants file
//!    converts to SPKI form). The issuer does not matter: the TLS handshake has already proved
//!    possession of the private key (see [`crate::tls::AcceptAnyClientCert`]), and the key is
//!    the credential.
//! 4. A bearer token is hashed (SHA-256) and looked up. Lookup is by hash in a map, so the
//!    time taken reveals nothing about any stored token.
//! 5. Every presented credential must be valid: a bad certificate is refused even if a good
//!    token is also sent; a certificate and a token naming different tenants are refused.
//!
//! **Chain verification.** Chains are checked by rustls's own
//! [`WebPkiClientVerifier`] — rustls-webpki, the code
//! that verifies client certificates in rustls servers — called here, after the handshake,
//! instead of inside it, with `now` passed in. It builds the path through the intermediates the
//! client sent, checks every signature, every certificate's validity period, basic
//! constraints, and that the leaf may be used for client authentication (EKU `clientAuth`
//! when an EKU extension is present). It cannot be used *at* the TLS layer because
//! self-signed registered keys must also get through the handshake. (x509-parser's
//! `verify_signature` needs its `verify` feature, which is not enabled, and would check one
//! signature, not a path.)
//!
//! Not here: caching identities per connection, and mapping errors to HTTP responses (every
//! [`IdentityError`] is a 401; [`crate::refusal::status`] says so in one place).

use std::fmt;
use std::sync::Arc;

use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, UnixTime};
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::tenants::{Sha256Hash, Tenant, Tenants};

/// How the caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A certificate issued by a tenant CA.
    Cert,
    /// A registered public key (SPKI hash or SSH key) in a certificate of any issuer.
    Key,
    /// A bearer token.
    Token,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The tenant's name.
    pub tenant: String,
    /// The tenant holds the `operator` role.
    pub operator: bool,
    /// Which credential authenticated it.
    pub via: Via,
}

/// Why a caller is not authenticated. All are 401 at the HTTP layer; the variants exist for
/// logs and metrics, never for the response body (which must not help an attacker).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// Neither a certificate nor a bearer token.
    #[error("no credentials")]
    NoCredentials,
    /// The certificate could not be parsed.
    #[error("malformed certificate: {0}")]
    MalformedCertificate(String),
    /// `now` is after the certificate's notAfter.
    #[error("certificate expired")]
    Expired,
    /// `now` is before the certificate's notBefore.
    #[error("certificate not yet valid")]
    NotYetValid,
    /// The key is on the revoked list.
    #[error("certificate key revoked")]
    Revoked,
    /// Chains to a tenant CA but no tenant accepts any of its names (nor its key).
    #[error("no tenant accepts certificate names {0:?}")]
    UnknownName(Vec<String>),
    /// Chains to a tenant CA and names more than one tenant.
    #[error("certificate names several tenants: {0:?}")]
    AmbiguousName(Vec<String>),
    /// Does not chain to a tenant CA (reason given) and its key is not registered.
    #[error("certificate key not registered ({0})")]
    UnknownKey(String),
    /// `Authorization` present but not `Bearer <token>`.
    #[error("malformed authorization header")]
    MalformedAuthorization,
    /// The token's hash is not registered.
    #[error("unknown bearer token")]
    UnknownToken,
    /// Certificate and token name different tenants.
    #[error("certificate and token name different tenants")]
    Conflict,
}

/// The tenant CAs: certificates chaining to one of these name their tenant by CN/SAN.
#[derive(Clone, Default)]
pub struct TenantCa {
    verifier: Option<Arc<dyn ClientCertVerifier>>,
}

impl fmt::Debug for TenantCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantCa")
            .field("configured", &self.verifier.is_some())
            .finish()
    }
}

impl TenantCa {
    /// No tenant CA: only registered keys and tokens authenticate.
    pub fn none() -> Self {
        TenantCa::default()
    }

    /// Trusts these CA certificates (DER). An empty list is the same as [`TenantCa::none`].
    pub fn new(roots: &[CertificateDer<'_>]) -> Result<Self, String> {
        if roots.is_empty() {
            return Ok(Self::none());
        }
        let mut store = RootCertStore::empty();
        for r in roots {
            store
                .add(r.clone().into_owned())
                .map_err(|e| format!("tenant CA: {e}"))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(
            Arc::new(store),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .map_err(|e| format!("tenant CA: {e}"))?;
        Ok(TenantCa {
            verifier: Some(verifier),
        })
    }

    /// `Ok` when `leaf` chains to a tenant CA at `now`, else the reason.
    fn verify(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), String> {
        let Some(v) = &self.verifier else {
            return Err("no tenant CA configured".into());
        };
        match v.verify_client_cert(leaf, intermediates, now) {
            Ok(_) => Ok(()),
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)) => {
                Err("not issued by a tenant CA".into())
            }
            Err(e) => Err(format!("tenant CA chain: {e}")),
        }
    }
}

/// SHA-256 of the certificate's SubjectPublicKeyInfo DER — the key fingerprint that the
/// tenants file's `spki_sha256` holds and `lookout certs fingerprint` prints.
pub fn spki_sha256(cert_der: &[u8]) -> Result<Sha256Hash, IdentityError> {
    let (_, cert) = X509Certificate::from_der(cert_der)
        .map_err(|e| IdentityError::MalformedCertificate(e.to_string()))?;
    Ok(Sha256::digest(cert.public_key().raw).into())
}

/// Authenticates a request. `chain` is the peer's certificates, leaf first (empty when none
/// was sent); `authorization` is the raw `Authorization` header value, if any.
pub fn authenticate(
    chain: &[CertificateDer<'_>],
    authorization: Option<&[u8]>,
    now: UnixTime,
    ca: &TenantCa,
    tenants: &Tenants,
) -> Result<Identity, IdentityError> {
    let by_cert = match chain.split_first() {
        Some((leaf, intermediates)) => Some(from_cert(leaf, intermediates, now, ca, tenants)?),
        None => None,
    };
    let by_token = match authorization {
        Some(h) => Some(from_token(h, tenants)?),
        None => None,
    };
    match (by_cert, by_token) {
        (Some(c), Some(t)) if c.tenant != t.tenant => Err(IdentityError::Conflict),
        (Some(c), _) => Ok(c),
        (None, Some(t)) => Ok(t),
        (None, None) => Err(IdentityError::NoCredentials),
    }
}

fn identity(t: &Tenant, via: Via) -> Identity {
    Identity {
        tenant: t.name.clone(),
        operator: t.is_operator(),
        via,
    }
}

fn from_cert(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    ca: &TenantCa,
    tenants: &Tenants,
) -> Result<Identity, IdentityError> {
    let (_, cert) = X509Certificate::from_der(leaf)
        .map_err(|e| IdentityError::MalformedCertificate(e.to_string()))?;
    let secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let validity = cert.validity();
    if secs < validity.not_before.timestamp() {
        return Err(IdentityError::NotYetValid);
    }
    if secs > validity.not_after.timestamp() {
        return Err(IdentityError::Expired);
    }
    let spki: Sha256Hash = Sha256::digest(cert.public_key().raw).into();
    if tenants.is_revoked(&spki) {
        return Err(IdentityError::Revoked);
    }
    let chain = ca.verify(leaf, intermediates, now);
    let mut unclaimed = None;
    if chain.is_ok() {
        let names = cert_names(&cert);
        let mut found: Option<&Tenant> = None;
        for n in &names {
            if let Some(t) = tenants.by_cert_name(n) {
                match found {
                    Some(f) if f.name != t.name => {
                        return Err(IdentityError::AmbiguousName(names));
                    }
                    _ => found = Some(t),
                }
            }
        }
        if let Some(t) = found {
            return Ok(identity(t, Via::Cert));
        }
        unclaimed = Some(names);
    }
    if let Some(t) = tenants.by_spki(&spki) {
        return Ok(identity(t, Via::Key));
    }
    match (unclaimed, chain) {
        (Some(names), _) => Err(IdentityError::UnknownName(names)),
        (None, Err(reason)) => Err(IdentityError::UnknownKey(reason)),
        // Unreachable in practice: an Ok chain always sets `unclaimed`.
        (None, Ok(())) => Err(IdentityError::UnknownKey("unclaimed".into())),
    }
}

/// Subject CNs, then SAN DNS names, emails and URIs — the names a tenant CA vouches for.
fn cert_names(cert: &X509Certificate<'_>) -> Vec<String> {
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for g in &san.value.general_names {
            match g {
                GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
                    names.push((*s).to_owned())
                }
                _ => {}
            }
        }
    }
    names
}

fn from_token(header: &[u8], tenants: &Tenants) -> Result<Identity, IdentityError> {
    let token = bearer_token(header).ok_or(IdentityError::MalformedAuthorization)?;
    let hash: Sha256Hash = Sha256::digest(token).into();
    tenants
        .by_token_hash(&hash)
        .map(|t| identity(t, Via::Token))
        .ok_or(IdentityError::UnknownToken)
}

/// The token of `Bearer <token>` (scheme case-insensitive, RFC 7235), or of a bare `<token>`,
/// or `None`. The token is one run of visible ASCII.
///
/// A bare token is accepted because Prometheus 2.42's `http_sd_configs` sends
/// `authorization: {credentials_file: …}` as `Authorization: <token>` when `type` is left out
/// (its scrape configs do add `Bearer`); refusing it would break the documented configuration.
pub fn bearer_token(header: &[u8]) -> Option<&[u8]> {
    let header = header.trim_ascii();
    let token = match header.iter().position(|&b| b == b' ') {
        Some(at) => {
            let (scheme, rest) = header.split_at(at);
            if !scheme.eq_ignore_ascii_case(b"bearer") {
                return None;
            }
            rest.trim_ascii_start()
        }
        None if header.eq_ignore_ascii_case(b"bearer") => return None,
        None => header,
    };
    (!token.is_empty() && token.iter().all(|&b| b.is_ascii_graphic())).then_some(token)
}
