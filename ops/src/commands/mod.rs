//! The command line: one module per verb.

mod app;
mod node;
mod shard;
mod status;
mod wallet;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use client::Client;

pub use app::{AppCommand, prepare, submit_spec};
pub use node::NodeCommand;
pub use shard::ShardCommand;
pub use wallet::WalletCommand;

/// fluxctl: deploy and run apps on a fluxplane cloud.
#[derive(Debug, Parser)]
#[command(name = "fluxctl", version)]
pub struct Cli {
    /// Control-plane API URLs, comma-separated; fluxctl fails over between them and follows the
    /// leader. Any one control URL finds every region. The default is where `fluxplane dev`
    /// listens.
    #[arg(long, global = true, env = "FLUXCTL_API", default_value = "http://127.0.0.1:7070")]
    pub api: String,
    /// Gateway host:port that app URLs are printed with.
    #[arg(long, global = true, env = "FLUXCTL_GATEWAY", default_value = "localhost:8080")]
    pub gateway: String,
    /// Key file to sign with (default: wallet.key, else the dev wallet, in the config dir).
    #[arg(long, global = true, env = "FLUXCTL_KEY")]
    pub key: Option<PathBuf>,
    /// Admin token for `shard` and `node cordon` commands. Only from the environment, so that it
    /// never shows in a process list.
    #[arg(skip = std::env::var("FLUXCTL_ADMIN_TOKEN").ok())]
    pub admin_token: Option<String>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable tables.
    Table,
    /// JSON, for scripts.
    Json,
}

/// Top-level verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Chain tip and the state of every region's shard.
    Status,
    /// Deploy and manage apps.
    #[command(subcommand)]
    App(AppCommand),
    /// Inspect and cordon nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Manage a region's shard: membership, leadership, replica state (admin).
    #[command(subcommand)]
    Shard(ShardCommand),
    /// Wallet keys.
    #[command(subcommand)]
    Wallet(WalletCommand),
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let api = Client::from_list(&cli.api)?.with_admin_token(cli.admin_token.clone());
    match &cli.command {
        Command::Status => status::run(&cli, &api).await,
        Command::App(cmd) => app::run(&cli, &api, cmd).await,
        Command::Node(cmd) => node::run(&cli, &api, cmd).await,
        Command::Shard(cmd) => shard::run(&cli, &api, cmd).await,
        Command::Wallet(cmd) => wallet::run(&cli, &api, cmd).await,
    }
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A nonce for a new transaction: the time in microseconds (kept increasing within the
/// process), which keeps one client's transactions in order.
pub fn nonce() -> u64 {
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(1);
    let prev = LAST.fetch_max(now, std::sync::atomic::Ordering::Relaxed);
    if prev >= now { LAST.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1 } else { now }
}

/// Signs `tx` and submits it; with `applied`, answers once the answering shard applied it.
///
/// Nonces are times, so two processes signing with one wallet at once can collide; a
/// `stale_nonce` refusal is retried with a fresh nonce a few times (the refused transaction
/// changed nothing).
pub async fn sign_and_submit(
    api: &Client,
    key: &model::keys::Keypair,
    tx: model::chain::Tx,
    applied: bool,
) -> Result<model::api::SubmitTxResponse, client::ClientError> {
    let mut attempt = 0u64;
    loop {
        let stx = model::chain::SignedTx::sign(tx.clone(), nonce(), key);
        let result = if applied { api.submit_tx_applied(&stx).await } else { api.submit_tx(&stx).await };
        match result {
            Err(e) if e.code() == Some("stale_nonce") && attempt < 5 => {
                attempt += 1;
                // Spread the retries of processes that collided.
                let jitter = u64::from(key.public().0.as_bytes()[0]) % 20 + nonce() % 30;
                tokio::time::sleep(std::time::Duration::from_millis(20 * attempt + jitter)).await;
            }
            other => return other,
        }
    }
}

fn short(text: &str, n: usize) -> &str {
    text.get(..n).unwrap_or(text)
}
