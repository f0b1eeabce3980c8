//! `fluxplane control`: one replica of one region's shard, its API, and (while it leads) the
//! region's actors.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actors::Fatal;
use chain::{HttpChain, SharedChainSource};
use control_plane::api::{self, Api};
use control_plane::auth::AdminToken;
use control_plane::blobs::BlobStore;
use control_plane::domains::DomainResolver;
use control_plane::{Shard, ShardConfig};
use model::chain::{SignedTx, Tx};
use model::keys::Keypair;
use serde::Deserialize;
use tokio::sync::watch;

use super::{Running, bind, load_key, load_or_create_key, serve_router};
use crate::config::{self, DaemonConfig};

/// Flags of `fluxplane control` (and the `[control]` section of the config file).
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlArgs {
    /// The region this replica serves.
    #[arg(long)]
    pub region: Option<String>,
    /// This replica's Raft id, unique in the region.
    #[arg(long)]
    pub id: Option<u64>,
    /// Where the API and the Raft transport listen.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// The URL peers and clients reach this replica at (default: http://<listen>).
    #[arg(long)]
    pub advertise: Option<String>,
    /// The region's initial replicas, `ID=ADDR,...` (this one included): `fluxctl shard init`
    /// makes them the voters. Empty or only this replica: it initializes itself alone.
    #[arg(long)]
    pub peers: Option<String>,
    /// Chain source URLs (a `fluxplane chain`), comma-separated.
    #[arg(long)]
    pub chain: Option<String>,
    /// Where the shard, the replica key and modules are kept.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// File holding the admin token (at least 16 characters), shared by the shard's replicas and
    /// its operators.
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
    /// A control operator's wallet (named in genesis), which signs this replica's entry in the
    /// region directory. Without it the replica is not published.
    #[arg(long)]
    pub wallet: Option<PathBuf>,
    /// The DNS server (`ADDR:PORT`) that custom domains' TXT records are looked up at
    /// (default: the name servers in /etc/resolv.conf).
    #[arg(long)]
    pub dns: Option<SocketAddr>,
}

impl ControlArgs {
    /// Flags over file.
    pub fn or(self, file: ControlArgs) -> ControlArgs {
        ControlArgs {
            region: self.region.or(file.region),
            id: self.id.or(file.id),
            listen: self.listen.or(file.listen),
            advertise: self.advertise.or(file.advertise),
            peers: self.peers.or(file.peers),
            chain: self.chain.or(file.chain),
            data_dir: self.data_dir.or(file.data_dir),
            admin_token_file: self.admin_token_file.or(file.admin_token_file),
            wallet: self.wallet.or(file.wallet),
            dns: self.dns.or(file.dns),
        }
    }
}

/// Parses `ID=ADDR,...` into base URLs by id.
pub fn parse_peers(text: &str) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut peers = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, addr) = item.split_once('=').ok_or_else(|| anyhow::anyhow!("--peers: `{item}` is not ID=ADDR"))?;
        let id: u64 = id.trim().parse().map_err(|_| anyhow::anyhow!("--peers: `{id}` is not a replica id"))?;
        let url = client::parse_urls(addr).pop().ok_or_else(|| anyhow::anyhow!("--peers: no address for {id}"))?;
        anyhow::ensure!(peers.insert(id, url).is_none(), "--peers: replica {id} is listed twice");
    }
    Ok(peers)
}

/// Where blocks come from.
pub enum ChainFrom {
    /// A `fluxplane chain` over HTTP.
    Urls(String),
    /// A source in this process (`fluxplane dev`).
    Local(SharedChainSource),
}

/// A resolved control role.
pub struct Config {
    /// Region served.
    pub region: String,
    /// Raft id.
    pub id: u64,
    /// Listen address.
    pub listen: SocketAddr,
    /// Advertised URL, or `http://<bound address>`.
    pub advertise: Option<String>,
    /// Initial replicas by id.
    pub peers: BTreeMap<u64, String>,
    /// Chain source.
    pub chain: ChainFrom,
    /// Data dir.
    pub data_dir: PathBuf,
    /// Admin token.
    pub admin: AdminToken,
    /// Control operator wallet, to publish this replica.
    pub wallet: Option<Keypair>,
    /// The DNS server custom domains are proven through; `None`: the system's.
    pub dns: Option<SocketAddr>,
    /// Timings.
    pub daemon: Arc<DaemonConfig>,
}

