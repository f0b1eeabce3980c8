//! The node agent: heartbeats to its region's shard leader (signed with the node key), receives
//! the instances assigned to the node, starts them on the runtime of each component's workload
//! (WASM or OCI, through the `runtime` contract alone), checks their health, and reports back in
//! the next beat. While the control plane is unreachable it keeps every instance running:
//! losing the control plane never stops a workload.
//!
//! Heartbeats, reconciling, health checks and capability checks are separate tasks that share
//! the instance table, so that neither a slow start, a slow guest nor a slow Docker engine can
//! delay a beat: a node is declared down only when it is really silent.
//!
//! Depends on `model`, `client` and `runtime`.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use model::api::{Assignment, Assignments, Heartbeat, InstanceReport, START_FAILED, SignedHeartbeat};
use model::chain::Capability;
use model::keys::Keypair;
use model::spec::Workload;
use runtime::{HostPorts, Limits, LogBuffer, Runtime, StartError, StartSpec};
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
    /// The ports registered on chain: each instance component binds free ones of them.
    pub ports: model::chain::PortRange,
    /// Longest time a request may run in a guest.
    pub request_deadline: Duration,
    /// How long a stopped container gets to end by itself (SIGTERM) before it is killed.
    pub stop_grace: Duration,
    /// Where the node's own API (logs) is reached, on its registered address: told to the
    /// control plane in every beat, so `fluxctl` can find it.
    pub api: Option<SocketAddr>,
    /// After shutdown, how long instances keep serving (with no more beats or new work) before
    /// they stop: long enough for the control plane to drop the node's routes, so requests in
    /// flight and those already routed here still get answers.
    pub linger: Duration,
}

/// The runtimes of a node, one per capability it declares.
#[derive(Clone, Default)]
pub struct Runtimes(BTreeMap<Capability, Arc<dyn Runtime>>);

impl Runtimes {
    /// Adds `runtime` for the capability it runs.
    pub fn with(mut self, runtime: Arc<dyn Runtime>) -> Self {
        self.0.insert(runtime.capability(), runtime);
        self
    }

    /// The capabilities they run.
    pub fn capabilities(&self) -> Vec<Capability> {
        self.0.keys().copied().collect()
    }

    /// Every runtime.
    pub fn all(&self) -> impl Iterator<Item = &Arc<dyn Runtime>> {
        self.0.values()
    }

    fn get(&self, capability: Capability) -> Option<&Arc<dyn Runtime>> {
        self.0.get(&capability)
    }
}

/// One started component of an instance.
type Started = (String, Arc<dyn runtime::Instance>);

/// Where one assigned instance is.
enum Phase {
    /// Fetching, compiling, loading or binding.
    Starting,
    /// Serving; `healthy` is the last health check's verdict.
    Running { components: Vec<Started>, healthy: bool, message: Option<String> },
    /// Could not start; reported until the control plane places it elsewhere.
    Failed { message: String },
}

struct Instance {
    assignment: Assignment,
    /// Which entry this is: a start installs what it started only into the entry it was
    /// started for, not into one made after the instance was unassigned and assigned again.
    generation: u64,
    phase: Phase,
    /// Each component's output, kept while the instance is assigned.
    logs: BTreeMap<String, LogBuffer>,
}

impl Instance {
    fn new(assignment: Assignment) -> Self {
        static GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let logs = assignment.components.iter().map(|c| (c.name.clone(), LogBuffer::new())).collect();
        let generation = GENERATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self { assignment, generation, phase: Phase::Starting, logs }
    }

