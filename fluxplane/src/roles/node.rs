//! `fluxplane node`: a machine that runs instances. It registers itself on chain (paying its
//! tier's collateral from its wallet) the first time, then runs the node agent.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::Fatal;
use client::Client;
use model::chain::{Capability, NodeStart, PortRange, Tx};
use model::geo::GeoPoint;
use model::keys::Keypair;
use model::tier::Tier;
use runtime_wasm::{ComponentCache, EngineConfig, WasmEngine};
use serde::Deserialize;
use tokio::sync::watch;

use super::{Running, bind, load_key, load_or_create_key};
use crate::config::{self, DaemonConfig};

/// Flags of `fluxplane node` (and the `[node]` section of the config file).
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeArgs {
    /// The region the node joins.
    #[arg(long)]
    pub region: Option<String>,
    /// The node's location, `LAT,LON`.
    #[arg(long, value_parser = config::parse_geo)]
    #[serde(default, deserialize_with = "config::option_geo")]
    pub geo: Option<GeoPoint>,
    /// Control-plane URLs, comma-separated (any one finds the region's replicas).
    #[arg(long)]
    pub control: Option<String>,
    /// The address instances listen on (on ports from --instance-ports); the node's status
    /// endpoint (`/healthz`) is served here.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Where the node key, its id and compiled modules are kept; the same dir is the same node.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The operator's wallet, which pays the collateral when the node registers.
    #[arg(long)]
    pub wallet: Option<PathBuf>,
    /// The tier, by collateral: cumulus (1,000 FLUX), nimbus (12,500), stratus (40,000).
    #[arg(long, value_parser = parse_tier)]
    #[serde(default, deserialize_with = "tier")]
    pub tier: Option<Tier>,
    /// The node's id on chain (default: `<region>-<first 8 hex digits of its key>`).
    #[arg(long)]
    pub id: Option<String>,
    /// ISO country code of the node's location, for geolocation rules like `acEU_DE`.
    #[arg(long)]
    pub country: Option<String>,
    /// The address registered on chain, which gateways reach instances on (default: the
    /// `--listen` address; required when that is 0.0.0.0).
    #[arg(long)]
    pub advertise: Option<IpAddr>,
    /// The ports instances listen on, registered on chain: `FIRST-LAST` (default 20000-20999).
    /// The control plane refuses an instance endpoint outside them.
    #[arg(long)]
    #[serde(default, deserialize_with = "port_range")]
    pub instance_ports: Option<PortRange>,
    /// The Docker engine's socket, for containers (default /var/run/docker.sock). While it
    /// does not answer, the node takes no container and says why in its heartbeats.
    #[arg(long)]
    pub docker_socket: Option<PathBuf>,
    /// The iptables binary the node keeps app networks apart with (default: `iptables` on
    /// PATH; `iptables-save`, `iptables-restore` and the ip6tables ones beside it). Without
    /// working rules (no iptables, not root) the node takes no container and says why.
    #[arg(long)]
    pub iptables: Option<PathBuf>,
}

impl NodeArgs {
    /// Flags over file.
    pub fn or(self, file: NodeArgs) -> NodeArgs {
        NodeArgs {
            region: self.region.or(file.region),
            geo: self.geo.or(file.geo),
            control: self.control.or(file.control),
            listen: self.listen.or(file.listen),
            data_dir: self.data_dir.or(file.data_dir),
            wallet: self.wallet.or(file.wallet),
            tier: self.tier.or(file.tier),
            id: self.id.or(file.id),
            country: self.country.or(file.country),
            advertise: self.advertise.or(file.advertise),
            instance_ports: self.instance_ports.or(file.instance_ports),
            docker_socket: self.docker_socket.or(file.docker_socket),
            iptables: self.iptables.or(file.iptables),
        }
    }
}

fn port_range<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<PortRange>, D::Error> {
    String::deserialize(d)?.parse().map(Some).map_err(serde::de::Error::custom)
}

fn parse_tier(text: &str) -> Result<Tier, String> {
    match text {
        "cumulus" => Ok(Tier::Cumulus),
        "nimbus" => Ok(Tier::Nimbus),
        "stratus" => Ok(Tier::Stratus),
        other => Err(format!("`{other}` is not a tier: cumulus, nimbus or stratus")),
    }
}

fn tier<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Tier>, D::Error> {
    let text = String::deserialize(d)?;
    parse_tier(&text).map(Some).map_err(serde::de::Error::custom)
}

