//! Chain data: transactions, blocks, and the state that applying them builds.
//!
//! These are pure types so that `fluxctl` can sign transactions and every shard can apply blocks
//! with the same rules as the block producer. The rules are deterministic: given the same blocks,
//! every replica computes the same [`ChainState`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::geo::{GeoPoint, Region};
use crate::keys::{PublicKeyHex, verify_hex};
use crate::price::app_price;
use crate::spec::{AppSpec, check_name};
use crate::tier::{Resources, Tier};
use crate::{AppName, NodeId};

/// What a node can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    /// wasi:http components.
    Wasm,
    /// OCI containers.
    Oci,
}

impl Capability {
    /// Every capability, in order.
    pub const ALL: [Capability; 2] = [Capability::Wasm, Capability::Oci];

    /// Its name, as written in specs and views.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Wasm => "wasm",
            Capability::Oci => "oci",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Capability::Wasm => 1,
            Capability::Oci => 2,
        }
    }
}

impl std::fmt::Display for Capability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of capabilities, small enough to count nodes by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Capabilities(u8);

impl Capabilities {
    /// The set of `caps`.
    pub fn of<'a>(caps: impl IntoIterator<Item = &'a Capability>) -> Capabilities {
        Capabilities(caps.into_iter().fold(0, |bits, c| bits | c.bit()))
    }

    /// Whether every capability of `other` is in this set.
    pub fn covers(self, other: Capabilities) -> bool {
        self.0 & other.0 == other.0
    }

    /// The capabilities of `other` missing here.
    pub fn missing(self, other: Capabilities) -> Vec<Capability> {
        Capability::ALL.into_iter().filter(|c| other.0 & c.bit() != 0 && self.0 & c.bit() == 0).collect()
    }
}

/// A node operator's announcement: lock collateral and join a region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStart {
    /// Unique node id, a DNS label such as `eu-1`.
    pub node_id: NodeId,
    /// Collateral locked; it decides the tier.
    pub collateral: u64,
    /// The region the node joins.
    pub region: String,
    /// Flux continent code of the node's location.
    pub continent: String,
    /// ISO country code of the node's location.
    pub country: String,
    /// The node's location.
    pub geo: GeoPoint,
    /// What the node can run.
    pub capabilities: Vec<Capability>,
    /// The key the node agent signs heartbeats with.
    pub node_key: PublicKeyHex,
    /// The address the node serves its instances on. Every instance endpoint it reports must be
    /// on it: a node cannot point the gateway anywhere else.
    pub address: std::net::IpAddr,
    /// The ports its instances listen on; every endpoint it reports is in this range.
    pub instance_ports: PortRange,
}

/// An inclusive range of TCP ports, written `FIRST-LAST`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRange {
    /// The first port.
    pub first: u16,
    /// The last port (inclusive).
    pub last: u16,
}

impl PortRange {
    /// Instance ports a node offers by default.
    pub const DEFAULT: PortRange = PortRange { first: 20_000, last: 20_999 };
    /// The fewest ports a node may offer: one per component the largest tier can hold (80 at
    /// 0.1 cpu each), with room to spare.
    pub const MIN_PORTS: u32 = 128;
    /// The most ports a node may claim: a range is the node's own listeners, not a host's.
    pub const MAX_PORTS: u32 = 4096;

    /// Whether `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    /// The ports, first to last.
    pub fn ports(&self) -> std::ops::RangeInclusive<u16> {
        self.first..=self.last
    }

    /// Why the range cannot serve instances, if it cannot: below 1024 (privileged ports), or
    /// fewer than [`PortRange::MIN_PORTS`] ports.
    pub fn check(&self) -> Result<(), String> {
        if self.first < 1024 || self.last < self.first {
            return Err(format!("instance ports {self} must be a range FIRST-LAST from 1024 up"));
        }
        let ports = u32::from(self.last - self.first) + 1;
        if !(Self::MIN_PORTS..=Self::MAX_PORTS).contains(&ports) {
            return Err(format!("instance ports {self} must hold {} to {} ports", Self::MIN_PORTS, Self::MAX_PORTS));
        }
        Ok(())
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl std::str::FromStr for PortRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("`{text}` is not a port range FIRST-LAST, such as 20000-20999");
        let (first, last) = text.split_once('-').ok_or_else(bad)?;
        let range = PortRange {
            first: first.trim().parse().map_err(|_| bad())?,
            last: last.trim().parse().map_err(|_| bad())?,
        };
        range.check()?;
        Ok(range)
    }
}

