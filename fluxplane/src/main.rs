//! The `fluxplane` daemon binary: parses the command line, loads the config, builds one role (or
//! all of them, for `dev`), and runs until a signal or a fatal error, then drains.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use fluxplane::config::DaemonConfig;
use fluxplane::roles::{self, chain, control, gateway, node};

/// mimalloc rather than glibc's malloc: the gateway allocates per request, and malloc was a
/// tenth of its profile (benches/gateway).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// fluxplane: a decentralized cloud control plane.
#[derive(Debug, Parser)]
#[command(name = "fluxplane", version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A whole local cloud in one process: devnet chain, eu/na/as shards, 6 nodes, gateway.
    Dev(fluxplane::dev::DevArgs),
    /// The devnet block producer, served over HTTP.
    Chain {
        /// TOML config file; flags override it.
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        args: chain::ChainArgs,
    },
    /// One replica of a region's shard, with its API.
    Control {
        /// TOML config file; flags override it.
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        args: control::ControlArgs,
    },
    /// A node that runs instances; registers itself on chain the first time.
    Node {
        /// TOML config file; flags override it.
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        args: node::NodeArgs,
    },
    /// The geo-aware gateway.
    Gateway {
        /// TOML config file; flags override it.
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        args: gateway::GatewayArgs,
    },
}

async fn run(command: Command) -> anyhow::Result<()> {
    let load = |path: &Option<PathBuf>| DaemonConfig::load(path.as_deref()).map(Arc::new);
    let (role, daemon) = match command {
        Command::Dev(a) => return fluxplane::dev::run(a).await,
        Command::Chain { config, args } => {
            let daemon = load(&config)?;
            (chain::Config::resolve(args, &daemon)?.build().await?.spawn()?, daemon)
        }
        Command::Control { config, args } => {
            let daemon = load(&config)?;
            (control::Config::resolve(args, daemon.clone())?.build().await?.spawn()?, daemon)
        }
        Command::Node { config, args } => {
            let daemon = load(&config)?;
            (node::Config::resolve(args, daemon.clone())?.build().await?.spawn()?, daemon)
        }
        Command::Gateway { config, args } => {
            let daemon = load(&config)?;
            (gateway::Config::resolve(args, daemon.clone())?.spawn().await?.0, daemon)
        }
    };
    roles::run_until_signal(vec![role], daemon.timing.drain_deadline).await
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        // openraft warns about messages it drops in normal elections; its errors still show.
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,openraft=error".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(args.command).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
