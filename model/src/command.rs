//! Commands that a regional shard commits through Raft, and their results.
//!
//! They live here, not in `control-plane`, so that the API types and `fluxctl` can name them
//! without linking openraft.

use serde::{Deserialize, Serialize};

use crate::chain::Block;
use crate::{AppName, NodeId};

/// One instance of an app placed on one node. An app has at most one instance per node, so
/// `app@node` identifies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The app.
    pub app: AppName,
    /// The node that runs it.
    pub node: NodeId,
    /// The node's region.
    pub region: String,
    /// When it was placed (set when the placement applies).
    #[serde(default)]
    pub placed_at_ms: u64,
    /// When the node first reported it healthy; until then it is on lease: if it does not
    /// start within the lease, it is placed elsewhere.
    #[serde(default)]
    pub started_at_ms: Option<u64>,
    /// Why the node could not start it, if it said so.
    #[serde(default)]
    pub failed: Option<String>,
}

/// Why an instance is taken off a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removal {
    /// Why, for the event log.
    pub reason: String,
    /// For how long the app avoids this node afterwards, ms (0: it may come back at once). Set
    /// when the node failed the instance, so that it is not placed straight back there.
    #[serde(default)]
    pub avoid_ms: u64,
}

impl Placement {
    /// `app@node`.
    pub fn instance_id(&self) -> String {
        format!("{}@{}", self.app, self.node)
    }
}

/// A change to a shard's replicated state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// Apply the next chain block; ignored when its height was applied already.
    ApplyBlock(Block),
    /// One app's placements in this region, decided by its AppActor.
    Reconcile {
        /// The app.
        app: AppName,
        /// New placements.
        place: Vec<Placement>,
        /// Nodes to take the app's instances off.
        remove: Vec<NodeId>,
        /// Why fewer instances than wanted are placed, if so.
        shortfall: Option<String>,
        /// When the leader decided, ms since the epoch.
        #[serde(default)]
        at_ms: u64,
        /// Why each removed node's instance goes (a node missing here: "no longer wanted").
        #[serde(default)]
        why: std::collections::BTreeMap<NodeId, Removal>,
    },
    /// An operator cordoned or uncordoned a node: a cordoned node gets no new instances.
    SetCordon {
        /// The node.
        node: NodeId,
        /// Whether it is now cordoned.
        cordoned: bool,
    },
    /// A node's liveness changed.
    SetLiveness {
        /// The node.
        node: NodeId,
        /// Whether it now counts as up.
        up: bool,
        /// When the leader decided, ms since the epoch.
        at_ms: u64,
    },
    /// Things the leader observed (an instance started or failed, a new leader, a membership
    /// change), recorded in the event log and, for instances, in their placements.
    Record {
        /// When, ms since the epoch.
        at_ms: u64,
        /// What.
        events: Vec<crate::event::EventKind>,
    },
    /// Another region's capacity changed (or it stopped answering): quotas spill to or back
    /// from it.
    SetRegionReport {
        /// The other region.
        region: String,
        /// What it reported.
        report: crate::capacity::RegionReport,
        /// When the leader learned it, ms since the epoch.
        at_ms: u64,
    },
    /// The region's secrets key, made by a leader the first time one is asked for. The first
    /// committed wins; a later one is skipped, so every replica opens secrets with the same key.
    SetSecretsKey {
        /// The key pair (its `Debug` shows only the public half).
        key: crate::sealed::BoxKeypair,
    },
    /// An app owner's secrets for this region, sealed to the region's key.
    PutSecrets {
        /// The signed update.
        update: crate::api::SecretsUpdate,
    },
    /// What the leader's DNS lookups found for custom-domain claims (see `model::domains`):
    /// only verdicts that changed. A check of a claim the chain no longer holds (another owner,
    /// a newer claim) is skipped, so every replica keeps the same ones.
    SetDomainChecks {
        /// The verdicts.
        checks: Vec<crate::domains::DomainCheck>,
    },
    /// Several commands proposed together, applied in order as if one by one. The leader
    /// batches writes that arrive while earlier ones are still being written, so that a burst
    /// costs one log append instead of one each. Batches do not nest.
    Batch {
        /// The commands.
        commands: Vec<Command>,
    },
}

/// What a committed command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum CommandResult {
    /// The state changed.
    Applied,
    /// Nothing to do (for example a block applied before).
    Skipped {
        /// Why.
        reason: String,
    },
    /// The command broke a rule and changed nothing.
    Rejected {
        /// Why.
        reason: String,
    },
    /// What each command of a [`Command::Batch`] did, in order.
    Batch {
        /// One result per command.
        results: Vec<CommandResult>,
    },
}
