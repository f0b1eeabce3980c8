//! One regional shard: its Raft group, the applied state, and the soft state (heartbeats,
//! instance health) that never goes through Raft.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use model::NodeId;
use model::api::{InstanceReport, Route, RouteFeed};
use model::command::{Command, CommandResult};
use openraft::BasicNode;
use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::watch;

use crate::log_store::LogStore;
use crate::network::Network;
use crate::state::ShardState;
use crate::state_machine::{Applied, StateMachine};
use crate::typ::Raft;

/// How a shard is set up.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    /// Region served.
    pub region: String,
    /// Where the redb file lives (`<dir>/<region>.redb`).
    pub data_dir: PathBuf,
    /// This replica's Raft id.
    pub raft_id: u64,
    /// Address peers reach this replica's Raft listener at.
    pub raft_addr: String,
    /// A node whose last heartbeat is older than this is not routed to, and is declared down.
    pub node_timeout: Duration,
}

/// Why a proposal failed.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// This replica is not the leader.
    #[error("not the leader of region {region} (leader is {leader:?})")]
    NotLeader {
        /// Region.
        region: String,
        /// Known leader.
        leader: Option<u64>,
    },
    /// Raft is shutting down or failed.
    #[error("raft error in region {region}: {message}")]
    Raft {
        /// Region.
        region: String,
        /// What openraft said.
        message: String,
    },
}

#[derive(Default)]
struct Soft {
    beats: HashMap<NodeId, Instant>,
    reports: HashMap<NodeId, Vec<InstanceReport>>,
}

/// A running shard replica.
pub struct Shard {
    /// Region served.
    pub region: String,
    /// The Raft handle.
    pub raft: Raft,
    raft_id: u64,
    applied: Arc<RwLock<Applied>>,
    soft: Mutex<Soft>,
    changed: watch::Sender<u64>,
    node_timeout: Duration,
}

impl Shard {
    /// Opens the shard's store, starts its Raft replica, and, on first start, initializes a
    /// single-member group with this replica.
    pub async fn open(config: ShardConfig) -> anyhow::Result<Arc<Shard>> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
        let path = config.data_dir.join(format!("{}.redb", config.region));
        let db =
            Arc::new(redb::Database::create(&path).with_context(|| format!("opening shard store {}", path.display()))?);
        let (changed, _) = watch::channel(0u64);
        let log_store = LogStore::new(db.clone())?;
        let sm = StateMachine::open(db, &config.region, changed.clone())?;
        let applied = sm.applied();
        let raft_config = openraft::Config {
            cluster_name: format!("fluxplane-{}", config.region),
            heartbeat_interval: 100,
            election_timeout_min: 300,
            election_timeout_max: 600,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(500),
            max_in_snapshot_log_to_keep: 100,
            ..Default::default()
        }
        .validate()?;
        let raft =
            Raft::new(config.raft_id, Arc::new(raft_config), Network::new(&config.region), log_store, sm).await?;
        if !raft.is_initialized().await? {
            let members = BTreeMap::from([(config.raft_id, BasicNode { addr: config.raft_addr.clone() })]);
            raft.initialize(members).await?;
        }
        let shard = Arc::new(Shard {
            region: config.region,
            raft,
            raft_id: config.raft_id,
            applied,
            soft: Mutex::new(Soft::default()),
            changed,
            node_timeout: config.node_timeout,
        });
        shard.raft.wait(Some(Duration::from_secs(10))).current_leader(config.raft_id, "leader elected").await.ok();
        Ok(shard)
    }

    /// Whether this replica leads its group.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.raft_id)
    }

    /// Leader id and term.
    pub fn leader_and_term(&self) -> (Option<u64>, u64) {
        let m = self.raft.metrics().borrow().clone();
        (m.current_leader, m.current_term)
    }

    /// Commits `cmd` through Raft and returns what it did.
    pub async fn propose(&self, cmd: Command) -> Result<CommandResult, ProposeError> {
        match self.raft.client_write(cmd).await {
            Ok(resp) => Ok(resp.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(ProposeError::NotLeader { region: self.region.clone(), leader: f.leader_id })
            }
            Err(e) => Err(ProposeError::Raft { region: self.region.clone(), message: e.to_string() }),
        }
    }

    /// Reads the applied state.
    pub fn read<R>(&self, f: impl FnOnce(&ShardState) -> R) -> R {
        f(&self.applied.read().unwrap_or_else(|e| e.into_inner()).state)
    }

    /// Follows changes to the applied or soft state (the routing-feed version).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The routing-feed version.
    pub fn version(&self) -> u64 {
        *self.changed.borrow()
    }

    fn soft(&self) -> std::sync::MutexGuard<'_, Soft> {
        self.soft.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a verified heartbeat (soft state).
    pub fn record_heartbeat(&self, node: &str, reports: Vec<InstanceReport>) {
        let mut soft = self.soft();
        let was_fresh = soft.beats.get(node).is_some_and(|t| t.elapsed() < self.node_timeout);
        soft.beats.insert(node.to_string(), Instant::now());
        let changed = soft.reports.get(node) != Some(&reports);
        soft.reports.insert(node.to_string(), reports);
        drop(soft);
        if changed || !was_fresh {
            self.changed.send_modify(|v| *v += 1);
        }
    }

    /// Time since `node`'s last heartbeat reached this replica.
    pub fn since_heartbeat(&self, node: &str) -> Option<Duration> {
        self.soft().beats.get(node).map(|t| t.elapsed())
    }

    /// Whether `node` beat within the timeout.
    pub fn is_fresh(&self, node: &str) -> bool {
        self.since_heartbeat(node).is_some_and(|d| d < self.node_timeout)
    }

    /// The node timeout.
    pub fn node_timeout(&self) -> Duration {
        self.node_timeout
    }

    /// Signals that a node went stale, so feed followers re-read.
    pub fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// The last report for each instance placed on `node`.
    pub fn reports(&self, node: &str) -> Vec<InstanceReport> {
        self.soft().reports.get(node).cloned().unwrap_or_default()
    }

    /// The region's routes: placed instances on fresh, up nodes whose agent reports them healthy.
    pub fn feed(&self) -> RouteFeed {
        let version = self.version();
        let soft = self.soft();
        let routes = self.read(|s| {
            let mut routes = Vec::new();
            for (app, nodes) in &s.placements {
                let Some(record) = s.chain.apps.get(app) else { continue };
                for node_id in nodes.keys() {
                    let fresh = soft.beats.get(node_id).is_some_and(|t| t.elapsed() < self.node_timeout);
                    let Some(node) = s.chain.nodes.get(node_id) else { continue };
                    if !fresh || s.down.contains(node_id) {
                        continue;
                    }
                    let id = format!("{app}@{node_id}");
                    let Some(report) = soft.reports.get(node_id).and_then(|rs| rs.iter().find(|r| r.id == id)) else {
                        continue;
                    };
                    if !report.healthy || report.spec_height != record.updated_height {
                        continue;
                    }
                    for (i, component) in record.spec.components.iter().enumerate() {
                        if let Some(addr) = report.endpoints.get(&component.name) {
                            routes.push(Route {
                                app: app.clone(),
                                component: component.name.clone(),
                                primary: i == 0,
                                node: node_id.clone(),
                                region: s.region.clone(),
                                geo: node.start.geo,
                                addr: addr.clone(),
                            });
                        }
                    }
                }
            }
            routes
        });
        RouteFeed { region: self.region.clone(), version, routes }
    }

    /// Stops the Raft replica.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(region = %self.region, "raft shutdown: {e}");
        }
    }
}

#[cfg(test)]
mod tests;
