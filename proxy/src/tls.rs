//! The TLS side of client authentication: a rustls client-certificate verifier that
//! **requests** a certificate, does not require one, accepts any issuer, and still checks the
//! handshake signature — so a peer that sends a certificate has proved it holds the private
//! key. Deciding whether that certificate means anything is [`crate::identity`]'s job, at the
//! HTTP layer, where a refusal can be a proper 401.
//!
//! It sends **no** CA names in the CertificateRequest: Go's TLS client (Prometheus) offers a
//! certificate only if it matches one of the named CAs, so naming the tenant CA would make
//! Prometheus withhold self-signed registered certificates.
//!
//! Not here yet: the server configuration, certificate hot reload, the listener.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};

/// Accepts any client certificate (or none) after the handshake signature proves possession.
#[derive(Debug)]
pub struct AcceptAnyClientCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl AcceptAnyClientCert {
    /// Uses `provider`'s signature algorithms to check handshake signatures.
    pub fn new(provider: &CryptoProvider) -> Arc<Self> {
        Arc::new(AcceptAnyClientCert {
            algorithms: provider.signature_verification_algorithms,
        })
    }
}

impl ClientCertVerifier for AcceptAnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Issuer, validity and registration are decided per request by `identity`.
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
