//! Identities: every acceptance and refusal path, with certificates made by rcgen (a tenant
//! CA, an intermediate, CA-issued, self-signed, expired, not-yet-valid, unknown keys, an
//! Ed25519 key registered as an SSH key), plus real in-memory TLS handshakes through
//! `AcceptAnyClientCert` proving that possession is checked and no CA names are sent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use lookout_proxy::identity::{authenticate, spki_sha256, Identity, IdentityError, TenantCa, Via};
use lookout_proxy::tenants::{hex, Tenants};
use lookout_proxy::tls::AcceptAnyClientCert;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use sha2::{Digest, Sha256};

/// 2027-01-15: inside rcgen's default validity (1975–4096).
fn now() -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(1_800_000_000))
}

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn p256() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("keygen")
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    p
}

fn new_ca(cn: &str) -> Ca {
    let key = p256();
    let cert = ca_params(cn).self_signed(&key).expect("CA");
    Ca { cert, key }
}

fn intermediate(parent: &Ca) -> Ca {
    let key = p256();
    let cert = ca_params("intermediate")
        .signed_by(&key, &parent.cert, &parent.key)
        .expect("intermediate");
    Ca { cert, key }
}

fn client_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p
}

/// A certificate and its key.
struct Leaf {
    der: CertificateDer<'static>,
    key: KeyPair,
}

fn issued(ca: &Ca, p: CertificateParams) -> Leaf {
    let key = p256();
    let cert = p.signed_by(&key, &ca.cert, &ca.key).expect("issue");
    Leaf {
        der: cert.der().clone(),
        key,
    }
}

fn self_signed_with(p: CertificateParams, key: KeyPair) -> Leaf {
    let cert = p.self_signed(&key).expect("self-signed");
    Leaf {
        der: cert.der().clone(),
        key,
    }
}

fn self_signed(cn: &str) -> Leaf {
    self_signed_with(client_params(cn), p256())
}

/// An `ssh-ed25519` authorized_keys line for a raw Ed25519 public key.
fn ssh_ed25519_line(raw: &[u8]) -> String {
    let mut blob = Vec::new();
    for part in [b"ssh-ed25519".as_slice(), raw] {
        blob.extend_from_slice(&(part.len() as u32).to_be_bytes());
        blob.extend_from_slice(part);
    }
    format!(
        "ssh-ed25519 {} carol@laptop",
        base64::engine::general_purpose::STANDARD.encode(blob)
    )
}

struct World {
    ca: Ca,
    tenant_ca: TenantCa,
    tenants: Tenants,
    bob: Leaf,
    carol: Leaf,
    revoked: Leaf,
}

const TOKEN: &str = "tok-dave-0123456789";

fn world() -> World {
    let ca = new_ca("tenant CA");
    let bob = self_signed("bob-laptop");
    let carol = self_signed_with(
        client_params("anything"),
        KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519"),
    );
    let revoked = issued(&ca, client_params("alice"));
    let text = format!(
        r#"
[revoked]
spki_sha256 = ["{revoked}"]

[[tenant]]
name = "alice"
roles = ["operator"]
cert_cn = ["alice", "alice.example.com"]

[[tenant]]
name = "bob"
spki_sha256 = ["{bob}"]

[[tenant]]
name = "carol"
ssh_keys = ["{carol}"]

[[tenant]]
name = "dave"
token_sha256 = ["{token}"]
"#,
        revoked = hex(&spki_sha256(&revoked.der).expect("spki")),
        bob = hex(&Sha256::digest(bob.key.public_key_der())),
        carol = ssh_ed25519_line(carol.key.public_key_raw()),
        token = hex(&Sha256::digest(TOKEN.as_bytes())),
    );
    let tenants = Tenants::parse(&text).expect("tenants");
    let tenant_ca = TenantCa::new(&[ca.cert.der().clone()]).expect("tenant CA");
    World {
        ca,
        tenant_ca,
        tenants,
        bob,
        carol,
        revoked,
    }
}

