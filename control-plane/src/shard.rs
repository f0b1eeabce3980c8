//! One replica of a regional shard: its Raft group, the applied state, membership changes,
//! linearizable reads, and the soft state (heartbeats, instance health) that only the leader
//! holds and that never goes through Raft.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use model::NodeId;
use model::api::{InstanceReport, MemberView, ReplicaStatus, Route, RouteFeed};
use model::chain::Capability;
use model::command::{Command, CommandResult};
use model::event::EventKind;
use model::keys::Keypair;
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::Replica;
use crate::auth::AdminToken;
use crate::log_store::LogStore;
use crate::network::{Contacts, Network};
use crate::signatures::{CheckError, SignatureChecker};
use crate::state::ShardState;
use crate::state_machine::{Applied, StateMachine};
use crate::touched::{LoopStats, Touched};
use crate::typ::{Raft, RaftMetrics};
use proposer::Proposer;

/// Raft timings and log compaction, checked against each other by the daemon's config.
#[derive(Debug, Clone)]
pub struct RaftTiming {
    /// The leader's heartbeat period.
    pub heartbeat: Duration,
    /// Shortest election timeout; longer than the heartbeat.
    pub election_min: Duration,
    /// Longest election timeout (also the leader lease).
    pub election_max: Duration,
    /// Build a snapshot, and compact the log, after this many entries.
    pub snapshot_logs: u64,
    /// Entries kept in the log behind a snapshot, for slow followers.
    pub keep_logs: u64,
}

impl Default for RaftTiming {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(100),
            election_min: Duration::from_millis(300),
            election_max: Duration::from_millis(600),
            snapshot_logs: 500,
            keep_logs: 100,
        }
    }
}

/// How a shard replica is set up.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    /// Region served.
    pub region: String,
    /// Where the redb file lives (`<dir>/<region>.redb`).
    pub data_dir: PathBuf,
    /// This replica's Raft id.
    pub raft_id: u64,
    /// This replica's API base URL, as peers and clients reach it.
    pub api_url: String,
    /// A node whose last heartbeat is older than this is not routed to, and is declared down.
    pub node_timeout: Duration,
    /// An instance placed but not reported healthy within this is placed elsewhere.
    pub placement_lease: Duration,
    /// Raft timings.
    pub raft: RaftTiming,
    /// Longest a write waits to commit, or a read to be linearized, before it is reported as not
    /// done (an isolated leader never acknowledges).
    pub write_timeout: Duration,
    /// Nodes get work only once they answer a challenge on their advertised address. Off only
    /// where no node listens (in-process tests of placement).
    pub require_address_proof: bool,
}

/// Why a write failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposeError {
    /// This replica is not the leader.
    #[error("replica is not the leader of region {region} (leader is {leader:?})")]
    NotLeader {
        /// Region.
        region: String,
        /// Known leader.
        leader: Option<u64>,
        /// The leader's API URL.
        leader_api: Option<String>,
    },
    /// The write did not commit in time; it may still commit later.
    #[error("the write was not committed in region {region} within {after:?}; it may still be applied")]
    Timeout {
        /// Region.
        region: String,
        /// How long it waited.
        after: Duration,
    },
    /// A membership change breaks a rule (unknown learner, would remove the last voter...).
    #[error("membership change refused in region {region}: {message}")]
    Membership {
        /// Region.
        region: String,
        /// openraft's reason.
        message: String,
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

/// Why a linearizable read could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// No leader is known (an election, or this replica is cut off).
    #[error("region {region} has no leader this replica can reach; try again or read with ?stale=true")]
    NoLeader {
        /// Region.
        region: String,
    },
    /// The leader could not confirm its leadership, or this replica did not catch up, in time.
    #[error("a linearizable read in region {region} did not complete within {after:?}: {reason}")]
    Timeout {
        /// Region.
        region: String,
        /// How long it waited.
        after: Duration,
        /// What was still missing.
        reason: String,
    },
}

/// Why the routing feed or a heartbeat cannot be served here.
#[derive(Debug, thiserror::Error)]
pub enum SoftError {
    /// Soft state lives on the leader.
    #[error("replica is not the leader of region {region}")]
    NotLeader {
        /// Region.
        region: String,
        /// The leader's API URL.
        leader_api: Option<String>,
    },
    /// A new leader has not yet heard from every node; serving its feed now would drop routes.
    #[error("the leader of region {region} took over {since:?} ago and is still hearing from its nodes")]
    WarmingUp {
        /// Region.
        region: String,
        /// Since when it leads.
        since: Duration,
    },
    /// A bounded list of soft state is full.
    #[error("the leader of region {region} tracks as many {what} as it can; try again later")]
    Busy {
        /// Region.
        region: String,
        /// What it tracks.
        what: String,
    },
}

/// The answer a leader gives a follower's read-index request.
#[derive(Debug, Serialize, Deserialize, thiserror::Error)]
#[error("{0}")]
pub struct ReadIndexError(pub String);

#[derive(Default)]
struct Soft {
    /// Gateways following the feed: the version each holds, and when it last asked.
    gateways: HashMap<String, (u64, Instant)>,
    /// The instances each gateway last said it has ejected.
    ejected: HashMap<String, Vec<String>>,
}

/// A node's soft state on the leader: its last beat and what it reported.
struct NodeSoft {
    beat: Instant,
    reports: Vec<InstanceReport>,
    /// Capabilities it declares on chain but cannot use now, and why (from its last beat).
    unavailable: BTreeMap<Capability, String>,
    /// Its own API's address (checked to be on its registered address).
    api: Option<String>,
    /// Whether it proved to this leader that it answers at `api`.
    address: address::AddressCheck,
}

