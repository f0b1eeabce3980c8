//! The control loop at scale, as processes: a `fluxplane chain`, the control replicas of the
//! three default regions (one each, or three with `--replicas 3`), and simulated node agents in
//! this process, each with its own key, registered on chain and sending real signed heartbeats
//! that report their assigned instances healthy. Then it registers the apps and measures:
//!
//! - the time to place every instance (placements/s);
//! - each region leader's CPU and RSS at steady state, and heartbeat latency (p50/p99) as the
//!   agents see it (the leader's handling plus loopback HTTP);
//! - the time to re-place every instance of region eu elsewhere after all its nodes stop.
//!
//! Run through `benches/scale/run.sh --nodes N --apps A`; the last line is machine-readable.
//! `--log info --keep` keeps the processes' logs (and stores) for a closer look.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use model::api::{Heartbeat, InstanceReport, SignedHeartbeat};
use model::chain::{Capability, NodeStart, SignedTx, Tx};
use model::geo::default_regions;
use model::keys::Keypair;
use model::tier::{FLUX, Tier};

const TOKEN: &str = "scale-harness-admin-token-0123456789abcdef";

struct Args {
    fluxplane: PathBuf,
    nodes: usize,
    apps: usize,
    replicas: u64,
    steady: Duration,
    /// How often agents beat (default 500 ms, as real agents).
    beat_every: Duration,
    /// The control plane's node timeout (default 3 s); a slower beat needs a longer one.
    node_timeout: Duration,
    /// `RUST_LOG` of the processes (`--log`, default `warn`).
    log: String,
    /// Keep the working directory (logs and stores) instead of removing it (`--keep`).
    keep: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let number = |name: &str, default: usize| -> anyhow::Result<usize> {
        value(name).map_or(Ok(default), |v| v.parse().with_context(|| format!("{name} takes a number, not `{v}`")))
    };
    let fluxplane = match value("--fluxplane") {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()?.with_file_name("fluxplane"),
    };
    anyhow::ensure!(
        fluxplane.exists(),
        "{} not found: build it (cargo build --release -p fluxplane)",
        fluxplane.display()
    );
    let replicas = number("--replicas", 1)? as u64;
    anyhow::ensure!(replicas == 1 || replicas == 3, "--replicas is 1 or 3");
    Ok(Args {
        fluxplane,
        nodes: number("--nodes", 3_000)?,
        apps: number("--apps", 2_500)?,
        replicas,
        steady: Duration::from_secs(number("--steady-secs", 10)? as u64),
        beat_every: Duration::from_millis(number("--beat-ms", 500)? as u64),
        node_timeout: Duration::from_millis(number("--node-timeout-ms", 3000)? as u64),
        log: value("--log").unwrap_or_else(|| "warn".into()),
        keep: args.iter().any(|a| a == "--keep"),
    })
}

/// Child processes, stopped when dropped (also on a panic or an early error).
#[derive(Default)]
struct Procs(Vec<(String, Child)>);

impl Procs {
    fn spawn(
        &mut self,
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
        log_level: &str,
    ) -> anyhow::Result<u32> {
        let out = std::fs::File::create(log)?;
        let child = Command::new(program)
            .args(args)
            .env("RUST_LOG", log_level)
            .stdout(out.try_clone()?)
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let pid = child.id();
        self.0.push((name.to_string(), child));
        Ok(pid)
    }