impl PortRange {
    /// Whether the two ranges share a port.
    pub fn overlaps(&self, other: &PortRange) -> bool {
        self.first <= other.last && other.first <= self.last
    }
}

/// The listener an API base URL (`http(s)://IP[:port]`) names, when its host is an address.
pub fn url_listener(url: &str) -> Option<std::net::SocketAddr> {
    let (rest, default_port) = match url.strip_prefix("https://") {
        Some(rest) => (rest, 443),
        None => (url.strip_prefix("http://")?, 80),
    };
    let host_port = rest.split('/').next()?;
    if let Ok(addr) = host_port.parse::<std::net::SocketAddr>() {
        return Some(std::net::SocketAddr::new(addr.ip().to_canonical(), addr.port()));
    }
    let ip: std::net::IpAddr = host_port.trim_start_matches('[').trim_end_matches(']').parse().ok()?;
    Some(std::net::SocketAddr::new(ip.to_canonical(), default_port))
}

impl NodeStart {
    /// Whether `listener` is on this node's address, in its instance ports.
    pub fn covers(&self, listener: std::net::SocketAddr) -> bool {
        listener.ip().to_canonical() == self.address.to_canonical() && self.instance_ports.contains(listener.port())
    }

    /// Whether the two nodes claim a port in common on the same address.
    pub fn overlaps(&self, other: &NodeStart) -> bool {
        self.address.to_canonical() == other.address.to_canonical()
            && self.instance_ports.overlaps(&other.instance_ports)
    }

    /// Why `endpoint` (an instance endpoint the node reported) is not one it may serve on, if
    /// it is not: it must be `address:port` on the node's registered address, in its range.
    pub fn check_endpoint(&self, endpoint: &str) -> Result<std::net::SocketAddr, String> {
        let addr: std::net::SocketAddr =
            endpoint.parse().map_err(|_| format!("endpoint `{endpoint}` is not an address:port"))?;
        // Canonical forms: `::ffff:10.0.0.5` is `10.0.0.5`, both as reported and as registered.
        if addr.ip().to_canonical() != self.address.to_canonical() || !self.instance_ports.contains(addr.port()) {
            return Err(format!(
                "endpoint `{endpoint}` is not on node `{}`'s registered address {}, ports {}",
                self.node_id, self.address, self.instance_ports
            ));
        }
        Ok(addr)
    }
}

/// A transaction body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Tx {
    /// Start a node (signed by its operator, who locks the collateral).
    NodeStart(NodeStart),
    /// Register a new app, paying at least its price (signed by the owner).
    AppRegister {
        /// The app, in chain form (modules by content hash).
        spec: AppSpec,
        /// Paid, in the smallest unit; at least [`app_price`].
        payment: u64,
    },
    /// Replace an app's spec and restart its lease (owner only).
    AppUpdate {
        /// The new spec; its name must be the app's.
        spec: AppSpec,
        /// Paid, at least the new spec's price.
        payment: u64,
    },
    /// Remove an app (owner only).
    AppRemove {
        /// The app.
        name: AppName,
    },
    /// Move funds.
    Transfer {
        /// Receiving address.
        to: PublicKeyHex,
        /// Amount in the smallest unit.
        amount: u64,
    },
    /// Pay to store blobs (modules, image archives) on the control replicas: a fee per started
    /// megabyte of each, burned. A replica takes the upload of a paid blob from its payer only.
    BlobUpload {
        /// The blobs paid for.
        blobs: Vec<BlobPayment>,
    },
    /// Publish where one replica of a region's shard serves the API, so that gateways, agents and
    /// `fluxctl` can find every region from any one control URL. Only a control operator named
    /// in genesis may sign it.
    ControlAnnounce {
        /// The region the replica serves.
        region: String,
        /// The replica's Raft id within the region.
        replica_id: u64,
        /// The replica's API base URL, `http(s)://host:port`.
        api_url: String,
    },
}

