//! `lookout`: one binary, thin — argument parsing and wiring only. The logic lives in the
//! `lookout-agent` and `lookout-proxy` libraries (`lookout certs` uses the proxy's `pki`,
//! `lookout tenants` its `tenants::admin`); [`dev`] composes both for `lookout dev`.

use std::path::PathBuf;
use std::process::ExitCode;

mod dev;

use clap::{Args, Parser, Subcommand};
use lookout_agent::config::AgentConfig;
use lookout_proxy::config::ProxyConfig;
use lookout_proxy::tenants::admin::{self, KeyInput};
use lookout_proxy::tenants::{RateLimit, TenantRecord};

#[derive(Parser)]
#[command(
    name = "lookout",
    version,
    about = "Per-container node_exporter views for every tenant of a shared fleet"
)]
struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the per-node agent.
    Agent {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Validate the configuration, list every problem, and exit.
        #[arg(long)]
        check_config: bool,
    },
    /// Run the proxy: tenants' authenticating front door.
    Proxy {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Validate the configuration, list every problem, and exit.
        #[arg(long)]
        check_config: bool,
    },
    /// Run agent and proxy in one process on this machine, with throw-away credentials and
    /// a ready prometheus.yml (tenant `dev` owns every container without a tenant label).
    Dev {
        /// Where to write credentials, configurations and prometheus.yml (rewritten at each
        /// start; a directory not made by `lookout dev` is refused).
        #[arg(long, default_value = "./lookout-dev")]
        dir: PathBuf,
        /// The proxy's listener.
        #[arg(long, default_value = "127.0.0.1:9163")]
        listen: std::net::SocketAddr,
        /// Another runc state root to watch (e.g. rootless runc's /run/user/1000/runc), in
        /// addition to the agent's defaults. Repeatable.
        #[arg(long = "runc-root")]
        runc_roots: Vec<PathBuf>,
    },
    /// Create a CA, issue certificates, print key fingerprints.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Manage the tenants stored in etcd (for proxies with `[tenants] etcd`), validated as
    /// the tenants file is. Exit status: 2 when refused (nothing written), 1 when it failed.
    Tenants {
        #[command(flatten)]
        target: TenantsTarget,
        #[command(subcommand)]
        command: TenantsCommand,
    },
}

