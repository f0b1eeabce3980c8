//! A multi-process cloud for tests: `fluxplane chain`, `control`, `node` and `gateway` started
//! from the built binary as child processes, each held by a guard that kills it on drop.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use model::api::{ReplicaStatus, SubmitTxResponse};
use model::chain::{SignedTx, Tx};
use model::keys::Keypair;
use serde::de::DeserializeOwned;

/// The region every cluster test uses.
pub const REGION: &str = "eu";
/// The admin token of every cluster test.
pub const TOKEN: &str = "cluster-test-admin-token";

/// `PUT /v1/blobs/{hash}` of `bytes` to the replica at `url`, signed by `key`.
pub fn signed_upload(
    http: &reqwest::blocking::Client,
    url: &str,
    key: &Keypair,
    bytes: &[u8],
) -> reqwest::blocking::RequestBuilder {
    use model::api::SignedUpload as U;
    let hash = blake3::hash(bytes).to_hex().to_string();
    let upload = U::sign(&hash, bytes.len() as u64, chain::now_ms(), key);
    http.put(format!("{url}/v1/blobs/{hash}"))
        .header(U::UPLOADER_HEADER, upload.uploader.0.as_str())
        .header(U::AT_HEADER, upload.at_ms.to_string())
        .header(U::SIGNATURE_HEADER, upload.signature.as_str())
        .body(bytes.to_vec())
}

/// A child process, killed (SIGKILL) when dropped.
pub struct Proc {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `program args`, logging stdout and stderr to `log`.
    pub fn spawn(name: &str, program: &str, args: &[String], log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({program}): {e}"));
        Proc { child: Some(child), log }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// The process's resident memory, in bytes (from `/proc`).
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
        kb.unwrap_or(0) * 1024
    }

    fn signal(&self, sig: &str) {
        let _ = Command::new("kill").args([sig, &self.pid().to_string()]).status();
    }

    /// `kill -9` without reaping (for a process others still borrow); reaped on drop.
    pub fn sigkill(&self) {
        self.signal("-9");
    }

    /// `kill -9`, and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP: frozen, sockets open.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    /// SIGTERM, then waits up to `within` for the exit (then kills it); the status, if it exited.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        self.signal("-TERM");
        let status = self.wait_exit(within);
        self.kill();
        status
    }

    /// Waits up to `within` for the process to exit on its own.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// The process's output so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.thaw();
        self.kill();
    }
}

/// A free TCP port on `ip` (bound and released: a small race another process could win).
pub fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0)).and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// The fluxplane binary.
pub fn fluxplane() -> &'static str {
    env!("CARGO_BIN_EXE_fluxplane")
}

/// One control replica's address and process.
pub struct Replica {
    pub id: u64,
    /// The region whose shard it serves.
    pub region: String,
    /// `host:port`.
    pub addr: String,
    pub url: String,
    pub data_dir: PathBuf,
    pub proc: std::sync::Mutex<Option<Proc>>,
    /// How to start it (the network namespace prefix, if any, comes first).
    pub command: Vec<String>,
}

/// Where the processes of a cluster run: loopback, or network namespaces (see `netns`).
pub trait Placement {
    /// The address replica `id` listens on.
    fn replica_ip(&self, id: u64) -> String;
    /// The address the chain listens on (reachable from every replica).
    fn chain_ip(&self) -> String;
    /// The command prefix that runs a process where replica `id` lives.
    fn prefix(&self, id: u64) -> Vec<String>;
}

/// Everything on 127.0.0.1.
pub struct Loopback;

impl Placement for Loopback {
    fn replica_ip(&self, _: u64) -> String {
        "127.0.0.1".into()
    }
    fn chain_ip(&self) -> String {
        "127.0.0.1".into()
    }
    fn prefix(&self, _: u64) -> Vec<String> {
        Vec::new()
    }
}

