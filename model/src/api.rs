//! Wire types of the public HTTP API under `/v1/`, shared by the server, `fluxctl`, node agents
//! and gateways.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::chain::Capability;
use crate::geo::GeoPoint;
use crate::keys::{PublicKeyHex, verify_hex};
use crate::spec::ComponentSpec;
use crate::tier::{Resources, Tier};
use crate::{AppName, NodeId};

/// The body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// A machine-readable code and a message for people.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable code, e.g. `invalid_spec`, `not_found`, `forbidden`.
    pub code: String,
    /// What went wrong.
    pub message: String,
    /// Field errors, for `invalid_spec`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<crate::spec::FieldError>,
    /// For `not_leader`: the API URL of the shard's leader, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
}

/// The chain source's tip, and the identity of the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainTip {
    /// Height of the newest block.
    pub height: u64,
    /// Its hash.
    pub hash: String,
    /// Hash of block 0.
    pub genesis_hash: String,
}

/// The HTTP status that goes with an error code. Every server maps codes through this one table,
/// so a code means the same status wherever it comes from.
pub fn status_of(code: &str) -> u16 {
    match code {
        "bad_request" | "invalid_spec" | "invalid_node" | "invalid_announce" | "invalid_transfer"
        | "missing_module" | "bad_block" | "bad_endpoint" | "invalid_module" | "bad_nonce" | "invalid_secret"
        | "invalid_archive" | "invalid_blob" => 400,
        "bad_signature" | "unauthorized" => 401,
        "underpaid" | "insufficient_funds" | "payment_required" => 402,
        "forbidden" | "quota_exceeded" => 403,
        "not_found" => 404,
        "timeout" => 408,
        "conflict" | "stale_nonce" | "other_chain" | "rejected" | "not_caught_up" => 409,
        "method_not_allowed" => 405,
        "length_required" => 411,
        "payload_too_large" => 413,
        "too_many_requests" => 429,
        "unsupported_media_type" => 415,
        "infeasible" => 422,
        "wrong_region" => 421,
        "not_leader" => 307,
        "no_leader" | "busy" | "warming_up" | "unavailable" | "not_committed" | "not_member" => 503,
        "chain_unavailable" => 502,
        _ => 500,
    }
}

/// Answer to a submitted transaction.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmitTxResponse {
    /// The transaction id.
    pub tx_id: String,
    /// The chain height when it was accepted into the mempool.
    pub height: u64,
}

/// A transaction's fate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TxStatus {
    /// Waiting for a block.
    Pending,
    /// In a block.
    Included {
        /// The block's height.
        height: u64,
    },
    /// Dropped when the block was built.
    Rejected {
        /// Why.
        reason: String,
    },
    /// Not known to this chain source.
    Unknown,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusView {
    /// The chain source's tip.
    pub chain_height: u64,
    /// Tip hash.
    pub chain_tip: String,
    /// One entry per region shard.
    pub regions: Vec<RegionStatus>,
}

/// One shard's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegionStatus {
    /// Region name.
    pub name: String,
    /// Raft leader's id, if known.
    pub leader: Option<u64>,
    /// The leader's API URL, if known.
    #[serde(default)]
    pub leader_api: Option<String>,
    /// Voting members of the shard.
    #[serde(default)]
    pub voters: usize,
    /// Why the region's shard could not be asked, when it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreachable: Option<String>,
    /// Raft term.
    pub term: u64,
    /// Highest chain block the shard applied.
    pub applied_height: Option<u64>,
    /// Nodes in the region.
    pub nodes: usize,
    /// Nodes up.
    pub nodes_up: usize,
    /// Instances placed in the region.
    pub instances_placed: usize,
    /// Instances reported healthy.
    pub instances_healthy: usize,
    /// Routing-feed version.
    pub feed_version: u64,
}