fn auth(
    w: &World,
    chain: &[CertificateDer<'_>],
    token: Option<&str>,
) -> Result<Identity, IdentityError> {
    authenticate(
        chain,
        token.map(str::as_bytes),
        now(),
        &w.tenant_ca,
        &w.tenants,
    )
}

fn who(tenant: &str, operator: bool, via: Via) -> Result<Identity, IdentityError> {
    Ok(Identity {
        tenant: tenant.into(),
        operator,
        via,
    })
}

#[test]
fn ca_issued_certificates_name_their_tenant_by_cn_or_san() {
    let w = world();
    let by_cn = issued(&w.ca, client_params("alice"));
    assert_eq!(auth(&w, &[by_cn.der], None), who("alice", true, Via::Cert));
    let mut p = client_params("some laptop");
    p.subject_alt_names = vec![SanType::DnsName(
        "alice.example.com".try_into().expect("dns"),
    )];
    let by_san = issued(&w.ca, p);
    assert_eq!(auth(&w, &[by_san.der], None), who("alice", true, Via::Cert));
}

#[test]
fn chains_through_an_intermediate_the_client_sends() {
    let w = world();
    let mid = intermediate(&w.ca);
    let leaf = issued(&mid, client_params("alice"));
    assert_eq!(
        auth(&w, &[leaf.der.clone(), mid.cert.der().clone()], None),
        who("alice", true, Via::Cert)
    );
    // Without the intermediate the chain cannot be built.
    assert!(matches!(
        auth(&w, &[leaf.der], None),
        Err(IdentityError::UnknownKey(_))
    ));
}

#[test]
fn ca_issued_certificates_no_tenant_claims_or_two_tenants_claim_are_refused() {
    let w = world();
    let nobody = issued(&w.ca, client_params("mallory"));
    assert_eq!(
        auth(&w, &[nobody.der], None),
        Err(IdentityError::UnknownName(vec!["mallory".into()]))
    );
    let mut p = client_params("alice");
    p.subject_alt_names = vec![SanType::DnsName("bob".try_into().expect("dns"))];
    let both = issued(&w.ca, p);
    assert!(matches!(
        auth(&w, &[both.der], None),
        Err(IdentityError::AmbiguousName(_))
    ));
}

#[test]
fn a_ca_certificate_not_meant_for_client_auth_is_not_trusted() {
    let w = world();
    let mut p = client_params("alice");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_only = issued(&w.ca, p);
    match auth(&w, &[server_only.der], None) {
        Err(IdentityError::UnknownKey(reason)) => {
            assert!(reason.contains("tenant CA chain"), "{reason}")
        }
        other => panic!("expected UnknownKey, got {other:?}"),
    }
}

#[test]
fn another_cas_certificate_with_a_tenant_name_is_refused() {
    let w = world();
    let other = new_ca("someone else's CA");
    let forged = issued(&other, client_params("alice"));
    assert_eq!(
        auth(&w, &[forged.der, other.cert.der().clone()], None),
        Err(IdentityError::UnknownKey(
            "not issued by a tenant CA".into()
        ))
    );
    // Without any tenant CA, even a genuine CA-issued certificate is just an unknown key.
    let genuine = issued(&w.ca, client_params("alice"));
    assert_eq!(
        authenticate(&[genuine.der], None, now(), &TenantCa::none(), &w.tenants),
        Err(IdentityError::UnknownKey("no tenant CA configured".into()))
    );
}

#[test]
fn registered_keys_authenticate_whatever_the_issuer() {
    let w = world();
    assert_eq!(
        auth(&w, std::slice::from_ref(&w.bob.der), None),
        who("bob", false, Via::Key)
    );
    // The Ed25519 key registered as an SSH key matches the self-signed certificate's key.
    assert_eq!(
        auth(&w, std::slice::from_ref(&w.carol.der), None),
        who("carol", false, Via::Key)
    );
    // Bob's registered key in a certificate from a CA nobody configured: the key decides.
    let other_ca = new_ca("someone else's CA");
    let bob_key = KeyPair::from_pem(&w.bob.key.serialize_pem()).expect("key");
    let by_other_ca = client_params("bob-at-work")
        .signed_by(&bob_key, &other_ca.cert, &other_ca.key)
        .expect("issue");
    assert_eq!(
        auth(&w, &[by_other_ca.der().clone()], None),
        who("bob", false, Via::Key)
    );
    let stranger = self_signed("bob");
    assert_eq!(
        auth(&w, &[stranger.der], None),
        Err(IdentityError::UnknownKey(
            "not issued by a tenant CA".into()
        ))
    );
}

#[test]
fn expiry_is_enforced_for_every_kind_of_certificate() {
    let w = world();
    let mut expired = client_params("alice");
    expired.not_after = rcgen::date_time_ymd(2020, 1, 1);
    let ca_expired = issued(&w.ca, expired.clone());
    assert_eq!(
        auth(&w, &[ca_expired.der], None),
        Err(IdentityError::Expired)
    );
    // A self-signed certificate with a registered key: cmon ignored expiry here.
    let bob_key = KeyPair::from_pem(&w.bob.key.serialize_pem()).expect("key");
    let bob_expired = self_signed_with(expired.clone(), bob_key);
    assert_eq!(
        auth(&w, &[bob_expired.der], None),
        Err(IdentityError::Expired)
    );
    // The key registered as an SSH key, in an expired certificate.
    let carol_key = KeyPair::from_pem(&w.carol.key.serialize_pem()).expect("key");
    let carol_expired = self_signed_with(expired, carol_key);
    assert_eq!(
        auth(&w, &[carol_expired.der], None),
        Err(IdentityError::Expired)
    );
    let mut future = client_params("alice");
    future.not_before = rcgen::date_time_ymd(2999, 1, 1);
    let early = issued(&w.ca, future.clone());
    assert_eq!(
        auth(&w, &[early.der], None),
        Err(IdentityError::NotYetValid)
    );
    // A registered key whose certificate is not valid yet.
    let bob_key = KeyPair::from_pem(&w.bob.key.serialize_pem()).expect("key");
    let bob_early = self_signed_with(future, bob_key);
    assert_eq!(
        auth(&w, &[bob_early.der], None),
        Err(IdentityError::NotYetValid)
    );
}

#[test]
fn revoked_keys_are_refused_even_from_the_ca() {
    let w = world();
    assert_eq!(
        auth(&w, std::slice::from_ref(&w.revoked.der), None),
        Err(IdentityError::Revoked)
    );
}

#[test]
fn garbage_certificates_are_refused_without_panicking() {
    let w = world();
    for bytes in [
        vec![],
        vec![0x30],
        vec![0x30, 0x82, 0xff, 0xff, 1, 2, 3],
        vec![0u8; 100],
    ] {
        assert!(matches!(
            auth(&w, &[CertificateDer::from(bytes)], None),
            Err(IdentityError::MalformedCertificate(_))
        ));
    }
    assert!(spki_sha256(b"\x30\x03\x02\x01\x00").is_err());
}

#[test]
fn bearer_tokens() {
    let w = world();
    let ok = format!("Bearer {TOKEN}");
    assert_eq!(auth(&w, &[], Some(&ok)), who("dave", false, Via::Token));
    assert_eq!(
        auth(&w, &[], Some(&format!("  bearer   {TOKEN} "))),
        who("dave", false, Via::Token)
    );
    assert_eq!(
        auth(&w, &[], Some("Bearer wrong")),
        Err(IdentityError::UnknownToken)
    );
    // Prometheus 2.42's http_sd_configs sends the bare token when `type` is left out.
    assert_eq!(auth(&w, &[], Some(TOKEN)), who("dave", false, Via::Token));
    assert_eq!(
        auth(&w, &[], Some("wrong")),
        Err(IdentityError::UnknownToken)
    );
    for bad in ["Basic dXNlcjpwYXNz", "Bearer", "bearer ", "Bearer a b", ""] {
        assert_eq!(
            auth(&w, &[], Some(bad)),
            Err(IdentityError::MalformedAuthorization),
            "{bad:?}"
        );
    }
    assert_eq!(
        authenticate(
            &[],
            Some(b"Bearer \xff\xfe"),
            now(),
            &w.tenant_ca,
            &w.tenants
        ),
        Err(IdentityError::MalformedAuthorization)
    );
}

#[test]
fn no_credentials_and_mixed_credentials() {
    let w = world();
    assert_eq!(auth(&w, &[], None), Err(IdentityError::NoCredentials));
    let dave = format!("Bearer {TOKEN}");
    // A certificate and a token of different tenants.
    assert_eq!(
        auth(&w, std::slice::from_ref(&w.bob.der), Some(&dave)),
        Err(IdentityError::Conflict)
    );
    // A bad certificate is not rescued by a good token, nor a bad token by a good certificate.
    let stranger = self_signed("x");
    assert!(matches!(
        auth(&w, &[stranger.der], Some(&dave)),
        Err(IdentityError::UnknownKey(_))
    ));
    assert_eq!(
        auth(&w, std::slice::from_ref(&w.bob.der), Some("Bearer nope")),
        Err(IdentityError::UnknownToken)
    );
}

#[test]
fn spki_sha256_hashes_the_subject_public_key_info() {
    let w = world();
    assert_eq!(
        spki_sha256(&w.bob.der).expect("spki"),
        <[u8; 32]>::from(Sha256::digest(w.bob.key.public_key_der()))
    );
}

// --- TLS: the handshake requests, does not require, and checks possession ---------------

/// Runs a handshake in memory; `Err` carries whichever side failed.
fn handshake(
    client: &mut rustls::ClientConnection,
    server: &mut rustls::ServerConnection,
) -> Result<(), String> {
    for _ in 0..20 {
        let mut buf = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut buf).map_err(|e| e.to_string())?;
        }
        if !buf.is_empty() {
            server
                .read_tls(&mut buf.as_slice())
                .map_err(|e| e.to_string())?;
            server
                .process_new_packets()
                .map_err(|e| format!("server: {e}"))?;
        }
        let mut buf = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut buf).map_err(|e| e.to_string())?;
        }
        if !buf.is_empty() {
            client
                .read_tls(&mut buf.as_slice())
                .map_err(|e| e.to_string())?;
            client
                .process_new_packets()
                .map_err(|e| format!("client: {e}"))?;
        }
        if !client.is_handshaking() && !server.is_handshaking() && !client.wants_write() {
            return Ok(());
        }
    }
    Err("handshake did not finish".into())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn pkcs8(key: &KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()))
}

