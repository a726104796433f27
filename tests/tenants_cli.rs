//! `lookout tenants` against a real etcd (Debian's `etcd-server`, started by the test on
//! loopback), through the built binary: round trips of every command, refusals that write
//! nothing, concurrent writers that lose no update, `--config` checking against the tenants
//! file — and a `lookout proxy` process with `[tenants] etcd` that follows the edits without
//! a restart, merged with its tenants file.
//!
//! Needs `/usr/bin/etcd` and `curl` (the helpers panic naming what is missing).

#[path = "../discovery/tests/support/etcd.rs"]
mod etcd_server;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{CertificateParams, KeyPair};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

use etcd_server::Etcd;
use lookout_testkit::pki::{Pki, BASE};

/// An Ed25519 SSH key (the fuzz seeds' `alice@laptop`).
const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG9jNyQ0B5cPHSUBdlQ1uhEhVOE07/so9xzLrf+Y2bFc alice@laptop";
/// How soon a proxy must apply an edit.
const PROPAGATION: Duration = Duration::from_secs(2);
/// Bound on slower waits (a proxy starting).
const WAIT: Duration = Duration::from_secs(20);

/// What one `lookout` run said.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn lookout(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_lookout"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run lookout");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `lookout tenants --etcd <etcd> <args>`.
fn tenants(etcd: &Etcd, args: &[&str]) -> Run {
    let endpoint = etcd.endpoint();
    let mut all = vec!["tenants", "--etcd", endpoint.as_str()];
    all.extend_from_slice(args);
    lookout(&all)
}

/// Like [`tenants`], asserting success.
fn ok(etcd: &Etcd, args: &[&str]) -> Run {
    let r = tenants(etcd, args);
    assert_eq!(r.code, 0, "lookout tenants {args:?}: {r:?}");
    r
}

fn show(etcd: &Etcd, name: &str) -> Value {
    serde_json::from_str(&ok(etcd, &["show", name]).stdout).expect("show prints JSON")
}

fn strings(v: &Value, field: &str) -> Vec<String> {
    v[field]
        .as_array()
        .unwrap_or_else(|| panic!("{field} in {v}"))
        .iter()
        .map(|s| s.as_str().expect("string").to_string())
        .collect()
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// etcd's current revision: any write raises it.
fn revision(etcd: &Etcd) -> i64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let cfg = lookout_discovery::etcd::EtcdConfig::new(vec![etcd.endpoint()]);
        let client = lookout_discovery::etcd::connect(&cfg)
            .await
            .expect("connect");
        // A range holding no key: only the revision in the header matters.
        let (start, end) = (b"/nothing".as_slice(), b"/nothing\0".as_slice());
        lookout_discovery::etcd::range::read_range(&client, start, end, cfg.request_timeout)
            .await
            .expect("read")
            .revision
    })
}

fn tempdir() -> TempDir {
    tempfile::Builder::new()
        .prefix("lookout-tenants-cli-")
        .tempdir()
        .expect("tempdir")
}

