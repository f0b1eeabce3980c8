//! The `fluxctl` binary; everything lives in the `ops` crate.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Quiet unless asked: FLUXCTL_LOG=debug shows every failover and redirect.
    let filter = std::env::var("FLUXCTL_LOG").unwrap_or_else(|_| "off".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
    let cli = ops::Cli::parse();
    match ops::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
