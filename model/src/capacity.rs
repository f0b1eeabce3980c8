//! What a region's shard tells the other regions about its capacity, so that a region that has
//! lost its nodes spills its instances to the nearest region with room, and takes them back
//! when its nodes return (the rule is `control_plane::scheduler::spill_quota`).
//!
//! Each shard leader asks the other regions for their report and commits it through its own
//! Raft log when it changes, so the quotas every replica computes are a pure function of its
//! replicated state.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{AppName, NodeId};

/// One region's capacity, as its leader sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionReport {
    /// Whether the region answered. An unreachable region (no answer for a while) counts as
    /// lost: no open node, and every app short by its whole base quota there.
    pub reachable: bool,
    /// Nodes that are up and not cordoned: where new instances can go.
    pub open: BTreeSet<NodeId>,
    /// Apps the region runs fewer instances of than its base quota.
    pub short: BTreeMap<AppName, Shortage>,
    /// Why the region is unreachable, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How far one app is below its base quota in one region.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shortage {
    /// Instances the region could not place on an up node: other regions place this many.
    pub unplaced: u32,
    /// Instances not running yet (unplaced, or placed and still starting): other regions keep
    /// this many of the instances they already run for the region, so an instance moving back
    /// is started before its stand-in stops.
    pub unstarted: u32,
}

impl RegionReport {
    /// The report of a region that has not answered for a while.
    pub fn unreachable(error: String) -> RegionReport {
        RegionReport { reachable: false, error: Some(error), ..Default::default() }
    }

    /// Whether two reports say the same thing (the error text aside).
    pub fn same(&self, other: &RegionReport) -> bool {
        self.reachable == other.reachable && self.open == other.open && self.short == other.short
    }
}