/// Stripes of [`Beats`]: enough that heartbeats of different nodes rarely meet on a lock.
const BEAT_STRIPES: usize = 64;

/// Every node's soft state, in stripes by node id, so that heartbeats take no lock shared by
/// the whole region.
struct Beats {
    stripes: Vec<Mutex<HashMap<NodeId, NodeSoft>>>,
    hasher: std::hash::RandomState,
}

impl Default for Beats {
    fn default() -> Self {
        Self { stripes: (0..BEAT_STRIPES).map(|_| Mutex::default()).collect(), hasher: Default::default() }
    }
}

impl Beats {
    fn stripe(&self, node: &str) -> std::sync::MutexGuard<'_, HashMap<NodeId, NodeSoft>> {
        use std::hash::BuildHasher;
        let i = (self.hasher.hash_one(node) % BEAT_STRIPES as u64) as usize;
        self.stripes[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn clear(&self) {
        for stripe in &self.stripes {
            stripe.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
    }
}

/// Gateways a leader keeps track of at most; past it, the quietest are forgotten.
const MAX_GATEWAYS: usize = 1024;
/// A gateway that has not asked for the feed for this long no longer counts as following it.
pub const GATEWAY_QUIET: Duration = Duration::from_secs(30);
/// How long a gateway may take to find a new leader: its long poll on the old one ends within
/// the 20 s feed wait (plus the client's margin).
const GATEWAY_FIND_LEADER: Duration = Duration::from_secs(25);

/// The longest a built routing feed is served again for the same version.
const FEED_MAX_AGE: Duration = Duration::from_millis(250);

/// A routing feed as built for one version.
struct CachedFeed {
    version: u64,
    built: Instant,
    feed: Arc<RouteFeed>,
}

/// A running shard replica.
pub struct Shard {
    /// Region served.
    pub region: String,
    /// The Raft handle.
    pub raft: Raft,
    id: u64,
    api_url: String,
    key: Arc<Keypair>,
    admin: AdminToken,
    network: Network,
    contacts: Contacts,
    applied: Arc<RwLock<Applied>>,
    committed: Arc<AtomicU64>,
    snapshots_installed: Arc<AtomicU64>,
    soft: Mutex<Soft>,
    beats: Beats,
    /// The last routing feed built, reused while it is current (see [`Shard::feed`]).
    feed_cache: Mutex<Option<CachedFeed>>,
    /// Checks heartbeat signatures off the async workers, in batches.
    signatures: SignatureChecker,
    changed: watch::Sender<u64>,
    /// What changed since the control loop last looked (applied entries and soft state).
    touched: Arc<Mutex<Touched>>,
    /// What the control loop did.
    loop_stats: LoopStats,
    /// `Some((term, since))` while this replica leads.
    leading: watch::Sender<Option<(u64, Instant)>>,
    /// Set while leadership is being handed off: the replica acts as if it did not lead.
    handing_off: AtomicBool,
    /// When the leader's last append reached this replica.
    leader_contact: Mutex<Option<Instant>>,
    /// One membership operation at a time through this replica.
    membership_lock: tokio::sync::Mutex<()>,
    /// Batches writes into Raft entries.
    proposer: Proposer,
    node_timeout: Duration,
    placement_lease: Duration,
    write_timeout: Duration,
    election_max: Duration,
    require_address_proof: bool,
}

impl crate::reconcile::Liveness for Shard {
    fn is_fresh(&self, node: &str) -> bool {
        Shard::is_fresh(self, node)
    }

    fn is_steady(&self, node: &str) -> bool {
        self.since_heartbeat(node).is_some_and(|d| d < self.node_timeout / 2)
    }

    fn unproven(&self, node: &str) -> Option<String> {
        Shard::unproven(self, node)
    }

    fn lacks(&self, node: &str, needs: model::chain::Capabilities) -> Option<String> {
        if let Some(why) = self.address_failed(node) {
            return Some(why);
        }
        let stripe = self.beats.stripe(node);
        let unavailable = &stripe.get(node)?.unavailable;
        let why: Vec<String> = unavailable
            .iter()
            .filter(|(cap, _)| needs.covers(model::chain::Capabilities::of(std::slice::from_ref(*cap))))
            .map(|(cap, why)| format!("{cap}: {why}"))
            .collect();
        (!why.is_empty()).then(|| why.join("; "))
    }
}

impl Shard {
    /// Opens the shard's store and starts its Raft replica. A new replica is not initialized: it
    /// waits to be made a member ([`Shard::initialize`], or a leader adding it).
    pub async fn open(config: ShardConfig, key: Keypair, admin: AdminToken) -> anyhow::Result<Arc<Shard>> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
        let path = config.data_dir.join(format!("{}.redb", config.region));
        let (changed, _) = watch::channel(0u64);
        let touched = Arc::new(Mutex::new(Touched::default()));
        let (log_store, sm) = chain::open_guarded(&path, "shard store", || {
            let db = Arc::new(
                redb::Database::create(&path).with_context(|| format!("opening shard store {}", path.display()))?,
            );
            let log_store = LogStore::new(db.clone())?;
            let sm = StateMachine::open(db, &config.region, changed.clone(), touched.clone())?;
            Ok((log_store, sm))
        })?;
        let committed = log_store.committed();
        let applied = sm.applied();
        let snapshots_installed = sm.installed();
        let t = &config.raft;
        let raft_config = openraft::Config {
            cluster_name: format!("fluxplane-{}", config.region),
            heartbeat_interval: t.heartbeat.as_millis() as u64,
            election_timeout_min: t.election_min.as_millis() as u64,
            election_timeout_max: t.election_max.as_millis() as u64,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(t.snapshot_logs),
            max_in_snapshot_log_to_keep: t.keep_logs,
            // Receivers bound a snapshot call's body by this chunk size.
            snapshot_max_chunk_size: crate::network::SNAPSHOT_CHUNK as u64,
            ..Default::default()
        }
        .validate()
        .context("raft timings")?;
        let key = Arc::new(key);
        let contacts = Contacts::default();
        let network = Network::new(&config.region, config.raft_id, key.clone(), admin.clone(), contacts.clone());
        let raft = Raft::new(config.raft_id, Arc::new(raft_config), network.clone(), log_store, sm).await?;
        let proposer = Proposer::start(raft.clone(), config.region.clone(), config.write_timeout);
        let signatures = SignatureChecker::start(&format!("signatures-{}", config.region))
            .context("starting the signature checker")?;
        let shard = Arc::new(Shard {
            region: config.region,
            raft,
            id: config.raft_id,
            api_url: config.api_url,
            key,
            admin,
            network,
            contacts,
            applied,
            committed,
            snapshots_installed,
            soft: Mutex::new(Soft::default()),
            beats: Beats::default(),
            feed_cache: Mutex::new(None),
            signatures,
            changed,
            touched,
            loop_stats: LoopStats::default(),
            leading: watch::channel(None).0,
            handing_off: AtomicBool::new(false),
            leader_contact: Mutex::new(None),
            membership_lock: tokio::sync::Mutex::new(()),
            proposer,
            node_timeout: config.node_timeout,
            placement_lease: config.placement_lease,
            write_timeout: config.write_timeout,
            election_max: config.raft.election_max,
            require_address_proof: config.require_address_proof,
        });
        tokio::spawn(watch_leadership(Arc::downgrade(&shard), shard.raft.metrics()));
        Ok(shard)
    }

    // === identity ===

    /// This replica's Raft id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// This replica's API URL.
    pub fn api_url(&self) -> &str {
        &self.api_url
    }

    /// This replica as a member record.
    pub fn replica(&self) -> Replica {
        Replica { api: self.api_url.clone(), key: self.key.public() }
    }

    /// The admin token.
    pub fn admin(&self) -> &AdminToken {
        &self.admin
    }

    // === leadership ===

    fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow().clone()
    }

