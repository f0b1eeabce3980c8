//! Shard write benchmark: a 3-replica fluxplane shard against a 3-member etcd cluster, both on
//! loopback with fsync on, driven by the same load generator with the same number of concurrent
//! clients. Prints writes per second and latency percentiles for each, and their ratio.
//!
//! A fluxplane write is a node cordon or uncordon (`POST /v1/nodes/{id}/cordon`): one Raft
//! entry, committed by a majority (fsynced by each) and applied before the answer. An etcd
//! write is a `PUT` through its HTTP/JSON gateway (`/v3/kv/put`). Both go to the leader.
//!
//! ```sh
//! cargo build --release --bin fluxplane -p fluxplane
//! cargo run --release -p bench-shard -- --clients 1,16,64 --seconds 10
//! ```
//! Needs `etcd` on the PATH (Debian: `apt-get install etcd-server`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use model::chain::{Capability, NodeStart, SignedTx, Tx};
use model::keys::Keypair;
use model::tier::Tier;

const TOKEN: &str = "bench-admin-token-0123456789";

/// Kills its process on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(program: &Path, args: &[String], log: &Path) -> Proc {
    let out = std::fs::File::create(log).expect("log");
    let err = out.try_clone().expect("log");
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
    Proc(child)
}

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
}

struct Args {
    replicas: usize,
    clients: Vec<usize>,
    seconds: u64,
    fluxplane: PathBuf,
    etcd: PathBuf,
}

fn args() -> Args {
    let mut a = Args {
        replicas: 3,
        clients: vec![1, 16, 64],
        seconds: 10,
        fluxplane: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/release/fluxplane"),
        etcd: PathBuf::from("etcd"),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let value = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--clients" => a.clients = value.split(',').filter_map(|c| c.trim().parse().ok()).collect(),
            "--seconds" => a.seconds = value.parse().unwrap_or(10),
            "--replicas" => a.replicas = value.parse().unwrap_or(3),
            "--fluxplane" => a.fluxplane = PathBuf::from(value),
            "--etcd" => a.etcd = PathBuf::from(value),
            other => panic!(
                "unknown flag {other}; flags: --clients 1,16,64 --seconds 10 --replicas 3 --fluxplane PATH --etcd PATH"
            ),
        }
        i += 2;
    }
    a
}

/// One kind of write, sent by every client task.
#[derive(Clone)]
enum Target {
    /// Cordon / uncordon a node on the fluxplane leader.
    Fluxplane { leader: String, node: String },
    /// A put on etcd's leader.
    Etcd { leader: String },
}

impl Target {
    async fn write(&self, http: &reqwest::Client, n: u64) -> Result<(), String> {
        let resp = match self {
            Target::Fluxplane { leader, node } => {
                let verb = if n % 2 == 0 { "cordon" } else { "uncordon" };
                http.post(format!("{leader}/v1/nodes/{node}/{verb}"))
                    .header("x-fluxplane-admin-token", TOKEN)
                    .send()
                    .await
            }
            Target::Etcd { leader } => {
                let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
                let body = serde_json::json!({ "key": b64(&format!("bench/{n}")), "value": b64("v") });
                http.post(format!("{leader}/v3/kv/put")).json(&body).send().await
            }
        }
        .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("{}: {}", resp.status(), resp.text().await.unwrap_or_default()));
        }
        let _ = resp.bytes().await;
        Ok(())
    }
}

struct Result_ {
    writes_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

/// Runs `clients` tasks writing as fast as they can for `seconds` (after a one-second warm-up).
async fn load(target: &Target, clients: usize, seconds: u64) -> Result_ {
    let http = reqwest::Client::builder().pool_max_idle_per_host(clients).tcp_nodelay(true).build().expect("http");
    let counter = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let warm_until = Instant::now() + Duration::from_secs(1);
    let end = warm_until + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (http, target, counter, errors) = (http.clone(), target.clone(), counter.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let now = Instant::now();
                if now >= end {
                    return latencies;
                }
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let result = target.write(&http, n).await;
                if now >= warm_until {
                    match result {
                        Ok(()) => latencies.push(now.elapsed()),
                        Err(e) => {
                            if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                                eprintln!("write failed: {e}");
                            }
                        }
                    }
                }
            }
        }));
    }
    let mut all: Vec<Duration> = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    all.sort_unstable();
    let pct = |p: f64| all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1))).copied();
    Result_ {
        writes_per_s: all.len() as f64 / seconds as f64,
        p50_ms: pct(0.50).unwrap_or_default().as_secs_f64() * 1000.0,
        p99_ms: pct(0.99).unwrap_or_default().as_secs_f64() * 1000.0,
        errors: errors.load(Ordering::Relaxed),
    }
}