/// `GET /v1/apps/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppView {
    /// Name.
    pub name: AppName,
    /// Owner's address.
    pub owner: PublicKeyHex,
    /// Description.
    pub description: String,
    /// Instances wanted.
    pub instances: u32,
    /// Geolocation rules, in Flux syntax.
    pub geolocation: Vec<String>,
    /// Block of first registration.
    pub registered_height: u64,
    /// Block of the last update.
    pub updated_height: u64,
    /// Block at which the lease ends.
    pub expires_height: u64,
    /// Instances each region is to run.
    pub quotas: BTreeMap<String, u32>,
    /// Placed instances.
    pub placements: Vec<InstanceView>,
    /// Why fewer instances than wanted run, by region.
    pub shortfall: BTreeMap<String, String>,
    /// Components.
    pub components: Vec<ComponentSpec>,
    /// The apps whose networks its containers join too, as the spec asks.
    #[serde(default, skip_serializing_if = "crate::spec::NetworkSpec::is_empty")]
    pub network: crate::spec::NetworkSpec,
    /// Regions whose shard could not be asked; their placements are missing from this view.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unreachable: BTreeMap<String, String>,
    /// How each region's routes reach the gateways (from each region's leader).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub routing: BTreeMap<String, Routing>,
    /// Names of the app's secrets this region holds; never the values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// The app's custom domains: whether each is proven and served, and the TXT record that
    /// proves it (as the answering region's shard sees it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<crate::domains::DomainView>,
}

/// Which gateways route what one region's leader shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routing {
    /// The region's feed version when the view was read: a gateway that holds it, or a later
    /// one, routes every instance the view shows running there.
    pub feed_version: u64,
    /// Gateways that followed the region's feed in the last 30 s.
    pub gateways: Vec<GatewayFeed>,
    /// Whether the list is complete: false while a new leader may not have heard from every
    /// gateway yet.
    #[serde(default)]
    pub complete: bool,
}

/// One gateway following a region's feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayFeed {
    /// The id it gives itself.
    pub id: String,
    /// The feed version it holds.
    pub version: u64,
}

/// Whether `id` can name a gateway: 1 to 64 letters, digits, `-`, `_`, `.` or `:`.
pub fn valid_gateway_id(id: &str) -> bool {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"-_.:".contains(&b);
    !id.is_empty() && id.len() <= 64 && id.bytes().all(plain)
}

impl Routing {
    /// The gateways that do not hold `version` yet.
    pub fn behind(&self, version: u64) -> Vec<&GatewayFeed> {
        self.gateways.iter().filter(|g| g.version < version).collect()
    }
}

impl AppView {
    /// Instances reported healthy.
    pub fn running(&self) -> usize {
        self.placements.iter().filter(|p| p.state == InstanceState::Running).count()
    }
}

/// The state of one placed instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// Placed; the node has not reported it healthy yet.
    Starting,
    /// Reported healthy and routed to.
    Running,
    /// Reported, but failing its health check.
    Unhealthy,
    /// Its node is down.
    NodeDown,
    /// Health is soft state held by the shard's leader; a stale read from a follower cannot tell.
    Unknown,
}

/// One placed instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceView {
    /// `app@node`.
    pub id: String,
    /// Node.
    pub node: NodeId,
    /// Region.
    pub region: String,
    /// State.
    pub state: InstanceState,
    /// Where it listens, once reported.
    pub endpoints: BTreeMap<String, String>,
    /// Last health message.
    pub message: Option<String>,
    /// Components that exited since they started: restarts, last exit code, OOM kill, backoff.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub runs: BTreeMap<String, RunState>,
    /// Gateways that have ejected this instance after consecutive failures (passive health):
    /// they send it nothing for a while.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ejected_by: Vec<String>,
}