#[test]
fn tenants_round_trip_through_the_cli() {
    let etcd = Etcd::start();
    let dir = tempdir();

    ok(&etcd, &["add", "acme", "--rate", "5", "--burst", "10"]);
    ok(
        &etcd,
        &[
            "add",
            "ops",
            "--role",
            "operator",
            "--cert-cn",
            "ops.example.com",
        ],
    );
    ok(&etcd, &["add", "globex", "--no-cert-cn"]);

    // Keys in every form: a fingerprint (any spelling), a certificate file, SSH keys.
    let spki = sha256_hex(b"some key");
    let colons: Vec<String> = spki
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).to_uppercase())
        .collect();
    ok(&etcd, &["add-key", "acme", "--spki", &colons.join(":")]);
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["acme".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let cert_path = dir.path().join("acme.pem");
    std::fs::write(&cert_path, cert.pem()).expect("write");
    let cert_spki = lookout(&["certs", "fingerprint", &cert_path.display().to_string()]);
    let cert_spki = cert_spki.stdout.trim();
    ok(
        &etcd,
        &[
            "add-key",
            "acme",
            "--cert",
            &cert_path.display().to_string(),
        ],
    );
    ok(&etcd, &["add-key", "globex", "--ssh-key", SSH_KEY]);
    let keys_file = dir.path().join("keys.pub");
    std::fs::write(&keys_file, format!("# ops\n\n{SSH_KEY}\n")).expect("write");
    let again = ok(
        &etcd,
        &[
            "add-key",
            "globex",
            "--ssh-key-file",
            &keys_file.display().to_string(),
        ],
    );
    assert!(again.stderr.contains("already has the key"), "{again:?}");

    // A generated token is printed once; only its hash is stored.
    let t = ok(&etcd, &["add-token", "acme"]);
    let token = t.stdout.trim().to_string();
    assert!(token.starts_with("lookout-") && token.len() > 40, "{t:?}");
    let given = sha256_hex(b"made elsewhere");
    ok(&etcd, &["add-token", "ops", "--token-sha256", &given]);

    let acme = show(&etcd, "acme");
    assert_eq!(acme["name"], "acme");
    assert_eq!(
        strings(&acme, "spki_sha256"),
        [spki.clone(), cert_spki.to_string()]
    );
    assert_eq!(
        strings(&acme, "token_sha256"),
        [sha256_hex(token.as_bytes())]
    );
    assert_eq!(acme["rate_limit"]["per_second"], 5.0);
    assert_eq!(acme["rate_limit"]["burst"], 10);
    assert!(!ok(&etcd, &["show", "acme"]).stdout.contains(&token));
    assert!(acme.get("cert_cn").is_none(), "unset: the name");
    let ops = show(&etcd, "ops");
    assert_eq!(strings(&ops, "roles"), ["operator"]);
    assert_eq!(strings(&ops, "cert_cn"), ["ops.example.com"]);
    assert_eq!(strings(&ops, "token_sha256"), [given.as_str()]);
    let globex = show(&etcd, "globex");
    assert_eq!(strings(&globex, "cert_cn"), Vec::<String>::new());
    assert_eq!(strings(&globex, "ssh_keys"), [SSH_KEY]);

    let list = ok(&etcd, &["list"]).stdout;
    let row = |name: &str| {
        list.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} not listed:\n{list}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        row("acme"),
        ["acme", "-", "5/s", "burst", "10", "acme", "2", "1"]
    );
    assert_eq!(
        row("ops"),
        ["ops", "operator", "default", "ops.example.com", "0", "1"]
    );
    assert_eq!(
        row("globex"),
        ["globex", "-", "default", "(none)", "1", "0"]
    );
    assert!(
        list.contains("default rate limit: 100/s burst 1000 (built in)"),
        "{list}"
    );

    // Limits, the default, revocations.
    ok(
        &etcd,
        &["set-limit", "acme", "--rate", "2.5", "--burst", "3"],
    );
    assert_eq!(show(&etcd, "acme")["rate_limit"]["per_second"], 2.5);
    ok(&etcd, &["set-limit", "acme", "--clear"]);
    assert!(show(&etcd, "acme").get("rate_limit").is_none());
    ok(
        &etcd,
        &["set-limit", "--default", "--rate", "50", "--burst", "100"],
    );
    let revoked = sha256_hex(b"stolen");
    ok(&etcd, &["revoke", "--spki", &revoked]);
    let list = ok(&etcd, &["list"]).stdout;
    assert!(
        list.contains("default rate limit: 50/s burst 100"),
        "{list}"
    );
    assert!(list.contains("revoked keys: 1"), "{list}");
    ok(&etcd, &["unrevoke", "--spki", &revoked]);
    assert!(ok(&etcd, &["list"]).stdout.contains("revoked keys: 0"));

    // Removals: a key by fingerprint (the SSH key goes by its SPKI too), a token, a tenant.
    ok(&etcd, &["remove-key", "acme", "--spki", &spki]);
    assert_eq!(strings(&show(&etcd, "acme"), "spki_sha256"), [cert_spki]);
    ok(&etcd, &["remove-key", "globex", "--ssh-key", SSH_KEY]);
    assert!(strings(&show(&etcd, "globex"), "ssh_keys").is_empty());
    ok(
        &etcd,
        &[
            "remove-token",
            "acme",
            "--token-sha256",
            &sha256_hex(token.as_bytes()),
        ],
    );
    assert!(strings(&show(&etcd, "acme"), "token_sha256").is_empty());
    ok(&etcd, &["remove", "ops"]);
    let gone = tenants(&etcd, &["show", "ops"]);
    assert_eq!(gone.code, 1, "{gone:?}");
    assert!(gone.stderr.contains("no tenant \"ops\""), "{gone:?}");
    let missing = tenants(&etcd, &["remove-token", "acme", "--token-sha256", &given]);
    assert_eq!(missing.code, 1, "{missing:?}");
}

