//! `fluxctl wallet`.

use std::path::PathBuf;

use clap::Subcommand;
use client::Client;
use model::keys::Keypair;
use model::tier::format_flux;

use super::{Cli, Output, print_json};
use crate::keys;

/// Wallet verbs.
#[derive(Debug, Subcommand)]
pub enum WalletCommand {
    /// Address and balance of the signing key.
    Show,
    /// Create a new key file (it starts with no funds).
    New {
        /// Where to write it (default: wallet.key in the config dir).
        #[arg(long)]
        path: Option<PathBuf>,
    },
}

pub(super) async fn run(cli: &Cli, api: &Client, cmd: &WalletCommand) -> anyhow::Result<()> {
    match cmd {
        WalletCommand::Show => {
            let (key, path) = keys::load(cli.key.as_ref())?;
            let w = api.wallet(&key.public().0).await?;
            if cli.output == Output::Json {
                return print_json(&w);
            }
            println!("address {}\nbalance {} FLUX\nkey     {}", w.address, format_flux(w.balance), path.display());
            Ok(())
        }
        WalletCommand::New { path } => {
            let path = path.clone().unwrap_or_else(|| keys::config_dir().join(keys::WALLET));
            anyhow::ensure!(!path.exists(), "{} exists already; refusing to overwrite a key", path.display());
            let key = Keypair::generate();
            keys::write(&path, &key)?;
            println!("address {}\nkey     {}", key.public(), path.display());
            Ok(())
        }
    }
}