/// A resolved node role.
pub struct Config {
    /// Region.
    pub region: String,
    /// Location.
    pub geo: GeoPoint,
    /// Control plane.
    pub control: Client,
    /// Listen address.
    pub listen: SocketAddr,
    /// Data dir.
    pub data_dir: PathBuf,
    /// Operator wallet; `None` when the node is already on chain (`fluxplane dev`).
    pub wallet: Option<Keypair>,
    /// Tier.
    pub tier: Tier,
    /// Node id.
    pub id: Option<String>,
    /// Country code.
    pub country: String,
    /// The address registered on chain (default: the listen address).
    pub advertise: Option<IpAddr>,
    /// The instance ports registered on chain.
    pub instance_ports: PortRange,
    /// The node key; by default `DIR/node.key`, made on first start.
    pub key: Option<Keypair>,
    /// A compiled-component cache to share (`fluxplane dev` runs several nodes on one machine).
    pub cache: Option<ComponentCache>,
    /// The Docker engine's socket.
    pub docker_socket: PathBuf,
    /// The iptables binary for the host rules (`iptables` on PATH when `None`).
    pub iptables: Option<PathBuf>,
    /// Timings.
    pub daemon: Arc<DaemonConfig>,
}

impl Config {
    /// Resolves flags over the file.
    pub fn resolve(args: NodeArgs, daemon: Arc<DaemonConfig>) -> anyhow::Result<Config> {
        let args = args.or(daemon.node.clone());
        let control = config::required(args.control, "--control", "node.control")?;
        Ok(Config {
            region: config::required(args.region, "--region", "node.region")?,
            geo: config::required(args.geo, "--geo", "node.geo")?,
            control: Client::from_list(&control)?,
            listen: config::required(args.listen, "--listen", "node.listen")?,
            data_dir: config::required(args.data_dir, "--data-dir", "node.data_dir")?,
            wallet: Some(load_key(&config::required(args.wallet, "--wallet", "node.wallet")?)?),
            tier: config::required(args.tier, "--tier", "node.tier")?,
            id: args.id,
            country: args.country.unwrap_or_else(|| "ZZ".into()),
            advertise: args.advertise,
            instance_ports: args.instance_ports.unwrap_or(PortRange::DEFAULT),
            key: None,
            cache: None,
            docker_socket: args.docker_socket.unwrap_or_else(|| runtime_oci::DEFAULT_SOCKET.into()),
            iptables: args.iptables,
            daemon,
        })
    }

    /// Loads the node's key and id, binds its status endpoint, and prepares the WASM runtime.
    pub async fn build(self) -> anyhow::Result<Built> {
        std::fs::create_dir_all(&self.data_dir)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", self.data_dir.display()))?;
        let key = match &self.key {
            Some(k) => k.clone(),
            None => load_or_create_key(&self.data_dir.join("node.key"))?,
        };
        let id = match &self.id {
            Some(id) => id.clone(),
            None => format!("{}-{}", self.region, &key.public().0[..8]),
        };
        model::spec::check_name(&id).map_err(|e| anyhow::anyhow!("node id `{id}` {e}"))?;
        let advertise = self.advertise.unwrap_or(self.listen.ip());
        anyhow::ensure!(
            !advertise.is_unspecified(),
            "the node listens on {}: give --advertise ADDRESS, the address gateways reach its instances on",
            self.listen.ip()
        );
        let listener = bind(self.listen, "node status endpoint").await?;
        let (engine, cache) = match &self.cache {
            Some(c) => (None, c.clone()),
            None => {
                let engine = WasmEngine::new(&EngineConfig::default())?;
                let cache = ComponentCache::new(engine.clone(), self.data_dir.join("cache"))?;
                (Some(engine), cache)
            }
        };
        Ok(Built { config: self, key, id, listener, engine, cache })
    }
}

/// A node role ready to start.
pub struct Built {
    config: Config,
    key: Keypair,
    id: String,
    listener: tokio::net::TcpListener,
    engine: Option<WasmEngine>,
    cache: ComponentCache,
}