#[test]
fn refused_edits_list_every_problem_and_write_nothing() {
    let etcd = Etcd::start();
    ok(&etcd, &["add", "acme"]);
    let key = sha256_hex(b"acme's key");
    ok(&etcd, &["add-key", "acme", "--spki", &key]);
    ok(&etcd, &["add", "globex"]);

    let refusals: [(&[&str], i32, &[&str]); 9] = [
        (
            &[
                "add", "bad", "--role", "wizard", "--rate", "0", "--burst", "0",
            ],
            2,
            &[
                "unknown role \"wizard\"",
                "rate_limit.per_second must be a positive number",
                "rate_limit.burst must be at least 1",
            ],
        ),
        (&["add", "no/slash"], 2, &["name must be 1–63 characters"]),
        (&["add", "acme"], 1, &["exists in etcd already"]),
        (
            &["add", "initech", "--cert-cn", "acme"],
            2,
            &["cert_cn \"acme\" is also registered to tenant \"acme\""],
        ),
        (
            &["add-key", "globex", "--spki", &key],
            2,
            &["is also registered to tenant \"acme\""],
        ),
        (
            &["add-key", "globex", "--spki", "not-a-hash"],
            2,
            &["--spki: "],
        ),
        (
            &["add-key", "globex", "--ssh-key", "ssh-dss AAAA x"],
            2,
            &["--ssh-key: "],
        ),
        (
            &["add-key", "nobody", "--spki", &sha256_hex(b"x")],
            1,
            &["no tenant \"nobody\""],
        ),
        (
            &["set-limit", "--default", "--rate=-1", "--burst", "5"],
            2,
            &["defaults.rate_limit.per_second must be a positive number"],
        ),
    ];
    for (args, code, problems) in refusals {
        let before = revision(&etcd);
        let r = tenants(&etcd, args);
        assert_eq!(r.code, code, "{args:?}: {r:?}");
        for p in problems {
            assert!(r.stderr.contains(p), "{args:?}: {p:?} not in {r:?}");
        }
        if code == 2 {
            assert!(r.stderr.contains("refused, nothing written"), "{r:?}");
        }
        assert_eq!(revision(&etcd), before, "{args:?} wrote to etcd");
    }
    // clap refuses incomplete or contradictory arguments before anything runs.
    for args in [
        &["add", "x", "--rate", "1"][..],
        &["add-key", "acme"],
        &["add-key", "acme", "--spki", "a", "--ssh-key", "b"],
        &["set-limit", "acme"],
    ] {
        assert_eq!(tenants(&etcd, args).code, 2, "{args:?}");
    }
    let list = ok(&etcd, &["list"]).stdout;
    assert_eq!(
        list.lines().take_while(|l| !l.is_empty()).count(),
        3,
        "{list}"
    );
}

