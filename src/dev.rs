//! `lookout dev`: the embedded default. Agent and proxy in one process on this machine, with
//! throw-away credentials and a ready `prometheus.yml`, all written to one directory.
//!
//! What it writes (every run replaces the previous set, so a directory is only ever reused if
//! an earlier `lookout dev` made it — the `.lookout-dev` marker says so):
//! - `ca.pem`, `ca-key.pem`: the tenant-facing CA. It issued the proxy's server certificate
//!   and the tenants' client certificates; `lookout certs issue --ca DIR` issues more.
//! - `operator-ca.pem`: the CA between proxy and agent (its key is never written).
//! - `server*.pem`, `agent*.pem`, `proxy*.pem`: the listeners' and the proxy's certificates.
//! - `tenant-dev*.pem`: tenant `dev`, owner of every container without a tenant label;
//!   `tenant-operator*.pem`: an operator (node view and node discovery).
//! - `tenants.toml`, `agent.toml`, `proxy.toml`: the configurations in force (the tenants
//!   file is re-read on change, like a deployed proxy's).
//! - `prometheus.yml`: `triton_sd_configs` with mTLS, relabelled to the path form
//!   `/v1/instances/<id>/metrics` on the proxy's address, so no DNS or `/etc/hosts` change is
//!   needed; each target's `instance` is its container's DNS name `<id>.<suffix>`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use lookout_agent::config::{AgentConfig, DiscoveryConfig};
use lookout_proxy::config::ProxyConfig;
use lookout_proxy::pki::{Ca, Issued, Kind};

/// The suffix of containers' DNS names in dev mode (`<id>.lookout.localhost`). `.localhost`
/// is reserved for loopback (RFC 6761), so the names can never leak onto a real network.
pub const DNS_SUFFIX: &str = "lookout.localhost";
/// The tenant owning every container without a tenant label.
pub const DEV_TENANT: &str = "dev";
/// The operator tenant.
pub const OPERATOR: &str = "operator";
const MARKER: &str = ".lookout-dev";
const VALIDITY: Duration = Duration::from_secs(30 * 86_400);

/// `lookout dev`'s options.
pub struct Options {
    /// Where everything is written.
    pub dir: PathBuf,
    /// The proxy's listener.
    pub listen: SocketAddr,
    /// runc state roots watched in addition to the agent's defaults.
    pub runc_roots: Vec<PathBuf>,
}

/// Runs `lookout dev` until SIGINT or SIGTERM.
pub fn run(opts: Options) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lookout dev: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match start(&opts).await {
            Ok((agent, proxy, _lock)) => {
                super::wait_for_signal().await;
                tracing::info!("shutting down");
                proxy.shutdown().await;
                agent.shutdown().await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("lookout dev: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn start(
    opts: &Options,
) -> Result<
    (
        lookout_agent::Agent,
        lookout_proxy::server::Proxy,
        std::fs::File,
    ),
    String,
> {
    let (dir, lock) = prepare_dir(&opts.dir)?;
    // Fail before rewriting anything when the proxy's port is taken.
    drop(
        std::net::TcpListener::bind(opts.listen)
            .map_err(|e| format!("cannot listen on {}: {e}", opts.listen))?,
    );
    let written = write_credentials(&dir)?;
    if !running_as_root() {
        tracing::warn!(
            "not running as root: containers of other users cannot be read (their metrics \
             will be missing); run `sudo lookout dev` to see every container"
        );
    }

    let agent_toml = write(
        &dir,
        "agent.toml",
        &agent_toml(&dir, &opts.runc_roots),
        false,
    )?;
    let agent_cfg = AgentConfig::load(&agent_toml).map_err(|e| e.to_string())?;
    let agent = lookout_agent::Agent::start(agent_cfg)
        .await
        .map_err(|e| format!("agent: {e}"))?;

    write(&dir, "tenants.toml", TENANTS_TOML, false)?;
    let proxy_toml = write(
        &dir,
        "proxy.toml",
        &proxy_toml(&dir, opts.listen, agent.local_addr()),
        false,
    )?;
    let proxy_cfg = ProxyConfig::load(&proxy_toml).map_err(|e| e.to_string())?;
    let proxy = match lookout_proxy::server::Proxy::start(proxy_cfg).await {
        Ok(p) => p,
        Err(e) => {
            agent.shutdown().await;
            return Err(format!("proxy: {e}"));
        }
    };
    let endpoint = reachable(proxy.local_addr());
    write(
        &dir,
        "prometheus.yml",
        &prometheus_yml(&dir, endpoint),
        false,
    )?;

    // Give the inventory a moment so the summary can count containers.
    for _ in 0..50 {
        if proxy.inventory().ready() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let inventory = proxy.inventory().load();
    let mine: Vec<_> = inventory.owned_by(DEV_TENANT).collect();
    print!(
        "{}",
        summary(
            &dir,
            &written,
            endpoint,
            proxy.admin_addr(),
            mine.len(),
            inventory.instance_count(),
            mine.first().map(|i| i.id.as_str()),
        )
    );
    let _ = std::io::stdout().flush();
    Ok((agent, proxy, lock))
}

/// Creates `dir` (0700) or checks that an earlier `lookout dev` made it, and locks it
/// against a second `lookout dev`; returns it absolute, with the lock (held while open).
fn prepare_dir(dir: &Path) -> Result<(PathBuf, std::fs::File), String> {
    let shown = dir.display();
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            let empty = entries.next().is_none();
            if !empty && !dir.join(MARKER).exists() {
                return Err(format!(
                    "{shown} exists and was not made by `lookout dev`; nothing in it was \
                     changed. Choose another --dir or empty it."
                ));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| format!("cannot create {shown}: {e}"))?;
        }
        Err(e) => return Err(format!("{shown}: {e}")),
    }
    let dir = dir.canonicalize().map_err(|e| format!("{shown}: {e}"))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let marker = dir.join(MARKER);
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(&marker)
        .map_err(|e| format!("cannot write {}: {e}", marker.display()))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
        |_| {
            format!(
                "another `lookout dev` is using {}; stop it first or choose another --dir",
                dir.display()
            )
        },
    )?;
    std::fs::write(
        &marker,
        "Made by `lookout dev`, which rewrites everything here at each start.\n",
    )
    .map_err(|e| format!("cannot write {}: {e}", marker.display()))?;
    Ok((dir, lock))
}