impl Tx {
    /// A short name for logs and listings.
    pub fn kind(&self) -> &'static str {
        match self {
            Tx::NodeStart(_) => "node_start",
            Tx::AppRegister { .. } => "app_register",
            Tx::AppUpdate { .. } => "app_update",
            Tx::AppRemove { .. } => "app_remove",
            Tx::Transfer { .. } => "transfer",
            Tx::BlobUpload { .. } => "blob_upload",
            Tx::ControlAnnounce { .. } => "control_announce",
        }
    }

    /// The app a transaction is about, if any.
    pub fn app_name(&self) -> Option<&str> {
        match self {
            Tx::AppRegister { spec, .. } | Tx::AppUpdate { spec, .. } => Some(&spec.name),
            Tx::AppRemove { name } => Some(name),
            _ => None,
        }
    }
}

/// A transaction with its signer's signature.
///
/// `nonce` must be exactly one more than the signer's last (a new wallet's first is 1). That stops
/// replays, keeps one wallet's transactions in the order they were signed, and leaves no nonce
/// that could exhaust a wallet. Clients ask for the next nonce (`WalletView::next_nonce`, which
/// counts transactions waiting for a block) and sign again when another client took it first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignedTx {
    /// The body.
    pub tx: Tx,
    /// Replay guard.
    pub nonce: u64,
    /// The signing key, which is the signer's address.
    pub signer: PublicKeyHex,
    /// ed25519 over [`SignedTx::signing_bytes`], hex.
    pub signature: String,
}

impl SignedTx {
    /// The bytes that are signed: a domain tag, then the JSON of the body and nonce.
    pub fn signing_bytes(tx: &Tx, nonce: u64) -> Vec<u8> {
        let mut bytes = b"fluxplane-tx-v1\n".to_vec();
        // Serializing plain structs with BTreeMaps cannot fail and is deterministic.
        bytes.extend(serde_json::to_vec(&(tx, nonce)).unwrap_or_default());
        bytes
    }

    /// Signs `tx` with `key`.
    pub fn sign(tx: Tx, nonce: u64, key: &crate::keys::Keypair) -> SignedTx {
        let signature = key.sign_hex(&Self::signing_bytes(&tx, nonce));
        SignedTx { tx, nonce, signer: key.public(), signature }
    }

    /// Checks the signature.
    pub fn verify(&self) -> Result<(), String> {
        verify_hex(&self.signer, &Self::signing_bytes(&self.tx, self.nonce), &self.signature)
    }

    /// The size the fee is charged on: the signed bytes, the 64-byte signature and the 32-byte
    /// key.
    pub fn size(&self) -> usize {
        Self::signing_bytes(&self.tx, self.nonce).len() + 96
    }

    /// The fee this transaction pays when it applies ([`crate::fee::tx_fee`] of its size).
    pub fn fee(&self) -> u64 {
        crate::fee::tx_fee(self.size())
    }

    /// The transaction id: blake3 of the signed bytes and signature, hex.
    pub fn id(&self) -> String {
        let mut h = blake3::Hasher::new();
        h.update(&Self::signing_bytes(&self.tx, self.nonce));
        h.update(self.signature.as_bytes());
        h.finalize().to_hex().to_string()
    }
}

/// What the first block sets up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Genesis {
    /// The regions shards serve.
    pub regions: Vec<Region>,
    /// Initial balances.
    pub allocations: Vec<(PublicKeyHex, u64)>,
    /// Keys allowed to publish control replicas in the region directory.
    #[serde(default)]
    pub control_operators: Vec<PublicKeyHex>,
    /// Blob storage parameters; absent means [`BlobRules::default`] (and keeps the hash of a
    /// genesis made before they existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob_rules: Option<BlobRules>,
}