async fn wait_for(what: &str, within: Duration, mut ok: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok().await {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts a chain and three control replicas; returns the processes and the write target.
async fn start_fluxplane(bin: &Path, dir: &Path, replicas: usize) -> (Vec<Proc>, Target) {
    assert!(bin.exists(), "{} not found: build it with `cargo build --release --bin fluxplane`", bin.display());
    std::fs::write(dir.join("token"), TOKEN).expect("token");
    let mut procs = Vec::new();
    let chain_addr = format!("127.0.0.1:{}", port());
    let s = |v: &str| v.to_string();
    procs.push(spawn(
        bin,
        &[
            s("chain"),
            s("--listen"),
            chain_addr.clone(),
            s("--block-time"),
            s("1s"),
            s("--data-dir"),
            dir.join("chain").display().to_string(),
        ],
        &dir.join("chain.log"),
    ));
    let addrs: Vec<String> = (0..replicas).map(|_| format!("127.0.0.1:{}", port())).collect();
    let peers = addrs.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect::<Vec<_>>().join(",");
    let http = reqwest::Client::new();
    let genesis_key = dir.join("chain/genesis.key");
    wait_for("the chain", Duration::from_secs(30), async || genesis_key.exists()).await;
    for (i, addr) in addrs.iter().enumerate() {
        let id = (i + 1).to_string();
        let args = [
            s("control"),
            s("--region"),
            s("eu"),
            s("--id"),
            id.clone(),
            s("--listen"),
            addr.clone(),
            s("--peers"),
            peers.clone(),
            s("--chain"),
            format!("http://{chain_addr}"),
            s("--data-dir"),
            dir.join(format!("c{id}")).display().to_string(),
            s("--admin-token-file"),
            dir.join("token").display().to_string(),
            s("--wallet"),
            genesis_key.display().to_string(),
        ];
        procs.push(spawn(bin, &args, &dir.join(format!("c{id}.log"))));
    }
    for addr in &addrs {
        let url = format!("http://{addr}/v1/shards/eu/identity");
        wait_for("a replica", Duration::from_secs(30), async || http.get(&url).send().await.is_ok()).await;
    }
    if replicas > 1 {
        let resp = http
            .post(format!("http://{}/v1/shards/eu/init", addrs[0]))
            .header("x-fluxplane-admin-token", TOKEN)
            .json(&serde_json::json!({}))
            .send()
            .await
            .expect("init");
        assert!(resp.status().is_success(), "shard init: {}", resp.text().await.unwrap_or_default());
    }
    // The node whose cordon the writes flip.
    let wallet = Keypair::from_secret_hex(&std::fs::read_to_string(&genesis_key).expect("key")).expect("key");
    let start = NodeStart {
        node_id: "bench-node".into(),
        collateral: Tier::Cumulus.collateral(),
        region: "eu".into(),
        continent: "EU".into(),
        country: "DE".into(),
        geo: model::GeoPoint { lat: 50.0, lon: 8.0 },
        capabilities: vec![Capability::Wasm],
        node_key: Keypair::generate().public(),
        address: std::net::Ipv4Addr::LOCALHOST.into(),
        instance_ports: model::chain::PortRange::DEFAULT,
    };
    let mut leader = None;
    wait_for("the node on chain", Duration::from_secs(60), async || {
        for addr in &addrs {
            // The replicas announce themselves with this wallet too: sign with the next nonce
            // each time, and check the node itself, since another attempt may have landed it.
            let wallet_url = format!("http://{addr}/v1/wallets/{}", wallet.public().0);
            let Ok(r) = http.get(&wallet_url).send().await else { continue };
            let Ok(view) = r.json::<model::api::WalletView>().await else { continue };
            let stx = SignedTx::sign(Tx::NodeStart(start.clone()), view.next_nonce, &wallet);
            let r = http.post(format!("http://{addr}/v1/transactions?wait=applied")).json(&stx).send().await;
            if let Ok(r) = r {
                let text = r.text().await.unwrap_or_default();
                if text.contains("tx_id") || text.contains("already started") {
                    return true;
                }
            }
        }
        false
    })
    .await;
    wait_for("a leader", Duration::from_secs(30), async || {
        for addr in &addrs {
            let r = http
                .get(format!("http://{addr}/v1/shards/eu/replica"))
                .header("x-fluxplane-admin-token", TOKEN)
                .send()
                .await;
            if let Ok(r) = r
                && let Ok(s) = r.json::<model::api::ReplicaStatus>().await
                && s.role == "leader"
            {
                leader = Some(format!("http://{addr}"));
                return true;
            }
        }
        false
    })
    .await;
    let leader = leader.expect("leader");
    (procs, Target::Fluxplane { leader, node: "bench-node".into() })
}

/// Starts a 3-member etcd cluster; returns the processes and the write target (its leader).
async fn start_etcd(bin: &Path, dir: &Path) -> (Vec<Proc>, Target) {
    let clients: Vec<u16> = (0..3).map(|_| port()).collect();
    let peers: Vec<u16> = (0..3).map(|_| port()).collect();
    let cluster = (0..3).map(|i| format!("e{i}=http://127.0.0.1:{}", peers[i])).collect::<Vec<_>>().join(",");
    let mut procs = Vec::new();
    for i in 0..3 {
        let args: Vec<String> = [
            "--name",
            &format!("e{i}"),
            "--data-dir",
            &dir.join(format!("etcd{i}")).display().to_string(),
            "--listen-client-urls",
            &format!("http://127.0.0.1:{}", clients[i]),
            "--advertise-client-urls",
            &format!("http://127.0.0.1:{}", clients[i]),
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{}", peers[i]),
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{}", peers[i]),
            "--initial-cluster",
            &cluster,
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            "bench",
            "--log-level",
            "error",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        procs.push(spawn(bin, &args, &dir.join(format!("etcd{i}.log"))));
    }
    let http = reqwest::Client::new();
    let mut leader = None;
    wait_for("an etcd leader", Duration::from_secs(60), async || {
        for c in &clients {
            let r = http
                .post(format!("http://127.0.0.1:{c}/v3/maintenance/status"))
                .json(&serde_json::json!({}))
                .send()
                .await;
            if let Ok(r) = r
                && let Ok(v) = r.json::<serde_json::Value>().await
                && v["leader"].is_string()
                && v["leader"] == v["header"]["member_id"]
            {
                leader = Some(format!("http://127.0.0.1:{c}"));
                return true;
            }
        }
        false
    })
    .await;
    (procs, Target::Etcd { leader: leader.expect("leader") })
}

#[tokio::main]
async fn main() {
    let a = args();
    let dir = tempfile::tempdir().expect("tempdir");
    eprintln!(
        "starting a {}-replica fluxplane shard and a 3-member etcd cluster in {}",
        a.replicas,
        dir.path().display()
    );
    let (_flux, flux) = start_fluxplane(&a.fluxplane, dir.path(), a.replicas).await;
    let (_etcd, etcd) = start_etcd(&a.etcd, dir.path()).await;
    println!(
        "shard writes, {} fluxplane replicas / 3 etcd members on loopback, fsync on, {} s per run",
        a.replicas, a.seconds
    );
    println!("{:<10} {:>8} {:>11} {:>9} {:>9} {:>7}", "system", "clients", "writes/s", "p50 ms", "p99 ms", "errors");
    for &clients in &a.clients {
        let f = load(&flux, clients, a.seconds).await;
        let e = load(&etcd, clients, a.seconds).await;
        for (name, r) in [("fluxplane", &f), ("etcd", &e)] {
            println!(
                "{:<10} {:>8} {:>11.0} {:>9.2} {:>9.2} {:>7}",
                name, clients, r.writes_per_s, r.p50_ms, r.p99_ms, r.errors
            );
        }
        println!(
            "{:<10} {:>8} {:>10.2}x {:>9} {:>8.2}x",
            "ratio",
            clients,
            f.writes_per_s / e.writes_per_s.max(1.0),
            "",
            f.p99_ms / e.p99_ms.max(0.001)
        );
    }
}
