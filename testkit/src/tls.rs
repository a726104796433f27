//! rustls configurations for tests: a client trusting given roots, with or without a client
//! certificate, and a server presenting one certificate without asking for one. Always the
//! ring provider, like the product.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;

/// A certificate chain and its private key, as a TLS peer presents them.
pub struct Identity {
    /// The chain, leaf first.
    pub certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            certs: self.certs.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    /// A chain and key in memory.
    pub fn new(certs: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Identity {
        Identity { certs, key }
    }

    /// Reads a PEM chain and a PEM key; panics naming the file that fails.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Identity {
        let certs = CertificateDer::pem_file_iter(cert)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .unwrap_or_else(|e| panic!("certificates in {}: {e}", cert.display()));
        let key = PrivateKeyDer::from_pem_file(key)
            .unwrap_or_else(|e| panic!("key in {}: {e}", key.display()));
        Identity { certs, key }
    }

    /// The leaf certificate.
    pub fn cert(&self) -> &CertificateDer<'static> {
        // Every constructor is given or reads at least one certificate (rustls refuses an
        // empty chain anyway).
        &self.certs[0]
    }
}

/// Every certificate of a PEM file, as trust roots.
pub fn roots_from_pem_file(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .unwrap_or_else(|e| panic!("certificates in {}: {e}", path.display()))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client trusting `roots`, presenting `identity` when given. Not yet in an `Arc`, so that a
/// test can still set SNI or ALPN.
pub fn client_config(
    roots: &[CertificateDer<'static>],
    identity: Option<&Identity>,
) -> ClientConfig {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).expect("trust root");
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(store);
    match identity {
        Some(id) => builder
            .with_client_auth_cert(id.certs.clone(), id.key.clone_key())
            .expect("client certificate"),
        None => builder.with_no_client_auth(),
    }
}

/// A server presenting `identity` and asking for no client certificate.
pub fn server_config(identity: &Identity) -> ServerConfig {
    ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(identity.certs.clone(), identity.key.clone_key())
        .expect("server certificate")
}

/// [`server_config`] as a tokio-rustls acceptor.
pub fn acceptor(identity: &Identity) -> tokio_rustls::TlsAcceptor {
    tokio_rustls::TlsAcceptor::from(Arc::new(server_config(identity)))
}
