//! The command line: one function per verb.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use comfy_table::Table;
use model::api::{AppView, NodeView, StatusView, SubmitTxResponse, TxStatus, WalletView};
use model::chain::{SignedTx, Tx};
use model::keys::Keypair;
use model::spec::{AppSpec, BLAKE3_PREFIX};
use model::tier::format_flux;

use crate::client::ApiClient;
use crate::keys;

/// fluxctl: deploy and run apps on a fluxplane cloud.
#[derive(Debug, Parser)]
#[command(name = "fluxctl", version)]
pub struct Cli {
    /// Control-plane API. The default is where `fluxplane dev` listens.
    #[arg(long, global = true, env = "FLUXCTL_API", default_value = "http://127.0.0.1:7070")]
    pub api: String,
    /// Gateway host:port that app URLs are printed with.
    #[arg(long, global = true, env = "FLUXCTL_GATEWAY", default_value = "localhost:8080")]
    pub gateway: String,
    /// Key file to sign with (default: wallet.key, else the dev wallet, in the config dir).
    #[arg(long, global = true, env = "FLUXCTL_KEY")]
    pub key: Option<PathBuf>,
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
    /// Chain tip and the state of each regional shard.
    Status,
    /// Deploy and manage apps.
    #[command(subcommand)]
    App(AppCommand),
    /// Inspect nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Wallet keys.
    #[command(subcommand)]
    Wallet(WalletCommand),
}

/// App verbs.
#[derive(Debug, Subcommand)]
pub enum AppCommand {
    /// Register (or update, if you own it) the app in a manifest.
    Deploy {
        /// The manifest, e.g. examples/hello/fluxapp.toml.
        file: PathBuf,
        /// Follow the deploy until every instance runs, then print the URL.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// List apps.
    List,
    /// One app's placements and instance states.
    Status {
        /// App name.
        name: String,
    },
    /// Remove an app (owner only).
    Rm {
        /// App name.
        name: String,
    },
}

/// Node verbs.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes with liveness and free capacity.
    List,
}

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

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let api = ApiClient::new(&cli.api);
    match &cli.command {
        Command::Status => status(&cli, &api).await,
        Command::App(AppCommand::Deploy { file, wait, timeout }) => {
            deploy(&cli, &api, file, *wait, Duration::from_secs(*timeout)).await
        }
        Command::App(AppCommand::List) => app_list(&cli, &api).await,
        Command::App(AppCommand::Status { name }) => app_status(&cli, &api, name).await,
        Command::App(AppCommand::Rm { name }) => app_rm(&cli, &api, name).await,
        Command::Node(NodeCommand::List) => node_list(&cli, &api).await,
        Command::Wallet(WalletCommand::Show) => wallet_show(&cli, &api).await,
        Command::Wallet(WalletCommand::New { path }) => wallet_new(path.clone()),
    }
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

async fn status(cli: &Cli, api: &ApiClient) -> anyhow::Result<()> {
    let s: StatusView = api.get("/v1/status").await?;
    if cli.output == Output::Json {
        return print_json(&s);
    }
    println!("chain height {} ({})", s.chain_height, &s.chain_tip[..s.chain_tip.len().min(12)]);
    let mut t = Table::new();
    t.set_header(["region", "leader", "term", "applied", "nodes up", "placed", "healthy"]);
    for r in &s.regions {
        t.add_row([
            r.name.clone(),
            r.leader.map_or("-".into(), |l| l.to_string()),
            r.term.to_string(),
            r.applied_height.map_or("-".into(), |h| h.to_string()),
            format!("{}/{}", r.nodes_up, r.nodes),
            r.instances_placed.to_string(),
            r.instances_healthy.to_string(),
        ]);
    }
    println!("{t}");
    Ok(())
}