/// `GET /v1/nodes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    /// Id.
    pub id: NodeId,
    /// Region.
    pub region: String,
    /// Tier.
    pub tier: Tier,
    /// Location.
    pub geo: GeoPoint,
    /// Continent code.
    pub continent: String,
    /// Country code.
    pub country: String,
    /// Capabilities, as declared on chain.
    pub capabilities: Vec<Capability>,
    /// Declared capabilities it cannot use now, and why, as its last heartbeat said.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unavailable: BTreeMap<Capability, String>,
    /// Its own API (logs), `address:port`, as its last heartbeat said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    /// The address it serves instances on (registered on chain).
    pub address: std::net::IpAddr,
    /// The ports its instances listen on (registered on chain).
    pub instance_ports: crate::chain::PortRange,
    /// Whether the shard counts it as up.
    pub up: bool,
    /// Whether an operator cordoned it (it gets no new instances).
    #[serde(default)]
    pub cordoned: bool,
    /// Milliseconds since its last heartbeat reached the shard leader, if any.
    pub last_heartbeat_ms_ago: Option<u64>,
    /// Instances placed on it.
    pub instances: usize,
    /// Capacity left.
    pub free: Resources,
}

/// `POST /v1/app-checks`: what deploying a spec (chain form) would do, without doing it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppCheck {
    /// App name.
    pub name: String,
    /// Its price, in the smallest unit.
    pub price: u64,
    /// Instances per region, as the nodes on chain would split them.
    pub quotas: BTreeMap<String, u32>,
    /// Whether the nodes on chain could ever run every instance.
    pub feasible: bool,
    /// Why not, when not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Modules (by `blake3:` reference) not uploaded yet.
    #[serde(default)]
    pub missing_modules: Vec<String>,
    /// Whether an app of that name exists (a deploy by its owner would update it).
    pub exists: bool,
    /// The owner of the app of that name, when it exists: a deploy signed by another key is
    /// refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<crate::keys::PublicKeyHex>,
}

/// The headers of a blob upload (`PUT /v1/blobs/{hash}`): who uploads, when, and their
/// signature over the hash and size. A replica checks them, and that the chain records this key's
/// payment for this blob and size, before it reads a byte of the body. The same headers travel
/// with the copies replicas hand each other, so each copy is checked alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedUpload {
    /// The uploader's key: the blob's payer.
    pub uploader: PublicKeyHex,
    /// blake3 of the bytes, hex.
    pub hash: String,
    /// Length of the bytes.
    pub size: u64,
    /// When it was signed, ms since the epoch.
    pub at_ms: u64,
    /// ed25519 over [`SignedUpload::signing_bytes`], hex.
    pub signature: String,
}

impl SignedUpload {
    /// The header carrying `uploader`.
    pub const UPLOADER_HEADER: &'static str = "x-fluxplane-uploader";
    /// The header carrying `at_ms`.
    pub const AT_HEADER: &'static str = "x-fluxplane-at-ms";
    /// The header carrying `signature`.
    pub const SIGNATURE_HEADER: &'static str = "x-fluxplane-signature";
    /// How far an upload's time may be from the replica's clock: uploads of large archives
    /// may wait for a place, and a replay can only store the same paid bytes again.
    pub const MAX_SKEW_MS: u64 = 10 * 60 * 1000;

    /// The bytes signed: a domain tag, the hash, the size and the time.
    pub fn signing_bytes(hash: &str, size: u64, at_ms: u64) -> Vec<u8> {
        format!("fluxplane-upload-v1\n{hash}\n{size}\n{at_ms}").into_bytes()
    }

    /// An upload of `size` bytes hashing to `hash`, signed now by `key`.
    pub fn sign(hash: &str, size: u64, at_ms: u64, key: &crate::keys::Keypair) -> SignedUpload {
        let signature = key.sign_hex(&Self::signing_bytes(hash, size, at_ms));
        SignedUpload { uploader: key.public(), hash: hash.to_string(), size, at_ms, signature }
    }

