//! `lookout certs` through the real binary, checked with Debian's openssl (required: the
//! test fails loudly when `openssl` is missing): chains verify, EKUs and SANs are what each
//! kind needs, keys are 0600, nothing is overwritten, and `fingerprint` agrees with
//! `openssl x509 -pubkey | openssl pkey -pubin -outform DER | sha256sum`.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn lookout(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lookout"))
        .args(args)
        .output()
        .expect("run lookout")
}

fn ok(args: &[&str]) -> String {
    let out = lookout(args);
    assert!(
        out.status.success(),
        "lookout {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

fn openssl(args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
    use std::io::Write as _;
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("openssl is required for this test (apt-get install openssl): {e}")
        });
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("write stdin");
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn text(cert: &Path) -> String {
    let p = cert.to_str().expect("utf-8 path");
    String::from_utf8(openssl(&["x509", "-noout", "-text", "-in", p], None)).expect("utf-8")
}

fn openssl_fingerprint(cert: &Path) -> String {
    let p = cert.to_str().expect("utf-8 path");
    let pubkey = openssl(&["x509", "-noout", "-pubkey", "-in", p], None);
    let der = openssl(&["pkey", "-pubin", "-outform", "DER"], Some(&pubkey));
    sha256sum(&der)
}

/// `sha256sum` of bytes, via the coreutils binary (the root package has no sha2 dependency).
fn sha256sum(bytes: &[u8]) -> String {
    use std::io::Write as _;
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum (coreutils) runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(bytes)
        .expect("write");
    let out = child.wait_with_output().expect("sha256sum");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .split_whitespace()
        .next()
        .expect("a digest")
        .to_string()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

#[test]
fn ca_and_every_kind_verify_with_openssl() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_dir = dir.path().join("ca");
    let out = dir.path().join("out");
    let (ca_s, out_s) = (
        ca_dir.to_str().expect("utf-8"),
        out.to_str().expect("utf-8"),
    );
    let written = ok(&["certs", "ca", "--out", ca_s, "--name", "Test CA"]);
    assert!(written.contains("ca-key.pem"), "{written}");
    let ca_pem = ca_dir.join("ca.pem");
    assert_eq!(mode(&ca_dir.join("ca-key.pem")), 0o600);
    assert!(text(&ca_pem).contains("CA:TRUE"));

    let kinds: [(&str, &str, &[&str]); 4] = [
        (
            "server",
            "lookout.test",
            &["--san", "*.i.lookout.test", "--san", "127.0.0.1"],
        ),
        ("agent", "node-1.example.net", &[]),
        ("proxy", "proxy-a", &[]),
        ("tenant", "alice", &[]),
    ];
    for (kind, name, extra) in kinds {
        let mut args = vec![
            "certs", "issue", "--ca", ca_s, "--kind", kind, "--name", name,
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--out", out_s]);
        let stdout = ok(&args);
        let cert = out.join(format!("{kind}-{name}.pem"));
        let key = out.join(format!("{kind}-{name}-key.pem"));
        assert_eq!(mode(&key), 0o600, "{kind} key mode");
        let verified = openssl(
            &[
                "verify",
                "-CAfile",
                ca_pem.to_str().expect("utf-8"),
                cert.to_str().expect("utf-8"),
            ],
            None,
        );
        assert!(
            String::from_utf8_lossy(&verified).contains(": OK"),
            "{kind}"
        );
        let t = text(&cert);
        assert!(t.contains("Issuer: CN = Test CA"), "{kind} issuer:\n{t}");
        assert!(
            t.contains(&format!("Subject: CN = {name}")),
            "{kind} subject:\n{t}"
        );
        match kind {
            "server" => {
                assert!(t.contains("TLS Web Server Authentication"), "{t}");
                assert!(!t.contains("TLS Web Client Authentication"), "{t}");
                for san in [
                    "DNS:lookout.test",
                    "DNS:*.i.lookout.test",
                    "IP Address:127.0.0.1",
                ] {
                    assert!(t.contains(san), "missing {san}:\n{t}");
                }
            }
            "agent" => {
                assert!(t.contains("TLS Web Server Authentication"), "{t}");
                assert!(t.contains("DNS:node-1.example.net"), "{t}");
            }
            _ => {
                assert!(t.contains("TLS Web Client Authentication"), "{t}");
                assert!(!t.contains("TLS Web Server Authentication"), "{t}");
            }
        }
        // The key matches the certificate.
        let key_pub = openssl(
            &["pkey", "-in", key.to_str().expect("utf-8"), "-pubout"],
            None,
        );
        let cert_pub = openssl(
            &[
                "x509",
                "-noout",
                "-pubkey",
                "-in",
                cert.to_str().expect("utf-8"),
            ],
            None,
        );
        assert_eq!(key_pub, cert_pub, "{kind} key/cert mismatch");
        // Fingerprints: printed at issue, by `fingerprint`, and by openssl all agree.
        let want = openssl_fingerprint(&cert);
        assert!(stdout.contains(&format!("spki_sha256 {want}")), "{stdout}");
        let fp = ok(&["certs", "fingerprint", cert.to_str().expect("utf-8")]);
        assert_eq!(fp.trim(), want);
        let pub_file = out.join(format!("{kind}-{name}.pub.pem"));
        std::fs::write(&pub_file, &cert_pub).expect("write public key");
        let fp = ok(&["certs", "fingerprint", pub_file.to_str().expect("utf-8")]);
        assert_eq!(fp.trim(), want, "PEM public key fingerprint");
    }
}

#[test]
fn nothing_is_overwritten_and_bad_input_fails_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca");
    let ca_s = ca.to_str().expect("utf-8");
    ok(&["certs", "ca", "--out", ca_s]);
    let before = std::fs::read(ca.join("ca-key.pem")).expect("key");
    let again = lookout(&["certs", "ca", "--out", ca_s]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert_eq!(
        std::fs::read(ca.join("ca-key.pem")).expect("key"),
        before,
        "CA key kept"
    );

    let out = dir.path().join("out");
    let out_s = out.to_str().expect("utf-8");
    let issue = |name: &str| {
        lookout(&[
            "certs", "issue", "--ca", ca_s, "--kind", "tenant", "--name", name, "--out", out_s,
        ])
    };
    assert!(issue("bob").status.success());
    let twice = issue("bob");
    assert!(!twice.status.success());
    assert!(String::from_utf8_lossy(&twice.stderr).contains("already exists"));
    assert!(
        !issue("../escape").status.success(),
        "path-like names are refused"
    );
    let bad_kind = lookout(&[
        "certs", "issue", "--ca", ca_s, "--kind", "root", "--name", "x", "--out", out_s,
    ]);
    assert!(!bad_kind.status.success());
    let missing_ca = lookout(&[
        "certs", "issue", "--ca", out_s, "--kind", "tenant", "--name", "y", "--out", out_s,
    ]);
    assert!(!missing_ca.status.success());
    assert!(String::from_utf8_lossy(&missing_ca.stderr).contains("ca.pem"));
    let junk = dir.path().join("junk");
    std::fs::write(&junk, "not a key").expect("write");
    let fp = lookout(&["certs", "fingerprint", junk.to_str().expect("utf-8")]);
    assert!(!fp.status.success());
}
