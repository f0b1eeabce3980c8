//! The event log each regional shard keeps: what happened to its nodes, instances, leadership
//! and membership, with when. `fluxctl events` merges every region's log in time order, and the
//! healing tests read their detection and replacement times from it.

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// One thing that happened in a region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the region's log, from 1; never reused.
    pub seq: u64,
    /// When, ms since the epoch, by the clock of the leader that decided or observed it.
    pub at_ms: u64,
    /// What.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// The node missed its heartbeats; its instances left the routing feed.
    NodeDown {
        /// The node.
        node: NodeId,
    },
    /// The node beats again.
    NodeUp {
        /// The node.
        node: NodeId,
    },
    /// An instance was placed on a node.
    InstancePlaced {
        /// `app@node`.
        instance: String,
        /// The node.
        node: NodeId,
        /// Why (a new app, a replacement, a scale-up...).
        reason: String,
    },
    /// The node reported the instance healthy for the first time: it is routed.
    InstanceStarted {
        /// `app@node`.
        instance: String,
        /// The node.
        node: NodeId,
    },
    /// The node could not start the instance.
    InstanceFailed {
        /// `app@node`.
        instance: String,
        /// The node.
        node: NodeId,
        /// What the node said.
        reason: String,
    },
    /// The instance was taken off its node and placed elsewhere.
    InstanceReplaced {
        /// `app@node`.
        instance: String,
        /// The node it left.
        node: NodeId,
        /// Why.
        reason: String,
    },
    /// The instance was taken off its node with no replacement (scaled down, app gone).
    InstanceStopped {
        /// `app@node`.
        instance: String,
        /// The node.
        node: NodeId,
        /// Why.
        reason: String,
    },
    /// A replica became the shard's leader.
    LeaderChanged {
        /// Its Raft id.
        leader: u64,
        /// Its term.
        term: u64,
    },
    /// Another region's capacity, as this shard knows it, changed: quotas spill to it or
    /// away from it.
    RegionCapacity {
        /// The other region (`region` names the shard whose log this is).
        peer: String,
        /// Whether it answers.
        reachable: bool,
        /// Its nodes that take new instances.
        open_nodes: usize,
        /// Its apps below their base quota there.
        short_apps: usize,
    },
    /// The shard's membership changed.
    MembershipChanged {
        /// Voters now.
        voters: Vec<u64>,
        /// Learners now.
        learners: Vec<u64>,
    },
}

impl EventKind {
    /// The event's name, as in JSON (`node_down`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::NodeDown { .. } => "node_down",
            EventKind::NodeUp { .. } => "node_up",
            EventKind::InstancePlaced { .. } => "instance_placed",
            EventKind::InstanceStarted { .. } => "instance_started",
            EventKind::InstanceFailed { .. } => "instance_failed",
            EventKind::InstanceReplaced { .. } => "instance_replaced",
            EventKind::InstanceStopped { .. } => "instance_stopped",
            EventKind::LeaderChanged { .. } => "leader_changed",
            EventKind::RegionCapacity { .. } => "region_capacity",
            EventKind::MembershipChanged { .. } => "membership_changed",
        }
    }

    /// The rest of the event, as `key=value` words for one line of text.
    pub fn details(&self) -> String {
        match self {
            EventKind::NodeDown { node } | EventKind::NodeUp { node } => format!("node={node}"),
            EventKind::InstanceStarted { instance, node } => format!("instance={instance} node={node}"),
            EventKind::InstancePlaced { instance, node, reason }
            | EventKind::InstanceFailed { instance, node, reason }
            | EventKind::InstanceReplaced { instance, node, reason }
            | EventKind::InstanceStopped { instance, node, reason } => {
                format!("instance={instance} node={node} reason={reason:?}")
            }
            EventKind::LeaderChanged { leader, term } => format!("leader={leader} term={term}"),
            EventKind::RegionCapacity { peer, reachable, open_nodes, short_apps } => {
                format!("peer={peer} reachable={reachable} open_nodes={open_nodes} short_apps={short_apps}")
            }
            EventKind::MembershipChanged { voters, learners } => format!("voters={voters:?} learners={learners:?}"),
        }
    }
}

/// Most events one page of `GET /v1/events/{region}` holds: a full page means there may be more.
pub const EVENTS_PAGE: usize = 1000;

/// One page of a region's log, as `GET /v1/events/{region}` answers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EventPage {
    /// The region.
    pub region: String,
    /// Events after the `after` asked for, oldest first.
    pub events: Vec<Event>,
    /// The oldest seq still kept; older events were dropped (the log keeps the newest only).
    pub first_kept: u64,
}
