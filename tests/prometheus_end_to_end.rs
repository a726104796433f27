//! The whole product, as tenants meet it: `lookout agent` and `lookout proxy` (this build's
//! binary, real processes, real configuration files) in front of real runc containers, and
//! three tenants, each with its own unmodified Prometheus 2.42 (Debian's):
//!
//! - `acme`: `triton_sd_configs` with a certificate from the tenant CA;
//! - `globex`: `triton_sd_configs` with a self-signed certificate whose key is registered;
//! - `initech`: `http_sd_configs` and scrapes with a bearer token (`credentials_file`).
//!
//! Each Prometheus reaches every target through the proxy's single address by relabeling to
//! the path form `/v1/instances/<id>/metrics` (no wildcard DNS here). Asserted through each
//! Prometheus's HTTP API: its targets are exactly its tenant's containers and all up; no other
//! tenant's container ever appears (checked on every poll); `node_memory_MemTotal_bytes` is
//! each container's memory limit; a CPU-burning container is about one core busy; a container
//! created during the test appears and one removed disappears.
//!
//! Needs root, `runc`, `busybox-static`, `prometheus` and `curl` (deploy/test.sh installs
//! them; each missing one fails the test naming it).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use lookout_proxy::pki::{Ca, Kind};
use lookout_testkit::agent::AgentToml;
use lookout_testkit::containers::{Container, ContainerSpec, Runc};
use lookout_testkit::net::free_port;
use lookout_testkit::pki::token_sha256;
use lookout_testkit::prometheus::{Prometheus, Target};
use lookout_testkit::proxy::ProxyToml;

const SUFFIX: &str = "lookout.test";
const MIB: u64 = 1 << 20;
/// Discovery refresh (2 s) + the discovery manager's 5 s batching + a scrape (2 s), with room
/// for a loaded 2-core machine.
const CONVERGE: Duration = Duration::from_secs(60);

/// A `lookout` child process, killed on drop; its stderr goes to a log file.
struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(dir: &Path, name: &str, args: &[&str]) -> Process {
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_lookout"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn lookout");
        Process { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

fn issue(dir: &Path, ca: &Ca, kind: Kind, name: &str, sans: &[&str]) {
    let sans: Vec<String> = sans.iter().map(ToString::to_string).collect();
    let now = SystemTime::now();
    let pem = ca
        .issue(kind, name, &sans, now, Duration::from_secs(86_400))
        .expect("issue");
    write(dir, &format!("{name}.pem"), &pem.cert_pem);
    write(dir, &format!("{name}-key.pem"), &pem.key_pem);
}

/// A tenant's side: how its Prometheus discovers and authenticates.
enum Client {
    Triton { cert: PathBuf, key: PathBuf },
    HttpSd { token_file: PathBuf },
}

fn prometheus_config(dir: &Path, tenant: &str, client: &Client, proxy: u16) -> String {
    let ca = dir.join("tenant-ca.pem");
    let relabel = format!(
        r#"    relabel_configs:
      - source_labels: [__meta_triton_machine_id]
        target_label: instance
        replacement: $1.{SUFFIX}
      - source_labels: [__meta_triton_machine_id]
        target_label: __metrics_path__
        replacement: /v1/instances/$1/metrics
      - target_label: __address__
        replacement: 127.0.0.1:{proxy}
"#
    );
    let (auth, sd) = match client {
        Client::Triton { cert, key } => {
            let tls = format!(
                "{{ca_file: {}, cert_file: {}, key_file: {}}}",
                ca.display(),
                cert.display(),
                key.display()
            );
            (
                format!("    tls_config: {tls}\n"),
                format!(
                    r#"    triton_sd_configs:
      - account: {tenant}
        endpoint: 127.0.0.1
        port: {proxy}
        dns_suffix: {SUFFIX}
        refresh_interval: 2s
        tls_config: {tls}
"#
                ),
            )
        }
        Client::HttpSd { token_file } => {
            let auth = format!(
                "authorization: {{credentials_file: {}}}\n    tls_config: {{ca_file: {}}}",
                token_file.display(),
                ca.display()
            );
            (
                format!("    {auth}\n"),
                format!(
                    r#"    http_sd_configs:
      - url: https://127.0.0.1:{proxy}/v1/sd
        refresh_interval: 2s
        {}
"#,
                    auth.replace("\n    ", "\n        ")
                ),
            )
        }
    };
    format!(
        "global:\n  scrape_interval: 2s\n  scrape_timeout: 1500ms\nscrape_configs:\n  - job_name: {tenant}\n    scheme: https\n{auth}{sd}{relabel}"
    )
}

/// The instance ids a Prometheus has as targets (from the discovered machine id).
fn ids(ts: &[Target]) -> BTreeSet<String> {
    ts.iter()
        .filter_map(|t| t.discovered.get("__meta_triton_machine_id").cloned())
        .collect()
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(ToString::to_string).collect()
}

/// Fails if any target belongs to someone else, or is labelled inconsistently.
fn only_from(own_universe: &BTreeSet<String>) -> impl Fn(&[Target]) -> Result<(), String> + '_ {
    move |ts: &[Target]| {
        for t in ts {
            let id = t
                .discovered
                .get("__meta_triton_machine_id")
                .ok_or("a target without __meta_triton_machine_id")?;
            if !own_universe.contains(id) {
                return Err(format!("foreign or unknown target {id}"));
            }
            let want = format!("{id}.{SUFFIX}");
            if t.labels.get("instance") != Some(&want) {
                return Err(format!("target {id}: instance label is not {want}"));
            }
        }
        Ok(())
    }
}