/// A block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Block {
    /// 0 for genesis.
    pub height: u64,
    /// The parent's hash; empty for genesis.
    pub prev_hash: String,
    /// Producer's clock, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Only in block 0.
    pub genesis: Option<Genesis>,
    /// Transactions, in the order they apply.
    pub txs: Vec<SignedTx>,
    /// blake3 of the header and transaction ids.
    pub hash: String,
}

impl Block {
    /// Builds a block and computes its hash.
    pub fn new(height: u64, prev_hash: String, time_ms: u64, genesis: Option<Genesis>, txs: Vec<SignedTx>) -> Block {
        let mut block = Block { height, prev_hash, time_ms, genesis, txs, hash: String::new() };
        block.hash = block.compute_hash();
        block
    }

    /// The hash the header and transactions give.
    pub fn compute_hash(&self) -> String {
        let ids: Vec<String> = self.txs.iter().map(SignedTx::id).collect();
        let header = (self.height, &self.prev_hash, self.time_ms, &self.genesis, ids);
        blake3::hash(&serde_json::to_vec(&header).unwrap_or_default()).to_hex().to_string()
    }
}

/// A started node, as the chain records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// What the operator announced.
    pub start: NodeStart,
    /// The operator's address.
    pub operator: PublicKeyHex,
    /// Tier from the collateral.
    pub tier: Tier,
    /// Block that started it.
    pub started_height: u64,
}

impl NodeRecord {
    /// What the node offers to apps.
    pub fn resources(&self) -> Resources {
        self.tier.resources()
    }
}

/// A registered app, as the chain records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppRecord {
    /// The current spec.
    pub spec: AppSpec,
    /// The owner's address; only this key may update or remove the app.
    pub owner: PublicKeyHex,
    /// Block of the first registration.
    pub registered_height: u64,
    /// Block of the latest register or update.
    pub updated_height: u64,
    /// The app is removed when this height is reached.
    pub expires_height: u64,
    /// The custom domains its spec claims, each with the height of the block in which the app
    /// first claimed it (kept across updates that keep the domain): a claim's age, which
    /// decides between two proven claims (see `model::domains`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub domains: BTreeMap<String, u64>,
}

impl AppRecord {
    /// The custom domains the app claims, each with the height it first claimed it at. A record
    /// stored before claims were tracked counts from its registration.
    pub fn claims(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        self.spec.domains().into_iter().map(|d| {
            let since = self.domains.get(&d).copied().unwrap_or(self.registered_height);
            (d, since)
        })
    }
}

/// Why a transaction did not apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum TxError {
    /// The signature did not verify.
    #[error("bad signature: {0}")]
    BadSignature(String),
    /// The nonce was used before: another transaction of this signer took it.
    #[error("nonce {nonce} is used already; the signer's next nonce is {}", last + 1)]
    StaleNonce {
        /// Given.
        nonce: u64,
        /// Last used.
        last: u64,
    },
    /// The nonce skips ahead of the next one.
    #[error("nonce {nonce} skips ahead: the signer's next nonce is {}", last + 1)]
    NonceJump {
        /// Given.
        nonce: u64,
        /// Last used.
        last: u64,
    },
    /// Not enough funds for the amount and the fee.
    #[error("insufficient funds: need {need} (of which {fee} is the transaction fee), have {have}")]
    InsufficientFunds {
        /// Needed, fee included.
        need: u64,
        /// The fee part of it.
        fee: u64,
        /// Available.
        have: u64,
    },
    /// The payment is below the price.
    #[error("payment {paid} is below the price {price}")]
    Underpaid {
        /// Paid.
        paid: u64,
        /// Price.
        price: u64,
    },
    /// The spec breaks a manifest rule.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    /// The app name is registered already.
    #[error("app `{0}` is already registered")]
    AppExists(String),
    /// No such app.
    #[error("app `{0}` is not registered")]
    UnknownApp(String),
    /// The signer does not own the app.
    #[error("only the owner of `{app}` may change it (owner {owner})")]
    NotOwner {
        /// App.
        app: String,
        /// Its owner.
        owner: PublicKeyHex,
    },
    /// A node-start rule failed.
    #[error("invalid node start: {0}")]
    InvalidNode(String),
    /// The signer may not do this.
    #[error("not authorized: {0}")]
    NotAuthorized(String),
    /// A control announcement is malformed.
    #[error("invalid control announcement: {0}")]
    InvalidAnnounce(String),
    /// A transfer names no valid receiver.
    #[error("invalid transfer: {0}")]
    InvalidTransfer(String),
    /// A blob payment is malformed.
    #[error("invalid blob payment: {0}")]
    InvalidBlob(String),
    /// The payment would take the signer past its quota of bytes no app refers to.
    #[error(
        "blob quota: the key holds {held} bytes no app refers to and asks for {asked} more; at most {quota} \
         (deploy an app that uses them, or wait for them to expire)"
    )]
    BlobQuota {
        /// Unreferenced bytes held.
        held: u64,
        /// Bytes asked for.
        asked: u64,
        /// The quota.
        quota: u64,
    },
}

