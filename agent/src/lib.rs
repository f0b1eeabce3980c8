//! The node agent: heartbeats to its region's shard leader (signed with the node key), receives
//! the instances assigned to the node, starts them on the WASM runtime, checks their health, and
//! reports back in the next beat. While the control plane is unreachable it keeps every instance
//! running: losing the control plane never stops a workload.
//!
//! Depends on `model`, `client` and `runtime-wasm`.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use model::api::{Assignment, Heartbeat, InstanceReport, SignedHeartbeat};
use model::keys::Keypair;
use runtime_wasm::{ComponentCache, InstanceLimits, InstanceServer};
use tokio::sync::{mpsc, watch};

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
    /// Address instances listen on (port chosen by the OS).
    pub bind_ip: IpAddr,
    /// Longest time a request may run in a guest.
    pub request_deadline: Duration,
    /// After shutdown, how long instances keep serving (with no more beats or new work) before
    /// they stop: long enough for the control plane to drop the node's routes, so requests in
    /// flight and those already routed here still get answers.
    pub linger: Duration,
}

struct Running {
    assignment: Assignment,
    servers: Vec<(String, InstanceServer)>,
    healthy: bool,
    message: Option<String>,
}

impl Running {
    fn report(&self) -> InstanceReport {
        InstanceReport {
            id: self.assignment.id.clone(),
            spec_height: self.assignment.spec_height,
            endpoints: self.servers.iter().map(|(c, s)| (c.clone(), s.addr().to_string())).collect(),
            healthy: self.healthy,
            message: self.message.clone(),
        }
    }
    fn stop(&self) {
        for (_, s) in &self.servers {
            s.stop();
        }
    }
}

type Started = (Assignment, Result<Vec<(String, InstanceServer)>, String>);

/// Runs the agent until `shutdown` turns true; then stops beating and taking work, lets its
/// instances serve for `linger`, and stops them.
pub async fn run(config: AgentConfig, cache: ComponentCache, mut shutdown: watch::Receiver<bool>) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap_or_default();
    let health = HealthCheck { http: http.clone(), timeout: config.health_timeout };
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut failed: HashMap<String, (u64, String)> = HashMap::new();
    let mut starting: HashMap<String, u64> = HashMap::new();
    let (started_tx, mut started_rx) = mpsc::channel::<Started>(64);
    let mut ticker = tokio::time::interval(config.beat_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            Some((assignment, result)) = started_rx.recv() => {
                starting.remove(&assignment.id);
                match result {
                    Ok(servers) => {
                        let mut r = Running { assignment, servers, healthy: false, message: None };
                        health.check(&mut r).await;
                        if let Some(old) = running.insert(r.assignment.id.clone(), r) { old.stop(); }
                    }
                    Err(message) => {
                        tracing::warn!(node = %config.node_id, instance = %assignment.id, "start failed: {message}");
                        failed.insert(assignment.id.clone(), (assignment.spec_height, message));
                    }
                }
                ticker.reset_immediately();
                continue;
            }
            _ = shutdown.changed() => break,
        }
        for r in running.values_mut() {
            health.check(r).await;
        }
        let mut instances: Vec<InstanceReport> = running.values().map(Running::report).collect();
        instances.extend(failed.iter().map(|(id, (spec_height, message))| InstanceReport {
            id: id.clone(),
            spec_height: *spec_height,
            endpoints: BTreeMap::new(),
            healthy: false,
            message: Some(message.clone()),
        }));
        let beat =
            SignedHeartbeat::sign(Heartbeat { node: config.node_id.clone(), at_ms: now_ms(), instances }, &config.key);
        let assignments = match config.control.heartbeat(&beat, config.beat_every * 3).await {
            Ok(a) => a,
            Err(e) => {
                // Static stability: keep running what runs, and try again next beat.
                tracing::debug!(node = %config.node_id, "heartbeat failed: {e}");
                continue;
            }
        };
        let wanted: HashMap<&str, &Assignment> = assignments.instances.iter().map(|a| (a.id.as_str(), a)).collect();
        running.retain(|id, r| {
            let keep = wanted.get(id.as_str()).is_some_and(|a| a.spec_height == r.assignment.spec_height);
            if !keep {
                tracing::info!(node = %config.node_id, instance = %id, "stopping instance");
                r.stop();
            }
            keep
        });
        failed.retain(|id, (h, _)| wanted.get(id.as_str()).is_some_and(|a| a.spec_height == *h));
        for a in assignments.instances {
            let busy = running.contains_key(&a.id)
                || failed.contains_key(&a.id)
                || starting.get(&a.id) == Some(&a.spec_height);
            if busy {
                continue;
            }
            starting.insert(a.id.clone(), a.spec_height);
            let (cache, config, tx) = (cache.clone(), config.clone(), started_tx.clone());
            tokio::spawn(async move {
                let result = start(&cache, &config, &a).await.map_err(|e| format!("{e:#}"));
                let _ = tx.send((a, result)).await;
            });
        }
    }
    tracing::info!(node = %config.node_id, "draining: no more beats or new instances");
    tokio::time::sleep(config.linger).await;
    for r in running.values() {
        r.stop();
    }
}

async fn start(
    cache: &ComponentCache,
    config: &AgentConfig,
    a: &Assignment,
) -> anyhow::Result<Vec<(String, InstanceServer)>> {
    let mut servers = Vec::new();
    for c in &a.components {
        let hash = c.wasm_hash().with_context(|| format!("component {} has no module hash", c.name))?;
        let bytes = config.control.get_blob(hash).await.with_context(|| format!("fetching module {hash}"))?;
        anyhow::ensure!(blake3::hash(&bytes).to_hex().as_str() == hash, "module {hash} arrived corrupted");
        let pre = cache.get(&bytes).await.with_context(|| format!("compiling component {}", c.name))?;
        let mut env = c.env.clone();
        env.insert("FLUXPLANE_NODE".into(), config.node_id.clone());
        env.insert("FLUXPLANE_APP".into(), a.app.clone());
        let limits = InstanceLimits { memory_bytes: (c.ram_mb as usize) << 20, deadline: config.request_deadline };
        let server = InstanceServer::start(pre, env, limits, SocketAddr::new(config.bind_ip, 0)).await?;
        tracing::info!(node = %config.node_id, instance = %a.id, component = %c.name, addr = %server.addr(), "instance started");
        servers.push((c.name.clone(), server));
    }
    Ok(servers)
}

struct HealthCheck {
    http: reqwest::Client,
    timeout: Duration,
}

impl HealthCheck {
    /// An instance is healthy when each component answers `GET /` below 500 within the timeout.
    async fn check(&self, r: &mut Running) {
        check_health(&self.http, self.timeout, r).await
    }
}

async fn check_health(http: &reqwest::Client, timeout: Duration, r: &mut Running) {
    for (name, server) in &r.servers {
        let result = http.get(format!("http://{}/", server.addr())).timeout(timeout).send().await;
        match result {
            Ok(resp) if resp.status().as_u16() < 500 => {}
            Ok(resp) => {
                r.healthy = false;
                r.message = Some(format!("{name}: health check answered {}", resp.status()));
                return;
            }
            Err(e) => {
                r.healthy = false;
                r.message = Some(format!("{name}: health check failed: {e}"));
                return;
            }
        }
    }
    r.healthy = true;
    r.message = None;
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