    /// The instance as the next beat reports it, its endpoints on `advertise`.
    fn report(&self, advertise: IpAddr) -> InstanceReport {
        let mut runs = BTreeMap::new();
        let (endpoints, healthy, message) = match &self.phase {
            Phase::Starting => (BTreeMap::new(), false, Some("starting".to_string())),
            Phase::Running { components, healthy, message } => {
                let mut endpoints = BTreeMap::new();
                for (name, instance) in components {
                    for e in instance.endpoints() {
                        endpoints.insert(e.name, SocketAddr::new(advertise, e.addr.port()).to_string());
                    }
                    let state = instance.state();
                    if !state.is_quiet() {
                        runs.insert(name.clone(), state);
                    }
                }
                (endpoints, *healthy, message.clone())
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
            runs,
        }
    }

    /// Stops its components in the background (a container's stop waits out its grace period,
    /// which must not hold the table), in the instance's turn: a start of the same instance
    /// waits until they are gone.
    fn stop(&self, turns: &Turns) {
        if let Phase::Running { components, .. } = &self.phase {
            stop_all(components.clone(), turns.take_now(&self.assignment.id));
        }
    }
}

/// Stops `components` in the background, holding `turn` (if given) until they are stopped.
fn stop_all(components: Vec<Started>, turn: Turn) {
    tokio::spawn(async move {
        let _turn = match turn {
            Turn::Held(guard) => Some(guard),
            Turn::Wait(lock) => Some(lock.lock_owned().await),
        };
        futures::future::join_all(components.iter().map(|(_, c)| c.stop())).await;
    });
}

/// Per-instance turns: the stops and starts of one instance id run one after the other, in
/// the order the reconcile loop decided them (a stop's turn is taken before its task runs).
#[derive(Clone, Default)]
struct Turns(Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>);

/// A turn: held already, or to wait for.
enum Turn {
    Held(tokio::sync::OwnedMutexGuard<()>),
    Wait(Arc<tokio::sync::Mutex<()>>),
}

impl Turns {
    fn lock_of(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut turns = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // Forget the turns nobody holds or waits for.
        turns.retain(|_, t| Arc::strong_count(t) > 1);
        turns.entry(id.to_string()).or_default().clone()
    }

    /// The turn of `id`, taken now if free.
    fn take_now(&self, id: &str) -> Turn {
        let lock = self.lock_of(id);
        match lock.clone().try_lock_owned() {
            Ok(guard) => Turn::Held(guard),
            Err(_) => Turn::Wait(lock),
        }
    }

    /// Waits for the turn of `id`.
    async fn take(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        self.lock_of(id).lock_owned().await
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

/// What the agent's tasks share.
#[derive(Clone)]
struct Agent {
    config: AgentConfig,
    runtimes: Runtimes,
    ports: HostPorts,
    instances: Instances,
    turns: Turns,
    /// Declared capabilities that do not work now, and why.
    unavailable: Arc<Mutex<BTreeMap<Capability, String>>>,
}

/// A handle on a running agent: what it runs, for the node's own endpoints (logs).
#[derive(Clone)]
pub struct AgentHandle {
    instances: Instances,
}

/// Why a logs request is not answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogsRefused {
    /// The signature is bad or too old: 401.
    Unauthenticated(String),
    /// Signed by someone other than the app's owner: 403.
    NotOwner,
    /// The node does not run the instance: 404.
    Unknown(String),
}

impl AgentHandle {
    /// The output of `instance`, by component, once the request for it is checked: signed by
    /// the key it names, recently, and that key owns the app. (The caller checks that the
    /// signed path names `instance`, and that the nonce is new.)
    pub fn logs(
        &self,
        instance: &str,
        request: &model::api::LogsRequest,
    ) -> Result<BTreeMap<String, LogBuffer>, LogsRefused> {
        request.verify().map_err(LogsRefused::Unauthenticated)?;
        let skew = model::api::LogsRequest::MAX_SKEW_MS;
        if now_ms().abs_diff(request.at_ms) > skew {
            return Err(LogsRefused::Unauthenticated(format!(
                "the request was signed more than {} s from this node's clock",
                skew / 1000
            )));
        }
        let table = self.instances.lock();
        let instance =
            table.get(instance).ok_or_else(|| LogsRefused::Unknown(format!("this node does not run {instance}")))?;
        if instance.assignment.owner.as_ref() != Some(&request.owner) {
            return Err(LogsRefused::NotOwner);
        }
        Ok(instance.logs.clone())
    }
}

/// Starts the agent: the returned future runs it until `shutdown` turns true; then it stops
/// beating and taking work, lets its instances serve for `linger`, and stops them.
pub fn start(
    config: AgentConfig,
    runtimes: Runtimes,
    shutdown: watch::Receiver<bool>,
) -> (AgentHandle, impl std::future::Future<Output = ()>) {
    let agent = Agent {
        ports: HostPorts::new(config.ports),
        config,
        runtimes,
        instances: Instances::default(),
        turns: Turns::default(),
        unavailable: Arc::default(),
    };
    (AgentHandle { instances: agent.instances.clone() }, run(agent, shutdown))
}

async fn run(agent: Agent, mut shutdown: watch::Receiver<bool>) {
    let (assigned_tx, assigned_rx) = watch::channel::<Option<Assignments>>(None);
    let beat_now = Arc::new(Notify::new());
    let tasks = [
        tokio::spawn(beat_loop(agent.clone(), assigned_tx, beat_now.clone())),
        tokio::spawn(reconcile_loop(agent.clone(), assigned_rx, beat_now)),
        tokio::spawn(health_loop(agent.clone())),
        tokio::spawn(capability_loop(agent.clone())),
    ];
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            break;
        }
    }
    let config = &agent.config;
    tracing::info!(node = %config.node_id, "draining: no more beats or new instances");
    for t in &tasks {
        t.abort();
    }
    tokio::time::sleep(config.linger).await;
    let running: Vec<Started> = agent
        .instances
        .lock()
        .values()
        .flat_map(|i| match &i.phase {
            Phase::Running { components, .. } => components.clone(),
            _ => Vec::new(),
        })
        .collect();
    // Awaited here, not in the background: the process ends after this, and a container must
    // not outlive its node's shutdown.
    futures::future::join_all(running.iter().map(|(_, c)| c.stop())).await;
}