    fn check(&mut self) -> anyhow::Result<()> {
        for (name, child) in &mut self.0 {
            if let Some(status) = child.try_wait()? {
                bail!("{name} exited early ({status}); see its log");
            }
        }
        Ok(())
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("odd /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 =
        fields.get(11).context("utime")?.parse::<f64>()? + fields.get(12).context("stime")?.parse::<f64>()?;
    Ok(ticks / 100.0)
}

/// Resident memory of a process, MB.
fn rss_mb(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("VmRSS")?
        .parse()?;
    Ok(kb / 1024.0)
}

/// A simulated node agent: its key, its region, what it was told to run.
struct Agent {
    id: String,
    region: String,
    key: Keypair,
    /// Its registered address; its instance endpoints and its API are there.
    address: std::net::IpAddr,
    /// The port of the harness's one challenge listener (on every loopback address).
    proof_port: u16,
}

/// Answers the shard leaders' address challenges for every simulated node: one listener on
/// 0.0.0.0, so that each node's own loopback address reaches it, signing with the key of the
/// node asked for, over the address that was dialed. Real HTTP/1.1, one request a connection.
async fn serve_address_proofs(
    listener: tokio::net::TcpListener,
    keys: Arc<std::collections::HashMap<String, Keypair>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    while let Ok((mut socket, _)) = listener.accept().await {
        let keys = keys.clone();
        tokio::spawn(async move {
            let mut head = vec![0u8; 2048];
            let Ok(n) = socket.read(&mut head).await else { return };
            let text = String::from_utf8_lossy(&head[..n]).to_string();
            let target = text.split_whitespace().nth(1).unwrap_or_default().to_string();
            let query = target.split_once('?').map_or("", |(_, q)| q);
            let param = |name: &str| {
                query.split('&').find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('='))).unwrap_or("")
            };
            let (node, nonce) = (param("node").to_string(), param("nonce").to_string());
            let Ok(local) = socket.local_addr() else { return };
            let answer = match keys.get(&node) {
                Some(key) => {
                    let proof = model::api::AddressProof::sign(&node, &local.to_string(), &nonce, key);
                    let body = serde_json::to_string(&proof).unwrap_or_default();
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: \
                         close\r\n\r\n{body}",
                        body.len()
                    )
                }
                None => "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string(),
            };
            let _ = socket.write_all(answer.as_bytes()).await;
        });
    }
}

