//! The etcd-mode deployment examples hold: `deploy/config/etcd/{agent,proxy}.toml` pass
//! `lookout … --check-config` once their certificate paths point at real files and write out
//! every etcd option with its default; `deploy/k8s` keeps its promises (host paths read-only,
//! the systemd unit's capabilities and bounds, probes, replicas, ports) and its ConfigMaps'
//! configurations pass `--check-config` inside the pods' assembled filesystems
//! (`tests/k8s_manifests.py`, which needs `python3` with PyYAML — Debian's python3-yaml — and
//! `busybox`, both installed by `deploy/test.sh`; it fails loudly without them).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use lookout_agent::config::AgentConfig;
use lookout_discovery::etcd::EtcdConfig;
use lookout_proxy::config::{InventoryConfig, ProxyConfig};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn lookout(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lookout"))
        .args(args)
        .output()
        .expect("run lookout");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn check_config(kind: &str, config: &Path) -> (i32, String) {
    lookout(&[
        kind,
        "--config",
        config.to_str().expect("utf8"),
        "--check-config",
    ])
}

/// Every certificate and key the examples and the Secrets name, under the Secrets' key names:
/// valid pairs, so that `--check-config` loads them as it would in production.
fn pems(dir: &Path) {
    let ca = |name: &str| {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, name.to_string());
        let cert = p.self_signed(&key).expect("ca");
        (cert, key)
    };
    let write = |name: &str, text: String| std::fs::write(dir.join(name), text).expect("write");
    let issue = |ca: &(rcgen::Certificate, rcgen::KeyPair), stem: &str, sans: &[&str]| {
        let key = rcgen::KeyPair::generate().expect("key");
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let cert = rcgen::CertificateParams::new(sans)
            .expect("params")
            .signed_by(&key, &ca.0, &ca.1)
            .expect("sign");
        write(&format!("{stem}.pem"), cert.pem());
        write(&format!("{stem}-key.pem"), key.serialize_pem());
    };
    let operator = ca("operator CA");
    let tenant = ca("tenant CA");
    let etcd = ca("etcd CA");
    write("operator-ca.pem", operator.0.pem());
    write("tenant-ca.pem", tenant.0.pem());
    write("etcd-ca.pem", etcd.0.pem());
    issue(&operator, "agent", &["10.0.0.17"]);
    issue(&operator, "proxy", &["proxies"]);
    issue(
        &tenant,
        "server",
        &["lookout.example.com", "*.lookout.example.com"],
    );
    issue(&etcd, "etcd-client", &["lookout"]);
    write(
        "tenants.toml",
        "[[tenant]]\nname = \"ops\"\nroles = [\"operator\"]\n".into(),
    );
}

/// The example with `/etc/lookout/` pointing at `dir`.
fn localised(example: &str, dir: &Path) -> (String, PathBuf) {
    let text = std::fs::read_to_string(repo().join(example)).expect("read example");
    let text = text.replace("/etc/lookout/", &format!("{}/", dir.display()));
    let name = Path::new(example).file_name().expect("file name");
    (text, dir.join(name))
}

/// Each option appears as a `key =` line, set or commented out, inside the example's
/// `[table]` (up to the next table header), so a key of another table cannot stand in.
fn documents_every_option(text: &str, table: &str, options: &[&str]) {
    let header = |l: &str| {
        let l = l.trim_start_matches(['#', ' ']);
        l.starts_with('[').then(|| {
            l.trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string()
        })
    };
    let mut inside = false;
    let mut lines = Vec::new();
    for l in text.lines() {
        if let Some(h) = header(l) {
            inside = h == table;
            continue;
        }
        if inside {
            lines.push(l.trim_start_matches(['#', ' ']));
        }
    }
    assert!(!lines.is_empty(), "the example has no [{table}]");
    for option in options {
        let documented = lines.iter().any(|l| l.starts_with(&format!("{option} =")));
        assert!(
            documented,
            "the example does not document `{option}` in [{table}]"
        );
    }
}