/// Separate processes editing at once (the race itself, with every writer starting
/// together, is `proxy/tests/tenants_etcd.rs`).
#[test]
fn concurrent_writers_lose_no_update() {
    let etcd = Etcd::start();
    ok(&etcd, &["add", "acme"]);
    const WRITERS: usize = 8;
    let endpoint = etcd.endpoint();
    let keys: Vec<String> = (0..WRITERS)
        .map(|i| sha256_hex(format!("key {i}").as_bytes()))
        .collect();
    // Every writer edits the same record at once, plus one new tenant each.
    let children: Vec<(String, Child)> = keys
        .iter()
        .enumerate()
        .flat_map(|(i, key)| {
            let add_key = ["add-key", "acme", "--spki", key.as_str()].map(String::from);
            let add = ["add".to_string(), format!("t{i}")];
            [add_key.to_vec(), add.to_vec()]
        })
        .map(|args| {
            let child = Command::new(env!("CARGO_BIN_EXE_lookout"))
                .args(["tenants", "--etcd", &endpoint])
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn");
            (args.join(" "), child)
        })
        .collect();
    for (args, child) in children {
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut stored = strings(&show(&etcd, "acme"), "spki_sha256");
    stored.sort();
    let mut want = keys.clone();
    want.sort();
    assert_eq!(stored, want, "every concurrent add-key landed");
    let list = ok(&etcd, &["list"]).stdout;
    for i in 0..WRITERS {
        assert!(list.contains(&format!("\nt{i} ")), "t{i} missing:\n{list}");
    }
}

/// TLS material and files for a proxy on loopback.
struct ProxyFiles {
    pki: Pki,
    port: u16,
    admin: u16,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

impl ProxyFiles {
    /// A proxy configuration with tenants from `tenants_toml` and from `etcd`, whose inventory
    /// is `etcd` too.
    fn new(etcd: &Etcd, tenants_toml: &str) -> ProxyFiles {
        let pki = Pki::new("lookout-tenants-cli-proxy-");
        pki.write("tenants.toml", tenants_toml);
        let (port, admin) = (free_port(), free_port());
        let config = pki
            .proxy_toml()
            .listen(&format!("127.0.0.1:{port}"))
            .admin_listen(&format!("127.0.0.1:{admin}"))
            .top(r#"tenants_reload_interval = "100ms""#)
            .tables(&format!(
                r#"[tenants]
etcd = true
[inventory]
source = "etcd"
endpoints = ["{endpoint}"]
lease_ttl = "2s"
request_timeout = "2s"
backoff = {{ min = "100ms", max = "500ms" }}
[limits]
source = {{ per_second = 10000.0, burst = 10000 }}
"#,
                endpoint = etcd.endpoint(),
            ))
            .render();
        pki.write("proxy.toml", &config);
        ProxyFiles { pki, port, admin }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.pki.path(name)
    }
}

/// A `lookout proxy` process, killed when dropped.
struct ProxyProcess(Child);

impl ProxyProcess {
    fn start(files: &ProxyFiles) -> ProxyProcess {
        let log = std::fs::File::create(files.path("proxy.log")).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_lookout"))
            .args(["proxy", "--config"])
            .arg(files.path("proxy.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn lookout proxy");
        ProxyProcess(child)
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET https://lookout.test/<path>` with a bearer token: status and body.
fn get(files: &ProxyFiles, path: &str, token: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "5", "-w", "\n%{http_code}", "--cacert"])
        .arg(files.path("server-ca.pem"))
        .arg("--resolve")
        .arg(format!("{BASE}:{}:127.0.0.1", files.port))
        .arg(format!("https://{BASE}:{}{path}", files.port));
    if let Some(t) = token {
        cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
    }
    let out = cmd.output().expect("curl (Debian: curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn reload_failures(files: &ProxyFiles) -> u64 {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{}/metrics", files.admin))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("lookout_proxy_tenants_reload_failures_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until `check` holds, at most `within`; returns how long it took.
fn wait_for(what: &str, within: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

#[test]
fn a_proxy_follows_the_cli_without_restart_merged_with_its_file() {
    let etcd = Etcd::start();
    let file_token = "file-token";
    let tenants_toml = format!(
        "[[tenant]]\nname = \"filet\"\ntoken_sha256 = [\"{}\"]\n",
        sha256_hex(file_token.as_bytes())
    );
    let files = ProxyFiles::new(&etcd, &tenants_toml);
    let _proxy = ProxyProcess::start(&files);
    wait_for("the proxy is ready", WAIT, || {
        get(&files, "/readyz", None).0 == 200
    });
    assert_eq!(get(&files, "/v1/discover", Some(file_token)).0, 200);

    // A tenant and token added by the CLI authenticate within PROPAGATION.
    ok(&etcd, &["add", "acme"]);
    let token = ok(&etcd, &["add-token", "acme"]).stdout.trim().to_string();
    let took = wait_for("the CLI's token works", PROPAGATION, || {
        get(&files, "/v1/discover", Some(&token)).0 == 200
    });
    eprintln!("a token added by the CLI authenticated after {took:?}");
    assert_eq!(
        get(&files, "/v1/discover", Some(file_token)).0,
        200,
        "merged"
    );

    // The CLI with the proxy's --config refuses a conflict with the file.
    let config = files.path("proxy.toml").display().to_string();
    let r = lookout(&["tenants", "--config", &config, "add", "filet"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr
            .contains("the name is used by more than one tenant"),
        "{r:?}"
    );

    // A removed token stops working, without restart.
    let hash = sha256_hex(token.as_bytes());
    ok(&etcd, &["remove-token", "acme", "--token-sha256", &hash]);
    wait_for("the removed token is refused", PROPAGATION, || {
        get(&files, "/v1/discover", Some(&token)).0 == 401
    });

    // A conflict written behind the file's back (--etcd does not know the file): the proxy
    // counts a failure and keeps its last good tenants — later edits wait for the fix.
    let failures = reload_failures(&files);
    let token2 = ok(&etcd, &["add-token", "acme"]).stdout.trim().to_string();
    wait_for("the second token works", PROPAGATION, || {
        get(&files, "/v1/discover", Some(&token2)).0 == 200
    });
    ok(&etcd, &["add", "filet"]);
    wait_for("the conflict is counted", PROPAGATION, || {
        reload_failures(&files) > failures
    });
    let token3 = ok(&etcd, &["add-token", "acme"]).stdout.trim().to_string();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        get(&files, "/v1/discover", Some(&token3)).0,
        401,
        "refused set"
    );
    assert_eq!(
        get(&files, "/v1/discover", Some(&token2)).0,
        200,
        "last good"
    );
    assert_eq!(
        get(&files, "/v1/discover", Some(file_token)).0,
        200,
        "last good"
    );
    let log = std::fs::read_to_string(files.path("proxy.log")).unwrap_or_default();
    assert!(
        log.contains("the name is used by more than one tenant"),
        "{log}"
    );
    ok(&etcd, &["remove", "filet"]);
    wait_for("the fixed set applies", PROPAGATION, || {
        get(&files, "/v1/discover", Some(&token3)).0 == 200
    });
    assert_eq!(get(&files, "/readyz", None).0, 200);
}
