//! The node agent: heartbeats to its region's shard leader (signed with the node key), receives
//! the instances assigned to the node, starts them on the WASM runtime, checks their health, and
//! reports back in the next beat. While the control plane is unreachable it keeps every instance
//! running: losing the control plane never stops a workload.
//!
//! Heartbeats, reconciling and health checks are separate tasks that share the instance table,
//! so that neither a slow start nor a slow guest can delay a beat: a node is declared down only
//! when it is really silent. Guests themselves run on the engine's own threads.
//!
//! Depends on `model`, `client` and `runtime-wasm`.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use model::api::{Assignment, Assignments, Heartbeat, InstanceReport, START_FAILED, SignedHeartbeat};
use model::keys::Keypair;
use runtime_wasm::{ComponentCache, InstanceLimits, InstanceServer};
use tokio::sync::{Notify, watch};

/// How an agent is set up.
#[derive(Clone)]
pub struct AgentConfig {
    /// The node's id on chain.
    pub node_id: String,
    /// The node key registered on chain.
    pub key: Keypair,
    /// The replicas of the node's region; beats go to (and follow) the leader.
    pub control: client::Client,
    /// Heartbeat period; the shard declares the node down after a few missed beats.
    pub beat_every: Duration,
    /// Longest a health check of one instance may take; shorter than the beat period.
    pub health_timeout: Duration,
    /// Address instances listen on.
    pub bind_ip: IpAddr,
    /// The address registered on chain, which instance endpoints are reported on (the same as
    /// `bind_ip` unless that is 0.0.0.0).
    pub advertise: IpAddr,
    /// The ports registered on chain: each instance component binds the first free one.
    pub ports: model::chain::PortRange,
    /// Longest time a request may run in a guest.
    pub request_deadline: Duration,
    /// After shutdown, how long instances keep serving (with no more beats or new work) before
    /// they stop: long enough for the control plane to drop the node's routes, so requests in
    /// flight and those already routed here still get answers.
    pub linger: Duration,
}

/// Where one assigned instance is.
enum Phase {
    /// Fetching, compiling or binding.
    Starting,
    /// Serving; `healthy` is the last health check's verdict.
    Running { servers: Vec<(String, InstanceServer)>, healthy: bool, message: Option<String> },
    /// Could not start; reported until the control plane places it elsewhere.
    Failed { message: String },
}

struct Instance {
    assignment: Assignment,
    phase: Phase,
}

impl Instance {
    /// The instance as the next beat reports it, its endpoints on `advertise`.
    fn report(&self, advertise: IpAddr) -> InstanceReport {
        let (endpoints, healthy, message) = match &self.phase {
            Phase::Starting => (BTreeMap::new(), false, Some("starting".to_string())),
            Phase::Running { servers, healthy, message } => {
                let endpoint = |s: &InstanceServer| SocketAddr::new(advertise, s.addr().port()).to_string();
                (servers.iter().map(|(c, s)| (c.clone(), endpoint(s))).collect(), *healthy, message.clone())
            }
            Phase::Failed { message } => (BTreeMap::new(), false, Some(format!("{START_FAILED}{message}"))),
        };
        InstanceReport {
            id: self.assignment.id.clone(),
            spec_height: self.assignment.spec_height,
            secrets_version: self.assignment.secrets_version,
            endpoints,
            healthy,
            message,
        }
    }

    fn stop(&self) {
        if let Phase::Running { servers, .. } = &self.phase {
            for (_, s) in servers {
                s.stop();
            }
        }
    }
}

/// The node's instances, by id, shared by the agent's tasks. Never held across an await.
#[derive(Clone, Default)]
struct Instances(Arc<Mutex<HashMap<String, Instance>>>);

impl Instances {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instance>> {
        // Every change is a whole insert or field write, so a poisoned table is still whole.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs the agent until `shutdown` turns true; then stops beating and taking work, lets its
/// instances serve for `linger`, and stops them.
pub async fn run(config: AgentConfig, cache: ComponentCache, mut shutdown: watch::Receiver<bool>) {
    let instances = Instances::default();
    let (assigned_tx, assigned_rx) = watch::channel::<Option<Assignments>>(None);
    let beat_now = Arc::new(Notify::new());
    let tasks = [
        tokio::spawn(beat_loop(config.clone(), instances.clone(), assigned_tx, beat_now.clone())),
        tokio::spawn(reconcile_loop(config.clone(), cache, instances.clone(), assigned_rx, beat_now)),
        tokio::spawn(health_loop(config.clone(), instances.clone())),
    ];
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            break;
        }
    }
    tracing::info!(node = %config.node_id, "draining: no more beats or new instances");
    for t in &tasks {
        t.abort();
    }
    tokio::time::sleep(config.linger).await;
    for i in instances.lock().values() {
        i.stop();
    }
}