impl TxError {
    /// A stable, machine-readable code, as the API reports it.
    pub fn code(&self) -> &'static str {
        match self {
            TxError::BadSignature(_) => "bad_signature",
            TxError::StaleNonce { .. } => "stale_nonce",
            TxError::NonceJump { .. } => "bad_nonce",
            TxError::InsufficientFunds { .. } => "insufficient_funds",
            TxError::Underpaid { .. } => "underpaid",
            TxError::InvalidSpec(_) => "invalid_spec",
            TxError::AppExists(_) => "conflict",
            TxError::UnknownApp(_) => "not_found",
            TxError::NotOwner { .. } => "forbidden",
            TxError::InvalidNode(_) => "invalid_node",
            TxError::NotAuthorized(_) => "forbidden",
            TxError::InvalidAnnounce(_) => "invalid_announce",
            TxError::InvalidTransfer(_) => "invalid_transfer",
            TxError::InvalidBlob(_) => "invalid_blob",
            TxError::BlobQuota { .. } => "quota_exceeded",
        }
    }
}

/// Why a block cannot be applied on top of a state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum BlockError {
    /// The block's hash is not the hash of its contents.
    #[error("block {height} claims hash {claimed} but its contents hash to {computed}")]
    BadHash {
        /// Height.
        height: u64,
        /// The hash in the block.
        claimed: String,
        /// The hash of its contents.
        computed: String,
    },
    /// The block is from another chain: its genesis differs from the one this state follows.
    #[error("this state follows the chain with genesis {pinned}, but the block is from genesis {offered}")]
    OtherGenesis {
        /// Genesis hash already followed.
        pinned: String,
        /// Genesis hash offered.
        offered: String,
    },
    /// The block does not follow the tip: wrong height or parent hash.
    #[error("block {height} (parent {parent}) does not follow the tip {tip:?} ({tip_hash})")]
    DoesNotFollow {
        /// Height.
        height: u64,
        /// Its parent hash.
        parent: String,
        /// Current tip height.
        tip: Option<u64>,
        /// Current tip hash.
        tip_hash: String,
    },
}

/// The state a chain's blocks build: balances, nodes and apps.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChainState {
    /// Height of the last applied block; `None` before genesis.
    pub height: Option<u64>,
    /// Hash of the last applied block.
    pub tip_hash: String,
    /// Regions from genesis.
    pub regions: Vec<Region>,
    /// Spendable balances.
    pub balances: BTreeMap<PublicKeyHex, u64>,
    /// Last nonce used per signer.
    pub nonces: BTreeMap<PublicKeyHex, u64>,
    /// Started nodes.
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    /// Registered, unexpired apps.
    pub apps: BTreeMap<AppName, AppRecord>,
    /// Hash of block 0: the identity of the chain this state follows.
    #[serde(default)]
    pub genesis_hash: String,
    /// Keys allowed to publish control replicas.
    #[serde(default)]
    pub control_operators: Vec<PublicKeyHex>,
    /// The region directory: region -> replica id -> API URL.
    #[serde(default)]
    pub directory: BTreeMap<String, BTreeMap<u64, String>>,
    /// The time of the last applied block (ms since the epoch).
    #[serde(default)]
    pub time_ms: u64,
    /// Paid blobs by hash, kept while an app refers to them or in their grace period.
    #[serde(default)]
    pub blobs: BTreeMap<String, PaidBlob>,
    /// Blob storage parameters, from genesis.
    #[serde(default)]
    pub blob_rules: BlobRules,
}