    /// Checks the signature.
    pub fn verify(&self) -> Result<(), String> {
        crate::keys::verify_hex(
            &self.uploader,
            &Self::signing_bytes(&self.hash, self.size, self.at_ms),
            &self.signature,
        )
    }
}

/// A node's answer to the shard leader's challenge on its advertised address
/// (`GET /v1/address-proof?node=ID&nonce=HEX` on the node's API): proof that the node holding
/// the registered node key answers there. A node that cannot prove its address gets no work, so
/// a node cannot claim an address that is not its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressProof {
    /// The node that answers.
    pub node: String,
    /// ed25519 by the node key over [`AddressProof::signing_bytes`], hex.
    pub signature: String,
}

impl AddressProof {
    /// The bytes signed: a domain tag, the node, the address the challenge was sent to, and
    /// the challenge's nonce.
    pub fn signing_bytes(node: &str, api: &str, nonce: &str) -> Vec<u8> {
        format!("fluxplane-address-proof-v1\n{node}\n{api}\n{nonce}").into_bytes()
    }

    /// The answer of `node`, reached at `api`, to `nonce`.
    pub fn sign(node: &str, api: &str, nonce: &str, key: &crate::keys::Keypair) -> AddressProof {
        AddressProof { node: node.to_string(), signature: key.sign_hex(&Self::signing_bytes(node, api, nonce)) }
    }

    /// Checks the answer against the registered node key.
    pub fn verify(&self, api: &str, nonce: &str, key: &PublicKeyHex) -> Result<(), String> {
        crate::keys::verify_hex(key, &Self::signing_bytes(&self.node, api, nonce), &self.signature)
    }
}

/// `GET /v1/blobs/{hash}/status`: whether a blob is stored, and who paid for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobStatus {
    /// Whether the answering replica holds it (or fetched it from a peer to answer).
    pub stored: bool,
    /// The key whose payment the chain records, while it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paid_by: Option<PublicKeyHex>,
    /// The paid size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// `GET /v1/wallets/{address}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WalletView {
    /// Address.
    pub address: PublicKeyHex,
    /// Spendable balance, smallest unit.
    pub balance: u64,
    /// Last nonce used, in the blocks the answering server has applied.
    pub nonce: u64,
    /// The nonce the wallet's next transaction must carry: one past the last, counting the
    /// transactions still waiting for a block.
    pub next_nonce: u64,
}

/// `GET /v1/regions`: the region directory from the cached chain state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegionView {
    /// Name.
    pub name: String,
    /// Continent served.
    pub continent: String,
    /// Centre.
    pub center: GeoPoint,
    /// API base URLs of the replicas of this region's shard, by Raft id, as published on chain.
    pub replicas: BTreeMap<u64, String>,
}

impl RegionView {
    /// The replicas' API URLs.
    pub fn urls(&self) -> Vec<String> {
        self.replicas.values().cloned().collect()
    }
}

// === shards ===

/// `GET /v1/shards/{region}`: a shard's membership and each replica's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardView {
    /// Region.
    pub region: String,
    /// Leader's Raft id, if known.
    pub leader: Option<u64>,
    /// Term, as the answering replica knows it.
    pub term: u64,
    /// Members, voters and learners.
    pub members: Vec<MemberView>,
    /// Each member's own report; a member that did not answer has `error` set.
    pub replicas: Vec<ReplicaStatus>,
}

/// One member of a shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    /// Raft id.
    pub id: u64,
    /// API base URL.
    pub api: String,
    /// Voter, or learner.
    pub voter: bool,
}