/// Beats every period (and at once when an instance starts), and publishes the answer.
async fn beat_loop(
    config: AgentConfig,
    instances: Instances,
    assigned: watch::Sender<Option<Assignments>>,
    beat_now: Arc<Notify>,
) {
    let mut ticker = tokio::time::interval(config.beat_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = beat_now.notified() => ticker.reset(),
        }
        let reports: Vec<InstanceReport> = instances.lock().values().map(|i| i.report(config.advertise)).collect();
        let beat = SignedHeartbeat::sign(
            Heartbeat {
                node: config.node_id.clone(),
                at_ms: now_ms(),
                instances: reports,
                unavailable: Default::default(),
            },
            &config.key,
        );
        // A beat older than two periods is worth less than the next one.
        match config.control.heartbeat(&beat, config.beat_every * 2).await {
            Ok(answer) => {
                assigned.send_replace(Some(answer));
            }
            // Static stability: keep running what runs, and try again next beat.
            Err(e) => tracing::debug!(node = %config.node_id, "heartbeat failed: {e}"),
        }
    }
}

/// Makes the instance table match each answer: stops what is not assigned (or assigned with a
/// newer spec), starts what is new.
async fn reconcile_loop(
    config: AgentConfig,
    cache: ComponentCache,
    instances: Instances,
    mut assigned: watch::Receiver<Option<Assignments>>,
    beat_now: Arc<Notify>,
) {
    while assigned.changed().await.is_ok() {
        let Some(answer) = assigned.borrow_and_update().clone() else { continue };
        for order in &answer.stop {
            tracing::info!(node = %config.node_id, instance = %order.id, "stopping: {}", order.reason);
        }
        let wanted: HashMap<&str, &Assignment> = answer.instances.iter().map(|a| (a.id.as_str(), a)).collect();
        let mut to_start = Vec::new();
        {
            let mut table = instances.lock();
            table.retain(|id, i| {
                // A new spec or new secrets: the instance starts again with them.
                let keep = wanted.get(id.as_str()).is_some_and(|a| same_run(a, &i.assignment));
                if !keep {
                    tracing::info!(node = %config.node_id, instance = %id, "stopping instance");
                    i.stop();
                }
                keep
            });
            for a in &answer.instances {
                if !table.contains_key(&a.id) {
                    table.insert(a.id.clone(), Instance { assignment: a.clone(), phase: Phase::Starting });
                    to_start.push(a.clone());
                }
            }
        }
        for a in to_start {
            let (cache, config, instances, beat_now) =
                (cache.clone(), config.clone(), instances.clone(), beat_now.clone());
            tokio::spawn(async move {
                let result = start(&cache, &config, &a).await.map_err(|e| format!("{e:#}"));
                let phase = match result {
                    Ok(servers) => {
                        // Checked once before it is reported, so it is routed on the next beat.
                        let (healthy, message) = check_health(&config, &addrs(&servers)).await;
                        Phase::Running { servers, healthy, message }
                    }
                    Err(message) => {
                        tracing::warn!(node = %config.node_id, instance = %a.id, "start failed: {message}");
                        Phase::Failed { message }
                    }
                };
                let mut table = instances.lock();
                match table.get_mut(&a.id) {
                    // Still wanted as it was when the start began.
                    Some(i) if same_run(&i.assignment, &a) && matches!(i.phase, Phase::Starting) => {
                        i.phase = phase;
                    }
                    // Unassigned meanwhile: what started must not run on.
                    _ => Instance { assignment: a, phase }.stop(),
                }
                drop(table);
                beat_now.notify_one();
            });
        }
    }
}

/// Checks every running instance each beat period, all at once, each within the health timeout.
async fn health_loop(config: AgentConfig, instances: Instances) {
    let mut ticker = tokio::time::interval(config.beat_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let targets: Vec<(String, (u64, u64), Endpoints)> = instances
            .lock()
            .values()
            .filter_map(|i| match &i.phase {
                Phase::Running { servers, .. } => Some((
                    i.assignment.id.clone(),
                    (i.assignment.spec_height, i.assignment.secrets_version),
                    addrs(servers),
                )),
                _ => None,
            })
            .collect();
        let checks = targets.into_iter().map(|(id, height, addrs)| {
            let config = &config;
            async move { (id, height, check_health(config, &addrs).await) }
        });
        for (id, height, (ok, why)) in futures::future::join_all(checks).await {
            if let Some(i) = instances.lock().get_mut(&id)
                && (i.assignment.spec_height, i.assignment.secrets_version) == height
                && let Phase::Running { healthy, message, .. } = &mut i.phase
            {
                *healthy = ok;
                *message = why;
            }
        }
    }
}

/// Each component's name and address.
type Endpoints = Vec<(String, SocketAddr)>;

