//! `lookout`: one binary, thin — argument parsing and wiring only. The logic lives in the
//! `lookout-agent` (and later `lookout-proxy`) libraries.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lookout_agent::config::AgentConfig;

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
    /// Run agent and proxy in one process with throw-away credentials (arrives with the
    /// proxy).
    Dev {
        /// Where to write credentials and prometheus.yml.
        #[arg(long, default_value = "./lookout-dev")]
        dir: PathBuf,
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
        Command::Dev { .. } => {
            eprintln!(
                "lookout dev needs the proxy, which is not built yet; run `lookout agent --config FILE` \
                 (see README.md) until it arrives"
            );
            ExitCode::from(2)
        }
    }
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
