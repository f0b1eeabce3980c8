//! `fluxplane dev`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chain::{Devnet, dev_genesis, dev_node_key, dev_nodes};
use control_plane::api::{Api, router};
use control_plane::blobs::BlobStore;
use control_plane::{Shard, ShardConfig};
use model::geo::GeoPoint;
use model::keys::Keypair;
use runtime_wasm::{ComponentCache, EngineConfig, WasmEngine};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Flags of `fluxplane dev`.
#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Where chain, shards, modules and compiled artifacts are kept; reuse it to keep your apps.
    #[arg(long, default_value = ".fluxplane")]
    pub data_dir: PathBuf,
    /// Control-plane API address (port 0 picks one; see <data-dir>/endpoints.json).
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub api_listen: SocketAddr,
    /// Gateway address; apps answer at http://<app>.app.localhost:<port>/.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub gateway_listen: SocketAddr,
    /// Raft RPC address of the shards.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub raft_listen: SocketAddr,
    /// Time between blocks.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub block_time: Duration,
    /// Do not deploy the example app.
    #[arg(long)]
    pub no_demo: bool,
}

const HELLO_MANIFEST: &str = include_str!("../../examples/hello/fluxapp.toml");
const HELLO_WASM: &[u8] = include_bytes!("../../examples/hello/hello.wasm");

/// Runs the local cloud until Ctrl-C or SIGTERM.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let data = &args.data_dir;
    std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
    let wallet = load_or_create_wallet(&data.join("dev-wallet.key"))?;
    let fluxctl_key = ops::keys::config_dir().join(ops::keys::DEV_WALLET);
    ops::keys::write(&fluxctl_key, &wallet)?;

    let devnet = Devnet::open(&data.join("chain.redb"), || dev_genesis(&wallet, &dev_nodes(), chain::now_ms()))?;
    let (shutdown_tx, shutdown) = watch::channel(false);

    let raft_listener =
        TcpListener::bind(args.raft_listen).await.with_context(|| format!("binding raft {}", args.raft_listen))?;
    let raft_addr = raft_listener.local_addr()?;
    let regions = devnet.state().regions;
    let mut shards = BTreeMap::new();
    for region in &regions {
        let shard = Shard::open(ShardConfig {
            region: region.name.clone(),
            data_dir: data.join("shards"),
            raft_id: 1,
            raft_addr: raft_addr.to_string(),
            node_timeout: Duration::from_millis(1500),
        })
        .await?;
        shards.insert(region.name.clone(), shard);
    }
    let groups = Arc::new(shards.iter().map(|(r, s)| (r.clone(), s.raft.clone())).collect());
    tokio::spawn(serve(raft_listener, control_plane::network::router(groups), shutdown.clone()));

    let api_listener =
        TcpListener::bind(args.api_listen).await.with_context(|| format!("binding API {}", args.api_listen))?;
    let api_addr = api_listener.local_addr()?;
    let api_url = format!("http://{api_addr}");
    let api = Arc::new(Api {
        devnet: devnet.clone(),
        shards: shards.clone(),
        blobs: BlobStore::open(&data.join("blobs"))?,
        public_url: api_url.clone(),
    });
    tokio::spawn(serve(api_listener, router(api), shutdown.clone()));

    let mut supervisors = Vec::new();
    for shard in shards.values() {
        supervisors.push(actors::start_region(shard.clone(), devnet.clone()).await?);
    }
    tokio::spawn(devnet.clone().run(args.block_time, shutdown.clone()));

    // The dev nodes share one engine and artifact cache: they share one machine.
    let engine = WasmEngine::new(&EngineConfig::default())?;
    let cache = ComponentCache::new(engine.clone(), data.join("cache"))?;
    for node in dev_nodes() {
        let config = agent::AgentConfig {
            key: dev_node_key(&wallet, &node.id),
            node_id: node.id,
            api: api_url.clone(),
            beat_every: Duration::from_millis(300),
            bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            request_deadline: Duration::from_secs(10),
        };
        tokio::spawn(agent::run(config, cache.clone(), shutdown.clone()));
    }

    let gateway_addr = gateway::Gateway::spawn(
        gateway::GatewayConfig {
            listen: args.gateway_listen,
            domain: "localhost".into(),
            api: api_url.clone(),
            geo: GeoPoint { lat: 50.11, lon: 8.68 },
            trusted: vec![IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)],
        },
        shutdown.clone(),
    )
    .await?;
    let endpoints =
        serde_json::json!({ "api": api_url, "gateway": gateway_addr.to_string(), "raft": raft_addr.to_string() });
    std::fs::write(data.join("endpoints.json"), serde_json::to_vec_pretty(&endpoints)?)?;

    println!("fluxplane dev is up");
    println!("  API      {api_url}");
    println!("  gateway  http://{gateway_addr}  (apps at http://<app>.app.localhost:{}/)", gateway_addr.port());
    for r in &regions {
        let nodes: Vec<String> =
            dev_nodes().into_iter().filter(|n| n.region == r.name).map(|n| format!("{} ({})", n.id, n.tier)).collect();
        println!("  region   {} : {}", r.name, nodes.join(", "));
    }
    println!("  wallet   {} (funded; fluxctl uses it)", fluxctl_key.display());
    println!("  data     {}", data.display());
    println!("try: cargo run --release --bin fluxctl -- --api {api_url} app deploy examples/hello/fluxapp.toml --wait");

    if !args.no_demo {
        let api_url = api_url.clone();
        let wallet = wallet.clone();
        tokio::spawn(async move {
            if let Err(e) = deploy_demo(&api_url, &wallet).await {
                eprintln!("demo deploy failed: {e:#}");
            }
        });
    }

    shutdown_signal().await;
    eprintln!("shutting down");
    let _ = shutdown_tx.send(true);
    for (sup, handle) in supervisors {
        sup.stop(None);
        let _ = tokio::time::timeout(Duration::from_secs(2), handle).await;
    }
    for shard in shards.values() {
        shard.shutdown().await;
    }
    engine.shutdown();
    Ok(())
}

async fn deploy_demo(api_url: &str, wallet: &Keypair) -> anyhow::Result<()> {
    let api = ops::client::ApiClient::new(api_url);
    if api.get::<model::api::AppView>("/v1/apps/hello").await.is_ok() {
        return Ok(());
    }
    let mut spec = model::AppSpec::from_toml(HELLO_MANIFEST).map_err(|e| anyhow::anyhow!("{e}"))?;
    let hash = blake3::hash(HELLO_WASM).to_hex().to_string();
    api.put_blob(&hash, HELLO_WASM.to_vec()).await?;
    for c in &mut spec.components {
        c.wasm = format!("{}{hash}", model::spec::BLAKE3_PREFIX);
    }
    ops::commands::submit_spec(&api, wallet, spec).await?;
    println!("demo: deploying `hello`; soon at http://hello.app.localhost:<gateway port>/");
    Ok(())
}

fn load_or_create_wallet(path: &std::path::Path) -> anyhow::Result<Keypair> {
    if path.exists() {
        let text = std::fs::read_to_string(path)?;
        return Keypair::from_secret_hex(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()));
    }
    let key = Keypair::generate();
    ops::keys::write(path, &key)?;
    Ok(key)
}

async fn serve(listener: TcpListener, router: axum::Router, mut shutdown: watch::Receiver<bool>) {
    let result = axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!("server stopped: {e}");
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
