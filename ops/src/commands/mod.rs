//! The command line: one module per verb.

mod app;
mod events;
mod node;
mod shard;
mod status;
mod wallet;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use client::Client;

pub use app::{AppCommand, prepare, submit_spec};
pub use events::EventsArgs;
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
    /// Every region's event log (nodes down and up, instances placed, started, replaced,
    /// stopped, leader and membership changes), merged in time order.
    Events(EventsArgs),
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
        Command::Events(args) => events::run(&cli, &api, args).await,
    }
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub use client::sign_and_submit;

fn short(text: &str, n: usize) -> &str {
    text.get(..n).unwrap_or(text)
}
