//! The `fluxctl` binary; everything lives in the `ops` crate.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Like other command-line tools, end quietly when the reader of stdout goes away
    // (`fluxctl app status hello | head -1`) instead of panicking on the failed write.
    #[cfg(unix)]
    #[allow(unsafe_code)]
    // SAFETY: restores the default action of one signal at start, before any output.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
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