#[test]
fn etcd_agent_example_passes_check_config_with_every_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    pems(dir.path());
    let (text, path) = localised("deploy/config/etcd/agent.toml", dir.path());
    std::fs::write(&path, &text).expect("write");
    let (code, out) = check_config("agent", &path);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(": ok"), "{out}");

    let cfg = AgentConfig::parse(&text).expect("parses");
    let etcd = cfg.etcd.expect("[etcd]");
    let tls = etcd.tls.clone().expect("[etcd.tls]: TLS to etcd");
    assert!(
        tls.cert.is_some() && tls.key.is_some(),
        "a client certificate"
    );
    assert!(etcd.endpoints.iter().all(|e| e.starts_with("https://")));
    // Everything but endpoints, advertise and TLS is written out at its default.
    let defaults = EtcdConfig {
        advertise: etcd.advertise.clone(),
        tls: Some(tls),
        ..EtcdConfig::new(etcd.endpoints.clone())
    };
    assert_eq!(etcd, defaults);
    assert_eq!(etcd.lease_ttl, Duration::from_secs(10));
    documents_every_option(
        &text,
        "etcd",
        &[
            "endpoints",
            "advertise",
            "prefix",
            "lease_ttl",
            "connect_timeout",
            "request_timeout",
            "backoff",
        ],
    );
    documents_every_option(&text, "etcd.tls", &["ca", "cert", "key", "server_name"]);
    assert!(
        text.contains("max_value_bytes and max_instances"),
        "says why they are absent"
    );

    // The check is not vacuous: without advertise the same file is refused.
    let without: String = text
        .lines()
        .filter(|l| !l.starts_with("advertise"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&path, without).expect("write");
    let (code, out) = check_config("agent", &path);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("etcd.advertise is required"), "{out}");
}

#[test]
fn etcd_proxy_example_passes_check_config_with_every_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    pems(dir.path());
    let (text, path) = localised("deploy/config/etcd/proxy.toml", dir.path());
    std::fs::write(&path, &text).expect("write");
    let (code, out) = check_config("proxy", &path);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(": ok"), "{out}");

    let cfg = ProxyConfig::parse(&text).expect("parses");
    let InventoryConfig::Etcd(etcd) = &cfg.inventory else {
        panic!("not the etcd source: {:?}", cfg.inventory);
    };
    let tls = etcd.tls.clone().expect("[inventory.tls]: TLS to etcd");
    assert!(
        tls.cert.is_some() && tls.key.is_some(),
        "a client certificate"
    );
    let defaults = EtcdConfig {
        tls: Some(tls),
        ..EtcdConfig::new(etcd.endpoints.clone())
    };
    assert_eq!(etcd, &defaults);
    assert!(
        cfg.limits.follows_etcd(&cfg.inventory),
        "the replica count follows the replicas registered in etcd"
    );
    documents_every_option(
        &text,
        "inventory",
        &[
            "endpoints",
            "advertise",
            "prefix",
            "lease_ttl",
            "connect_timeout",
            "request_timeout",
            "backoff",
            "max_value_bytes",
            "max_instances",
        ],
    );
    documents_every_option(
        &text,
        "inventory.tls",
        &["ca", "cert", "key", "server_name"],
    );

    let (code, out) = {
        std::fs::remove_file(dir.path().join("etcd-client-key.pem")).expect("rm");
        check_config("proxy", &path)
    };
    assert_eq!(code, 2, "a missing etcd key is caught: {out}");
    assert!(out.contains("inventory.tls.key"), "{out}");
}

#[test]
fn kubernetes_manifests_keep_their_promises() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pem_dir = dir.path().join("pems");
    let work = dir.path().join("work");
    std::fs::create_dir(&pem_dir).expect("mkdir");
    std::fs::create_dir(&work).expect("mkdir");
    pems(&pem_dir);
    let out = Command::new("python3")
        .arg(repo().join("tests/k8s_manifests.py"))
        .arg(repo())
        .arg(env!("CARGO_BIN_EXE_lookout"))
        .arg(&pem_dir)
        .arg(&work)
        .output()
        .expect("python3 is required (deploy/test.sh installs it with python3-yaml)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "deploy/k8s:\n{text}");
    assert!(text.contains("all checks passed"), "{text}");
}