/// Beats every period (and at once when an instance starts), and publishes the answer.
async fn beat_loop(agent: Agent, assigned: watch::Sender<Option<Assignments>>, beat_now: Arc<Notify>) {
    let config = &agent.config;
    let mut ticker = tokio::time::interval(config.beat_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = beat_now.notified() => ticker.reset(),
        }
        let reports: Vec<InstanceReport> =
            agent.instances.lock().values().map(|i| i.report(config.advertise)).collect();
        let unavailable = agent.unavailable.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let beat = SignedHeartbeat::sign(
            Heartbeat {
                node: config.node_id.clone(),
                at_ms: now_ms(),
                instances: reports,
                unavailable,
                api: config.api.map(|a| a.to_string()),
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

/// How often leftovers of earlier runs (containers of instances no longer assigned) are looked
/// for, after the first time right after the first answer.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Makes the instance table match each answer: stops what is not assigned (or assigned with a
/// newer spec), starts what is new, and sweeps away what an earlier run of the node left.
async fn reconcile_loop(agent: Agent, mut assigned: watch::Receiver<Option<Assignments>>, beat_now: Arc<Notify>) {
    let config = &agent.config;
    let mut last_sweep: Option<Instant> = None;
    while assigned.changed().await.is_ok() {
        let Some(answer) = assigned.borrow_and_update().clone() else { continue };
        for order in &answer.stop {
            tracing::info!(node = %config.node_id, instance = %order.id, "stopping: {}", order.reason);
        }
        let wanted: HashMap<&str, &Assignment> = answer.instances.iter().map(|a| (a.id.as_str(), a)).collect();
        let mut to_start = Vec::new();
        let keep: Vec<String> = {
            let mut table = agent.instances.lock();
            table.retain(|id, i| {
                // A new spec or new secrets: the instance starts again with them.
                let keep = wanted.get(id.as_str()).is_some_and(|a| same_run(a, &i.assignment));
                if !keep {
                    tracing::info!(node = %config.node_id, instance = %id, "stopping instance");
                    i.stop(&agent.turns);
                }
                keep
            });
            for a in &answer.instances {
                if !table.contains_key(&a.id) {
                    let entry = Instance::new(a.clone());
                    to_start.push((a.clone(), entry.generation));
                    table.insert(a.id.clone(), entry);
                }
            }
            table.keys().cloned().collect()
        };
        // The answer says what the node should run; whatever else an earlier process of this
        // node left behind (after a kill -9) goes now. Instances being stopped just now are
        // not in `keep` either: removing them early costs them only their grace period.
        if last_sweep.is_none_or(|t| t.elapsed() >= SWEEP_EVERY) {
            last_sweep = Some(Instant::now());
            for capability in agent.runtimes.capabilities() {
                let (agent, keep) = (agent.clone(), keep.clone());
                tokio::spawn(async move {
                    let Some(runtime) = agent.runtimes.get(capability) else { return };
                    match runtime.remove_others(&owner(&agent.config.node_id, &agent.config.key), &keep).await {
                        Ok(0) => {}
                        Ok(n) => {
                            tracing::info!(node = %agent.config.node_id, "removed {n} leftover {capability} workload(s)")
                        }
                        Err(e) => {
                            tracing::warn!(node = %agent.config.node_id, "sweeping leftover {capability} workloads: {e:#}")
                        }
                    }
                });
            }
        }
        for (a, generation) in to_start {
            let (agent, beat_now) = (agent.clone(), beat_now.clone());
            tokio::spawn(async move {
                let config = &agent.config;
                // After any stop of this instance decided before: its containers are gone first.
                let turn = agent.turns.take(&a.id).await;
                let logs = agent.instances.lock().get(&a.id).map(|i| i.logs.clone()).unwrap_or_default();
                let result = start_instance(&agent, &a, &logs).await.map_err(|e| format!("{e:#}"));
                let phase = match result {
                    Ok(components) => {
                        // Checked once before it is reported, so it is routed on the next beat.
                        let (healthy, message) = check_health(config, &components).await;
                        Phase::Running { components, healthy, message }
                    }
                    Err(message) => {
                        tracing::warn!(node = %config.node_id, instance = %a.id, "start failed: {message}");
                        Phase::Failed { message }
                    }
                };
                let mut table = agent.instances.lock();
                match table.get_mut(&a.id) {
                    // Still wanted, in the very entry this start was for.
                    Some(i) if i.generation == generation && matches!(i.phase, Phase::Starting) => {
                        i.phase = phase;
                    }
                    // Unassigned meanwhile: what started must not run on.
                    _ => {
                        if let Phase::Running { components, .. } = phase {
                            stop_all(components, Turn::Held(turn));
                        }
                    }
                }
                drop(table);
                beat_now.notify_one();
            });
        }
    }
}

/// Checks every running instance each beat period, all at once, each within the health timeout.
async fn health_loop(agent: Agent) {
    let config = &agent.config;
    let mut ticker = tokio::time::interval(config.beat_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let targets: Vec<(String, (u64, u64), Vec<Started>)> = agent
            .instances
            .lock()
            .values()
            .filter_map(|i| match &i.phase {
                Phase::Running { components, .. } => Some((
                    i.assignment.id.clone(),
                    (i.assignment.spec_height, i.assignment.secrets_version),
                    components.clone(),
                )),
                _ => None,
            })
            .collect();
        let checks = targets.into_iter().map(|(id, run, components)| async move {
            let verdict = check_health(config, &components).await;
            (id, run, verdict)
        });
        for (id, run, (ok, why)) in futures::future::join_all(checks).await {
            if let Some(i) = agent.instances.lock().get_mut(&id)
                && (i.assignment.spec_height, i.assignment.secrets_version) == run
                && let Phase::Running { healthy, message, .. } = &mut i.phase
            {
                *healthy = ok;
                *message = why;
            }
        }
    }
}

/// Asks each runtime every beat period whether it works, for the next beat to say.
async fn capability_loop(agent: Agent) {
    let config = &agent.config;
    let mut ticker = tokio::time::interval(config.beat_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let mut now = BTreeMap::new();
        for capability in agent.runtimes.capabilities() {
            let Some(runtime) = agent.runtimes.get(capability) else { continue };
            let why = match tokio::time::timeout(config.health_timeout, runtime.unavailable()).await {
                Ok(why) => why,
                Err(_) => Some(format!("it did not answer within {:?}", config.health_timeout)),
            };
            if let Some(why) = why {
                now.insert(capability, why);
            }
        }
        let mut unavailable = agent.unavailable.lock().unwrap_or_else(|e| e.into_inner());
        if *unavailable != now {
            for (capability, why) in &now {
                tracing::warn!(node = %config.node_id, "{capability} is unavailable: {why}");
            }
            *unavailable = now;
        }
    }
}

/// Whether an instance started for `a` still runs what `b` asks for.
fn same_run(a: &Assignment, b: &Assignment) -> bool {
    a.spec_height == b.spec_height && a.secrets_version == b.secrets_version && a.network_with == b.network_with
}

/// The run an instance started for `a` is: its spec, secrets and shared networks (the last
/// change when the app it names is registered or gone, with the spec unchanged).
fn run_of(a: &Assignment) -> String {
    match a.network_with.is_empty() {
        true => format!("{}.{}", a.spec_height, a.secrets_version),
        false => format!("{}.{}.{}", a.spec_height, a.secrets_version, a.network_with.join(",")),
    }
}

/// Starts every component of `a`; on a failure, stops those already started.
async fn start_instance(
    agent: &Agent,
    a: &Assignment,
    logs: &BTreeMap<String, LogBuffer>,
) -> anyhow::Result<Vec<Started>> {
    let config = &agent.config;
    // Secrets arrive sealed to this node's key, and are opened only here, once, for the workload.
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
    let mut started: Vec<Started> = Vec::new();
    for c in &a.components {
        match start_component(agent, a, c, &secrets, logs.get(&c.name).cloned().unwrap_or_default()).await {
            Ok(instance) => {
                let addrs: Vec<String> = instance.endpoints().iter().map(|e| e.addr.to_string()).collect();
                tracing::info!(node = %config.node_id, instance = %a.id, component = %c.name, addrs = %addrs.join(","), "instance started");
                started.push((c.name.clone(), Arc::from(instance)));
            }
            Err(e) => {
                // Within the start's own turn: stopped before anything else of this instance.
                futures::future::join_all(started.iter().map(|(_, c)| c.stop())).await;
                return Err(e);
            }
        }
    }
    Ok(started)
}

async fn start_component(
    agent: &Agent,
    a: &Assignment,
    c: &model::spec::ComponentSpec,
    secrets: &BTreeMap<String, String>,
    logs: LogBuffer,
) -> anyhow::Result<Box<dyn runtime::Instance>> {
    let config = &agent.config;
    let capability = c.capability();
    let runtime = agent
        .runtimes
        .get(capability)
        .with_context(|| format!("component {}: this node does not run {capability} workloads", c.name))?;
    // The module, or the image archive, by content hash, checked before it is used.
    let artifact = match c.blobs().first() {
        Some((field, blob)) => {
            let hash = blob
                .strip_prefix(model::spec::BLAKE3_PREFIX)
                .with_context(|| format!("component {}: {field} is not a content hash", c.name))?;
            let what = if *field == "wasm" { "module" } else { "image archive" };
            let bytes = config.control.get_blob(hash).await.with_context(|| format!("fetching {what} {hash}"))?;
            anyhow::ensure!(blake3::hash(&bytes).to_hex().as_str() == hash, "{what} {hash} arrived corrupted");
            Some(bytes)
        }
        None if matches!(c.workload, Workload::Wasm(_)) => anyhow::bail!("component {} has no module hash", c.name),
        None => None,
    };
    let mut env = c.env.clone();
    env.insert("FLUXPLANE_NODE".into(), config.node_id.clone());
    env.insert("FLUXPLANE_APP".into(), a.app.clone());
    env.extend(secrets.clone());
    let spec = StartSpec {
        node: owner(&config.node_id, &config.key),
        app: a.app.clone(),
        instance: a.id.clone(),
        run: run_of(a),
        component: c.clone(),
        artifact,
        env,
        bind_ip: config.bind_ip,
        ports: agent.ports.clone(),
        limits: Limits::of(c, config.request_deadline, config.stop_grace),
        logs,
        network_with: a.network_with.clone(),
    };
    runtime.start(spec).await.map_err(|e| match e {
        StartError::Unavailable(why) => anyhow::anyhow!("component {}: {capability} is unavailable: {why}", c.name),
        StartError::Failed(why) => anyhow::anyhow!("component {}: {why}", c.name),
    })
}

/// The name this node's workloads are owned by on the machine: its id and the start of its
/// key, so that two clouds' nodes of the same id on one Docker engine (test clouds, a dev
/// cloud beside a real node) never take each other's containers.
pub fn owner(node_id: &str, key: &Keypair) -> String {
    let key = key.public();
    format!("{node_id}-{}", key.0.get(..8).unwrap_or(&key.0))
}

/// An instance is healthy when each of its components is.
async fn check_health(config: &AgentConfig, components: &[Started]) -> (bool, Option<String>) {
    for (_, c) in components {
        let health = c.health(config.health_timeout).await;
        if !health.healthy {
            return (false, health.message);
        }
    }
    (true, None)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
