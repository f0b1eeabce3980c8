//! `fluxplane dev`: a whole cloud in one process, composed from the same roles as production:
//! the devnet chain, one control replica per region, the six dev nodes and a gateway.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chain::{Devnet, SharedChainSource, dev_genesis, dev_node_key, dev_nodes};
use control_plane::auth::AdminToken;
use model::geo::GeoPoint;
use model::keys::Keypair;
use runtime_wasm::{ComponentCache, EngineConfig, WasmEngine};

use crate::config::DaemonConfig;
use crate::roles::{self, Running, control, gateway, node};

/// Flags of `fluxplane dev`.
#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Where chain, shards, modules and compiled artifacts are kept; reuse it to keep your apps.
    #[arg(long, default_value = ".fluxplane")]
    pub data_dir: PathBuf,
    /// API address of the first region's replica (port 0 picks one; see <data-dir>/endpoints.json).
    /// The other regions' replicas listen on ports the OS picks; any one URL finds them all.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub api_listen: SocketAddr,
    /// Gateway address; apps answer at http://<app>.app.localhost:<port>/.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub gateway_listen: SocketAddr,
    /// Time between blocks.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub block_time: Duration,
    /// Do not deploy the example app.
    #[arg(long)]
    pub no_demo: bool,
    /// Timings and compaction (`[timing]`, `[raft]`), as for the other roles.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The Docker engine's socket the dev nodes run containers on. While it does not answer,
    /// the nodes run WASM only and say why (`fluxctl node list`).
    #[arg(long, default_value = runtime_oci::DEFAULT_SOCKET)]
    pub docker_socket: PathBuf,
    /// A MaxMind-format GeoIP database (GeoLite2-City layout) the gateway locates clients with.
    #[arg(long)]
    pub geoip_db: Option<PathBuf>,
    /// Serve HTTPS here too, with a self-signed `*.app.localhost` certificate (plain HTTP is
    /// not redirected in dev).
    #[arg(long)]
    pub gateway_tls_listen: Option<SocketAddr>,
    /// Where the gateway serves `/metrics` and `/healthz` (port 0 picks one; see
    /// <data-dir>/endpoints.json).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub gateway_admin_listen: SocketAddr,
    /// The DNS server (`ADDR:PORT`) that custom domains' TXT records are looked up at
    /// (default: `[control] dns` in --config, else the name servers in /etc/resolv.conf).
    #[arg(long)]
    pub dns: Option<SocketAddr>,
}

const HELLO_MANIFEST: &str = include_str!("../../examples/hello/fluxapp.toml");
const HELLO_WASM: &[u8] = include_bytes!("../../examples/hello/hello.wasm");