/// One replica's own view of its Raft state: `GET /v1/shards/{region}/replica`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// Raft id.
    pub id: u64,
    /// API base URL.
    pub api: String,
    /// `leader`, `follower`, `learner`, `candidate`, `shutdown`, `not_member` (not initialized,
    /// not added yet, or removed), or `unreachable`.
    pub role: String,
    /// Current term.
    pub term: u64,
    /// Leader it knows of.
    pub leader: Option<u64>,
    /// Last log index appended.
    pub last_log_index: Option<u64>,
    /// Last log index known committed.
    pub committed: Option<u64>,
    /// Last log index applied to the state machine.
    pub applied: Option<u64>,
    /// Last log index in its snapshot.
    pub snapshot: Option<u64>,
    /// Last log index purged from its log.
    pub purged: Option<u64>,
    /// Snapshots it installed from a leader since it started.
    pub snapshots_installed: u64,
    /// Entries behind the leader (leader's last log index less its matched index), as the leader
    /// sees it.
    pub lag: Option<u64>,
    /// Milliseconds since it last heard from the leader (for the leader: since a quorum acked).
    pub last_contact_ms: Option<u64>,
    /// Highest chain block its state has applied.
    pub chain_height: Option<u64>,
    /// The genesis its state is pinned to.
    pub genesis_hash: String,
    /// What its control loop did while it led, since it started (absent if it never led).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_loop: Option<LoopView>,
    /// Why it could not be asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a replica's control loop did while it led, counted by the loop since the replica
/// started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoopView {
    /// Reconciles per cause (`start`, `spec`, `instance`, `node`, `capacity`, `timer`,
    /// `sweep`): how many ran, and how many of them committed a change. A sweep that changes
    /// something found what the change tracking missed.
    pub reconciles: BTreeMap<String, ReconcileCount>,
    /// Full sweeps over every app finished.
    pub sweeps: u64,
    /// How long the last full sweep took, ms.
    pub last_sweep_ms: u64,
}

/// Reconciles of one cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileCount {
    /// Ran.
    pub ran: u64,
    /// Committed a change.
    pub changed: u64,
}

/// `GET /v1/shards/{region}/identity`: who a replica is. Signed with the admin token, so that a
/// replica only trusts identities that a holder of the token vouches for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaIdentity {
    /// Region.
    pub region: String,
    /// Raft id.
    pub id: u64,
    /// API base URL.
    pub api: String,
    /// The replica's ed25519 key, which signs its Raft calls.
    pub key: PublicKeyHex,
    /// Keyed blake3 of the fields above under the admin token, hex.
    pub mac: String,
}

/// `POST /v1/shards/{region}/learners`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddLearnerRequest {
    /// Raft id of the new replica.
    pub id: u64,
    /// Its API base URL (`http://host:port`).
    pub api: String,
}

/// `POST /v1/shards/{region}/{promote|remove}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberRequest {
    /// Raft id.
    pub id: u64,
}

/// `POST /v1/shards/{region}/transfer-leader`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TransferLeaderRequest {
    /// Preferred new leader; any up-to-date voter when absent.
    pub to: Option<u64>,
}

// === node agents ===

/// What an agent reports each beat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The node.
    pub node: NodeId,
    /// Agent's clock, ms since the epoch; stale beats are refused.
    pub at_ms: u64,
    /// Instances the agent runs.
    pub instances: Vec<InstanceReport>,
    /// Capabilities the node declares on chain but cannot use now, and why (its Docker engine
    /// does not answer, say): no new instance needing one is placed on it meanwhile.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unavailable: BTreeMap<Capability, String>,
    /// Where the node's own API (`/healthz`, `/v1/logs`) listens, `address:port`, on its
    /// registered address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
}

/// A heartbeat signed with the node key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignedHeartbeat {
    /// The beat.
    pub beat: Heartbeat,
    /// ed25519 over the beat's JSON, hex.
    pub signature: String,
}

impl SignedHeartbeat {
    /// The bytes signed.
    pub fn signing_bytes(beat: &Heartbeat) -> Vec<u8> {
        let mut bytes = b"fluxplane-heartbeat-v1\n".to_vec();
        bytes.extend(serde_json::to_vec(beat).unwrap_or_default());
        bytes
    }