/// A chain and a shard of control replicas in region `eu`.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub chain: Proc,
    pub chain_url: String,
    pub genesis_key: PathBuf,
    pub config: PathBuf,
    pub replicas: BTreeMap<u64, Replica>,
    pub peers: String,
    http: reqwest::blocking::Client,
    /// Set when the test is ending (also by a panic), so helper threads stop early.
    stopping: std::sync::atomic::AtomicBool,
    /// Nodes [`Cluster::node_on_chain`] started, each on an address of its own.
    nodes_on_chain: std::sync::atomic::AtomicUsize,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_helpers();
    }
}

/// Timings for cluster tests: the defaults, with a log that compacts quickly.
pub const TEST_CONFIG: &str = "[raft]\nsnapshot_logs = 40\nkeep_logs = 5\n";

impl Cluster {
    /// Starts a chain (blocks every 100 ms) and `ids` replicas, and initializes the shard with
    /// `initial` of them as voters (the others are started but not members).
    pub fn start(place: &dyn Placement, ids: &[u64], initial: &[u64], config: &str) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("fluxplane.toml");
        std::fs::write(&config_path, config).expect("config");
        std::fs::write(dir.path().join("token"), TOKEN).expect("token");
        let chain_addr = format!("{}:{}", place.chain_ip(), free_port(&place.chain_ip()));
        let chain_dir = dir.path().join("chain");
        let chain = Proc::spawn(
            "chain",
            fluxplane(),
            &strings(&["chain", "--listen", &chain_addr, "--block-time", "100ms", "--data-dir"])
                .into_iter()
                .chain([chain_dir.display().to_string(), "--config".into(), config_path.display().to_string()])
                .collect::<Vec<_>>(),
            dir.path().join("chain.log"),
        );
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(15))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("http");
        let genesis_key = chain_dir.join("genesis.key");
        eventually(Duration::from_secs(30), "the chain starts", || genesis_key.exists());
        let mut replicas = BTreeMap::new();
        for id in ids {
            let ip = place.replica_ip(*id);
            let addr = format!("{ip}:{}", free_port_in(place, *id, &ip));
            replicas.insert(
                *id,
                Replica {
                    id: *id,
                    region: REGION.into(),
                    url: format!("http://{addr}"),
                    addr,
                    data_dir: dir.path().join(format!("c{id}")),
                    proc: std::sync::Mutex::new(None),
                    command: place.prefix(*id),
                },
            );
        }
        let peers = initial.iter().map(|id| format!("{id}={}", replicas[id].addr)).collect::<Vec<_>>().join(",");
        let cluster = Cluster {
            chain_url: format!("http://{chain_addr}"),
            chain,
            genesis_key,
            config: config_path,
            replicas,
            peers,
            dir,
            http,
            stopping: Default::default(),
            nodes_on_chain: Default::default(),
        };
        for id in ids {
            cluster.start_replica(*id);
        }
        for id in ids {
            let url = cluster.replicas[id].url.clone();
            eventually(Duration::from_secs(30), &format!("replica {id} answers"), || {
                cluster.http.get(format!("{url}/v1/shards/eu/identity")).send().is_ok_and(|r| r.status() == 200)
            });
        }
        // A lone replica initializes itself.
        if initial.len() > 1 {
            let first = cluster.replicas[&initial[0]].url.clone();
            let out = cluster.fluxctl_at(&first, &["shard", "init", REGION]);
            assert!(out.status.success(), "shard init: {}", text(&out.stderr));
        }
        cluster.wait_leader(Duration::from_secs(20));
        cluster
    }

    /// Starts a lone replica `id` (on loopback) of another region's shard; it initializes
    /// itself and publishes itself in the region directory.
    pub fn add_region(&mut self, region: &str, id: u64) {
        assert!(!self.replicas.contains_key(&id), "replica ids are unique across regions");
        let addr = format!("127.0.0.1:{}", free_port("127.0.0.1"));
        let replica = Replica {
            id,
            region: region.into(),
            url: format!("http://{addr}"),
            addr,
            data_dir: self.dir.path().join(format!("c{id}")),
            proc: std::sync::Mutex::new(None),
            command: Vec::new(),
        };
        self.replicas.insert(id, replica);
        self.start_replica(id);
        eventually(Duration::from_secs(30), &format!("region {region} is published with a leader"), || {
            let out = self.fluxctl(&["--output", "json", "status"]);
            serde_json::from_slice::<model::api::StatusView>(&out.stdout)
                .is_ok_and(|v| v.regions.iter().any(|r| r.name == region && r.leader == Some(id)))
        });
    }

    /// Starts (or restarts) replica `id` on its data dir.
    pub fn start_replica(&self, id: u64) {
        let r = &self.replicas[&id];
        let mut args = r.command.clone();
        args.push(fluxplane().into());
        args.extend(strings(&["control", "--region", &r.region, "--id"]));
        args.push(id.to_string());
        // Only the first region's replicas form a shard of several; another region's is alone.
        let peers = if r.region == REGION { self.peers.clone() } else { format!("{id}={}", r.addr) };
        args.extend(strings(&["--listen", &r.addr, "--peers", &peers, "--chain", &self.chain_url]));
        args.push("--data-dir".into());
        args.push(r.data_dir.display().to_string());
        args.push("--admin-token-file".into());
        args.push(self.dir.path().join("token").display().to_string());
        args.push("--wallet".into());
        args.push(self.genesis_key.display().to_string());
        args.push("--config".into());
        args.push(self.config.display().to_string());
        let (program, rest) = args.split_first().expect("command");
        let log = self.dir.path().join(format!("c{id}.log"));
        // Keep the earlier runs' output: append a marker instead of truncating.
        let earlier = std::fs::read_to_string(&log).unwrap_or_default();
        let proc = Proc::spawn(&format!("replica {id}"), program, rest, log.clone());
        if !earlier.is_empty() {
            std::fs::write(self.dir.path().join(format!("c{id}.earlier.log")), earlier).ok();
        }
        *self.replicas[&id].proc.lock().unwrap_or_else(|e| e.into_inner()) = Some(proc);
    }

    /// `kill -9` replica `id`.
    pub fn kill(&self, id: u64) {
        if let Some(mut p) = self.replicas[&id].proc.lock().unwrap_or_else(|e| e.into_inner()).take() {
            p.kill();
        }
    }

    /// SIGTERM replica `id` and wait for it to exit.
    pub fn terminate(&self, id: u64, within: Duration) -> Option<std::process::ExitStatus> {
        let p = self.replicas[&id].proc.lock().unwrap_or_else(|e| e.into_inner()).take();
        p.and_then(|mut p| p.terminate(within))
    }

    /// Whether replica `id` runs.
    pub fn is_running(&self, id: u64) -> bool {
        self.replicas[&id].proc.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// Ids of the running replicas.
    pub fn running(&self) -> Vec<u64> {
        self.replicas.keys().copied().filter(|id| self.is_running(*id)).collect()
    }

    /// Whether helper threads should stop.
    pub fn stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Tells helper threads to stop.
    pub fn stop_helpers(&self) {
        self.stopping.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// A guard that stops helper threads if the test panics while it is alive.
    pub fn stop_on_panic(&self) -> StopOnPanic<'_> {
        StopOnPanic(self)
    }

    /// URLs of every replica, comma-separated.
    pub fn urls(&self) -> String {
        self.replicas.values().map(|r| r.url.clone()).collect::<Vec<_>>().join(",")
    }

    /// The admin-authorized GET of `path` on replica `id`.
    pub fn get<T: DeserializeOwned>(&self, id: u64, path: &str) -> Result<T, String> {
        let url = format!("{}{path}", self.replicas[&id].url);
        let resp = self.http.get(&url).header("x-fluxplane-admin-token", TOKEN).send().map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp.text().map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{status}: {body}"));
        }
        serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))
    }

    /// Replica `id`'s own Raft state.
    pub fn status(&self, id: u64) -> Result<ReplicaStatus, String> {
        self.get(id, &format!("/v1/shards/{}/replica", self.replicas[&id].region))
    }

    /// The leader of region eu the running replicas agree on in their highest term, if any.
    pub fn leader(&self) -> Option<(u64, u64)> {
        let statuses: Vec<ReplicaStatus> = self
            .replicas
            .values()
            .filter(|r| r.region == REGION && self.is_running(r.id))
            .filter_map(|r| self.status(r.id).ok())
            .collect();
        let top = statuses.iter().map(|s| s.term).max()?;
        statuses.iter().find(|s| s.term == top && s.role == "leader").map(|s| (s.id, s.term))
    }

    /// Waits for a leader; returns (id, term).
    pub fn wait_leader(&self, within: Duration) -> (u64, u64) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(l) = self.leader() {
                return l;
            }
            assert!(Instant::now() < deadline, "no leader within {within:?}\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// fluxctl with the admin token against every replica.
    pub fn fluxctl(&self, args: &[&str]) -> Output {
        self.fluxctl_at(&self.urls(), args)
    }

    /// fluxctl with the admin token against `api`.
    pub fn fluxctl_at(&self, api: &str, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_fluxctl"))
            .arg("--api")
            .arg(api)
            .arg("--key")
            .arg(&self.genesis_key)
            .args(args)
            .env("FLUXCTL_ADMIN_TOKEN", TOKEN)
            .env("FLUXCTL_CONFIG_DIR", self.dir.path().join("fluxctl"))
            .output()
            .expect("run fluxctl")
    }

    /// Every process's output, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = format!("--- chain\n{}", tail(&self.chain.output()));
        for r in self.replicas.values() {
            let log = self.dir.path().join(format!("c{}.log", r.id));
            out.push_str(&format!("--- replica {}\n{}", r.id, tail(&std::fs::read_to_string(log).unwrap_or_default())));
        }
        out
    }

    /// Pays for the hello module with the genesis wallet and uploads it, signed.
    pub fn upload_module(&self) -> String {
        let wasm = std::fs::read(crate::util::repo().join("examples/hello/hello.wasm")).expect("hello.wasm");
        let hash = blake3::hash(&wasm).to_hex().to_string();
        let wallet = self.wallet();
        let payment = model::chain::BlobPayment { hash: hash.clone(), size: wasm.len() as u64 };
        self.submit_applied(&self.running(), &wallet, Tx::BlobUpload { blobs: vec![payment] })
            .expect("the module paid for");
        // Any member takes it and hands it to a majority of the region; non-members refuse.
        let mut refusals = Vec::new();
        for r in self.replicas.values().filter(|r| self.is_running(r.id)) {
            let resp = signed_upload(&self.http, &r.url, &wallet, &wasm).send().expect("upload");
            if resp.status().is_success() {
                return hash;
            }
            refusals.push(format!("{}: {}", r.url, resp.text().unwrap_or_default()));
        }
        panic!("no replica took the module: {refusals:?}");
    }

    /// Starts node `id` in region eu on chain. It never runs: it gives cordons something to
    /// change, and makes apps placeable (an app no node could run is refused).
    pub fn node_on_chain(&self, id: &str) {
        let start = model::chain::NodeStart {
            node_id: id.into(),
            collateral: model::tier::Tier::Cumulus.collateral(),
            region: REGION.into(),
            continent: "EU".into(),
            country: "DE".into(),
            geo: model::GeoPoint { lat: 50.0, lon: 8.0 },
            capabilities: vec![model::chain::Capability::Wasm],
            node_key: Keypair::generate().public(),
            // Each its own address: a node's address and ports are its own.
            address: std::net::Ipv4Addr::new(
                127,
                2,
                0,
                1 + self.nodes_on_chain.fetch_add(1, std::sync::atomic::Ordering::Relaxed) as u8,
            )
            .into(),
            instance_ports: model::chain::PortRange::DEFAULT,
        };
        self.submit_applied(&self.running(), &self.wallet(), Tx::NodeStart(start)).expect("node on chain");
    }

    /// Waits until every running replica is in the region directory: their announcements are
    /// signed by the genesis wallet and pay a fee, so a test that counts that wallet's balance
    /// starts after them.
    pub fn wait_announced(&self) {
        eventually(Duration::from_secs(30), "every replica in the region directory", || {
            let Ok(regions) = self.get::<Vec<model::api::RegionView>>(self.running()[0], "/v1/regions") else {
                return false;
            };
            let listed = regions.iter().find(|r| r.name == REGION).map(|r| r.replicas.clone()).unwrap_or_default();
            self.running().iter().all(|id| listed.contains_key(id))
        });
    }

    /// The genesis wallet.
    pub fn wallet(&self) -> Keypair {
        let text = std::fs::read_to_string(&self.genesis_key).expect("genesis key");
        Keypair::from_secret_hex(&text).expect("key")
    }

    /// Submits `tx` signed by `key` to the first replica (in `order`) that takes it, waiting
    /// until that replica's shard applied it; retries for up to 10 s while no replica can take it
    /// yet (an election). `Ok` is an acknowledgement. It signs with the wallet's next nonce, and
    /// signs again when the replicas' own announcements (same wallet) took it first.
    pub fn submit_applied(&self, order: &[u64], key: &Keypair, tx: Tx) -> Result<SubmitTxResponse, String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut last = String::new();
            for id in order {
                let wallet_url = format!("{}/v1/wallets/{}", self.replicas[id].url, key.public().0);
                let next = match self.http.get(&wallet_url).send().and_then(|r| r.json::<model::api::WalletView>()) {
                    Ok(view) => view.next_nonce,
                    Err(e) => {
                        last = e.to_string();
                        continue;
                    }
                };
                let stx = SignedTx::sign(tx.clone(), next, key);
                let url = format!("{}/v1/transactions?wait=applied", self.replicas[id].url);
                match self.http.post(&url).json(&stx).send() {
                    Ok(resp) if resp.status().is_success() => {
                        return resp.json().map_err(|e| e.to_string());
                    }
                    Ok(resp) => {
                        let status = resp.status();
                        let body = resp.text().unwrap_or_default();
                        // Refused before it reached the chain, or its nonce was taken: sign
                        // again, maybe on another replica.
                        if ["\"not_member\"", "\"no_leader\"", "\"stale_nonce\""].iter().any(|c| body.contains(c)) {
                            last = body;
                            continue;
                        }
                        // The transaction reached the chain: do not send it twice.
                        return Err(format!("{status}: {body}"));
                    }
                    Err(e) if e.is_connect() => last = e.to_string(),
                    Err(e) => return Err(e.to_string()),
                }
            }
            if Instant::now() > deadline || self.stopping() {
                return Err(format!("no replica took it: {last}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// See [`Cluster::stop_on_panic`].
pub struct StopOnPanic<'a>(&'a Cluster);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.stop_helpers();
        }
    }
}