/// What applying one block did, transaction by transaction.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BlockOutcome {
    /// `(tx id, error)` for each transaction that did not apply.
    pub rejected: Vec<(String, TxError)>,
    /// Apps removed because their lease ran out.
    pub expired: Vec<AppName>,
}

impl ChainState {
    /// Whether `block` is the next one: height and parent hash follow the tip.
    pub fn follows(&self, block: &Block) -> bool {
        match self.height {
            None => block.height == 0,
            Some(h) => block.height == h + 1 && block.prev_hash == self.tip_hash,
        }
    }

    /// Checks that `block` may be applied next: its hash is the hash of its contents and it
    /// follows the tip. The answer depends only on the state and the block, so every replica
    /// decides alike.
    pub fn check_block(&self, block: &Block) -> Result<(), BlockError> {
        let computed = block.compute_hash();
        if computed != block.hash {
            return Err(BlockError::BadHash { height: block.height, claimed: block.hash.clone(), computed });
        }
        if !self.follows(block) {
            return Err(BlockError::DoesNotFollow {
                height: block.height,
                parent: block.prev_hash.clone(),
                tip: self.height,
                tip_hash: self.tip_hash.clone(),
            });
        }
        Ok(())
    }

    /// Checks that a chain whose block 0 hashes to `genesis_hash` is the chain this state follows.
    /// A state that has applied no block yet follows any chain.
    pub fn check_genesis(&self, genesis_hash: &str) -> Result<(), BlockError> {
        if self.genesis_hash.is_empty() || self.genesis_hash == genesis_hash {
            return Ok(());
        }
        Err(BlockError::OtherGenesis { pinned: self.genesis_hash.clone(), offered: genesis_hash.to_string() })
    }

    /// Applies a block that [`follows`](Self::follows) the tip. Invalid transactions are skipped
    /// and reported, as every replica skips them the same way.
    pub fn apply_block(&mut self, block: &Block) -> BlockOutcome {
        let mut outcome = BlockOutcome::default();
        if let Some(genesis) = &block.genesis
            && block.height == 0
        {
            self.regions = genesis.regions.clone();
            self.control_operators = genesis.control_operators.clone();
            self.blob_rules = genesis.blob_rules.unwrap_or_default();
            for (addr, amount) in &genesis.allocations {
                *self.balances.entry(addr.clone()).or_default() += amount;
            }
        }
        if block.height == 0 {
            self.genesis_hash = block.hash.clone();
        }
        self.time_ms = block.time_ms;
        for stx in &block.txs {
            if let Err(e) = self.apply_tx(stx, block.height) {
                outcome.rejected.push((stx.id(), e));
            }
        }
        let expired: Vec<AppName> =
            self.apps.iter().filter(|(_, a)| a.expires_height <= block.height).map(|(n, _)| n.clone()).collect();
        for name in &expired {
            self.apps.remove(name);
        }
        outcome.expired = expired;
        self.expire_blobs(block.time_ms);
        self.height = Some(block.height);
        self.tip_hash = block.hash.clone();
        outcome
    }

    /// Checks a transaction against the current state without applying it.
    pub fn check_tx(&self, stx: &SignedTx, height: u64) -> Result<(), TxError> {
        self.clone().apply_tx(stx, height)
    }