fn exactly_up(want: &BTreeSet<String>) -> impl Fn(&[Target]) -> bool + '_ {
    move |ts: &[Target]| &ids(ts) == want && ts.iter().all(|t| t.health == "up")
}

#[test]
fn three_tenants_each_see_exactly_their_containers_through_their_own_prometheus() {
    let runc = Runc::new();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();

    // Credentials: a tenant CA (the proxy's server certificate and acme's client
    // certificate), an operator CA (agent and proxy), a self-signed key, a bearer token.
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    let (tenant_ca, tenant_ca_pem) = Ca::create("e2e tenant CA", now, day).expect("ca");
    let (operator_ca, operator_ca_pem) = Ca::create("e2e operator CA", now, day).expect("ca");
    write(dir, "tenant-ca.pem", &tenant_ca_pem.cert_pem);
    write(dir, "operator-ca.pem", &operator_ca_pem.cert_pem);
    issue(
        dir,
        &tenant_ca,
        Kind::Server,
        "localhost",
        &["127.0.0.1", "*.lookout.test"],
    );
    issue(dir, &tenant_ca, Kind::Tenant, "acme", &[]);
    issue(dir, &operator_ca, Kind::Agent, "agent", &["127.0.0.1"]);
    issue(dir, &operator_ca, Kind::Proxy, "proxy", &[]);
    let globex =
        rcgen::generate_simple_self_signed(vec!["globex-laptop".to_string()]).expect("self-signed");
    write(dir, "globex.pem", &globex.cert.pem());
    write(dir, "globex-key.pem", &globex.key_pair.serialize_pem());
    let globex_spki = lookout_proxy::tenants::hex(
        &lookout_proxy::pki::fingerprint(&globex.cert.pem()).expect("fingerprint"),
    );
    let token = "initech-e2e-token-6f1d0c2b9a";
    write(dir, "initech.token", token);
    let token_hash = token_sha256(token);
    write(
        dir,
        "tenants.toml",
        &format!(
            r#"[[tenant]]
name = "acme"
[[tenant]]
name = "globex"
cert_cn = []
spki_sha256 = ["{globex_spki}"]
[[tenant]]
name = "initech"
cert_cn = []
token_sha256 = ["{token_hash}"]
"#
        ),
    );

    // Containers: each tenant's, one CPU burner, and one nobody owns.
    let spec = |id: &str, tenant: Option<&str>, limit_mib: u64| {
        let s = ContainerSpec::new(id).memory_limit(limit_mib * MIB);
        match tenant {
            Some(t) => s.annotation("lookout.tenant", t),
            None => s,
        }
    };
    let acme_web = runc.run(spec("e2e-acme-web", Some("acme"), 64));
    let _acme_burn = runc.run(spec("e2e-acme-burn", Some("acme"), 96).args(&[
        "sh",
        "-c",
        "while :; do :; done",
    ]));
    let _globex_db = runc.run(spec("e2e-globex-db", Some("globex"), 80));
    let _initech_app = runc.run(spec("e2e-initech-app", Some("initech"), 48));
    let _nobody = runc.run(spec("e2e-unowned", None, 32));
    let limits = [
        ("e2e-acme-web", 64),
        ("e2e-acme-burn", 96),
        ("e2e-globex-db", 80),
        ("e2e-initech-app", 48),
        ("e2e-acme-new", 72),
    ];

    // The agent and the proxy, as an operator runs them.
    let agent_port = free_port();
    let proxy_port = free_port();
    let p = |name: &str| dir.join(name).display().to_string();
    let agent_toml = AgentToml::new(
        &dir.join("agent.pem"),
        &dir.join("agent-key.pem"),
        &dir.join("operator-ca.pem"),
        runc.state_root(),
    )
    .node_id("e2e-node")
    .listen(&format!("127.0.0.1:{agent_port}"));
    let agent_toml = write(dir, "agent.toml", &agent_toml.render());
    let proxy_toml = ProxyToml::new(dir)
        .listen(&format!("127.0.0.1:{proxy_port}"))
        .base_name("localhost")
        .top("ip_literals_are_base = true")
        .dns_suffix(SUFFIX)
        .server_cert("localhost")
        .agents(&[format!("127.0.0.1:{agent_port}")], ("100ms", "1s"));
    let proxy_toml = write(dir, "proxy.toml", &proxy_toml.render());
    let agent = Process::spawn(
        dir,
        "agent",
        &["agent", "--config", &agent_toml.display().to_string()],
    );
    let proxy = Process::spawn(
        dir,
        "proxy",
        &["proxy", "--config", &proxy_toml.display().to_string()],
    );
    let start = Instant::now();
    loop {
        let ready = Command::new("curl")
            .args(["-sf", "--max-time", "2", "--cacert", &p("tenant-ca.pem")])
            .arg(format!("https://127.0.0.1:{proxy_port}/readyz"))
            .output()
            .expect("curl missing: install Debian's `curl`");
        if ready.status.success() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "proxy not ready within 30 s\nagent log:\n{}\nproxy log:\n{}",
            agent.log(),
            proxy.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Three tenants, three Prometheus servers.
    let acme = Prometheus::start(
        "acme",
        &prometheus_config(
            dir,
            "acme",
            &Client::Triton {
                cert: dir.join("acme.pem"),
                key: dir.join("acme-key.pem"),
            },
            proxy_port,
        ),
    );
    let globex = Prometheus::start(
        "globex",
        &prometheus_config(
            dir,
            "globex",
            &Client::Triton {
                cert: dir.join("globex.pem"),
                key: dir.join("globex-key.pem"),
            },
            proxy_port,
        ),
    );
    let initech = Prometheus::start(
        "initech",
        &prometheus_config(
            dir,
            "initech",
            &Client::HttpSd {
                token_file: dir.join("initech.token"),
            },
            proxy_port,
        ),
    );

    let acme_all = set(&["e2e-acme-web", "e2e-acme-burn", "e2e-acme-new"]);
    let globex_all = set(&["e2e-globex-db"]);
    let initech_all = set(&["e2e-initech-app"]);
    let tenants: [(&Prometheus, &BTreeSet<String>, BTreeSet<String>); 3] = [
        (&acme, &acme_all, set(&["e2e-acme-web", "e2e-acme-burn"])),
        (&globex, &globex_all, globex_all.clone()),
        (&initech, &initech_all, initech_all.clone()),
    ];
    for (prom, universe, want) in &tenants {
        prom.wait_targets(
            "exactly its containers, all up",
            CONVERGE,
            only_from(universe),
            exactly_up(want),
        );
    }

    // Each container's view says its memory limit is the machine's memory.
    for (prom, _, want) in &tenants {
        for id in want {
            let limit = limits.iter().find(|(i, _)| i == id).expect("limit").1 * MIB;
            let q = format!("node_memory_MemTotal_bytes{{instance=\"{id}.{SUFFIX}\"}}");
            let v = prom.wait_value(&q, CONVERGE);
            assert_eq!(v as u64, limit, "{q}");
        }
    }

    // The burner keeps about one core busy; the idle container does not.
    let busy = |id: &str| {
        format!(
            "sum(rate(node_cpu_seconds_total{{instance=\"{id}.{SUFFIX}\",mode!=\"idle\"}}[10s]))"
        )
    };
    let start = Instant::now();
    let burn = loop {
        let v = acme.wait_value(&busy("e2e-acme-burn"), CONVERGE);
        if v > 0.6 || start.elapsed() > CONVERGE {
            break v;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    assert!(
        (0.6..=1.3).contains(&burn),
        "busy rate of the burner: {burn} (want near 1 core)"
    );
    let idle = acme.wait_value(&busy("e2e-acme-web"), CONVERGE);
    assert!(idle < 0.1, "busy rate of the idle container: {idle}");

    // A container created now appears (for acme only); one removed disappears.
    let _acme_new = runc.run(spec("e2e-acme-new", Some("acme"), 72));
    acme.wait_targets(
        "showing the new container",
        CONVERGE,
        only_from(&acme_all),
        exactly_up(&set(&["e2e-acme-web", "e2e-acme-burn", "e2e-acme-new"])),
    );
    let v = acme.wait_value(
        &format!("node_memory_MemTotal_bytes{{instance=\"e2e-acme-new.{SUFFIX}\"}}"),
        CONVERGE,
    );
    assert_eq!(v as u64, 72 * MIB);
    remove(acme_web);
    acme.wait_targets(
        "without the removed container",
        CONVERGE,
        only_from(&acme_all),
        exactly_up(&set(&["e2e-acme-burn", "e2e-acme-new"])),
    );

    // Every target each Prometheus ever scraped was its own container: `up` over the whole
    // run, so a target that was scraped and later dropped (stale-marked, invisible to an
    // instant query) counts too. (`up` exists for every scrape, failed or not; a selector
    // over all node_ names cannot take count_over_time: it drops the names and collides.)
    for (prom, universe, _) in &tenants {
        let seen: BTreeSet<String> = prom
            .query("count by (instance) (count_over_time(up[1h]))")
            .into_iter()
            .filter_map(|(l, _)| l.get("instance").cloned())
            .collect();
        let allowed: BTreeSet<String> = universe.iter().map(|i| format!("{i}.{SUFFIX}")).collect();
        assert!(
            !seen.is_empty() && seen.is_subset(&allowed),
            "stored instances {seen:?} not within {allowed:?}"
        );
    }
    // The other tenants' Prometheus servers still have exactly theirs.
    for (prom, universe, want) in &tenants[1..] {
        prom.wait_targets("unchanged", CONVERGE, only_from(universe), exactly_up(want));
    }
    drop(agent);
    drop(proxy);
}

fn remove(c: Container) {
    c.remove();
}