fn free_port_in(place: &dyn Placement, id: u64, ip: &str) -> u16 {
    if place.prefix(id).is_empty() {
        free_port(ip)
    } else {
        // In its own network namespace the replica has the address to itself.
        7000
    }
}

/// The last 60 lines of `s`.
pub fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n") + "\n"
}

pub fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Polls `f` until it holds or `within` passes.
pub fn eventually(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    eventually_value(within, what, || f().then_some(()))
}

/// Polls `f` until it gives a value, or `within` passes.
pub fn eventually_value<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An app spec with the hello module by hash.
pub fn app_spec(name: &str, hash: &str, instances: u32) -> model::AppSpec {
    model::AppSpec {
        network: Default::default(),
        name: name.into(),
        description: String::new(),
        instances,
        geolocation: vec![],
        expire: 88_000,
        components: vec![model::ComponentSpec {
            name: "web".into(),
            workload: model::spec::Workload::Wasm(format!("blake3:{hash}")),
            cpu_tenths: 1,
            ram_mb: 64,
            hdd_gb: 1,
            env: Default::default(),
            traffic: Default::default(),
        }],
    }
}

/// Whether app `name` is in replica `id`'s own state (a stale, local read).
pub fn has_app(cluster: &Cluster, id: u64, name: &str) -> bool {
    cluster.get::<serde_json::Value>(id, &format!("/v1/apps/{name}?stale=true&scope=region")).is_ok()
}

/// A data dir path helper.
pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}