fn server_config(ca: &Ca) -> Arc<rustls::ServerConfig> {
    let mut p = CertificateParams::new(vec!["lookout.test".to_string()]).expect("params");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server = issued(ca, p);
    let cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(AcceptAnyClientCert::new(&provider()))
        .with_single_cert(vec![server.der], pkcs8(&server.key))
        .expect("server config");
    Arc::new(cfg)
}

/// Offers `cert` signed with `signing_key` (which may not match), recording the CA names the
/// server hinted.
#[derive(Debug)]
struct Offer {
    key: Arc<rustls::sign::CertifiedKey>,
    hints_seen: Mutex<Option<usize>>,
}

impl rustls::client::ResolvesClientCert for Offer {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        *self.hints_seen.lock().expect("lock") = Some(root_hint_subjects.len());
        Some(Arc::clone(&self.key))
    }
    fn has_certs(&self) -> bool {
        true
    }
}

fn client(ca: &Ca, offer: Option<Arc<Offer>>, tls12: bool) -> rustls::ClientConnection {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.der().clone()).expect("root");
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12 {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots);
    let cfg = match offer {
        Some(o) => builder.with_client_cert_resolver(o),
        None => builder.with_no_client_auth(),
    };
    rustls::ClientConnection::new(Arc::new(cfg), "lookout.test".try_into().expect("name"))
        .expect("client")
}