/// Heartbeat round trips, µs, while recording is on.
#[derive(Default)]
struct Latencies {
    recording: AtomicBool,
    samples: Mutex<Vec<u32>>,
    errors: Mutex<BTreeMap<String, usize>>,
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// Beats for `agent` until `stop` turns true, reporting every assigned instance healthy.
async fn run_agent(
    agent: Agent,
    client: client::Client,
    stop: Arc<AtomicBool>,
    latencies: Arc<Latencies>,
    offset: Duration,
    every: Duration,
) {
    tokio::time::sleep(offset).await;
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut running: Vec<InstanceReport> = Vec::new();
    loop {
        ticks.tick().await;
        // Looked at after the tick: the region's loss starts when `stop` turns, not a beat later.
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let beat = Heartbeat {
            node: agent.id.clone(),
            at_ms: chain::now_ms(),
            instances: running.clone(),
            unavailable: Default::default(),
            api: Some(std::net::SocketAddr::new(agent.address, agent.proof_port).to_string()),
        };
        let signed = SignedHeartbeat::sign(beat, &agent.key);
        let started = Instant::now();
        let answer = client.heartbeat(&signed, Duration::from_secs(5)).await;
        let took = started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
        if latencies.recording.load(Ordering::Relaxed) {
            latencies.samples.lock().unwrap_or_else(|e| e.into_inner()).push(took);
        }
        match answer {
            Ok(assignments) => {
                running = assignments
                    .instances
                    .iter()
                    .map(|a| InstanceReport {
                        id: a.id.clone(),
                        spec_height: a.spec_height,
                        secrets_version: a.secrets_version,
                        endpoints: a
                            .components
                            .iter()
                            .map(|c| (c.name.clone(), format!("{}:20000", agent.address)))
                            .collect(),
                        healthy: true,
                        message: None,
                        runs: Default::default(),
                    })
                    .collect();
            }
            Err(e) => {
                let kind = e.code().unwrap_or("unreachable").to_string();
                *latencies.errors.lock().unwrap_or_else(|e| e.into_inner()).entry(kind).or_default() += 1;
            }
        }
    }
    let _ = agent.region;
}

/// Signs and submits `txs` in order, waiting for a block when the mempool is full. Nonces count
/// up locally; the control replicas announce themselves with the same wallet, so a
/// `stale_nonce` asks the chain for the next one again.
async fn submit_all(chain: &client::Client, wallet: &Keypair, txs: Vec<Tx>, what: &str) -> anyhow::Result<()> {
    let total = txs.len();
    let mut nonce = chain.wallet(&wallet.public().0).await?.next_nonce;
    for (i, tx) in txs.into_iter().enumerate() {
        loop {
            let signed = SignedTx::sign(tx.clone(), nonce, wallet);
            match chain.submit_tx(&signed).await {
                Ok(_) => break,
                Err(e) if e.code() == Some("busy") => tokio::time::sleep(Duration::from_millis(200)).await,
                Err(e) if e.code() == Some("stale_nonce") => nonce = chain.wallet(&wallet.public().0).await?.next_nonce,
                Err(e) => bail!("submitting {what} {i} of {total}: {e}"),
            }
        }
        nonce += 1;
        if (i + 1) % 5_000 == 0 {
            eprintln!("  {what}: {} of {total} submitted", i + 1);
        }
    }
    Ok(())
}

/// Per region: (nodes up, instances placed), asked of each region's leader alone.
async fn region_counts(regions: &BTreeMap<String, client::Client>) -> BTreeMap<String, (usize, usize)> {
    let mut counts = BTreeMap::new();
    for (name, c) in regions {
        if let Ok(view) = c.status().await
            && let Some(r) = view.regions.iter().find(|r| &r.name == name)
        {
            counts.insert(name.clone(), (r.nodes_up, r.instances_placed));
        }
    }
    counts
}

/// Per region: reconciles (ran, changed) by cause, from its leader's replica status.
async fn loop_counts(regions: &BTreeMap<String, client::Client>) -> LoopCounts {
    let mut counts = BTreeMap::new();
    for (name, c) in regions {
        if let Ok(status) = c.with_admin_token(Some(TOKEN.into())).replica_status(name).await
            && let Some(l) = status.control_loop
        {
            counts.insert(name.clone(), l.reconciles.into_iter().map(|(k, v)| (k, (v.ran, v.changed))).collect());
        }
    }
    counts
}

type LoopCounts = BTreeMap<String, BTreeMap<String, (u64, u64)>>;

/// Prints, per region, the reconciles by cause between two [`loop_counts`].
fn print_reconciles(during: &str, before: &LoopCounts, after: &LoopCounts) {
    for (region, after) in after {
        let line: Vec<String> = after
            .iter()
            .filter_map(|(cause, (ran, changed))| {
                let (ran0, changed0) = before.get(region).and_then(|b| b.get(cause)).copied().unwrap_or_default();
                (ran > &ran0).then(|| format!("{cause} {} ({} changed)", ran - ran0, changed - changed0))
            })
            .collect();
        eprintln!(
            "reconciles in {region} during {during}: {}",
            if line.is_empty() { "none".into() } else { line.join(", ") }
        );
    }
}

async fn wait_until<F: std::future::Future<Output = bool>>(
    within: Duration,
    what: &str,
    mut check: impl FnMut() -> F,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        if check().await {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{what}: not within {within:?}")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let dir = tempfile::tempdir()?;
    let keep = args.keep;
    let result = run(args, dir.path()).await;
    if result.is_err() {
        // The processes' last words, before their directory goes.
        for entry in std::fs::read_dir(dir.path())?.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(5).collect();
                eprintln!("--- {}:", path.display());
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
    if keep {
        eprintln!("logs and stores kept in {}", dir.keep().display());
    }
    result
}

async fn run(args: Args, d: &Path) -> anyhow::Result<()> {
    std::fs::write(d.join("token"), TOKEN)?;
    let config = d.join("fluxplane.toml");
    std::fs::write(
        &config,
        format!(
            "[timing]\nheartbeat_period = \"{}ms\"\nnode_timeout = \"{}ms\"\nplacement_lease = \"{}ms\"\n",
            args.beat_every.as_millis(),
            args.node_timeout.as_millis(),
            (args.beat_every * 4).max(Duration::from_secs(10)).as_millis()
        ),
    )?;
    let mut procs = Procs::default();
    let s = |v: &str| v.to_string();

    // The chain, funded for every node's collateral.
    let chain_addr = format!("127.0.0.1:{}", free_port()?);
    let flux = (args.nodes as u64 * Tier::Cumulus.collateral() / FLUX + 10_000_000).to_string();
    let chain_args = [s("chain"), s("--listen"), chain_addr.clone(), s("--block-time"), s("1s"), s("--data-dir")]
        .into_iter()
        .chain([d.join("chain").display().to_string(), s("--genesis-flux"), flux])
        .collect::<Vec<_>>();
    procs.spawn("chain", &args.fluxplane, &chain_args, &d.join("chain.log"), &args.log)?;
    let key_path = d.join("chain").join("genesis.key");
    wait_until(Duration::from_secs(30), "the chain starts", || async { key_path.exists() }).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let wallet = Keypair::from_secret_hex(&std::fs::read_to_string(&key_path)?).map_err(anyhow::Error::msg)?;
    let chain_url = format!("http://{chain_addr}");
    let chain = client::Client::new(vec![chain_url.clone()])?;

    // The control replicas: ids 11.., 21.., 31.. for eu, na, as.
    let regions = default_regions();
    let mut leaders_pid: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let mut clients: BTreeMap<String, client::Client> = BTreeMap::new();
    for (ri, region) in regions.iter().enumerate() {
        let ids: Vec<u64> = (1..=args.replicas).map(|r| (ri as u64 + 1) * 10 + r).collect();
        let addrs: Vec<String> =
            ids.iter().map(|_| free_port().map(|p| format!("127.0.0.1:{p}"))).collect::<Result<_, _>>()?;
        let peers = ids.iter().zip(&addrs).map(|(id, a)| format!("{id}={a}")).collect::<Vec<_>>().join(",");
        let mut urls = Vec::new();
        for (id, addr) in ids.iter().zip(&addrs) {
            let data = d.join(format!("c{id}"));
            let a = vec![
                s("control"),
                s("--region"),
                region.name.clone(),
                s("--id"),
                id.to_string(),
                s("--listen"),
                addr.clone(),
                s("--peers"),
                peers.clone(),
                s("--chain"),
                chain_url.clone(),
                s("--data-dir"),
                data.display().to_string(),
                s("--admin-token-file"),
                d.join("token").display().to_string(),
                s("--wallet"),
                key_path.display().to_string(),
                s("--config"),
                config.display().to_string(),
            ];
            let pid =
                procs.spawn(&format!("control {id}"), &args.fluxplane, &a, &d.join(format!("c{id}.log")), &args.log)?;
            leaders_pid.entry(region.name.clone()).or_default().push(pid);
            urls.push(format!("http://{addr}"));
        }
        let c = client::Client::new(urls)?;
        wait_until(Duration::from_secs(30), "replicas answer", || {
            let c = c.clone();
            let region = region.name.clone();
            async move { c.replica_identity(&region).await.is_ok() }
        })
        .await?;
        if args.replicas > 1 {
            c.with_admin_token(Some(TOKEN.into())).shard_init(&region.name).await?;
        }
        clients.insert(region.name.clone(), c.region_scoped());
    }
    wait_until(Duration::from_secs(60), "every region has a leader", || {
        let clients = clients.clone();
        async move {
            let mut all = true;
            for (name, c) in &clients {
                all &= c.status().await.is_ok_and(|v| v.regions.iter().any(|r| &r.name == name && r.leader.is_some()));
            }
            all
        }
    })
    .await?;
    procs.check()?;
    eprintln!("cloud up: chain and {} control replicas", regions.len() as u64 * args.replicas);

    // Nodes register on chain, dealt round robin over the regions.
    let started = Instant::now();
    let mut agents = Vec::new();
    let mut txs = Vec::new();
    for i in 0..args.nodes {
        let r = &regions[i % regions.len()];
        let key = Keypair::generate();
        let start = NodeStart {
            node_id: format!("{}-s{i}", r.name),
            collateral: Tier::Cumulus.collateral(),
            region: r.name.clone(),
            continent: r.continent.clone(),
            country: "XX".into(),
            geo: r.center,
            capabilities: vec![Capability::Wasm],
            node_key: key.public(),
            // Each its own loopback address: a node's address and ports are its own.
            address: std::net::Ipv4Addr::new(127, 1 + (i >> 16) as u8, (i >> 8) as u8, i as u8).into(),
            instance_ports: model::chain::PortRange::DEFAULT,
        };
        txs.push(Tx::NodeStart(start.clone()));
        agents.push(Agent { id: start.node_id, region: r.name.clone(), key, address: start.address, proof_port: 0 });
    }
    submit_all(&chain, &wallet, txs, "node registrations").await?;
    eprintln!("{} nodes submitted in {:.1} s", args.nodes, started.elapsed().as_secs_f64());

    // Leaders give work only to nodes that answer on their address.
    let proofs = tokio::net::TcpListener::bind("0.0.0.0:0").await.context("binding the challenge listener")?;
    let proof_port = proofs.local_addr()?.port();
    let keys = agents.iter().map(|a| (a.id.clone(), a.key.clone())).collect();
    tokio::spawn(serve_address_proofs(proofs, Arc::new(keys)));
    let agents: Vec<Agent> = agents.into_iter().map(|a| Agent { proof_port, ..a }).collect();

    // The agents beat from now on.
    let latencies = Arc::new(Latencies::default());
    let stops: BTreeMap<String, Arc<AtomicBool>> =
        regions.iter().map(|r| (r.name.clone(), Arc::new(AtomicBool::new(false)))).collect();
    let total = agents.len().max(1);
    for (i, agent) in agents.into_iter().enumerate() {
        let offset = args.beat_every.mul_f64(i as f64 / total as f64);
        let client = clients[&agent.region].clone();
        let stop = stops[&agent.region].clone();
        tokio::spawn(run_agent(agent, client, stop, latencies.clone(), offset, args.beat_every));
    }
    let per_region = args.nodes / regions.len();
    let up = wait_until(Duration::from_secs(300), "every node registered and beating", || {
        let clients = clients.clone();
        async move {
            let counts = region_counts(&clients).await;
            counts.len() == 3 && counts.values().all(|(up, _)| *up >= per_region)
        }
    })
    .await?;
    eprintln!("all {} nodes up {:.1} s after registering", args.nodes, up.as_secs_f64());
    procs.check()?;

    // Apps: 4 instances of 0.1 cpu and 64 MB, anywhere.
    let wasm = format!("blake3:{}", blake3::hash(b"scale-harness").to_hex());
    let mut txs = Vec::new();
    for a in 0..args.apps {
        let spec = model::AppSpec::from_toml(&format!(
            "name = \"s{a}\"\ninstances = 4\n[[component]]\nname = \"web\"\nwasm = \"{wasm}\"\ncpu = 0.1\nram = 64\n"
        ))?;
        let payment = model::price::app_price(&spec);
        txs.push(Tx::AppRegister { spec, payment });
    }
    let want = args.apps * 4;
    // Placements are counted while the apps are submitted: the chain delivers them a block a
    // second, and the loop places each block's apps as it lands.
    let poller = {
        let clients = clients.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut samples: Vec<(Instant, usize)> = Vec::new();
            while started.elapsed() < Duration::from_secs(900) {
                let placed: usize = region_counts(&clients).await.values().map(|(_, p)| p).sum();
                samples.push((Instant::now(), placed));
                if placed >= want {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            samples
        })
    };
    let submitted = Instant::now();
    submit_all(&chain, &wallet, txs, "app registrations").await?;
    let submit_s = submitted.elapsed().as_secs_f64();
    let samples = poller.await?;
    let Some(&(done, _)) = samples.iter().find(|(_, placed)| *placed >= want) else {
        bail!("not every instance was placed within 15 minutes: {:?}", samples.last().map(|(_, p)| p));
    };
    let first = samples.iter().find(|(_, placed)| *placed > 0).map_or(done, |(at, _)| *at);
    let placing_s = done.duration_since(first).as_secs_f64().max(0.001);
    let placements_per_s = want as f64 / placing_s;
    // The fastest second: how fast the loop placed when a large block landed.
    let peak = samples
        .iter()
        .enumerate()
        .filter_map(|(i, (at, placed))| {
            let (then, before) =
                samples[..i].iter().rev().find(|(t, _)| at.duration_since(*t) >= Duration::from_secs(1))?;
            Some((placed - before) as f64 / at.duration_since(*then).as_secs_f64())
        })
        .fold(0.0, f64::max);
    eprintln!(
        "{want} instances placed: apps submitted in {submit_s:.1} s (the chain takes them a block a second); \
         {placing_s:.2} s from the first placement to the last; fastest second {peak:.0} placements/s"
    );
    procs.check()?;

    // Steady state: every instance placed and reported healthy; measure the leaders.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let leaders: Vec<(String, u32)> = leaders_pid.iter().map(|(r, pids)| (r.clone(), pids[0])).collect();
    let cpu_before: Vec<f64> = leaders.iter().map(|(_, pid)| cpu_seconds(*pid)).collect::<Result<_, _>>()?;
    let loops_before = loop_counts(&clients).await;
    latencies.recording.store(true, Ordering::Relaxed);
    let window = Instant::now();
    tokio::time::sleep(args.steady).await;
    latencies.recording.store(false, Ordering::Relaxed);
    let secs = window.elapsed().as_secs_f64();
    print_reconciles("the steady window", &loops_before, &loop_counts(&clients).await);
    let cores: Vec<f64> = leaders
        .iter()
        .zip(&cpu_before)
        .map(|((_, pid), before)| cpu_seconds(*pid).map(|after| (after - before) / secs))
        .collect::<Result<_, _>>()?;
    let rss: Vec<f64> = leaders.iter().map(|(_, pid)| rss_mb(*pid)).collect::<Result<_, _>>()?;
    let mut samples = std::mem::take(&mut *latencies.samples.lock().unwrap_or_else(|e| e.into_inner()));
    samples.sort_unstable();
    let beats_per_s = samples.len() as f64 / secs;
    let (p50, p99) = (percentile(&samples, 0.5), percentile(&samples, 0.99));
    let errors = latencies.errors.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for ((region, _), (c, m)) in leaders.iter().zip(cores.iter().zip(&rss)) {
        eprintln!("leader of {region}: {c:.2} cores, {m:.0} MB RSS");
    }
    let steady_cores = cores.iter().copied().fold(0.0, f64::max);
    let leader_rss = rss.iter().copied().fold(0.0, f64::max);
    let per_leader_beats = beats_per_s / regions.len() as f64;
    eprintln!(
        "heartbeats: {beats_per_s:.0}/s in all ({per_leader_beats:.0}/s per leader), round trip p50 {p50:.2} ms, p99 \
         {p99:.2} ms; errors since start {errors:?}"
    );
    let cores_per_1000 = steady_cores / (per_leader_beats / 1000.0);

    // Region loss: every eu node stops beating.
    let before = region_counts(&clients).await;
    let eu_placed = before.get("eu").map_or(0, |(_, p)| *p);
    let loops_before = loop_counts(&clients).await;
    stops["eu"].store(true, Ordering::Relaxed);
    let lost = Instant::now();
    // A line a second: how the loss unfolds (eu's nodes up and instances placed; elsewhere).
    let last_line = std::sync::Mutex::new(Instant::now());
    let replaced = wait_until(Duration::from_secs(300), "eu's instances re-placed in na and as", || {
        let clients = clients.clone();
        let last_line = &last_line;
        async move {
            let counts = region_counts(&clients).await;
            let elsewhere: usize = counts.iter().filter(|(r, _)| r.as_str() != "eu").map(|(_, (_, p))| p).sum();
            let mut last = last_line.lock().unwrap_or_else(|e| e.into_inner());
            if last.elapsed() >= Duration::from_secs(1) {
                *last = Instant::now();
                let (eu_up, eu_now) = counts.get("eu").copied().unwrap_or_default();
                eprintln!(
                    "  {:>5.1} s after the loss: eu {eu_up} nodes up, {eu_now} instances placed; {elsewhere} of \
                     {want} placed in na and as",
                    lost.elapsed().as_secs_f64()
                );
            }
            counts.len() == 3 && elsewhere >= want
        }
    })
    .await;
    let region_replace_s = match replaced {
        Ok(_) => lost.elapsed().as_secs_f64(),
        Err(e) => {
            eprintln!("{e}");
            f64::NAN
        }
    };
    let timeout_s = args.node_timeout.as_secs_f64();
    eprintln!(
        "region eu lost ({per_region} nodes, {eu_placed} instances): all re-placed in na and as after \
         {region_replace_s:.2} s (node timeout {timeout_s:.1} s)"
    );
    print_reconciles("the region loss", &loops_before, &loop_counts(&clients).await);
    procs.check()?;

    println!();
    println!(
        "scale harness: {} nodes, {} apps, {want} instances, {} replica(s) per region, beats every {} ms, node \
         timeout {timeout_s:.1} s",
        args.nodes,
        args.apps,
        args.replicas,
        args.beat_every.as_millis()
    );
    println!(
        "  placements/s            {placements_per_s:>10.0}   target >= 20000 (paced by the chain's blocks; fastest \
         second {peak:.0}; the loop alone: bench-scale)"
    );
    println!(
        "  steady leader cores     {steady_cores:>10.2}   target < 1 (heartbeats {per_leader_beats:.0}/s per leader; {cores_per_1000:.2} cores per 1,000 beats/s)"
    );
    println!("  leader RSS MB           {leader_rss:>10.0}   target < 2048");
    println!("  heartbeat p99 ms        {p99:>10.2}   target < 50 (round trip, loopback; p50 {p50:.2})");
    // No node can be declared down before the node timeout: the loop's part is what follows.
    let after_timeout_s = region_replace_s - timeout_s;
    println!(
        "  region re-place s       {region_replace_s:>10.2}   ({per_region} nodes lost: the {timeout_s:.1} s node \
         timeout, then the loop)"
    );
    println!("    after the node timeout {after_timeout_s:>9.2}   target < 5");
    println!(
        "placements_per_s={placements_per_s:.0} steady_leader_cores={steady_cores:.2} leader_rss_mb={leader_rss:.0} \
         heartbeat_p99_ms={p99:.2} region_replace_s={region_replace_s:.2} \
         region_replace_after_timeout_s={after_timeout_s:.2}"
    );
    drop(procs);
    Ok(())
}