impl Built {
    /// Registers the node if it is new, then runs the agent.
    pub fn spawn(self) -> anyhow::Result<Running> {
        let Built { config, key, id, listener, engine, cache } = self;
        let socket = config.docker_socket.to_string_lossy().into_owned();
        let mut firewall = runtime_oci::FirewallConfig::default();
        if let Some(path) = &config.iptables {
            firewall.iptables = path.clone();
        }
        let oci = runtime_oci::OciRuntime::new(&socket).with_firewall(firewall);
        let runtimes =
            agent::Runtimes::default().with(Arc::new(runtime_wasm::WasmRuntime::new(cache))).with(Arc::new(oci));
        let capabilities = runtimes.capabilities();
        let (owner, leftovers) = (agent::owner(&id, &key), runtimes.clone());
        let bind_ip = listener.local_addr()?.ip();
        let advertise = config.advertise.unwrap_or(bind_ip);
        let api_addr = SocketAddr::new(advertise, listener.local_addr()?.port());
        let agent_slot = super::node_api::AgentSlot::default();
        let identity = super::node_api::Identity { id: id.clone(), key: key.clone(), api: api_addr };
        let router = super::node_api::router(agent_slot.clone(), identity);
        let server = super::serve_router(listener, router, config.daemon.http.limits())?;
        let fatal = Fatal::default();
        let (stop, stopped) = watch::channel(false);
        let t = config.daemon.timing.clone();
        let task_fatal = fatal.clone();
        let agent = tokio::spawn(async move {
            let control = match join(&config, &key, &id, advertise, capabilities, stopped.clone()).await {
                Ok(Some(c)) => c,
                Ok(None) => return,
                Err(e) => {
                    task_fatal.raise(format!("{e:#}"));
                    return;
                }
            };
            eprintln!("node {id} of region {} is running", config.region);
            let agent_config = agent::AgentConfig {
                node_id: id,
                key,
                control,
                beat_every: t.heartbeat_period,
                health_timeout: t.health_timeout,
                bind_ip,
                advertise,
                ports: config.instance_ports,
                request_deadline: t.request_deadline,
                stop_grace: t.stop_grace,
                api: Some(api_addr),
                linger: t.node_timeout + t.heartbeat_period,
            };
            let (handle, agent) = agent::start(agent_config, runtimes, stopped);
            let _ = agent_slot.set(handle);
            agent.await;
        });
        Ok(Running::new("node", fatal, move |deadline| async move {
            // Stop beating and taking work; the agent stops its instances last.
            let _ = stop.send(true);
            if tokio::time::timeout(deadline, agent).await.is_err() {
                // Out of time for graceful stops: no container may outlive its node.
                for runtime in leftovers.all() {
                    if let Err(e) = runtime.remove_others(&owner, &[]).await {
                        tracing::warn!("removing this node's workloads at shutdown: {e:#}");
                    }
                }
            }
            // Stopped for good: what the runtimes set up for its workloads goes too.
            for runtime in leftovers.all() {
                runtime.shutdown(&owner).await;
            }
            server.drain(Duration::from_secs(1)).await;
            if let Some(engine) = engine {
                engine.shutdown();
            }
        }))
    }
}

/// Finds the region's replicas and registers the node on chain if it is not there yet. Waits
/// (retrying) while the control plane cannot be reached; `None` when stopped first.
async fn join(
    config: &Config,
    key: &Keypair,
    id: &str,
    advertise: IpAddr,
    capabilities: Vec<Capability>,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<Option<Client>> {
    let registered = |nodes: &[model::api::NodeView]| nodes.iter().any(|n| n.id == id);
    // A node already on chain serves where it registered: anything else would be refused.
    let check_registration = |nodes: &[model::api::NodeView]| -> anyhow::Result<()> {
        if let Some(n) = nodes.iter().find(|n| n.id == id)
            && (n.address != advertise || n.instance_ports != config.instance_ports)
        {
            anyhow::bail!(
                "node `{id}` is registered on chain to serve on {} ports {}, but would serve on {advertise} ports {} \
                 (--advertise / --listen, --instance-ports): start it with the registered ones, or as a new node",
                n.address,
                n.instance_ports,
                config.instance_ports
            );
        }
        Ok(())
    };
    // Ask until the region answers: only its answer tells whether the node is new. (Right after
    // a restart the directory may still list replicas' old addresses.)
    let (region, nodes) = loop {
        let asked = async {
            let region = config.control.region(&config.region).await?;
            let nodes = region.stale().nodes().await?;
            Ok::<_, client::ClientError>((region, nodes))
        };
        match asked.await {
            Ok(answer) => break answer,
            Err(e) if e.is_unreachable() || e.is_not_found() || e.code() == Some("no_leader") => {
                tracing::info!("waiting for region {}'s control replicas: {e}", config.region);
            }
            Err(e) => return Err(e.into()),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stopped.changed() => return Ok(None),
        }
    };
    if registered(&nodes) {
        check_registration(&nodes)?;
        return Ok(Some(region));
    }
    let Some(wallet) = &config.wallet else {
        anyhow::bail!("node `{id}` is not on chain and no --wallet was given to pay its collateral");
    };
    let continent = config
        .control
        .regions()
        .await?
        .into_iter()
        .find(|r| r.name == config.region)
        .map(|r| r.continent)
        .ok_or_else(|| anyhow::anyhow!("no region `{}` on this chain", config.region))?;
    let start = NodeStart {
        node_id: id.to_string(),
        collateral: config.tier.collateral(),
        region: config.region.clone(),
        continent,
        country: config.country.clone(),
        geo: config.geo,
        capabilities,
        node_key: key.public(),
        address: advertise,
        instance_ports: config.instance_ports,
    };
    let resp = client::sign_and_submit(&region, wallet, Tx::NodeStart(start), true).await.map_err(|e| {
        anyhow::anyhow!("registering node `{id}` ({} collateral from wallet {}): {e}", config.tier, wallet.public())
    })?;
    eprintln!("node {id} registered on chain in block {}", resp.height);
    // The leader shows it once it applied the block.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !registered(&region.nodes().await.unwrap_or_default()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(Some(region))
}