fn addrs(servers: &[(String, InstanceServer)]) -> Endpoints {
    // A server bound to every address is probed on loopback.
    let probe = |addr: SocketAddr| match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port()),
        ip if ip.is_unspecified() => SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), addr.port()),
        _ => addr,
    };
    servers.iter().map(|(c, s)| (c.clone(), probe(s.addr()))).collect()
}

/// Whether an instance started for `a` still runs what `b` asks for.
fn same_run(a: &Assignment, b: &Assignment) -> bool {
    a.spec_height == b.spec_height && a.secrets_version == b.secrets_version
}

async fn start(
    cache: &ComponentCache,
    config: &AgentConfig,
    a: &Assignment,
) -> anyhow::Result<Vec<(String, InstanceServer)>> {
    // Secrets arrive sealed to this node's key, and are opened only here, once, for the guest.
    let opener = config.key.box_keypair();
    let mut secrets = BTreeMap::new();
    for (name, sealed) in &a.secrets {
        let context = model::api::secret_context(&a.app, name, &config.node_id);
        match opener.open(&context, sealed) {
            Ok(value) => {
                secrets.insert(name.clone(), String::from_utf8_lossy(value.expose()).into_owned());
            }
            Err(e) => {
                tracing::warn!(node = %config.node_id, instance = %a.id, secret = %name, "a secret does not open: {e}")
            }
        }
    }
    let mut servers: Vec<(String, InstanceServer)> = Vec::new();
    for c in &a.components {
        let hash = c.wasm_hash().with_context(|| format!("component {} has no module hash", c.name))?;
        let bytes = config.control.get_blob(hash).await.with_context(|| format!("fetching module {hash}"))?;
        anyhow::ensure!(blake3::hash(&bytes).to_hex().as_str() == hash, "module {hash} arrived corrupted");
        let pre = cache.get(&bytes).await.with_context(|| format!("compiling component {}", c.name))?;
        let mut env = c.env.clone();
        env.insert("FLUXPLANE_NODE".into(), config.node_id.clone());
        env.insert("FLUXPLANE_APP".into(), a.app.clone());
        env.extend(secrets.clone());
        let limits = InstanceLimits {
            memory_bytes: (c.ram_mb as usize) << 20,
            deadline: config.request_deadline,
            cpu_share: f64::from(c.cpu_tenths) / 10.0,
        };
        // The first free port of the node's registered range: the control plane refuses an
        // endpoint outside it.
        let mut started = Err(anyhow::anyhow!("every instance port of this node ({}) is in use", config.ports));
        // From a cursor that moves on, not from the first port: a port just freed by a stopped
        // instance is taken last, so a gateway still routing to it reaches nothing rather than
        // another app.
        let ports: Vec<u16> = config.ports.ports().collect();
        let from = NEXT_PORT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % ports.len().max(1);
        for port in ports[from..].iter().chain(&ports[..from]).copied() {
            let bind = SocketAddr::new(config.bind_ip, port);
            match InstanceServer::start(cache.engine(), pre.clone(), env.clone(), limits.clone(), bind).await {
                Ok(server) => {
                    started = Ok(server);
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
                Err(e) => {
                    started = Err(anyhow::anyhow!("binding {bind}: {e}"));
                    break;
                }
            }
        }
        let server = match started {
            Ok(s) => s,
            Err(e) => {
                for (_, s) in &servers {
                    s.stop();
                }
                return Err(e);
            }
        };
        tracing::info!(node = %config.node_id, instance = %a.id, component = %c.name, addr = %server.addr(), "instance started");
        servers.push((c.name.clone(), server));
    }
    Ok(servers)
}

/// An instance is healthy when each component answers `GET /` below 500 within the timeout.
async fn check_health(config: &AgentConfig, addrs: &[(String, SocketAddr)]) -> (bool, Option<String>) {
    for (name, addr) in addrs {
        let probe = async { HEALTH_HTTP.get(format!("http://{addr}/")).send().await.map(|r| r.status().as_u16()) };
        match tokio::time::timeout(config.health_timeout, probe).await {
            Ok(Ok(status)) if status < 500 => {}
            Ok(Ok(status)) => return (false, Some(format!("{name}: health check answered {status}"))),
            Ok(Err(e)) => return (false, Some(format!("{name}: health check failed: {e}"))),
            Err(_) => {
                return (false, Some(format!("{name}: health check got no answer within {:?}", config.health_timeout)));
            }
        }
    }
    (true, None)
}

/// Where the next instance port search starts (shared by the agents of one process).
static NEXT_PORT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One pool of connections to the node's own instances, for every health check.
static HEALTH_HTTP: std::sync::LazyLock<reqwest::Client> =
    // The node's own instances: never through a proxy from the environment.
    std::sync::LazyLock::new(|| reqwest::Client::builder().no_proxy().build().unwrap_or_default());

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
