//! The PKI behind `lookout certs`: a reloaded CA issues certificates that the identity layer
//! accepts; mismatched or non-CA inputs are refused; fingerprints of every accepted form.

use std::time::{Duration, SystemTime};

use lookout_proxy::identity::{authenticate, spki_sha256, IdentityError, TenantCa, Via};
use lookout_proxy::pki::{fingerprint, safe_file_stem, write_new, Ca, Kind, NewFile};
use lookout_proxy::tenants::Tenants;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};

const YEAR: Duration = Duration::from_secs(365 * 86_400);

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM certificate")
}

#[test]
fn a_reloaded_ca_issues_tenant_certificates_the_proxy_accepts() {
    let now = SystemTime::now();
    let (_, ca_pem) = Ca::create("lookout CA", now, YEAR).expect("CA");
    let ca = Ca::from_pem(&ca_pem.cert_pem, &ca_pem.key_pem).expect("reload");
    let alice = ca
        .issue(Kind::Tenant, "alice", &[], now, YEAR)
        .expect("issue");
    let tenants = Tenants::parse("[[tenant]]\nname = \"alice\"\n").expect("tenants");
    let tenant_ca = TenantCa::new(&[der(&ca_pem.cert_pem)]).expect("tenant CA");
    let t = UnixTime::since_unix_epoch(now.duration_since(SystemTime::UNIX_EPOCH).expect("clock"));
    let id = authenticate(&[der(&alice.cert_pem)], None, t, &tenant_ca, &tenants).expect("ok");
    assert_eq!((id.tenant.as_str(), id.via), ("alice", Via::Cert));
    // After its validity, the same certificate is refused.
    let later = UnixTime::since_unix_epoch(t.as_secs_duration() + YEAR * 2);
    assert_eq!(
        authenticate(&[der(&alice.cert_pem)], None, later, &tenant_ca, &tenants),
        Err(IdentityError::Expired)
    );
    // A server certificate of the same CA is not a client credential.
    let server = ca
        .issue(
            Kind::Server,
            "alice",
            &["*.i.example.com".into(), "10.0.0.1".into()],
            now,
            YEAR,
        )
        .expect("issue");
    assert!(matches!(
        authenticate(&[der(&server.cert_pem)], None, t, &tenant_ca, &tenants),
        Err(IdentityError::UnknownKey(_))
    ));
}

trait AsSecs {
    fn as_secs_duration(&self) -> Duration;
}
impl AsSecs for UnixTime {
    fn as_secs_duration(&self) -> Duration {
        Duration::from_secs(self.as_secs())
    }
}

#[test]
fn mismatched_keys_non_cas_and_garbage_are_refused() {
    let now = SystemTime::now();
    let (_, a) = Ca::create("A", now, YEAR).expect("CA");
    let (_, b) = Ca::create("B", now, YEAR).expect("CA");
    let err = Ca::from_pem(&a.cert_pem, &b.key_pem).expect_err("wrong key");
    assert!(err.to_string().contains("does not match"), "{err}");
    let ca = Ca::from_pem(&a.cert_pem, &a.key_pem).expect("CA");
    let leaf = ca.issue(Kind::Proxy, "p", &[], now, YEAR).expect("leaf");
    let err = Ca::from_pem(&leaf.cert_pem, &leaf.key_pem).expect_err("not a CA");
    assert!(err.to_string().contains("not a CA"), "{err}");
    assert!(Ca::from_pem("junk", &a.key_pem).is_err());
    assert!(Ca::from_pem(&a.cert_pem, "junk").is_err());
    assert!(ca
        .issue(Kind::Server, "x", &["not a name!".into()], now, YEAR)
        .is_err());
    assert!(ca.issue(Kind::Tenant, " ", &[], now, YEAR).is_err());
    assert!(Ca::create("", now, YEAR).is_err());
}

#[test]
fn fingerprints_of_certificates_public_keys_and_ssh_keys() {
    let now = SystemTime::now();
    let (_, a) = Ca::create("A", now, YEAR).expect("CA");
    let want = spki_sha256(&der(&a.cert_pem)).expect("spki");
    assert_eq!(fingerprint(&a.cert_pem).expect("cert"), want);
    let key = rcgen::KeyPair::from_pem(&a.key_pem).expect("key");
    assert_eq!(
        fingerprint(&key.public_key_pem()).expect("public key"),
        want
    );
    // The ECDSA key and hash from the tenants tests (made with ssh-keygen and openssl).
    let ssh = "# comment\necdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBD4nMHynsulg7wP9dW6vbea+gBN4PTQI15v/spvzm+Ij60Yq04ou8jeOLWnw4U6/qipwautl1wV16ntUJl68KUs= test\n";
    assert_eq!(
        lookout_proxy::tenants::hex(&fingerprint(ssh).expect("ssh")),
        "92ea9e8c968a9cf205dc2695c393d02f0bb0a3357e6985e04f544e1d3b72481c"
    );
    assert!(fingerprint("hello").is_err());
    assert!(fingerprint("").is_err());
}

#[test]
fn files_are_written_new_with_secret_modes_or_not_at_all() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let sub = dir.path().join("d");
    let files = [
        NewFile {
            name: "a.pem".into(),
            contents: "A",
            secret: false,
        },
        NewFile {
            name: "a-key.pem".into(),
            contents: "K",
            secret: true,
        },
    ];
    let paths = write_new(&sub, &files).expect("write");
    assert_eq!(paths.len(), 2);
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&paths[0]), 0o644);
    assert_eq!(mode(&paths[1]), 0o600);
    // One existing file: nothing is written, not even the new one.
    let again = [
        NewFile {
            name: "b.pem".into(),
            contents: "B",
            secret: false,
        },
        NewFile {
            name: "a.pem".into(),
            contents: "X",
            secret: false,
        },
    ];
    assert!(write_new(&sub, &again).is_err());
    assert!(!sub.join("b.pem").exists());
    assert_eq!(std::fs::read_to_string(&paths[0]).expect("read"), "A");
    assert!(safe_file_stem("tenant-alice"));
    assert!(!safe_file_stem("tenant-../x"));
    assert!(!safe_file_stem(".hidden"));
}