fn offer(cert: &Leaf, signing: &KeyPair) -> Arc<Offer> {
    let key = provider()
        .key_provider
        .load_private_key(pkcs8(signing))
        .expect("signing key");
    Arc::new(Offer {
        key: Arc::new(rustls::sign::CertifiedKey::new(vec![cert.der.clone()], key)),
        hints_seen: Mutex::new(None),
    })
}

#[test]
fn handshake_accepts_a_self_signed_key_holder_and_sends_no_ca_names() {
    let w = world();
    let server_ca = new_ca("server CA");
    for tls12 in [false, true] {
        let o = offer(&w.bob, &w.bob.key);
        let mut c = client(&server_ca, Some(Arc::clone(&o)), tls12);
        let mut s = rustls::ServerConnection::new(server_config(&server_ca)).expect("server");
        handshake(&mut c, &mut s).expect("handshake");
        assert_eq!(
            *o.hints_seen.lock().expect("lock"),
            Some(0),
            "no CA names sent"
        );
        let chain = s.peer_certificates().expect("client cert seen").to_vec();
        assert_eq!(auth(&w, &chain, None), who("bob", false, Via::Key));
    }
}

#[test]
fn handshake_without_a_client_certificate_succeeds_and_is_401_later() {
    let w = world();
    let server_ca = new_ca("server CA");
    let mut c = client(&server_ca, None, false);
    let mut s = rustls::ServerConnection::new(server_config(&server_ca)).expect("server");
    handshake(&mut c, &mut s).expect("handshake");
    let chain = s.peer_certificates().map(<[_]>::to_vec).unwrap_or_default();
    let refused = auth(&w, &chain, None).expect_err("no credentials");
    assert_eq!(refused, IdentityError::NoCredentials);
    // ... which the proxy answers with 401.
    assert_eq!(
        lookout_proxy::refusal::status(&lookout_proxy::refusal::Refusal::Identity(refused)).0,
        401
    );
}

#[test]
fn handshake_refuses_a_certificate_without_its_private_key() {
    let w = world();
    let server_ca = new_ca("server CA");
    for tls12 in [false, true] {
        // Bob's registered certificate, signed with someone else's key.
        let thief = p256();
        let mut c = client(&server_ca, Some(offer(&w.bob, &thief)), tls12);
        let mut s = rustls::ServerConnection::new(server_config(&server_ca)).expect("server");
        let err = handshake(&mut c, &mut s).expect_err("possession not proven");
        assert!(err.starts_with("server:"), "{err}");
    }
}
