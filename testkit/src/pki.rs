//! Throw-away certificates made with rcgen, and [`Pki`]: the credentials of a whole test fleet
//! (operator CA, agent, proxy, the proxy's server certificate, tenants) in a temp dir.
//!
//! Made with rcgen rather than `lookout_proxy::pki` on purpose: the product is checked against
//! certificates it did not make, and this crate depends on none of the crates it tests. Tests
//! of `lookout certs` itself use the product's issuance.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ClientConfig;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

use crate::agent::AgentToml;
use crate::proxy::ProxyToml;
use crate::tls::{self, Identity};

/// The proxy's base name (and DNS suffix) in [`Pki`]'s server certificate.
pub const BASE: &str = "lookout.test";

/// What a certificate may be used for (its extended key usage).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// TLS server authentication.
    Server,
    /// TLS client authentication.
    Client,
    /// No extended key usage extension: usable for either.
    Unspecified,
}

/// A self-signed certificate authority.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate and its key, from [`Ca::issue`] or [`self_signed`].
pub struct Issued {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    /// A new CA with common name `cn`, no path length limit.
    pub fn new(cn: &str) -> Ca {
        let key = KeyPair::generate().expect("key generation");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, cn);
        let cert = p.self_signed(&key).expect("self-sign CA");
        Ca { cert, key }
    }

    /// A certificate for `cn` with these subject alternative names (IP literals become IP
    /// address SANs, anything else DNS names).
    pub fn issue(&self, cn: &str, sans: &[&str], usage: Usage) -> Issued {
        let key = KeyPair::generate().expect("key generation");
        let mut p = params(cn, sans);
        p.extended_key_usages = match usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::Unspecified => Vec::new(),
        };
        let cert = p.signed_by(&key, &self.cert, &self.key).expect("sign");
        Issued { cert, key }
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA certificate, DER (a trust root).
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }
}

impl Issued {
    /// The certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// The private key, PKCS#8 PEM.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The certificate, DER.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// Certificate and key for a TLS configuration.
    pub fn identity(&self) -> Identity {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()));
        Identity::new(vec![self.cert_der()], key)
    }
}

fn params(cn: &str, sans: &[&str]) -> CertificateParams {
    let sans: Vec<String> = sans.iter().map(ToString::to_string).collect();
    let mut p = CertificateParams::new(sans).expect("certificate params (SANs)");
    p.distinguished_name.push(DnType::CommonName, cn);
    p
}

/// A self-signed certificate for `cn`, no SANs: a key someone registers rather than a CA
/// vouches for.
pub fn self_signed(cn: &str) -> Issued {
    let key = KeyPair::generate().expect("key generation");
    let cert = params(cn, &[]).self_signed(&key).expect("self-sign");
    Issued { cert, key }
}