/// Reads a manifest, uploads its modules, and returns the spec in chain form.
pub async fn prepare(api: &ApiClient, file: &Path) -> anyhow::Result<AppSpec> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let mut spec = AppSpec::from_toml(&text).map_err(|e| anyhow::anyhow!("{} is invalid:\n{e}", file.display()))?;
    let dir = file.parent().unwrap_or(Path::new("."));
    for (i, c) in spec.components.iter_mut().enumerate() {
        let path = dir.join(&c.wasm);
        let bytes = std::fs::read(&path).with_context(|| format!("component[{i}].wasm: reading {}", path.display()))?;
        let hash = blake3::hash(&bytes).to_hex().to_string();
        api.put_blob(&hash, bytes).await?;
        c.wasm = format!("{BLAKE3_PREFIX}{hash}");
    }
    Ok(spec)
}

/// Signs and submits a register (or, for an app the key owns, an update) of `spec`.
pub async fn submit_spec(api: &ApiClient, key: &Keypair, spec: AppSpec) -> anyhow::Result<(SubmitTxResponse, bool)> {
    let existing: Option<AppView> = api.get(&format!("/v1/apps/{}", spec.name)).await.ok();
    let payment = model::price::app_price(&spec);
    let update = existing.is_some();
    let tx = if update { Tx::AppUpdate { spec, payment } } else { Tx::AppRegister { spec, payment } };
    let stx = SignedTx::sign(tx, nonce(), key);
    Ok((api.post("/v1/transactions", &stx).await?, update))
}

fn nonce() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(1)
}