    /// Signs a beat.
    pub fn sign(beat: Heartbeat, key: &crate::keys::Keypair) -> Self {
        let signature = key.sign_hex(&Self::signing_bytes(&beat));
        Self { beat, signature }
    }

    /// Checks the signature against the node key.
    pub fn verify(&self, node_key: &PublicKeyHex) -> Result<(), String> {
        verify_hex(node_key, &Self::signing_bytes(&self.beat), &self.signature)
    }
}

/// One instance as the agent sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceReport {
    /// `app@node`.
    pub id: String,
    /// Spec height it runs.
    pub spec_height: u64,
    /// Version of the secrets it runs with (0: none); the shard sends the sealed values only
    /// when it is not the current one.
    #[serde(default)]
    pub secrets_version: u64,
    /// Component name to `addr:port`.
    pub endpoints: BTreeMap<String, String>,
    /// Whether its health check passes.
    pub healthy: bool,
    /// Why not, or a start error.
    pub message: Option<String>,
    /// Components that exited since they started, by name: restarts, last exit, backoff.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub runs: BTreeMap<String, RunState>,
}

/// What a runtime knows of a component's process beyond health: restarts and how it last
/// ended. A WASM guest never exits (a trap fails one request), so its state stays empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunState {
    /// Times it was started again after it exited.
    pub restarts: u32,
    /// The exit code of its last exit, if it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit_code: Option<i64>,
    /// Whether its last exit was the kernel's OOM killer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub oom_killed: bool,
    /// While it waits to be started again: the whole wait, ms (1 s, 2 s, 4 s ... 60 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_ms: Option<u64>,
}

impl RunState {
    /// Whether there is nothing to tell: it never exited.
    pub fn is_quiet(&self) -> bool {
        *self == RunState::default()
    }
}

/// How an instance report's message begins when the node could not start the instance.
pub const START_FAILED: &str = "start failed: ";

/// The shard's answer to a heartbeat: what the node should run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Assignments {
    /// Instances to run; anything else the agent runs should stop.
    pub instances: Vec<Assignment>,
    /// Instances the node reported that it must stop, and why (for example: replaced on other
    /// nodes while this one was down).
    #[serde(default)]
    pub stop: Vec<StopOrder>,
}

/// An instance a node runs but should not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopOrder {
    /// `app@node`.
    pub id: String,
    /// Why.
    pub reason: String,
}

/// One instance to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    /// `app@node`.
    pub id: String,
    /// App.
    pub app: AppName,
    /// Spec height; a higher one means restart with the new spec.
    pub spec_height: u64,
    /// Components to run.
    pub components: Vec<ComponentSpec>,
    /// The app's secrets, sealed to this node's key (context [`secret_context`] with the node
    /// id); the guest reads them as environment variables. Sent only while the node does not
    /// report running `secrets_version` already.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, crate::sealed::SealedValue>,
    /// Version of the secrets; a different one means restart with the new values.
    #[serde(default)]
    pub secrets_version: u64,
    /// The app's owner: the only key whose requests for its logs the node answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<PublicKeyHex>,
    /// Apps whose networks the instance's containers join too: those its spec names in
    /// `network.with` that exist and have the same owner (the control plane checks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_with: Vec<AppName>,
}

/// A request for an instance's logs, signed by its app's owner and sent to the node that runs
/// it (`GET /v1/logs/{instance}` on the node's API). Nodes answer only the owner.
///
/// The signature covers the method, the path and query exactly as sent, the time and a random
/// nonce, so a captured request can be neither replayed (the node remembers the nonces of its
/// [`LogsRequest::MAX_SKEW_MS`] window) nor reused with another query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsRequest {
    /// The HTTP method, `GET`.
    pub method: String,
    /// The path and query as sent, e.g. `/v1/logs/hello%40eu-1?follow=true`.
    pub path_and_query: String,
    /// When it was signed, ms since the epoch.
    pub at_ms: u64,
    /// 16 random bytes, hex: a node answers each nonce once.
    pub nonce: String,
    /// The owner's key.
    pub owner: PublicKeyHex,
    /// ed25519 over [`LogsRequest::signing_bytes`], hex.
    pub signature: String,
}

