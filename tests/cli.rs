//! The `lookout` binary's command line: `agent --check-config` lists every problem of a bad
//! configuration and exits 2, accepts a good one, and `dev` refuses a directory it did not
//! make, changing nothing in it. (`lookout dev` running is tests/dev.rs.)

use std::process::Command;

fn lookout(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lookout"))
        .args(args)
        .output()
        .expect("run lookout");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_lists_every_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("agent.toml");
    std::fs::write(
        &bad,
        "node_id = \"Not A Label\"\n[tls]\ncert = \"/missing/cert.pem\"\nkey = \"/missing/key.pem\"\nclient_ca = \"/missing/ca.pem\"\n[collection]\nmax_concurrent = 0\n",
    )
    .expect("write");
    let (code, _, err) = lookout(&[
        "agent",
        "--config",
        bad.to_str().expect("utf8"),
        "--check-config",
    ]);
    assert_eq!(code, 2, "{err}");
    for needle in [
        "node_id",
        "tls.cert",
        "tls.key",
        "tls.client_ca",
        "max_concurrent",
    ] {
        assert!(err.contains(needle), "{needle} missing from:\n{err}");
    }

    std::fs::write(&bad, "[tls]\ncert = 1\n").expect("write");
    let (code, _, err) = lookout(&[
        "agent",
        "--config",
        bad.to_str().expect("utf8"),
        "--check-config",
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("invalid type") || err.contains("expected"),
        "{err}"
    );

    let (code, _, err) = lookout(&["agent", "--config", "/nonexistent.toml", "--check-config"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn check_config_accepts_a_good_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| dir.path().join(n);
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .expect("params")
        .signed_by(&key, &ca, &ca_key)
        .expect("sign");
    std::fs::write(p("ca.pem"), ca.pem()).expect("write");
    std::fs::write(p("agent.pem"), cert.pem()).expect("write");
    std::fs::write(p("agent-key.pem"), key.serialize_pem()).expect("write");
    let cfg = p("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n",
            p("agent.pem").display(),
            p("agent-key.pem").display(),
            p("ca.pem").display()
        ),
    )
    .expect("write");
    let (code, out, err) = lookout(&[
        "agent",
        "--config",
        cfg.to_str().expect("utf8"),
        "--check-config",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok"));

    // A key that does not match the certificate is caught before start.
    let other = rcgen::KeyPair::generate().expect("key");
    std::fs::write(p("agent-key.pem"), other.serialize_pem()).expect("write");
    let (code, _, err) = lookout(&[
        "agent",
        "--config",
        cfg.to_str().expect("utf8"),
        "--check-config",
    ]);
    assert_eq!(code, 2, "mismatched key must fail: {err}");
    assert!(err.contains("tls"), "{err}");
}

#[test]
fn dev_refuses_a_directory_it_did_not_make() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(tmp.path().join("notes.txt"), "mine").expect("write");
    let dir = tmp.path().to_str().expect("utf8");
    let (code, out, err) = lookout(&["dev", "--dir", dir, "--listen", "127.0.0.1:0"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("was not made by `lookout dev`"), "{err}");
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left, ["notes.txt"], "nothing may be written into it");
}