/// The lowercase hex SHA-256 of a bearer token, as a tenants file lists it.
pub fn token_sha256(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The credentials of a test fleet, written to a temp dir (removed on drop):
///
/// | file | what |
/// |---|---|
/// | `operator-ca.pem` | the operator CA ([`Pki::operator`]) |
/// | `agent.pem`, `agent-key.pem` | agent server certificate (operator CA) for `localhost` and `127.0.0.1` |
/// | `proxy.pem`, `proxy-key.pem` | the proxy's client certificate towards agents (operator CA) |
/// | `foreign.pem`, `foreign-key.pem` | a client certificate from someone else's CA ([`Pki::foreign`]) |
/// | `server.pem`, `server-key.pem` | the proxy's server certificate for [`BASE`], `*.BASE` and `127.0.0.1` (server CA) |
/// | `server-ca.pem` | the server CA, for clients outside the test process (curl, Prometheus) |
/// | `tenant-ca.pem` | the CA vouching for tenants' client certificates |
/// | `acme.pem`, `acme-key.pem`, `globex.pem`, `globex-key.pem` | [`Pki::acme`] and [`Pki::globex`], for clients outside the test process (promtool, Prometheus) |
///
/// and in memory the tenants' identities: `acme` (tenant CA, common name `acme`), `globex`
/// and `stranger` (self-signed; a test registers globex's key and nobody's the stranger's).
pub struct Pki {
    dir: TempDir,
    /// Signs agents' and the proxy's certificates.
    pub operator: Ca,
    /// A CA nobody trusts.
    pub foreign: Ca,
    server_ca: CertificateDer<'static>,
    /// A tenant certificate from the tenant CA, common name `acme`.
    pub acme: Identity,
    /// A self-signed certificate, common name `globex-laptop`.
    pub globex: Identity,
    /// A self-signed certificate, common name `stranger`.
    pub stranger: Identity,
}

impl Pki {
    /// Makes every certificate; the temp dir's name starts with `prefix`.
    pub fn new(prefix: &str) -> Pki {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .expect("tempdir for the PKI");
        let operator = Ca::new("lookout operator CA");
        let foreign = Ca::new("someone else's CA");
        let server_ca = Ca::new("server CA");
        let tenant_ca = Ca::new("tenant CA");
        let wildcard = format!("*.{BASE}");
        let acme = tenant_ca.issue("acme", &[], Usage::Client);
        let globex = self_signed("globex-laptop");
        let pki = Pki {
            dir,
            server_ca: server_ca.cert_der(),
            acme: acme.identity(),
            globex: globex.identity(),
            stranger: self_signed("stranger").identity(),
            operator,
            foreign,
        };
        pki.write("operator-ca.pem", &pki.operator.cert_pem());
        pki.write_issued("acme", &acme);
        pki.write_issued("globex", &globex);
        pki.write("tenant-ca.pem", &tenant_ca.cert_pem());
        pki.write_issued("agent", &pki.issue_agent("agent"));
        let proxy = pki.operator.issue("proxy", &[], Usage::Client);
        pki.write_issued("proxy", &proxy);
        pki.write_issued(
            "foreign",
            &pki.foreign.issue("intruder", &[], Usage::Client),
        );
        let server = server_ca.issue(BASE, &[BASE, &wildcard, "127.0.0.1"], Usage::Server);
        pki.write_issued("server", &server);
        pki.write("server-ca.pem", &server_ca.cert_pem());
        pki
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Path of a file in the directory (which need not exist yet).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a file into the directory; returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// Writes `<stem>.pem` and `<stem>-key.pem`.
    pub fn write_issued(&self, stem: &str, issued: &Issued) {
        self.write(&format!("{stem}.pem"), &issued.cert_pem());
        self.write(&format!("{stem}-key.pem"), &issued.key_pem());
    }

    /// Another agent certificate from the operator CA, like `agent.pem` (for renewals).
    pub fn issue_agent(&self, cn: &str) -> Issued {
        self.operator
            .issue(cn, &["localhost", "127.0.0.1"], Usage::Server)
    }

    /// The identity in `<stem>.pem` and `<stem>-key.pem`, read now.
    pub fn identity(&self, stem: &str) -> Identity {
        Identity::from_pem_files(
            &self.path(&format!("{stem}.pem")),
            &self.path(&format!("{stem}-key.pem")),
        )
    }

    /// A client of agents: trusts the operator CA, presents `identity` when given.
    pub fn agent_client(&self, identity: Option<&Identity>) -> Arc<ClientConfig> {
        Arc::new(tls::client_config(&[self.operator.cert_der()], identity))
    }

    /// The proxy's client configuration towards agents (`proxy.pem`).
    pub fn proxy_client(&self) -> Arc<ClientConfig> {
        self.agent_client(Some(&self.identity("proxy")))
    }

    /// A client of the proxy: trusts the server CA, presents `identity` when given.
    pub fn tenant_client(&self, identity: Option<&Identity>) -> ClientConfig {
        tls::client_config(std::slice::from_ref(&self.server_ca), identity)
    }

    /// The agent's server side (`agent.pem`), for fake agents.
    pub fn agent_acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tls::acceptor(&self.identity("agent"))
    }

    /// An agent configuration serving `agent.pem`, trusting the operator CA for clients and
    /// watching `runc_root`.
    pub fn agent_toml(&self, runc_root: &Path) -> AgentToml {
        AgentToml::new(
            &self.path("agent.pem"),
            &self.path("agent-key.pem"),
            &self.path("operator-ca.pem"),
            runc_root,
        )
    }

    /// A proxy configuration with this PKI's files (`tenants.toml` is the test's to write).
    pub fn proxy_toml(&self) -> ProxyToml {
        ProxyToml::new(self.dir())
    }
}