    /// Whether this replica leads its group, is not handing leadership off, and is still a
    /// member (openraft 0.9 lets a leader that removed itself go on believing it leads).
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
            && !self.handing_off.load(Ordering::Relaxed)
            && self.is_self_member()
    }

    /// Follows leadership: `Some((term, since))` while this replica leads.
    pub fn leading(&self) -> watch::Receiver<Option<(u64, Instant)>> {
        self.leading.subscribe()
    }

    /// Leader id and term.
    pub fn leader_and_term(&self) -> (Option<u64>, u64) {
        let m = self.raft.metrics();
        let m = m.borrow();
        (m.current_leader, m.current_term)
    }

    /// The leader's API URL, if a leader is known.
    pub fn leader_api(&self) -> Option<String> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let leader = m.current_leader?;
        m.membership_config.membership().get_node(&leader).map(|n| n.api.clone())
    }

    /// Whether `id` with `key` is a member (voter or learner) of the latest membership or of the
    /// last committed one. Both count: a leader that removes itself must still replicate the
    /// change that removes it until it commits, though the followers already hold it.
    pub fn is_member(&self, id: u64, key: &model::keys::PublicKeyHex) -> bool {
        let latest = {
            let m = self.raft.metrics();
            let m = m.borrow();
            m.membership_config.membership().get_node(&id).is_some_and(|n| &n.key == key)
        };
        latest || {
            let applied = self.applied.read().unwrap_or_else(|e| e.into_inner());
            applied.membership.membership().get_node(&id).is_some_and(|n| &n.key == key)
        }
    }

    /// Whether this replica is in its own latest membership; a replica that is not yet (or no
    /// longer) a member accepts calls vouched for with the admin token.
    pub fn is_self_member(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.membership_config.membership().get_node(&self.id).is_some()
    }

    /// Records that the leader's append reached this replica.
    pub(crate) fn touch_leader_contact(&self) {
        *self.leader_contact.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    // === writes ===

    fn map_write_error(&self, e: RaftError<u64, ClientWriteError<u64, Replica>>) -> ProposeError {
        write_error(&self.region, e)
    }

    /// Commits `cmd` through Raft and returns what it did. Gives up after the write timeout: an
    /// isolated leader never acknowledges a write. Writes that arrive together are committed
    /// together (see [`proposer`]).
    pub async fn propose(&self, cmd: Command) -> Result<CommandResult, ProposeError> {
        if self.handing_off.load(Ordering::Relaxed) {
            return Err(ProposeError::NotLeader { region: self.region.clone(), leader: None, leader_api: None });
        }
        let timed_out = || ProposeError::Timeout { region: self.region.clone(), after: self.write_timeout };
        match tokio::time::timeout(self.write_timeout, self.proposer.submit(cmd)).await {
            Err(_) => Err(timed_out()),
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => {
                Err(ProposeError::Raft { region: self.region.clone(), message: "the shard is shutting down".into() })
            }
        }
    }

    // === reads ===

    /// Waits until this replica's applied state includes every write committed before the call:
    /// on the leader through `ensure_linearizable`, on a follower by asking the leader for its
    /// read index and waiting to apply up to it.
    pub async fn linearize(&self) -> Result<(), ReadError> {
        let within = self.write_timeout;
        let timeout = |reason: String| ReadError::Timeout { region: self.region.clone(), after: within, reason };
        let no_leader = || ReadError::NoLeader { region: self.region.clone() };
        let index = match tokio::time::timeout(within, self.read_index()).await {
            Err(_) => return Err(timeout("the leader did not confirm its leadership".into())),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(index)) => index,
        };
        let Some(index) = index else { return Ok(()) };
        self.raft.wait(Some(within)).applied_index_at_least(Some(index), "linearizable read").await.map(|_| ()).map_err(
            |e| match e {
                openraft::metrics::WaitError::Timeout(..) => {
                    timeout(format!("this replica did not apply up to {index}"))
                }
                openraft::metrics::WaitError::ShuttingDown => no_leader(),
            },
        )
    }

    async fn read_index(&self) -> Result<Option<u64>, ReadError> {
        let no_leader = || ReadError::NoLeader { region: self.region.clone() };
        let m = self.metrics();
        let leader = m.current_leader.ok_or_else(no_leader)?;
        if leader == self.id {
            return self.leader_read_index().await.map_err(|_| no_leader());
        }
        let node = m.membership_config.membership().get_node(&leader).cloned().ok_or_else(no_leader)?;
        let peer = self.network.peer(leader, &node);
        let answer: Result<Option<u64>, crate::typ::RpcError<ReadIndexError>> =
            peer.call("read-index", &(), self.write_timeout).await;
        answer.map_err(|e| {
            tracing::debug!(region = %self.region, "read index from leader {leader} failed: {e}");
            no_leader()
        })
    }

    /// On the leader: the log index a linearizable read must wait for.
    pub async fn leader_read_index(&self) -> Result<Option<u64>, ReadIndexError> {
        if self.handing_off.load(Ordering::Relaxed) {
            return Err(ReadIndexError("leadership is being handed off".into()));
        }
        let (read, _) = self.raft.get_read_log_id().await.map_err(|e| ReadIndexError(e.to_string()))?;
        Ok(read.map(|l| l.index))
    }

    /// Reads the applied state (possibly stale; call [`Shard::linearize`] first for a
    /// linearizable read).
    pub fn read<R>(&self, f: impl FnOnce(&ShardState) -> R) -> R {
        f(&self.applied.read().unwrap_or_else(|e| e.into_inner()).state)
    }

    /// Follows changes to the applied or soft state.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The routing-feed version: unique across leaders, because it carries the leader's term.
    pub fn version(&self) -> u64 {
        let term = self.raft.metrics().borrow().current_term;
        (term << 32) | (*self.changed.borrow() & 0xffff_ffff)
    }

    // === membership ===

    /// Held while a membership operation (init, add, promote, remove) runs, so that two never
    /// race through this replica.
    pub async fn membership_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.membership_lock.lock().await
    }

    /// Initializes a new shard with `members` as its voters.
    pub async fn initialize(&self, members: BTreeMap<u64, Replica>) -> Result<(), ProposeError> {
        self.raft.initialize(members).await.map_err(|e| ProposeError::Membership {
            region: self.region.clone(),
            message: match e {
                RaftError::APIError(openraft::error::InitializeError::NotAllowed(_)) => {
                    "the shard is initialized already".into()
                }
                e => e.to_string(),
            },
        })
    }

    /// Waits (up to `within`) until this replica has re-applied every entry it knew committed
    /// when it started, so its state is at least what it was before a restart.
    pub async fn caught_up(&self, within: Duration) -> bool {
        let Some(committed) = self.committed.load(Ordering::Relaxed).checked_sub(1) else { return true };
        self.raft.wait(Some(within)).applied_index_at_least(Some(committed), "replay").await.is_ok()
    }

    /// Whether the replica has a membership (was initialized, or joined).
    pub async fn is_initialized(&self) -> bool {
        self.raft.is_initialized().await.unwrap_or(false)
    }

    /// The latest membership: voters and learners.
    pub fn members(&self) -> Vec<MemberView> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        let voters: Vec<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| MemberView { id: *id, api: node.api.clone(), voter: voters.contains(id) })
            .collect()
    }

    async fn change(&self, changes: ChangeMembers<u64, Replica>) -> Result<(), ProposeError> {
        let within = self.write_timeout * 6;
        let started = std::time::Instant::now();
        loop {
            // A leader that removed itself still believes it leads; it must not change anything.
            if !self.is_leader() {
                return Err(ProposeError::NotLeader {
                    region: self.region.clone(),
                    leader: None,
                    leader_api: self.leader_api().filter(|_| self.is_self_member()),
                });
            }
            let left = within.saturating_sub(started.elapsed());
            let result = match tokio::time::timeout(left, self.raft.change_membership(changes.clone(), false)).await {
                Err(_) => return Err(ProposeError::Timeout { region: self.region.clone(), after: within }),
                Ok(r) => r,
            };
            match result {
                // The previous change is finishing its second step: wait for it, then go on.
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    ChangeMembershipError::InProgress(_),
                ))) if started.elapsed() < within => tokio::time::sleep(Duration::from_millis(100)).await,
                Ok(_) => {
                    self.record_membership().await;
                    return Ok(());
                }
                Err(e) => return Err(self.map_write_error(e)),
            }
        }
    }

    /// Records the current membership in the event log (best effort: the change itself is done).
    async fn record_membership(&self) {
        let members = self.members();
        let ids = |voter: bool| members.iter().filter(|m| m.voter == voter).map(|m| m.id).collect();
        let event = EventKind::MembershipChanged { voters: ids(true), learners: ids(false) };
        if let Err(e) = self.propose(Command::Record { at_ms: chain::now_ms(), events: vec![event] }).await {
            tracing::warn!(region = %self.region, "membership change not recorded in the event log: {e}");
        }
    }

    /// How long this replica has led, if it leads.
    pub fn leading_for(&self) -> Option<Duration> {
        self.leading.borrow().map(|(_, since)| since.elapsed())
    }

    /// The grace a new leader gives nodes it has not heard from yet: two node timeouts, since
    /// agents must first find the new leader (their beats to the old one fail, and followers
    /// may still name it for an election timeout). Within it, no node is declared down for
    /// silence and no instance is moved for it.
    pub fn leader_grace(&self) -> Duration {
        self.node_timeout * 2
    }

    /// Whether this replica has led longer than [`Shard::leader_grace`].
    pub fn past_leader_grace(&self) -> bool {
        self.leading_for().is_some_and(|t| t >= self.leader_grace())
    }

    /// Adds a learner and waits (bounded) for it to catch up.
    pub async fn add_learner(&self, id: u64, replica: Replica) -> Result<(), ProposeError> {
        let within = self.write_timeout * 6;
        match tokio::time::timeout(within, self.raft.add_learner(id, replica, true)).await {
            Err(_) => Err(ProposeError::Timeout { region: self.region.clone(), after: within }),
            Ok(r) => r.map(|_| ()).map_err(|e| self.map_write_error(e)),
        }
    }

    /// Makes a learner a voter, through joint consensus.
    pub async fn promote(&self, id: u64) -> Result<(), ProposeError> {
        self.change(ChangeMembers::AddVoterIds([id].into())).await
    }

    /// Removes a voter (through joint consensus) or a learner.
    pub async fn remove(&self, id: u64) -> Result<(), ProposeError> {
        let is_voter = self.members().iter().any(|m| m.id == id && m.voter);
        if is_voter {
            self.change(ChangeMembers::RemoveVoters([id].into())).await
        } else {
            self.change(ChangeMembers::RemoveNodes([id].into())).await
        }
    }

    /// Hands leadership to another voter (`to`, or whichever is elected), within `within`.
    /// Returns the new leader.
    ///
    /// openraft 0.9 has no leader transfer, so the leader stops acting and stops its heartbeats;
    /// once the followers' lease on it runs out, `to` (if given) is told to campaign at once, and
    /// otherwise the first follower to time out is elected.
    pub async fn transfer_leadership(&self, to: Option<u64>, within: Duration) -> Result<u64, ProposeError> {
        let m = self.metrics();
        if m.current_leader != Some(self.id) {
            return Err(ProposeError::NotLeader {
                region: self.region.clone(),
                leader: m.current_leader,
                leader_api: self.leader_api(),
            });
        }
        let voters: Vec<u64> = m.membership_config.membership().voter_ids().filter(|v| *v != self.id).collect();
        if voters.is_empty() {
            return Err(ProposeError::Membership {
                region: self.region.clone(),
                message: "no other voter to hand leadership to".into(),
            });
        }
        if let Some(to) = to
            && !voters.contains(&to)
        {
            return Err(ProposeError::Membership {
                region: self.region.clone(),
                message: format!("replica {to} is not a voter of this shard"),
            });
        }
        self.handing_off.store(true, Ordering::Relaxed);
        self.sync_leading();
        self.raft.runtime_config().heartbeat(false);
        let result = async {
            if let Some(to) = to {
                tokio::time::sleep(self.election_max + Duration::from_millis(50)).await;
                if let Some(node) = m.membership_config.membership().get_node(&to) {
                    let peer = self.network.peer(to, node);
                    let kicked: Result<(), crate::typ::RpcError<ReadIndexError>> =
                        peer.call("timeout-now", &(), Duration::from_secs(2)).await;
                    if let Err(e) = kicked {
                        tracing::warn!(region = %self.region, "asking replica {to} to campaign failed: {e}");
                    }
                }
            }
            let mut rx = self.raft.metrics();
            let wanted = |l: u64| to.map_or(l != self.id, |to| l == to);
            let took_over = tokio::time::timeout(
                within,
                rx.wait_for(|m| m.current_leader.is_some_and(wanted) && m.state != ServerState::Leader),
            )
            .await;
            match took_over {
                Ok(Ok(m)) => Ok(m.current_leader.unwrap_or_default()),
                _ => match (to, self.leader_and_term().0) {
                    (Some(to), Some(other)) if other != self.id && other != to => Err(ProposeError::Membership {
                        region: self.region.clone(),
                        message: format!("replica {other} took over, not replica {to} (is {to} reachable?)"),
                    }),
                    _ => Err(ProposeError::Timeout { region: self.region.clone(), after: within }),
                },
            }
        }
        .await;
        // Heartbeats only matter while leading; turning them back on keeps a replica that stayed
        // leader (nobody took over) a working leader.
        self.raft.runtime_config().heartbeat(true);
        self.handing_off.store(false, Ordering::Relaxed);
        self.sync_leading();
        result
    }

    /// Brings `leading` in step with Raft, and clears soft state when leadership changes hands: a
    /// new leader starts with no heartbeats (and the NodeActors give every node a grace period).
    fn sync_leading(&self) {
        let term = self.leader_and_term().1;
        let leads = self.is_leader();
        let was = self.leading.borrow().map(|(t, _)| t);
        let now = leads.then_some(term);
        if now != was {
            if leads {
                tracing::info!(region = %self.region, term, "this replica leads");
            }
            *self.soft() = Soft::default();
            self.beats.clear();
            self.leading.send_replace(now.map(|t| (t, Instant::now())));
            self.bump();
        }
    }

    // === status ===

    /// This replica's own view of its Raft state.
    pub fn replica_status(&self) -> ReplicaStatus {
        let m = self.metrics();
        let voter = m.membership_config.membership().voter_ids().any(|v| v == self.id);
        let member = m.membership_config.membership().get_node(&self.id).is_some();
        let role = match m.state {
            _ if !member => "not_member",
            ServerState::Leader => "leader",
            ServerState::Candidate => "candidate",
            ServerState::Follower if voter => "follower",
            ServerState::Follower | ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let last_contact_ms = if m.state == ServerState::Leader {
            m.millis_since_quorum_ack
        } else {
            self.leader_contact.lock().unwrap_or_else(|e| e.into_inner()).map(|t| t.elapsed().as_millis() as u64)
        };
        let committed = self.committed.load(Ordering::Relaxed).checked_sub(1);
        let (chain_height, genesis_hash) = self.read(|s| (s.chain.height, s.chain.genesis_hash.clone()));
        ReplicaStatus {
            id: self.id,
            api: self.api_url.clone(),
            role: role.into(),
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            committed,
            applied: m.last_applied.map(|l| l.index),
            snapshot: m.snapshot.map(|l| l.index),
            purged: m.purged.map(|l| l.index),
            snapshots_installed: self.snapshots_installed.load(Ordering::Relaxed),
            lag: None,
            last_contact_ms,
            chain_height,
            genesis_hash,
            control_loop: self.loop_stats.view(),
            error: None,
        }
    }

    /// On the leader: how far behind `peer` is, and when it last answered.
    pub fn peer_progress(&self, peer: u64) -> (Option<u64>, Option<Duration>) {
        let m = self.metrics();
        let lag = m.replication.as_ref().and_then(|r| {
            let matched = r.get(&peer)?.map_or(0, |l| l.index + 1);
            Some(m.last_log_index.map_or(0, |i| i + 1).saturating_sub(matched))
        });
        (lag, self.contacts.since(peer))
    }

    // === soft state ===

    fn soft(&self) -> std::sync::MutexGuard<'_, Soft> {
        self.soft.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn soft_leader(&self) -> Result<Instant, SoftError> {
        match *self.leading.borrow() {
            Some((_, since)) if self.is_leader() => Ok(since),
            _ => Err(SoftError::NotLeader { region: self.region.clone(), leader_api: self.leader_api() }),
        }
    }

    /// Checks a heartbeat's (or any agent message's) signature, batched with others.
    pub async fn check_signature(&self, check: model::keys::SignatureCheck) -> Result<(), CheckError> {
        self.signatures.check(check).await
    }

    /// Records a verified heartbeat (soft state, leader only).
    pub fn record_heartbeat(
        &self,
        node: &str,
        reports: Vec<InstanceReport>,
        unavailable: BTreeMap<Capability, String>,
        api: Option<String>,
    ) -> Result<(), SoftError> {
        self.soft_leader()?;
        let mut stripe = self.beats.stripe(node);
        let now = Instant::now();
        let (was_fresh, changed, abilities_changed) = match stripe.get_mut(node) {
            Some(known) => {
                let was_fresh = known.beat.elapsed() < self.node_timeout;
                let changed = known.reports != reports;
                let abilities_changed = known.unavailable != unavailable;
                known.beat = now;
                known.api = api;
                if changed {
                    known.reports = reports;
                }
                if abilities_changed {
                    known.unavailable = unavailable;
                }
                (was_fresh, changed, abilities_changed)
            }
            None => {
                stripe.insert(
                    node.to_string(),
                    NodeSoft { beat: now, reports, unavailable, api, address: Default::default() },
                );
                (false, true, false)
            }
        };
        // Bumped before the lock is released: a view that sees the new reports also sees a feed
        // version that carries them (`deploy --wait` relies on it).
        // A node whose Docker engine came back (or went) is judged again like a node that
        // came back: the apps short of nodes may use it now.
        if !was_fresh || abilities_changed {
            self.touched().fresh_node(node);
        } else if changed {
            self.touched().reported(node);
        }
        if changed || !was_fresh {
            self.bump();
        }
        drop(stripe);
        Ok(())
    }

    /// Records that gateway `id` holds feed `version` (it asked for what comes after it).
    /// Leader only. A version this leader has not reached is not believed (it is recorded as
    /// 0); a full list takes no new id until an entry goes quiet, so a flood of ids cannot push
    /// out the gateways that follow the feed.
    pub fn record_gateway(&self, id: &str, version: u64, ejected: Vec<String>) -> Result<(), SoftError> {
        self.soft_leader()?;
        let version = if version > self.version() { 0 } else { version };
        let mut soft = self.soft();
        if soft.gateways.len() >= MAX_GATEWAYS && !soft.gateways.contains_key(id) {
            soft.gateways.retain(|_, (_, at)| at.elapsed() < GATEWAY_QUIET);
            let Soft { gateways, ejected } = &mut *soft;
            ejected.retain(|id, _| gateways.contains_key(id));
            if soft.gateways.len() >= MAX_GATEWAYS {
                return Err(SoftError::Busy { region: self.region.clone(), what: "gateways".into() });
            }
        }
        soft.gateways.insert(id.to_string(), (version, Instant::now()));
        if ejected.is_empty() {
            soft.ejected.remove(id);
        } else {
            soft.ejected.insert(id.to_string(), ejected);
        }
        Ok(())
    }

    /// Whether `instance` (`app@node`) is placed in this region.
    pub fn is_placed(&self, instance: &str) -> bool {
        let Some((app, node)) = instance.split_once('@') else { return false };
        self.read(|s| s.placements.get(app).is_some_and(|nodes| nodes.contains_key(node)))
    }

    /// The gateways (heard from within [`GATEWAY_QUIET`]) that report `instance` ejected.
    pub fn ejected_by(&self, instance: &str) -> Vec<String> {
        let soft = self.soft();
        let mut by: Vec<String> = soft
            .ejected
            .iter()
            .filter(|(id, list)| {
                list.iter().any(|i| i == instance)
                    && soft.gateways.get(*id).is_some_and(|(_, at)| at.elapsed() < GATEWAY_QUIET)
            })
            .map(|(id, _)| id.clone())
            .collect();
        by.sort();
        by
    }

    /// Whether this leader's list of gateways is complete: it has led long enough for every
    /// gateway's long poll on the previous leader to have ended, or some gateway found it.
    pub fn gateways_known(&self) -> bool {
        self.leading_for().is_some_and(|t| t >= GATEWAY_FIND_LEADER) || !self.gateways().is_empty()
    }

    /// The gateways that asked for the feed within [`GATEWAY_QUIET`]: id and the version each
    /// holds, by id.
    pub fn gateways(&self) -> Vec<(String, u64)> {
        let mut gateways: Vec<(String, u64)> = self
            .soft()
            .gateways
            .iter()
            .filter(|(_, (_, at))| at.elapsed() < GATEWAY_QUIET)
            .map(|(id, (version, _))| (id.clone(), *version))
            .collect();
        gateways.sort();
        gateways
    }

    /// The capabilities `node` declares but said, in its last beat, it cannot use now.
    pub fn unavailable(&self, node: &str) -> BTreeMap<Capability, String> {
        let mut unavailable = self.beats.stripe(node).get(node).map(|n| n.unavailable.clone()).unwrap_or_default();
        // A node that has not proven its address takes no work of any kind.
        if let Some(why) = self.unproven(node) {
            for cap in Capability::ALL {
                unavailable.entry(cap).or_insert_with(|| why.clone());
            }
        }
        unavailable
    }

    /// Where `node`'s own API listens, as its last beat said.
    pub fn node_api(&self, node: &str) -> Option<String> {
        self.beats.stripe(node).get(node).and_then(|n| n.api.clone())
    }

    /// Time since `node`'s last heartbeat reached this replica.
    pub fn since_heartbeat(&self, node: &str) -> Option<Duration> {
        self.beats.stripe(node).get(node).map(|n| n.beat.elapsed())
    }

    /// Whether `node` beat within the timeout.
    pub fn is_fresh(&self, node: &str) -> bool {
        self.since_heartbeat(node).is_some_and(|d| d < self.node_timeout)
    }

    /// The node timeout.
    pub fn node_timeout(&self) -> Duration {
        self.node_timeout
    }

    /// How the leader judges placements at this moment.
    pub fn judgement(&self) -> crate::reconcile::Judgement {
        crate::reconcile::Judgement {
            now_ms: chain::now_ms(),
            lease_ms: self.placement_lease.as_millis() as u64,
            settled: self.past_leader_grace(),
        }
    }

    /// How long a placed instance has to report healthy before it is placed elsewhere.
    pub fn placement_lease(&self) -> Duration {
        self.placement_lease
    }

    fn touched(&self) -> std::sync::MutexGuard<'_, Touched> {
        self.touched.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes what changed since the last call (see [`Touched`]).
    pub fn take_touched(&self) -> Touched {
        std::mem::take(&mut *self.touched())
    }

    /// What the control loop did.
    pub fn loop_stats(&self) -> &LoopStats {
        &self.loop_stats
    }

    /// Signals a soft-state change, so feed followers re-read.
    pub fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// The last report for each instance placed on `node`.
    pub fn reports(&self, node: &str) -> Vec<InstanceReport> {
        self.beats.stripe(node).get(node).map(|n| n.reports.clone()).unwrap_or_default()
    }

    /// The region's routes: placed instances on fresh, up nodes whose agent reports them healthy.
    /// Served by the leader only, once it has led for a node timeout (until then it has not heard
    /// from every node, and an early feed would drop their routes).
    ///
    /// Every gateway asks after each change, and status views count its routes: a feed is
    /// built once per version and reused for at most [`FEED_MAX_AGE`], so that a node that
    /// falls silent leaves it soon even before its down is committed.
    pub fn feed(&self) -> Result<Arc<RouteFeed>, SoftError> {
        self.feed_ready()?;
        let version = self.version();
        let mut cache = self.feed_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.as_ref()
            && c.version == version
            && c.built.elapsed() < FEED_MAX_AGE
        {
            return Ok(c.feed.clone());
        }
        let feed = Arc::new(self.build_feed(version));
        *cache = Some(CachedFeed { version, built: Instant::now(), feed: feed.clone() });
        Ok(feed)
    }

    /// Whether this replica serves the feed: the leader, once it has led for a node timeout.
    pub fn feed_ready(&self) -> Result<(), SoftError> {
        let since = self.soft_leader()?.elapsed();
        if since < self.node_timeout {
            return Err(SoftError::WarmingUp { region: self.region.clone(), since });
        }
        Ok(())
    }

    fn build_feed(&self, version: u64) -> RouteFeed {
        let routes = self.read(|s| {
            let mut routes = Vec::new();
            for (app, nodes) in &s.placements {
                let Some(record) = s.chain.apps.get(app) else { continue };
                for node_id in nodes.keys() {
                    let Some(node) = s.chain.nodes.get(node_id) else { continue };
                    if s.down.contains(node_id) {
                        continue;
                    }
                    let stripe = self.beats.stripe(node_id);
                    let Some(known) = stripe.get(node_id).filter(|n| n.beat.elapsed() < self.node_timeout) else {
                        continue;
                    };
                    let id = format!("{app}@{node_id}");
                    let Some(report) = known.reports.iter().find(|r| r.id == id) else {
                        continue;
                    };
                    if !report.healthy || report.spec_height != record.updated_height {
                        continue;
                    }
                    for (i, component) in record.spec.components.iter().enumerate() {
                        let route = |addr: &String, port: Option<&model::spec::OciPort>| Route {
                            app: app.clone(),
                            component: component.name.clone(),
                            primary: i == 0 && port.is_none(),
                            node: node_id.clone(),
                            region: s.region.clone(),
                            geo: node.start.geo,
                            addr: addr.clone(),
                            port: port.map(|p| p.public),
                            domain: port.and_then(|p| p.domain.as_deref()).map(model::domains::canonical),
                            traffic: component.traffic,
                        };
                        if let Some(addr) = report.endpoints.get(&component.name) {
                            routes.push(route(addr, None));
                        }
                        // A container's published ports, each under its own name.
                        if let model::spec::Workload::Oci(oci) = &component.workload {
                            for p in &oci.ports {
                                if let Some(addr) = report.endpoints.get(&format!("{}:{}", component.name, p.public)) {
                                    routes.push(route(addr, Some(p)));
                                }
                            }
                        }
                    }
                }
            }
            let routed: std::collections::HashSet<&str> = routes.iter().map(|r| r.app.as_str()).collect();
            // Only apps this region places or is short of: each region lists its own, so the
            // feeds together know every app that should run, without every feed listing all.
            let unrouted = s
                .chain
                .apps
                .iter()
                .filter(|(name, _)| s.placements.contains_key(*name) || s.shortfall.contains_key(*name))
                .filter(|(name, _)| !routed.contains(name.as_str()))
                .map(|(name, app)| (name.clone(), app.spec.components.iter().map(|c| c.name.clone()).collect()))
                .collect();
            // The custom domains of the apps listed here that are served for one of them. Every
            // shard checks every claim, so a winner placed elsewhere is that region's to list.
            let here = |app: &str| s.placements.contains_key(app) || s.shortfall.contains_key(app);
            let mut domains = BTreeMap::new();
            for app in s.chain.apps.iter().filter(|(name, _)| here(name)).map(|(_, app)| app) {
                for (domain, _) in app.claims() {
                    if domains.contains_key(&domain) {
                        continue;
                    }
                    if let Some(winner) = s.domain_winner(&domain).filter(|w| here(&w.app)) {
                        domains.insert(domain, winner);
                    }
                }
            }
            (routes, unrouted, domains)
        });
        let (routes, unrouted, domains) = routes;
        RouteFeed { region: self.region.clone(), version, routes, unrouted, domains }
    }

    /// Stops the Raft replica.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(region = %self.region, "raft shutdown: {e}");
        }
    }
}

