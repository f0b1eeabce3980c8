//! The node agent: heartbeats to its region's shard (signed with the node key), receives the
//! instances assigned to the node, starts them on the WASM runtime, checks their health, and
//! reports back in the next beat. Depends on `model` and `runtime-wasm`.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use model::api::{Assignment, Assignments, Heartbeat, InstanceReport, SignedHeartbeat};
use model::keys::Keypair;
use runtime_wasm::{ComponentCache, InstanceLimits, InstanceServer};
use tokio::sync::{mpsc, watch};

/// How an agent is set up.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The node's id on chain.
    pub node_id: String,
    /// The node key registered on chain.
    pub key: Keypair,
    /// Base URL of the control-plane API.
    pub api: String,
    /// Heartbeat period; the shard declares the node down after a few missed beats.
    pub beat_every: Duration,
    /// Address instances listen on (port chosen by the OS).
    pub bind_ip: IpAddr,
    /// Longest time a request may run in a guest.
    pub request_deadline: Duration,
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

/// Runs the agent until `shutdown` turns true.
pub async fn run(config: AgentConfig, cache: ComponentCache, mut shutdown: watch::Receiver<bool>) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap_or_default();
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
                        check_health(&http, &mut r).await;
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
            check_health(&http, r).await;
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
        let assignments = match send_beat(&http, &config.api, &beat).await {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(node = %config.node_id, "heartbeat failed: {e:#}");
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
            let (cache, http, config, tx) = (cache.clone(), http.clone(), config.clone(), started_tx.clone());
            tokio::spawn(async move {
                let result = start(&cache, &http, &config, &a).await.map_err(|e| format!("{e:#}"));
                let _ = tx.send((a, result)).await;
            });
        }
    }
    for r in running.values() {
        r.stop();
    }
}

async fn send_beat(http: &reqwest::Client, api: &str, beat: &SignedHeartbeat) -> anyhow::Result<Assignments> {
    let resp = http.post(format!("{api}/v1/agent/heartbeat")).json(beat).send().await?;
    let status = resp.status();
    if !status.is_success() {
        anyhow::bail!("{status}: {}", resp.text().await.unwrap_or_default());
    }
    Ok(resp.json().await?)
}

async fn start(
    cache: &ComponentCache,
    http: &reqwest::Client,
    config: &AgentConfig,
    a: &Assignment,
) -> anyhow::Result<Vec<(String, InstanceServer)>> {
    let mut servers = Vec::new();
    for c in &a.components {
        let hash = c.wasm_hash().with_context(|| format!("component {} has no module hash", c.name))?;
        let resp = http.get(format!("{}/v1/blobs/{hash}", config.api)).send().await?;
        anyhow::ensure!(resp.status().is_success(), "fetching module {hash}: {}", resp.status());
        let bytes = resp.bytes().await?;
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

/// An instance is healthy when each component answers `GET /` below 500.
async fn check_health(http: &reqwest::Client, r: &mut Running) {
    for (name, server) in &r.servers {
        let result = http.get(format!("http://{}/", server.addr())).timeout(Duration::from_secs(2)).send().await;
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
