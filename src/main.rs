//! `lookout`: one binary, thin — argument parsing and wiring only. The logic lives in the
//! `lookout-agent` and `lookout-proxy` libraries (`lookout certs` uses the proxy's `pki`);
//! [`dev`] composes both for `lookout dev`.

use std::path::PathBuf;
use std::process::ExitCode;

mod dev;

use clap::{Parser, Subcommand};
use lookout_agent::config::AgentConfig;
use lookout_proxy::config::ProxyConfig;

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
        } => {
            let cfg = match AgentConfig::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            if check_config {
                println!("{}: ok", config.display());
                return ExitCode::SUCCESS;
            }
            run_agent(cfg)
        }
        Command::Proxy {
            config,
            check_config,
        } => {
            let cfg = match ProxyConfig::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            if check_config {
                println!("{}: ok", config.display());
                return ExitCode::SUCCESS;
            }
            run_proxy(cfg)
        }
        Command::Certs { command } => match certs(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("lookout certs: {e}");
                ExitCode::from(2)
            }
        },
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