#[derive(Args)]
struct TenantsTarget {
    /// etcd endpoints (`http://host:port`, `https://…`, or `host:port`), comma-separated.
    #[arg(long, value_delimiter = ',', required_unless_present = "config")]
    etcd: Vec<String>,
    /// Key prefix of every lookout key in etcd.
    #[arg(long, default_value = "/lookout/", conflicts_with = "config")]
    prefix: String,
    /// CA of etcd's server certificates (TLS towards etcd).
    #[arg(long, conflicts_with = "config")]
    tls_ca: Option<PathBuf>,
    /// Client certificate, when etcd requires one (with --tls-key and --tls-ca).
    #[arg(long, requires_all = ["tls_key", "tls_ca"], conflicts_with = "config")]
    tls_cert: Option<PathBuf>,
    /// The client certificate's key.
    #[arg(long, requires = "tls_cert", conflicts_with = "config")]
    tls_key: Option<PathBuf>,
    /// Take etcd's settings from a proxy configuration ([tenants] etcd, else [inventory]
    /// etcd), and refuse edits that conflict with its tenants file.
    #[arg(long, short, conflicts_with = "etcd")]
    config: Option<PathBuf>,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct KeyArgs {
    /// SPKI SHA-256 of the key (hex, aa:bb:… or base64).
    #[arg(long)]
    spki: Option<String>,
    /// A PEM certificate or public key (or SSH public key) file: its key.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// One SSH public key (`authorized_keys` line, no options).
    #[arg(long)]
    ssh_key: Option<String>,
    /// A file of SSH public keys (`authorized_keys` lines).
    #[arg(long)]
    ssh_key_file: Option<PathBuf>,
}

impl KeyArgs {
    fn input(self) -> KeyInput {
        match (self.spki, self.cert, self.ssh_key, self.ssh_key_file) {
            (Some(s), ..) => KeyInput::Spki(s),
            (_, Some(c), ..) => KeyInput::CertFile(c),
            (_, _, Some(k), _) => KeyInput::SshKey(k),
            // clap's group makes exactly one of them present.
            (.., f) => KeyInput::SshKeyFile(f.unwrap_or_default()),
        }
    }
}

#[derive(Args)]
#[group(required = false, multiple = true)]
struct RateArgs {
    /// Sustained requests per second, cluster-wide (with --burst).
    #[arg(long, requires = "burst")]
    rate: Option<f64>,
    /// Requests allowed at once above the rate, cluster-wide (with --rate).
    #[arg(long, requires = "rate")]
    burst: Option<u32>,
}

impl RateArgs {
    fn limit(&self) -> Option<RateLimit> {
        Some(RateLimit {
            per_second: self.rate?,
            burst: self.burst?,
        })
    }
}

#[derive(Subcommand)]
enum TenantsCommand {
    /// List the tenants, the default rate limit and the number of revoked keys.
    List,
    /// Print one tenant's record as stored (JSON).
    Show {
        /// The tenant.
        name: String,
    },
    /// Add a tenant.
    Add {
        /// Its name (as containers' tenant labels say).
        name: String,
        /// A role (`operator`: node views and node discovery). Repeatable.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// A name accepted in tenant-CA certificates (default: the tenant's name). Repeatable.
        #[arg(long = "cert-cn", conflicts_with = "no_cert_cn")]
        cert_cn: Vec<String>,
        /// Accept no tenant-CA certificate for it (keys and tokens only).
        #[arg(long)]
        no_cert_cn: bool,
        #[command(flatten)]
        rate: RateArgs,
    },
    /// Register a public key: a certificate's (by SPKI SHA-256) or an SSH key.
    AddKey {
        /// The tenant.
        name: String,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Register a bearer token: prints a new random token once (only its SHA-256 is stored),
    /// or registers --token-sha256.
    AddToken {
        /// The tenant.
        name: String,
        /// Register this SHA-256 of a token you made (hex or base64) instead.
        #[arg(long)]
        token_sha256: Option<String>,
    },
    /// Set a tenant's rate limit (or, with --default, the default one); --clear removes it.
    SetLimit {
        /// The tenant.
        #[arg(required_unless_present = "default", conflicts_with = "default")]
        name: Option<String>,
        /// Set the default rate limit instead of a tenant's.
        #[arg(long)]
        default: bool,
        /// Remove the limit (the tenant gets the default; the default the built-in one).
        #[arg(long, conflicts_with_all = ["rate", "burst"], required_unless_present = "rate")]
        clear: bool,
        #[command(flatten)]
        rate: RateArgs,
    },
    /// Unregister a public key (an SSH key with the same SPKI goes too).
    RemoveKey {
        /// The tenant.
        name: String,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Unregister a bearer token.
    RemoveToken {
        /// The tenant.
        name: String,
        /// The token's SHA-256 (as `show` lists it).
        #[arg(long)]
        token_sha256: String,
    },
    /// Refuse a key everywhere, even in certificates from the tenant CA.
    Revoke {
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Take a key off the revoked list.
    Unrevoke {
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Remove a tenant.
    Remove {
        /// The tenant.
        name: String,
    },
}

impl TenantsCommand {
    fn into_admin(self) -> admin::Command {
        use admin::Command as C;
        match self {
            TenantsCommand::List => C::List,
            TenantsCommand::Show { name } => C::Show { name },
            TenantsCommand::Add {
                name,
                roles,
                cert_cn,
                no_cert_cn,
                rate,
            } => C::Add {
                record: TenantRecord {
                    roles,
                    rate_limit: rate.limit(),
                    cert_cn: (no_cert_cn || !cert_cn.is_empty()).then_some(cert_cn),
                    ..TenantRecord::named(name)
                },
            },
            TenantsCommand::AddKey { name, key } => C::AddKey {
                name,
                key: key.input(),
            },
            TenantsCommand::AddToken { name, token_sha256 } => C::AddToken {
                name,
                sha256: token_sha256,
            },
            TenantsCommand::SetLimit { name, rate, .. } => C::SetLimit {
                name,
                rate: rate.limit(),
            },
            TenantsCommand::RemoveKey { name, key } => C::RemoveKey {
                name,
                key: key.input(),
            },
            TenantsCommand::RemoveToken { name, token_sha256 } => C::RemoveToken {
                name,
                sha256: token_sha256,
            },
            TenantsCommand::Revoke { key } => C::Revoke { key: key.input() },
            TenantsCommand::Unrevoke { key } => C::Unrevoke { key: key.input() },
            TenantsCommand::Remove { name } => C::Remove { name },
        }
    }
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create a CA (ECDSA P-256): DIR/ca.pem and DIR/ca-key.pem (0600).
    Ca {
        /// Directory to write into (created if missing; existing files are never overwritten).
        #[arg(long)]
        out: PathBuf,
        /// The CA's subject CN.
        #[arg(long, default_value = "lookout CA")]
        name: String,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u64,
    },
    /// Issue a certificate signed by the CA in --ca: DIR/<kind>-<name>.pem and -key.pem.
    Issue {
        /// Directory holding ca.pem and ca-key.pem.
        #[arg(long)]
        ca: PathBuf,
        /// server (proxy listener), agent (agent listener), proxy (client of agents) or
        /// tenant (client of the proxy; CN = tenant).
        #[arg(long)]
        kind: lookout_proxy::pki::Kind,
        /// Subject CN: the host name (server, agent), proxy name, or tenant name.
        #[arg(long)]
        name: String,
        /// Extra subject alternative names: DNS names, `*.<suffix>` wildcards, IP addresses.
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Directory to write into.
        #[arg(long)]
        out: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u64,
    },
    /// Print the SPKI SHA-256 (hex) of a PEM certificate, PEM public key or SSH public key.
    Fingerprint {
        /// The file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    match cli.command {
        Command::Agent {
            config,
            check_config,
        } => load_then(&config, check_config, AgentConfig::load, run_agent),
        Command::Proxy {
            config,
            check_config,
        } => load_then(&config, check_config, ProxyConfig::load, run_proxy),
        Command::Certs { command } => match certs(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("lookout certs: {e}");
                ExitCode::from(2)
            }
        },
        Command::Tenants { target, command } => tenants(target, command.into_admin()),
        Command::Dev {
            dir,
            listen,
            runc_roots,
        } => dev::run(dev::Options {
            dir,
            listen,
            runc_roots,
        }),
    }
}

fn certs(command: CertsCommand) -> Result<(), String> {
    use lookout_proxy::pki::{self, Ca, NewFile};
    use std::time::{Duration, SystemTime};
    let days = |d: u64| Duration::from_secs(d.saturating_mul(86_400));
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))
    };
    let fingerprint = |pem: &str| pki::fingerprint(pem).map(|h| lookout_proxy::tenants::hex(&h));
    let print_written = |paths: &[PathBuf]| {
        for p in paths {
            println!("wrote {}", p.display());
        }
    };
    match command {
        CertsCommand::Ca { out, name, days: d } => {
            let (_, pem) =
                Ca::create(&name, SystemTime::now(), days(d)).map_err(|e| e.to_string())?;
            let files = [
                NewFile {
                    name: "ca.pem".into(),
                    contents: &pem.cert_pem,
                    secret: false,
                },
                NewFile {
                    name: "ca-key.pem".into(),
                    contents: &pem.key_pem,
                    secret: true,
                },
            ];
            print_written(&pki::write_new(&out, &files).map_err(|e| e.to_string())?);
        }
        CertsCommand::Issue {
            ca,
            kind,
            name,
            sans,
            out,
            days: d,
        } => {
            let stem = format!("{}-{name}", kind.as_str());
            if !pki::safe_file_stem(&stem) {
                return Err(format!("--name {name:?} cannot be used in a file name"));
            }
            let ca = Ca::from_pem(&read(&ca.join("ca.pem"))?, &read(&ca.join("ca-key.pem"))?)
                .map_err(|e| e.to_string())?;
            let pem = ca
                .issue(kind, &name, &sans, SystemTime::now(), days(d))
                .map_err(|e| e.to_string())?;
            let files = [
                NewFile {
                    name: format!("{stem}.pem"),
                    contents: &pem.cert_pem,
                    secret: false,
                },
                NewFile {
                    name: format!("{stem}-key.pem"),
                    contents: &pem.key_pem,
                    secret: true,
                },
            ];
            print_written(&pki::write_new(&out, &files).map_err(|e| e.to_string())?);
            println!(
                "spki_sha256 {}",
                fingerprint(&pem.cert_pem).map_err(|e| e.to_string())?
            );
        }
        CertsCommand::Fingerprint { file } => {
            println!("{}", fingerprint(&read(&file)?).map_err(|e| e.to_string())?);
        }
    }
    Ok(())
}

fn tenants(t: TenantsTarget, command: admin::Command) -> ExitCode {
    let fail = |e: admin::AdminError| {
        eprintln!("lookout tenants: {e}");
        ExitCode::from(e.exit_code())
    };
    let target = match t.config {
        Some(path) => admin::Target::from_proxy_config(&path),
        None => {
            let tls = t.tls_ca.map(|ca| lookout_discovery::etcd::EtcdTlsConfig {
                ca,
                cert: t.tls_cert,
                key: t.tls_key,
                server_name: None,
            });
            admin::Target::from_flags(t.etcd, t.prefix, tls)
        }
    };
    let target = match target {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(admin::run(target, command)) {
        Ok(out) => {
            print!("{}", out.stdout);
            for note in out.notes {
                eprintln!("{note}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// Loads a configuration (every problem printed, exit 2), then either reports it valid
/// (`--check-config`) or runs with it.
fn load_then<C, E: std::fmt::Display>(
    path: &std::path::Path,
    check_only: bool,
    load: impl FnOnce(&std::path::Path) -> Result<C, E>,
    run: impl FnOnce(C) -> ExitCode,
) -> ExitCode {
    match load(path) {
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
        Ok(_) if check_only => {
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Ok(cfg) => run(cfg),
    }
}

fn run_proxy(cfg: ProxyConfig) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let proxy = match lookout_proxy::server::Proxy::start(cfg).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "proxy failed to start");
                return ExitCode::FAILURE;
            }
        };
        wait_for_signal().await;
        tracing::info!("shutting down");
        proxy.shutdown().await;
        ExitCode::SUCCESS
    })
}

fn run_agent(cfg: AgentConfig) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let agent = match lookout_agent::Agent::start(cfg).await {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "agent failed to start");
                return ExitCode::FAILURE;
            }
        };
        wait_for_signal().await;
        tracing::info!("shutting down");
        agent.shutdown().await;
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LOOKOUT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