/// Runs the local cloud until Ctrl-C or SIGTERM.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let daemon = Arc::new(DaemonConfig::load(args.config.as_deref())?);
    let data = &args.data_dir;
    std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
    let wallet = roles::load_or_create_key(&data.join("dev-wallet.key"))?;
    let admin = load_or_create_token(&data.join("admin.token"))?;

    // Shards beside the chain mean a chain already existed here: it must still be there.
    let regions_dir = data.join("regions");
    let chain_path = data.join("chain.redb");
    let devnet = if has_entries(&regions_dir) {
        Devnet::open_existing(&chain_path)?
    } else {
        Devnet::open(&chain_path, || dev_genesis(&wallet, &dev_nodes(), chain::now_ms()))?
    };
    // A chain made before each node's ports were its own gave every dev node the same range;
    // under today's rules only the first of them is started.
    let chain_nodes = devnet.state().nodes;
    if let Some(n) = dev_nodes().iter().find(|n| {
        chain_nodes
            .get(&n.id)
            .is_none_or(|r| r.start.address != n.address || r.start.instance_ports != n.instance_ports)
    }) {
        anyhow::bail!(
            "{}: dev node {} is not on this chain with address {} and ports {} (the data dir was written by an \
             older fluxplane, when dev nodes shared one port range); remove {} to start afresh",
            chain_path.display(),
            n.id,
            n.address,
            n.instance_ports,
            data.display()
        );
    }
    let fluxctl_key = ops::keys::config_dir().join(ops::keys::DEV_WALLET);
    ops::keys::write(&fluxctl_key, &wallet)?;
    let source: SharedChainSource = Arc::new(devnet.clone());
    let (stop_blocks, blocks_stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(devnet.clone().run(args.block_time, blocks_stopped));

    let mut controls = Vec::new();
    let mut urls = BTreeMap::new();
    for (i, region) in devnet.state().regions.iter().enumerate() {
        let listen = if i == 0 { args.api_listen } else { SocketAddr::new(args.api_listen.ip(), 0) };
        let built = control::Config {
            region: region.name.clone(),
            id: 1,
            listen,
            advertise: None,
            peers: BTreeMap::new(),
            chain: control::ChainFrom::Local(source.clone()),
            data_dir: regions_dir.join(&region.name),
            admin: admin.clone(),
            wallet: Some(wallet.clone()),
            dns: args.dns.or(daemon.control.dns),
            daemon: daemon.clone(),
        }
        .build()
        .await?;
        urls.insert(region.name.clone(), built.url().to_string());
        controls.push(built.spawn()?);
    }
    let api_url = urls.values().next().cloned().context("the chain has no region")?;
    let all_urls: Vec<String> = urls.values().cloned().collect();

    // The dev nodes share one engine and artifact cache: they share one machine.
    let engine = WasmEngine::new(&EngineConfig::default())?;
    let cache = ComponentCache::new(engine.clone(), data.join("cache"))?;
    let mut nodes = Vec::new();
    for n in dev_nodes() {
        let built = node::Config {
            region: n.region.clone(),
            geo: n.geo,
            control: client::Client::new(all_urls.clone())?,
            // Dev nodes are registered in genesis on loopback (the gateway reaches them there).
            listen: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0),
            data_dir: data.join("nodes").join(&n.id),
            wallet: None,
            tier: n.tier,
            id: Some(n.id.clone()),
            country: n.country.clone(),
            advertise: None,
            instance_ports: n.instance_ports,
            key: Some(dev_node_key(&wallet, &n.id)),
            cache: Some(cache.clone()),
            docker_socket: args.docker_socket.clone(),
            iptables: None,
            daemon: daemon.clone(),
        }
        .build()
        .await?;
        nodes.push(built.spawn()?);
    }

    let gateway_args = gateway::GatewayArgs::default();
    let (gateway, gateway_addrs) = gateway::Config::new(::gateway::GatewayConfig {
        id: "dev-gateway".into(),
        listen: args.gateway_listen,
        domain: "localhost".into(),
        control: client::Client::new(all_urls.clone())?,
        geo: GeoPoint { lat: 50.11, lon: 8.68 },
        trusted: vec![IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)],
        geoip_db: args.geoip_db.clone(),
        spread_km: 0.0,
        response_header_timeout: daemon.timing.request_deadline + Duration::from_secs(1),
        tls: args.gateway_tls_listen.map(|listen| ::gateway::TlsConfig {
            listen,
            default_cert: None,
            domains: Vec::new(),
            redirect_http: false,
            reload_every: Duration::from_secs(2),
        }),
        admin_listen: Some(args.gateway_admin_listen),
        workers: 0,
        limits: gateway::limits(&daemon, &gateway_args),
    })
    .spawn_with_addrs()
    .await?;
    let gateway_addr = gateway_addrs.http;

    let endpoints = serde_json::json!({
        "api": api_url,
        "gateway": gateway_addr.to_string(),
        "gateway_tls": gateway_addrs.https.map(|a| a.to_string()),
        "gateway_admin": gateway_addrs.admin.map(|a| a.to_string()),
        "regions": urls,
    });
    std::fs::write(data.join("endpoints.json"), serde_json::to_vec_pretty(&endpoints)?)?;
    print_banner(&api_url, &gateway_addrs, &urls, &fluxctl_key, data);

    if !args.no_demo {
        let (api_url, wallet) = (api_url.clone(), wallet.clone());
        tokio::spawn(async move {
            if let Err(e) = deploy_demo(&api_url, &wallet).await {
                eprintln!("demo deploy failed: {e:#}");
            }
        });
    }

    // Drain from the front door inwards: gateway, nodes, control replicas, then the chain.
    let mut roles: Vec<Running> = vec![gateway];
    roles.extend(nodes);
    roles.extend(controls);
    let result = roles::run_until_signal(roles, daemon.timing.drain_deadline).await;
    let _ = stop_blocks.send(true);
    engine.shutdown();
    result
}

fn print_banner(api_url: &str, gateway: &gateway::Addrs, urls: &BTreeMap<String, String>, key: &Path, data: &Path) {
    println!("fluxplane dev is up");
    println!("  API      {api_url}");
    println!("  gateway  http://{}  (apps at http://<app>.app.localhost:{}/)", gateway.http, gateway.http.port());
    if let Some(https) = gateway.https {
        println!("  https    https://{https}  (self-signed *.app.localhost; curl -k)");
    }
    if let Some(admin) = gateway.admin {
        println!("  metrics  http://{admin}/metrics");
    }
    for (region, url) in urls {
        let nodes: Vec<String> =
            dev_nodes().into_iter().filter(|n| &n.region == region).map(|n| format!("{} ({})", n.id, n.tier)).collect();
        println!("  region   {region} : {url}  nodes {}", nodes.join(", "));
    }
    println!("  wallet   {} (funded; fluxctl uses it)", key.display());
    println!("  admin    export FLUXCTL_ADMIN_TOKEN=$(cat {})", data.join("admin.token").display());
    println!("  data     {}", data.display());
    println!("try: cargo run --release --bin fluxctl -- --api {api_url} app deploy examples/hello/fluxapp.toml --wait");
}

fn has_entries(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
}

fn load_or_create_token(path: &Path) -> anyhow::Result<AdminToken> {
    if path.exists() {
        return AdminToken::from_file(path);
    }
    let token = AdminToken::generate();
    std::fs::write(path, format!("{}\n", token.secret())).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(token)
}

async fn deploy_demo(api_url: &str, wallet: &Keypair) -> anyhow::Result<()> {
    let api = client::Client::from_list(api_url)?;
    match api.app("hello").await {
        Ok(_) => return Ok(()),
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e.into()),
    }
    let mut spec = model::AppSpec::from_toml(HELLO_MANIFEST).map_err(|e| anyhow::anyhow!("{e}"))?;
    let hash = blake3::hash(HELLO_WASM).to_hex().to_string();
    client::blobs::publish(&api, wallet, &[(hash.clone(), HELLO_WASM.to_vec())]).await?;
    for c in &mut spec.components {
        c.workload = model::spec::Workload::Wasm(format!("{}{hash}", model::spec::BLAKE3_PREFIX));
    }
    ops::commands::submit_spec(&api, wallet, spec).await?;
    println!("demo: deploying `hello`; soon at http://hello.app.localhost:<gateway port>/");
    Ok(())
}
