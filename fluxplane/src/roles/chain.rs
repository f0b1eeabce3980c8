//! `fluxplane chain`: the devnet block producer, served over HTTP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use actors::Fatal;
use chain::Devnet;
use serde::Deserialize;
use tokio::sync::watch;

use super::{Running, bind, load_or_create_key, serve_router};
use crate::config::{self, DaemonConfig};

/// Flags of `fluxplane chain` (and the `[chain]` section of the config file).
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainArgs {
    /// Where to serve the devnet (transactions, blocks, tip).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Time between blocks.
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(default, deserialize_with = "config::option_duration")]
    pub block_time: Option<Duration>,
    /// Where blocks and the genesis key are kept; on first start a funded genesis wallet is
    /// written to DIR/genesis.key.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// FLUX the genesis wallet gets when the chain is created (default 1,000,000): enough for
    /// about 1,000 Cumulus nodes' collateral. Scale tests of many nodes need more.
    #[arg(long)]
    pub genesis_flux: Option<u64>,
    /// How long an uploaded module or image archive that no app refers to is kept (default
    /// 1h). A chain parameter: set in genesis when the chain is created, ignored after.
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(default, deserialize_with = "config::option_duration")]
    pub blob_grace: Option<Duration>,
}

impl ChainArgs {
    /// Flags over file.
    pub fn or(self, file: ChainArgs) -> ChainArgs {
        ChainArgs {
            listen: self.listen.or(file.listen),
            block_time: self.block_time.or(file.block_time),
            data_dir: self.data_dir.or(file.data_dir),
            genesis_flux: self.genesis_flux.or(file.genesis_flux),
            blob_grace: self.blob_grace.or(file.blob_grace),
        }
    }
}

/// A resolved chain role.
pub struct Config {
    listen: SocketAddr,
    block_time: Duration,
    data_dir: PathBuf,
    genesis_flux: u64,
    blob_rules: Option<model::chain::BlobRules>,
    limits: serve::Limits,
}

impl Config {
    /// Resolves flags over the file.
    pub fn resolve(args: ChainArgs, daemon: &DaemonConfig) -> anyhow::Result<Config> {
        let args = args.or(daemon.chain.clone());
        Ok(Config {
            listen: config::required(args.listen, "--listen", "chain.listen")?,
            block_time: args.block_time.unwrap_or(Duration::from_secs(1)),
            data_dir: config::required(args.data_dir, "--data-dir", "chain.data_dir")?,
            genesis_flux: match args.genesis_flux {
                Some(0) => anyhow::bail!("--genesis-flux (chain.genesis_flux) must be above 0"),
                Some(f) => f.checked_mul(model::tier::FLUX).ok_or_else(|| {
                    anyhow::anyhow!("--genesis-flux (chain.genesis_flux) {f} is more FLUX than the chain can count")
                })?,
                None => 1_000_000 * model::tier::FLUX,
            },
            blob_rules: args
                .blob_grace
                .map(|grace| model::chain::BlobRules { grace_ms: grace.as_millis() as u64, ..Default::default() }),
            limits: daemon.http.limits(),
        })
    }

    /// Opens (or creates) the chain and binds the listener.
    pub async fn build(self) -> anyhow::Result<Built> {
        std::fs::create_dir_all(&self.data_dir)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", self.data_dir.display()))?;
        let key_path = self.data_dir.join("genesis.key");
        let chain_path = self.data_dir.join("chain.redb");
        let devnet = if key_path.exists() {
            // A genesis key means this dir started a chain: it must still be there.
            Devnet::open_existing(&chain_path)?
        } else {
            anyhow::ensure!(
                !chain_path.exists(),
                "{} exists but {} does not: refusing to guess which wallet the genesis funded",
                chain_path.display(),
                key_path.display()
            );
            let key = load_or_create_key(&key_path)?;
            Devnet::open(&chain_path, || {
                chain::funded_genesis(&key, &[], self.genesis_flux, self.blob_rules, chain::now_ms())
            })?
        };
        let listener = bind(self.listen, "chain").await?;
        Ok(Built { config: self, devnet, listener, key_path })
    }
}

/// A chain role ready to start.
pub struct Built {
    config: Config,
    devnet: Devnet,
    listener: tokio::net::TcpListener,
    key_path: PathBuf,
}

impl Built {
    /// The devnet, for roles composed in the same process.
    pub fn devnet(&self) -> &Devnet {
        &self.devnet
    }

    /// Starts producing blocks and serving.
    pub fn spawn(self) -> anyhow::Result<Running> {
        let Built { config, devnet, listener, key_path } = self;
        let server = serve_router(listener, chain::server::router(devnet.clone()), config.limits)?;
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(devnet.clone().run(config.block_time, stopped));
        let tip = devnet.tip();
        eprintln!(
            "chain serving on http://{} (genesis {}, height {}, blocks every {}); genesis wallet {}",
            server.local_addr(),
            &tip.genesis_hash[..12],
            tip.height,
            humantime::format_duration(config.block_time),
            key_path.display()
        );
        Ok(Running::new("chain", Fatal::default(), move |deadline| async move {
            let _ = stop.send(true);
            server.drain(deadline).await;
        }))
    }
}