    /// Applies one transaction at `height`, or changes nothing and says why not.
    pub fn apply_tx(&mut self, stx: &SignedTx, height: u64) -> Result<(), TxError> {
        let signed = SignedTx::signing_bytes(&stx.tx, stx.nonce);
        verify_hex(&stx.signer, &signed, &stx.signature).map_err(TxError::BadSignature)?;
        let last = self.nonces.get(&stx.signer).copied().unwrap_or(0);
        if stx.nonce <= last {
            return Err(TxError::StaleNonce { nonce: stx.nonce, last });
        }
        if stx.nonce != last + 1 {
            return Err(TxError::NonceJump { nonce: stx.nonce, last });
        }
        let fee = crate::fee::tx_fee(signed.len() + 96);
        let signer = &stx.signer;
        // Every arm checks everything first and debits last: a refused transaction changes nothing.
        match &stx.tx {
            Tx::NodeStart(start) => {
                let tier = Tier::from_collateral(start.collateral).ok_or_else(|| {
                    TxError::InvalidNode(format!(
                        "collateral {} matches no tier (1,000 / 12,500 / 40,000 FLUX)",
                        start.collateral
                    ))
                })?;
                check_name(&start.node_id).map_err(|m| TxError::InvalidNode(format!("node id {m}")))?;
                if GeoPoint::new(start.geo.lat, start.geo.lon).is_none() {
                    return Err(TxError::InvalidNode(format!("geo {} is not a point on the earth", start.geo)));
                }
                start.node_key.check().map_err(|m| TxError::InvalidNode(format!("node key: {m}")))?;
                if start.capabilities.is_empty() {
                    return Err(TxError::InvalidNode("a node must offer at least one capability".into()));
                }
                let code_ok = |c: &str, len: usize| c.len() == len && c.bytes().all(|b| b.is_ascii_uppercase());
                if !code_ok(&start.continent, 2) || !code_ok(&start.country, 2) {
                    return Err(TxError::InvalidNode(format!(
                        "continent `{}` and country `{}` must be two capital letters",
                        start.continent, start.country
                    )));
                }
                let address = start.address.to_canonical();
                if address.is_unspecified() || address.is_multicast() {
                    return Err(TxError::InvalidNode(format!(
                        "address {address} cannot serve instances: give the node's own address"
                    )));
                }
                start.instance_ports.check().map_err(TxError::InvalidNode)?;
                if self.nodes.contains_key(&start.node_id) {
                    return Err(TxError::InvalidNode(format!("node `{}` already started", start.node_id)));
                }
                // A node's address and ports are its own: claiming another node's would let it
                // report that node's listeners as its endpoints, and a control replica's would
                // put the control API behind an app's host.
                if let Some(other) = self.nodes.values().find(|n| n.start.overlaps(start)) {
                    return Err(TxError::InvalidNode(format!(
                        "address {} ports {} overlap node `{}`'s ports {} there: each node's instance ports are its \
                         own (give another --instance-ports range)",
                        start.address, start.instance_ports, other.start.node_id, other.start.instance_ports
                    )));
                }
                let replica = self
                    .directory
                    .values()
                    .flat_map(|d| d.values())
                    .find(|url| url_listener(url).is_some_and(|listener| start.covers(listener)));
                if let Some(url) = replica {
                    return Err(TxError::InvalidNode(format!(
                        "instance ports {} on {} include the listener of control replica {url}",
                        start.instance_ports, start.address
                    )));
                }
                if !self.regions.iter().any(|r| r.name == start.region) {
                    return Err(TxError::InvalidNode(format!("unknown region `{}`", start.region)));
                }
                self.debit(signer, start.collateral, fee)?;
                let record =
                    NodeRecord { start: start.clone(), operator: signer.clone(), tier, started_height: height };
                self.nodes.insert(start.node_id.clone(), record);
            }
            Tx::AppRegister { spec, payment } => {
                spec.validate_for_chain().map_err(|e| TxError::InvalidSpec(e.to_string()))?;
                if self.apps.contains_key(&spec.name) {
                    return Err(TxError::AppExists(spec.name.clone()));
                }
                check_payment(spec, *payment)?;
                self.debit(signer, *payment, fee)?;
                let record = AppRecord {
                    spec: spec.clone(),
                    owner: signer.clone(),
                    registered_height: height,
                    updated_height: height,
                    expires_height: height + u64::from(spec.expire),
                    domains: spec.domains().into_iter().map(|d| (d, height)).collect(),
                };
                self.apps.insert(spec.name.clone(), record);
            }
            Tx::AppUpdate { spec, payment } => {
                spec.validate_for_chain().map_err(|e| TxError::InvalidSpec(e.to_string()))?;
                self.check_owner(&spec.name, signer)?;
                check_payment(spec, *payment)?;
                self.debit(signer, *payment, fee)?;
                if let Some(app) = self.apps.get_mut(&spec.name) {
                    let before = std::mem::take(&mut app.domains);
                    app.domains = spec
                        .domains()
                        .into_iter()
                        .map(|d| (d.clone(), before.get(&d).copied().unwrap_or(height)))
                        .collect();
                    app.spec = spec.clone();
                    app.updated_height = height;
                    app.expires_height = height + u64::from(spec.expire);
                }
            }
            Tx::AppRemove { name } => {
                self.check_owner(name, signer)?;
                self.debit(signer, 0, fee)?;
                self.apps.remove(name);
            }
            Tx::Transfer { to, amount } => {
                to.check().map_err(TxError::InvalidTransfer)?;
                self.debit(signer, *amount, fee)?;
                *self.balances.entry(to.clone()).or_default() += amount;
            }
            Tx::BlobUpload { blobs } => {
                let bytes_fee = self.check_blob_upload(signer, blobs)?;
                self.debit(signer, bytes_fee, fee)?;
                self.record_blobs(signer, blobs);
            }
            Tx::ControlAnnounce { region, replica_id, api_url } => {
                if !self.control_operators.contains(signer) {
                    return Err(TxError::NotAuthorized(format!(
                        "{signer} is not a control operator of this chain; only keys named in genesis may publish \
                         control replicas"
                    )));
                }
                if !self.regions.iter().any(|r| &r.name == region) {
                    return Err(TxError::InvalidAnnounce(format!("unknown region `{region}`")));
                }
                check_api_url(api_url).map_err(TxError::InvalidAnnounce)?;
                self.debit(signer, 0, fee)?;
                self.directory.entry(region.clone()).or_default().insert(*replica_id, api_url.clone());
            }
        }
        self.nonces.insert(signer.clone(), stx.nonce);
        Ok(())
    }