impl Config {
    /// Resolves flags over the file.
    pub fn resolve(args: ControlArgs, daemon: Arc<DaemonConfig>) -> anyhow::Result<Config> {
        let args = args.or(daemon.control.clone());
        let token_file = config::required(args.admin_token_file, "--admin-token-file", "control.admin_token_file")?;
        Ok(Config {
            region: config::required(args.region, "--region", "control.region")?,
            id: config::required(args.id, "--id", "control.id")?,
            listen: config::required(args.listen, "--listen", "control.listen")?,
            advertise: args.advertise,
            peers: parse_peers(args.peers.as_deref().unwrap_or(""))?,
            chain: ChainFrom::Urls(config::required(args.chain, "--chain", "control.chain")?),
            data_dir: config::required(args.data_dir, "--data-dir", "control.data_dir")?,
            admin: AdminToken::from_file(&token_file)?,
            wallet: args.wallet.as_deref().map(load_key).transpose()?,
            dns: args.dns,
            daemon,
        })
    }

    /// Opens the shard, checks the chain it follows, and binds the listener.
    pub async fn build(self) -> anyhow::Result<Built> {
        std::fs::create_dir_all(&self.data_dir)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", self.data_dir.display()))?;
        let listener = bind(self.listen, "control API").await?;
        let advertise = match &self.advertise {
            Some(url) => client::parse_urls(url).pop().ok_or_else(|| anyhow::anyhow!("--advertise is empty"))?,
            None => format!("http://{}", listener.local_addr()?),
        };
        if let Some(listed) = self.peers.get(&self.id) {
            anyhow::ensure!(
                *listed == advertise,
                "--peers lists replica {} at {listed}, but it advertises {advertise}; use --advertise",
                self.id
            );
        }
        let chain: SharedChainSource = match &self.chain {
            ChainFrom::Urls(urls) => Arc::new(HttpChain::new(client::Client::from_list(urls)?)),
            ChainFrom::Local(source) => source.clone(),
        };
        let key = load_or_create_key(&self.data_dir.join("replica.key"))?;
        let t = &self.daemon.timing;
        let shard = Shard::open(
            ShardConfig {
                region: self.region.clone(),
                data_dir: self.data_dir.join("shards"),
                raft_id: self.id,
                api_url: advertise.clone(),
                node_timeout: t.node_timeout,
                placement_lease: t.placement_lease,
                raft: t.raft(&self.daemon.raft),
                write_timeout: t.write_timeout,
                require_address_proof: true,
            },
            key,
            self.admin.clone(),
        )
        .await?;
        let alone = self.peers.keys().all(|id| *id == self.id);
        if alone && !shard.is_initialized().await {
            shard.initialize(BTreeMap::from([(self.id, shard.replica())])).await?;
        }
        check_chain(&shard, &chain).await?;
        let initialized = shard.is_initialized().await;
        let resolver = Arc::new(DomainResolver::new(self.dns));
        Ok(Built { config: self, shard, chain, listener, advertise, initialized, resolver })
    }
}

/// Refuses a chain source whose genesis is not the one the shard already follows.
async fn check_chain(shard: &Shard, chain: &SharedChainSource) -> anyhow::Result<()> {
    if !shard.caught_up(Duration::from_secs(30)).await {
        tracing::warn!(region = %shard.region, "the shard did not finish replaying its log in 30 s");
    }
    match chain.tip().await {
        Ok(tip) => shard
            .read(|s| s.chain.check_genesis(&tip.genesis_hash))
            .map_err(|e| anyhow::anyhow!("refusing chain source {}: {e}", chain.describe())),
        // Checked again by the ChainActor once the source answers.
        Err(e) => {
            tracing::warn!(region = %shard.region, "{e}; starting without it");
            Ok(())
        }
    }
}

/// A control role ready to start.
pub struct Built {
    config: Config,
    shard: Arc<Shard>,
    chain: SharedChainSource,
    listener: tokio::net::TcpListener,
    advertise: String,
    initialized: bool,
    /// Where custom domains' TXT records are looked up.
    resolver: Arc<DomainResolver>,
}

impl Built {
    /// The advertised API URL.
    pub fn url(&self) -> &str {
        &self.advertise
    }

