//! The `fluxctl` binary; everything lives in the `ops` crate.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = ops::Cli::parse();
    match ops::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