    fn check_owner(&self, name: &str, signer: &PublicKeyHex) -> Result<(), TxError> {
        let app = self.apps.get(name).ok_or_else(|| TxError::UnknownApp(name.to_string()))?;
        if &app.owner != signer {
            return Err(TxError::NotOwner { app: name.to_string(), owner: app.owner.clone() });
        }
        Ok(())
    }

    /// Takes `amount` and the transaction's `fee` from `who`, or nothing when it cannot pay both.
    fn debit(&mut self, who: &PublicKeyHex, amount: u64, fee: u64) -> Result<(), TxError> {
        let have = self.balances.get(who).copied().unwrap_or(0);
        let need = amount.saturating_add(fee);
        if have < need {
            return Err(TxError::InsufficientFunds { need, fee, have });
        }
        self.balances.insert(who.clone(), have - need);
        Ok(())
    }
}

/// Checks an announced API URL: `http://` or `https://`, a host, no path, no spaces, at most 200
/// characters.
pub fn check_api_url(url: &str) -> Result<(), String> {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
    let ok = rest.is_some_and(|host| {
        !host.is_empty()
            && !host.contains('/')
            && host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
    });
    if !ok || url.len() > 200 {
        return Err(format!("`{url}` is not an API base URL such as http://10.0.0.1:7070"));
    }
    Ok(())
}

fn check_payment(spec: &AppSpec, paid: u64) -> Result<(), TxError> {
    let price = app_price(spec);
    if paid < price {
        return Err(TxError::Underpaid { paid, price });
    }
    Ok(())
}

mod blobs;
pub use blobs::{BlobPayment, BlobRules, MAX_BLOB_BYTES, MAX_BLOBS_PER_TX, PaidBlob, is_blob_hash};

#[cfg(test)]
mod tests;