    /// Starts serving, following the chain while leading, and publishing this replica.
    pub fn spawn(self) -> anyhow::Result<Running> {
        let Built { config, shard, chain, listener, advertise, initialized, resolver } = self;
        let api = Arc::new(Api {
            shard: shard.clone(),
            chain: chain.clone(),
            blobs: BlobStore::open(&config.data_dir.join("blobs"))?,
            peers: config.peers.clone(),
            client: client::Client::new(vec![advertise.clone()])?,
            body_timeout: config.daemon.http.body_timeout,
        });
        let http = &config.daemon.http;
        let server = serve_router(listener, api::service(api.clone(), http.body_timeout), http.limits())?;
        let fatal = Fatal::default();
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(api::sweep_blobs(api, stopped.clone()));
        let actors = tokio::spawn(actors::lead(shard.clone(), chain.clone(), fatal.clone(), stopped.clone()));
        let peers = client::Client::new(vec![advertise.clone()])?;
        tokio::spawn(control_plane::capacity::follow_other_regions(shard.clone(), peers, stopped.clone()));
        let recheck = config.daemon.timing.domain_recheck;
        tracing::info!(region = %config.region, "custom domains are proven through {}", resolver.describe);
        tokio::spawn(control_plane::domains::verify_domains(shard.clone(), resolver, recheck, stopped.clone()));
        match config.wallet.clone() {
            Some(wallet) => {
                tokio::spawn(publish(shard.clone(), chain, wallet, advertise.clone(), fatal.clone(), stopped));
            }
            None => tracing::warn!(
                region = %config.region,
                "no --wallet: this replica is not published in the region directory, so other regions' clients \
                 will not find it"
            ),
        }
        eprintln!(
            "control replica {} of region {} serving on {advertise}{}",
            config.id,
            config.region,
            if !initialized { " (waiting for `fluxctl shard init`)" } else { "" }
        );
        Ok(Running::new(format!("control {}/{}", config.region, config.id), fatal, move |deadline| async move {
            // A leader hands off first, so the shard keeps taking writes while this one stops.
            if shard.is_leader() && shard.members().iter().any(|m| m.voter && m.id != shard.id()) {
                match shard.transfer_leadership(None, deadline / 2).await {
                    Ok(to) => eprintln!("handed leadership of {} to replica {to}", shard.region),
                    Err(e) => eprintln!("could not hand off leadership of {}: {e}", shard.region),
                }
            }
            let _ = stop.send(true);
            let _ = actors.await;
            server.drain(deadline / 2).await;
            shard.shutdown().await;
        }))
    }
}

/// Publishes this replica's URL in the region directory (a chain transaction signed by the
/// control operator's wallet), unless the directory has it already.
async fn publish(
    shard: Arc<Shard>,
    chain: SharedChainSource,
    wallet: Keypair,
    url: String,
    fatal: Fatal,
    mut stopped: watch::Receiver<bool>,
) {
    let (region, id) = (shard.region.clone(), shard.id());
    let listed = |shard: &Shard| shard.read(|s| s.chain.directory.get(&region).and_then(|d| d.get(&id)) == Some(&url));
    let mut pause = Duration::ZERO;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stopped.changed() => return,
        }
        pause = Duration::from_secs(5);
        if listed(&shard) {
            return;
        }
        // Every replica of the cloud may announce with the one operator wallet at once: the
        // losers of a nonce race sign again soon, with the next nonce.
        let nonce = match chain.next_nonce(&wallet.public()).await {
            Ok(nonce) => nonce,
            Err(e) => {
                tracing::warn!(%region, id, "publishing this replica: {e}; retrying");
                continue;
            }
        };
        let tx = Tx::ControlAnnounce { region: region.clone(), replica_id: id, api_url: url.clone() };
        let stx = SignedTx::sign(tx, nonce, &wallet);
        match chain.submit(stx).await {
            Ok(tx_id) => {
                tracing::info!(%region, id, "published {url} in the region directory (tx {tx_id})");
                // Wait until a shard (ours, once it follows the chain) shows it; else try again.
                for _ in 0..30 {
                    if listed(&shard) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                if !shard.is_initialized().await {
                    // Not a member yet: it cannot see the directory; the tx is on chain anyway.
                    return;
                }
            }
            Err(chain::ChainError::Rejected { code, message }) if code == "forbidden" => {
                fatal.raise(format!("cannot publish replica {id} of {region}: {message}"));
                return;
            }
            Err(chain::ChainError::Rejected { code, .. }) if code == "stale_nonce" => {
                pause = Duration::from_millis(50 + (id % 8) * 40 + client::jitter_ms(100));
            }
            Err(e) => tracing::warn!(%region, id, "publishing this replica: {e}; retrying"),
        }
    }
}