/// Writes `dir/name`, replacing it; secrets are created 0600 (and made so if they existed).
fn write(dir: &Path, name: &str, contents: &str, secret: bool) -> Result<PathBuf, String> {
    let path = dir.join(name);
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let mode = if secret { 0o600 } else { 0o644 };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&path)
        .map_err(fail)?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(fail)?;
    file.write_all(contents.as_bytes()).map_err(fail)?;
    Ok(path)
}

fn write_pair(dir: &Path, stem: &str, issued: &Issued) -> Result<Vec<PathBuf>, String> {
    Ok(vec![
        write(dir, &format!("{stem}.pem"), &issued.cert_pem, false)?,
        write(dir, &format!("{stem}-key.pem"), &issued.key_pem, true)?,
    ])
}

/// Both CAs and every certificate; returns the paths written.
fn write_credentials(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let now = SystemTime::now();
    let pki = |e: lookout_proxy::pki::PkiError| e.to_string();
    let (tenant_ca, tenant_ca_pem) = Ca::create("lookout dev CA", now, VALIDITY).map_err(pki)?;
    let (operator_ca, operator_ca_pem) =
        Ca::create("lookout dev operator CA", now, VALIDITY).map_err(pki)?;
    let loopback = ["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    let mut server_sans = loopback.to_vec();
    server_sans.push(format!("*.{DNS_SUFFIX}"));

    let mut written = vec![
        write(dir, "ca.pem", &tenant_ca_pem.cert_pem, false)?,
        write(dir, "ca-key.pem", &tenant_ca_pem.key_pem, true)?,
        write(dir, "operator-ca.pem", &operator_ca_pem.cert_pem, false)?,
    ];
    let issue = |ca: &Ca, kind, name: &str, sans: &[String]| {
        ca.issue(kind, name, sans, now, VALIDITY).map_err(pki)
    };
    written.extend(write_pair(
        dir,
        "server",
        &issue(&tenant_ca, Kind::Server, "localhost", &server_sans)?,
    )?);
    written.extend(write_pair(
        dir,
        &format!("tenant-{DEV_TENANT}"),
        &issue(&tenant_ca, Kind::Tenant, DEV_TENANT, &[])?,
    )?);
    written.extend(write_pair(
        dir,
        &format!("tenant-{OPERATOR}"),
        &issue(&tenant_ca, Kind::Tenant, OPERATOR, &[])?,
    )?);
    written.extend(write_pair(
        dir,
        "agent",
        &issue(&operator_ca, Kind::Agent, "localhost", &loopback)?,
    )?);
    written.extend(write_pair(
        dir,
        "proxy",
        &issue(&operator_ca, Kind::Proxy, "lookout-dev-proxy", &[])?,
    )?);
    Ok(written)
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A TOML basic string.
fn q(s: impl std::fmt::Display) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn path(dir: &Path, name: &str) -> String {
    q(dir.join(name).display())
}

const TENANTS_TOML: &str = r#"# Written by `lookout dev`. Re-read on change: add tenants here, and issue their
# certificates with `lookout certs issue --ca <this dir> --kind tenant --name NAME --out DIR`.
[defaults]
rate_limit = { per_second = 100.0, burst = 1000 }

[[tenant]]
name = "dev"        # owns every container without a tenant label (agent.toml: default_tenant)

[[tenant]]
name = "operator"
roles = ["operator"]
"#;

fn agent_toml(dir: &Path, extra_runc_roots: &[PathBuf]) -> String {
    let defaults = DiscoveryConfig::default();
    let roots: Vec<String> = defaults
        .runc_roots
        .iter()
        .chain(extra_runc_roots)
        .map(|p| q(p.display()))
        .collect();
    format!(
        r#"# Written by `lookout dev`: the agent half, on loopback only.
listen = "127.0.0.1:0"

[tls]
cert = {cert}
key = {key}
client_ca = {ca}

[discovery]
runc_roots = [{roots}]

[labels]
default_tenant = {tenant}
"#,
        cert = path(dir, "agent.pem"),
        key = path(dir, "agent-key.pem"),
        ca = path(dir, "operator-ca.pem"),
        roots = roots.join(", "),
        tenant = q(DEV_TENANT),
    )
}

fn proxy_toml(dir: &Path, listen: SocketAddr, agent: SocketAddr) -> String {
    format!(
        r#"# Written by `lookout dev`: the proxy half.
listen = {listen}
admin_listen = "127.0.0.1:0"
base_name = "localhost"
ip_literals_are_base = true
dns_suffix = {suffix}
tenants_file = {tenants}
tenants_reload_interval = "2s"

[tls]
cert = {server}
key = {server_key}
tenant_ca = {ca}
reload_interval = "10s"

[upstream]
cert = {proxy}
key = {proxy_key}
ca = {operator_ca}

[inventory]
source = "agents"
agents = [{agent}]
[inventory.tls]
cert = {proxy}
key = {proxy_key}
ca = {operator_ca}
"#,
        listen = q(listen),
        suffix = q(DNS_SUFFIX),
        tenants = path(dir, "tenants.toml"),
        server = path(dir, "server.pem"),
        server_key = path(dir, "server-key.pem"),
        ca = path(dir, "ca.pem"),
        proxy = path(dir, "proxy.pem"),
        proxy_key = path(dir, "proxy-key.pem"),
        operator_ca = path(dir, "operator-ca.pem"),
        agent = q(agent),
    )
}

/// The address clients use to reach a listener: loopback for an unspecified address.
fn reachable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        let ip = match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        };
        SocketAddr::new(ip, addr.port())
    } else {
        addr
    }
}