/// Keeps `leading` in step with Raft.
async fn watch_leadership(shard: std::sync::Weak<Shard>, mut metrics: watch::Receiver<RaftMetrics>) {
    loop {
        metrics.borrow_and_update();
        let Some(shard) = shard.upgrade() else { return };
        shard.sync_leading();
        drop(shard);
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// What a failed `client_write` means to the caller.
fn write_error(region: &str, e: RaftError<u64, ClientWriteError<u64, Replica>>) -> ProposeError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ProposeError::NotLeader {
            region: region.to_string(),
            leader: f.leader_id,
            leader_api: f.leader_node.map(|n| n.api),
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ProposeError::Membership { region: region.to_string(), message: describe_membership_error(&e) }
        }
        e => ProposeError::Raft { region: region.to_string(), message: e.to_string() },
    }
}

fn describe_membership_error(e: &ChangeMembershipError<u64>) -> String {
    match e {
        ChangeMembershipError::LearnerNotFound(l) => {
            format!("replica {} is not a learner of this shard; add it with add-learner first", l.node_id)
        }
        ChangeMembershipError::InProgress(_) => "another membership change is still in progress".into(),
        ChangeMembershipError::EmptyMembership(_) => "the change would leave the shard with no voter".into(),
    }
}

mod address;
mod proposer;
#[cfg(test)]
mod tests;

pub use address::prove_address;