impl LogsRequest {
    /// The header carrying `owner`.
    pub const OWNER_HEADER: &'static str = "x-fluxplane-owner";
    /// The header carrying `at_ms`.
    pub const AT_HEADER: &'static str = "x-fluxplane-at-ms";
    /// The header carrying `nonce`.
    pub const NONCE_HEADER: &'static str = "x-fluxplane-nonce";
    /// The header carrying `signature`.
    pub const SIGNATURE_HEADER: &'static str = "x-fluxplane-signature";
    /// How far a request's time may be from the node's clock.
    pub const MAX_SKEW_MS: u64 = 30_000;

    /// The bytes signed: a domain tag, the method, path and query, the time and the nonce.
    pub fn signing_bytes(method: &str, path_and_query: &str, at_ms: u64, nonce: &str) -> Vec<u8> {
        format!("fluxplane-logs-v2\n{method}\n{path_and_query}\n{at_ms}\n{nonce}").into_bytes()
    }

    /// A `GET` of `path_and_query`, signed by `key` at `at_ms` with a fresh nonce.
    pub fn sign(path_and_query: &str, at_ms: u64, key: &crate::keys::Keypair) -> LogsRequest {
        let nonce = hex::encode(rand::random::<[u8; 16]>());
        let method = "GET".to_string();
        let signature = key.sign_hex(&Self::signing_bytes(&method, path_and_query, at_ms, &nonce));
        LogsRequest { method, path_and_query: path_and_query.to_string(), at_ms, nonce, owner: key.public(), signature }
    }

    /// Checks the signature and that the nonce is one (not who signed: the node compares
    /// `owner` with the app's, nor the time: the node compares it with its clock).
    pub fn verify(&self) -> Result<(), String> {
        if self.nonce.len() != 32 || !self.nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("{} must be 16 random bytes in hex", Self::NONCE_HEADER));
        }
        let bytes = Self::signing_bytes(&self.method, &self.path_and_query, self.at_ms, &self.nonce);
        crate::keys::verify_hex(&self.owner, &bytes, &self.signature)
    }
}

/// One line of an instance's output, as a node's logs endpoint streams it (one JSON object
/// per line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// `app@node`.
    pub instance: String,
    /// The component that wrote it.
    pub component: String,
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The line.
    pub text: String,
}

/// The associated data a secret is sealed with: the app, the key name and the holder (a region
/// for the copy the shard keeps, a node id for a node's copy). A sealed value moved to another
/// app, name or holder does not open.
pub fn secret_context(app: &str, key: &str, holder: &str) -> Vec<u8> {
    format!("fluxplane secret\napp={app}\nkey={key}\nholder={holder}").into_bytes()
}

/// `GET /v1/secrets-key`: the X25519 key a region's shard opens secrets with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretsKeyView {
    /// The region.
    pub region: String,
    /// The public key, hex; values for this region are sealed to it.
    pub key: String,
}

/// The answer to a [`SecretsUpdate`]: what the region now holds, by name only.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretsView {
    /// The app.
    pub app: AppName,
    /// The region.
    pub region: String,
    /// Every secret name it holds for the app.
    pub names: Vec<String>,
    /// The version (signing time of the newest update).
    pub version: u64,
}

/// `POST /v1/apps/{name}/secrets`: values for one region's shard, sealed to its key, signed by
/// the app's owner. Values with the same name replace the stored ones; others are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretsUpdate {
    /// The app.
    pub app: AppName,
    /// The region whose key the values are sealed to.
    pub region: String,
    /// By name (an environment variable name), each sealed with [`secret_context`] and the
    /// region as holder.
    pub values: BTreeMap<String, crate::sealed::SealedValue>,
    /// Names to remove.
    #[serde(default)]
    pub unset: Vec<String>,
    /// When it was signed, milliseconds since the Unix epoch; must be newer than the stored
    /// version, which stops replays.
    pub at_ms: u64,
    /// The signer, who must own the app.
    pub owner: PublicKeyHex,
    /// ed25519 over [`SecretsUpdate::signing_bytes`], hex.
    pub signature: String,
}