/// One scrape job: discovery through `triton_sd_configs` (role `container` or `cn`), the
/// scrape relabelled to the path form on `endpoint`.
fn job(out: &mut String, dir: &Path, endpoint: SocketAddr, job: &str, tenant: &str, role: &str) {
    let tls = format!(
        "ca_file: {ca}\n      cert_file: {cert}\n      key_file: {key}",
        ca = dir.join("ca.pem").display(),
        cert = dir.join(format!("tenant-{tenant}.pem")).display(),
        key = dir.join(format!("tenant-{tenant}-key.pem")).display(),
    );
    let path = if role == "cn" { "nodes" } else { "instances" };
    let _ = write!(
        out,
        r#"  - job_name: {job}
    scheme: https
    tls_config:
      {tls}
    triton_sd_configs:
      - account: {tenant}
        role: {role}
        endpoint: {host}
        port: {port}
        dns_suffix: {DNS_SUFFIX}
        refresh_interval: 10s
        tls_config:
          {tls_sd}
    relabel_configs:
      # instance = the target's DNS name, <id>.{DNS_SUFFIX}
      - source_labels: [__meta_triton_machine_id]
        target_label: instance
        replacement: $1.{DNS_SUFFIX}
      - source_labels: [__meta_triton_machine_alias]
        target_label: alias
      # Scrape by path on the proxy's own address: no wildcard DNS needed.
      - source_labels: [__meta_triton_machine_id]
        target_label: __metrics_path__
        replacement: /v1/{path}/$1/metrics
      - target_label: __address__
        replacement: {endpoint}
"#,
        host = endpoint.ip(),
        port = endpoint.port(),
        tls_sd = tls.replace("\n      ", "\n          "),
    );
}