async fn wait_included(api: &ApiClient, tx_id: &str, deadline: Instant) -> anyhow::Result<u64> {
    loop {
        match api.get::<TxStatus>(&format!("/v1/transactions/{tx_id}")).await? {
            TxStatus::Included { height } => return Ok(height),
            TxStatus::Rejected { reason } => anyhow::bail!("the chain rejected the transaction: {reason}"),
            TxStatus::Pending | TxStatus::Unknown => {}
        }
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for a block");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn deploy(cli: &Cli, api: &ApiClient, file: &Path, wait: bool, timeout: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    let deadline = started + timeout;
    let (key, _) = keys::load(cli.key.as_ref())?;
    let spec = prepare(api, file).await?;
    let name = spec.name.clone();
    let price = model::price::app_price(&spec);
    let (resp, update) = submit_spec(api, &key, spec).await?;
    let url = format!("http://{name}.app.{}/", cli.gateway);
    eprintln!(
        "{} `{name}`: tx {} paying {} FLUX",
        if update { "updating" } else { "registering" },
        &resp.tx_id[..12],
        format_flux(price)
    );
    if !wait {
        println!("{url}");
        return Ok(());
    }
    let height = wait_included(api, &resp.tx_id, deadline).await?;
    eprintln!("registered in block {height} ({:.1}s)", started.elapsed().as_secs_f64());
    let (mut last_placed, mut last_running) = (usize::MAX, usize::MAX);
    loop {
        let app: AppView = api.get(&format!("/v1/apps/{name}")).await?;
        let want: u32 = app.quotas.values().sum();
        let placed = app.placements.len();
        let running = app.running();
        if (placed, running) != (last_placed, last_running) {
            eprintln!("placed {placed}/{want}, running {running}/{want} ({:.1}s)", started.elapsed().as_secs_f64());
            (last_placed, last_running) = (placed, running);
        }
        if want > 0 && running >= want as usize && app.updated_height >= height {
            if let Some(why) = app.shortfall.get("all") {
                eprintln!("warning: {why}");
            }
            break;
        }
        if Instant::now() >= deadline {
            let why: Vec<String> = app.shortfall.iter().map(|(r, s)| format!("{r}: {s}")).collect();
            anyhow::bail!(
                "timed out with {running}/{want} running{}",
                if why.is_empty() { String::new() } else { format!(" ({})", why.join("; ")) }
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("ready in {:.1}s", started.elapsed().as_secs_f64());
    println!("{url}");
    Ok(())
}

async fn app_list(cli: &Cli, api: &ApiClient) -> anyhow::Result<()> {
    let apps: Vec<AppView> = api.get("/v1/apps").await?;
    if cli.output == Output::Json {
        return print_json(&apps);
    }
    let mut t = Table::new();
    t.set_header(["name", "instances", "running", "regions", "expires", "url"]);
    for a in &apps {
        let regions: Vec<String> = a.quotas.iter().map(|(r, n)| format!("{r}:{n}")).collect();
        t.add_row([
            a.name.clone(),
            a.instances.to_string(),
            a.running().to_string(),
            regions.join(" "),
            a.expires_height.to_string(),
            format!("http://{}.app.{}/", a.name, cli.gateway),
        ]);
    }
    println!("{t}");
    Ok(())
}

async fn app_status(cli: &Cli, api: &ApiClient, name: &str) -> anyhow::Result<()> {
    let app: AppView = api.get(&format!("/v1/apps/{name}")).await?;
    if cli.output == Output::Json {
        return print_json(&app);
    }
    println!(
        "{} (owner {}…), {} instance(s) wanted, registered in block {}, expires at {}",
        app.name,
        &app.owner.0[..12],
        app.instances,
        app.registered_height,
        app.expires_height
    );
    let mut t = Table::new();
    t.set_header(["instance", "region", "state", "endpoints", "message"]);
    for p in &app.placements {
        let eps: Vec<String> = p.endpoints.iter().map(|(c, a)| format!("{c}={a}")).collect();
        t.add_row([
            p.id.clone(),
            p.region.clone(),
            format!("{:?}", p.state).to_lowercase(),
            eps.join(" "),
            p.message.clone().unwrap_or_default(),
        ]);
    }
    println!("{t}");
    for (region, why) in &app.shortfall {
        println!("shortfall in {region}: {why}");
    }
    Ok(())
}

async fn app_rm(cli: &Cli, api: &ApiClient, name: &str) -> anyhow::Result<()> {
    let (key, _) = keys::load(cli.key.as_ref())?;
    let stx = SignedTx::sign(Tx::AppRemove { name: name.to_string() }, nonce(), &key);
    let resp: SubmitTxResponse = api.post("/v1/transactions", &stx).await?;
    let height = wait_included(api, &resp.tx_id, Instant::now() + Duration::from_secs(60)).await?;
    eprintln!("removed `{name}` in block {height}");
    Ok(())
}

async fn node_list(cli: &Cli, api: &ApiClient) -> anyhow::Result<()> {
    let nodes: Vec<NodeView> = api.get("/v1/nodes").await?;
    if cli.output == Output::Json {
        return print_json(&nodes);
    }
    let mut t = Table::new();
    t.set_header(["node", "region", "tier", "up", "last beat", "instances", "free cpu", "free ram"]);
    for n in &nodes {
        t.add_row([
            n.id.clone(),
            n.region.clone(),
            n.tier.to_string(),
            if n.up { "yes".into() } else { "NO".into() },
            n.last_heartbeat_ms_ago.map_or("never".into(), |ms| format!("{ms} ms ago")),
            n.instances.to_string(),
            format!("{:.1}", n.free.cpu_tenths as f64 / 10.0),
            format!("{} MB", n.free.ram_mb),
        ]);
    }
    println!("{t}");
    Ok(())
}

async fn wallet_show(cli: &Cli, api: &ApiClient) -> anyhow::Result<()> {
    let (key, path) = keys::load(cli.key.as_ref())?;
    let w: WalletView = api.get(&format!("/v1/wallets/{}", key.public())).await?;
    if cli.output == Output::Json {
        return print_json(&w);
    }
    println!("address {}\nbalance {} FLUX\nkey     {}", w.address, format_flux(w.balance), path.display());
    Ok(())
}

fn wallet_new(path: Option<PathBuf>) -> anyhow::Result<()> {
    let path = path.unwrap_or_else(|| keys::config_dir().join(keys::WALLET));
    anyhow::ensure!(!path.exists(), "{} exists already; refusing to overwrite a key", path.display());
    let key = Keypair::generate();
    keys::write(&path, &key)?;
    println!("address {}\nkey     {}", key.public(), path.display());
    Ok(())
}