impl SecretsUpdate {
    /// What is signed: a domain tag, then the JSON of app, region, values, removed names and
    /// time.
    pub fn signing_bytes(
        app: &str,
        region: &str,
        values: &BTreeMap<String, crate::sealed::SealedValue>,
        unset: &[String],
        at_ms: u64,
    ) -> Vec<u8> {
        let mut bytes = b"fluxplane-secrets-v1\n".to_vec();
        bytes.extend(serde_json::to_vec(&(app, region, values, unset, at_ms)).unwrap_or_default());
        bytes
    }

    /// Signs an update that sets `values` with the owner's key.
    pub fn sign(
        app: &str,
        region: &str,
        values: BTreeMap<String, crate::sealed::SealedValue>,
        at_ms: u64,
        key: &crate::keys::Keypair,
    ) -> SecretsUpdate {
        Self::sign_with_unset(app, region, values, Vec::new(), at_ms, key)
    }

    /// Signs an update that sets `values` and removes `unset`.
    pub fn sign_with_unset(
        app: &str,
        region: &str,
        values: BTreeMap<String, crate::sealed::SealedValue>,
        unset: Vec<String>,
        at_ms: u64,
        key: &crate::keys::Keypair,
    ) -> SecretsUpdate {
        let signature = key.sign_hex(&Self::signing_bytes(app, region, &values, &unset, at_ms));
        SecretsUpdate { app: app.into(), region: region.into(), values, unset, at_ms, owner: key.public(), signature }
    }

    /// Checks the signature.
    pub fn verify(&self) -> Result<(), String> {
        let bytes = Self::signing_bytes(&self.app, &self.region, &self.values, &self.unset, self.at_ms);
        crate::keys::verify_hex(&self.owner, &bytes, &self.signature)
    }
}

// === routing feed ===

/// A region's routes, as gateways follow them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RouteFeed {
    /// Region.
    pub region: String,
    /// Bumped on every change.
    pub version: u64,
    /// Healthy endpoints.
    pub routes: Vec<Route>,
    /// Registered apps with no healthy endpoint in this region, by app: their component names.
    /// A gateway answers their hosts 503 (try again), not 404 (no such app).
    #[serde(default)]
    pub unrouted: BTreeMap<AppName, Vec<String>>,
    /// The custom domains served for an app this region places or is short of, each with the
    /// claim it is served for: the oldest claim whose owner proved the domain (see
    /// `model::domains`). A domain missing here is not served by this region's routes; a
    /// gateway takes, of the regions' entries for one domain, the oldest claim.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub domains: BTreeMap<String, crate::domains::DomainWinner>,
}

/// One healthy endpoint of one component of one instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// App.
    pub app: AppName,
    /// Component.
    pub component: String,
    /// Whether this is the app's first component, which answers on the app's own domain.
    pub primary: bool,
    /// Node.
    pub node: NodeId,
    /// Region.
    pub region: String,
    /// Node location.
    pub geo: GeoPoint,
    /// `addr:port`.
    pub addr: String,
    /// For a container port published app-wide: its public port (the route answers
    /// `<app>_<port>.app.<domain>`), and the custom domain it takes, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// See `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// The component's limits on what the gateway sends one instance.
    #[serde(flatten)]
    pub traffic: crate::spec::Traffic,
}

impl Route {
    /// The instance this route reaches: `app@node`.
    pub fn instance(&self) -> String {
        format!("{}@{}", self.app, self.node)
    }
}