fn prometheus_yml(dir: &Path, endpoint: SocketAddr) -> String {
    let mut out = String::from(
        "# Written by `lookout dev`: Prometheus scraping every `dev` container (and, as the\n\
         # operator, this node) through lookout's proxy. Start it with:\n\
         #   prometheus --config.file=<this file> --storage.tsdb.path=<dir>/prometheus-data\n\
         global:\n  scrape_interval: 10s\n  scrape_timeout: 5s\n  evaluation_interval: 10s\n\
         scrape_configs:\n",
    );
    job(
        &mut out,
        dir,
        endpoint,
        "lookout-dev",
        DEV_TENANT,
        "container",
    );
    job(&mut out, dir, endpoint, "lookout-dev-node", OPERATOR, "cn");
    out
}

fn summary(
    dir: &Path,
    written: &[PathBuf],
    endpoint: SocketAddr,
    admin: SocketAddr,
    mine: usize,
    all: usize,
    example: Option<&str>,
) -> String {
    let d = dir.display();
    let mut s = String::new();
    let _ = writeln!(s, "lookout dev: agent and proxy running on this machine.\n");
    let _ = writeln!(s, "Wrote to {d}:");
    for p in written {
        let _ = writeln!(s, "  {}", p.display());
    }
    for name in ["tenants.toml", "agent.toml", "proxy.toml", "prometheus.yml"] {
        let _ = writeln!(s, "  {}", dir.join(name).display());
    }
    let _ = writeln!(
        s,
        "\nProxy: https://{endpoint} (own metrics: http://{admin}/metrics)\n\
         Containers: {all} on this node, {mine} owned by tenant `{DEV_TENANT}` (every \
         container without a lookout.tenant label); new ones appear within seconds.\n"
    );
    let _ = writeln!(
        s,
        "Start Prometheus with it:\n  prometheus --config.file={d}/prometheus.yml \
         --storage.tsdb.path={d}/prometheus-data --web.listen-address=127.0.0.1:9090\n"
    );
    let curl = format!(
        "curl --cacert {d}/ca.pem --cert {d}/tenant-{DEV_TENANT}.pem --key \
         {d}/tenant-{DEV_TENANT}-key.pem"
    );
    let _ = writeln!(
        s,
        "List your containers:\n  {curl} https://{endpoint}/v1/discover"
    );
    let id = example.unwrap_or("<id>");
    let _ = writeln!(
        s,
        "Scrape one:\n  {curl} https://{endpoint}/v1/instances/{id}/metrics\n\nCtrl-C stops."
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reachable_turns_unspecified_into_loopback() {
        let a: SocketAddr = "0.0.0.0:9163".parse().expect("addr");
        assert_eq!(reachable(a), "127.0.0.1:9163".parse().expect("addr"));
        let b: SocketAddr = "[::]:9163".parse().expect("addr");
        assert_eq!(reachable(b), "[::1]:9163".parse().expect("addr"));
        let c: SocketAddr = "127.0.0.2:1".parse().expect("addr");
        assert_eq!(reachable(c), c);
    }

    #[test]
    fn a_foreign_directory_is_left_alone() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::write(tmp.path().join("notes.txt"), "mine").expect("write");
        let err = prepare_dir(tmp.path()).expect_err("foreign dir");
        assert!(err.contains("not made by `lookout dev`"), "{err}");
        assert_eq!(
            std::fs::read_dir(tmp.path()).expect("list").count(),
            1,
            "nothing may be written into it"
        );
        let fresh = tmp.path().join("new");
        let (made, lock) = prepare_dir(&fresh).expect("fresh dir");
        assert!(made.join(MARKER).exists());
        let mode = std::fs::metadata(&made).expect("meta").mode() & 0o777;
        assert_eq!(mode, 0o700);
        let err = prepare_dir(&fresh).expect_err("locked by the first");
        assert!(err.contains("another `lookout dev`"), "{err}");
        drop(lock);
        prepare_dir(&fresh).expect("its own dir again, once unlocked");
    }
}
