//! The `fluxplane` daemon binary.

use clap::{Parser, Subcommand};

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
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let result = match args.command {
        Command::Dev(a) => fluxplane::dev::run(a).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
