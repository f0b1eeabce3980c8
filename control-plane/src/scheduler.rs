//! Placement, as pure functions of the shard state: how many instances each region runs
//! ([`region_quotas`]) and which nodes of a region run them ([`place`]).
//!
//! Quotas depend only on the cached chain state, which every shard holds identically, so every
//! shard computes the same split without asking the others.

use std::collections::{BTreeMap, BTreeSet};

use model::NodeId;
use model::chain::{Capability, ChainState, NodeRecord};
use model::spec::{AppSpec, geo_allows};
use model::tier::Resources;

/// Whether `node` may run `spec` at all (geolocation and capability), ignoring capacity.
pub fn eligible(spec: &AppSpec, node: &NodeRecord) -> bool {
    node.start.capabilities.contains(&Capability::Wasm)
        && geo_allows(&spec.geolocation, &node.start.continent, &node.start.country)
}

/// Instances per region: spread over the regions that have eligible nodes, round-robin in the
/// chain's region order, at most one per eligible node; what cannot fit anywhere is left out
/// (the region shards report the shortfall).
pub fn region_quotas(spec: &AppSpec, chain: &ChainState) -> BTreeMap<String, u32> {
    let mut room: Vec<(String, u32)> = chain
        .regions
        .iter()
        .map(|r| {
            let n = chain.nodes.values().filter(|n| n.start.region == r.name && eligible(spec, n)).count();
            (r.name.clone(), u32::try_from(n).unwrap_or(u32::MAX))
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    let mut quotas: BTreeMap<String, u32> = room.iter().map(|(r, _)| (r.clone(), 0)).collect();
    let mut left = spec.instances;
    while left > 0 && room.iter().any(|(_, n)| *n > 0) {
        for (region, n) in room.iter_mut() {
            if left == 0 {
                break;
            }
            if *n > 0 {
                *n -= 1;
                left -= 1;
                *quotas.entry(region.clone()).or_default() += 1;
            }
        }
    }
    quotas.retain(|_, q| *q > 0);
    quotas
}

/// A node as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    /// The chain record.
    pub node: &'a NodeRecord,
    /// Whether the shard counts it as up.
    pub up: bool,
    /// Whether an operator cordoned it: it keeps what it runs but gets nothing new.
    pub cordoned: bool,
    /// Capacity left, not counting the app being placed.
    pub free: Resources,
}

/// What to change for one app in one region.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Nodes to add an instance on.
    pub place: Vec<NodeId>,
    /// Nodes to take the instance off.
    pub remove: Vec<NodeId>,
    /// Why the quota is not met, if it is not.
    pub shortfall: Option<String>,
}

impl Decision {
    /// Whether anything changes (given the shortfall currently recorded).
    pub fn changes(&self, current_shortfall: Option<&String>) -> bool {
        !self.place.is_empty() || !self.remove.is_empty() || self.shortfall.as_ref() != current_shortfall
    }
}

/// Places `quota` instances of `spec` on `candidates`, keeping healthy current placements:
/// never two on one node, only on eligible up nodes with room (new ones not on cordoned nodes),
/// emptiest nodes first.
pub fn place(spec: &AppSpec, quota: u32, candidates: &[Candidate<'_>], current: &BTreeSet<NodeId>) -> Decision {
    let need = spec.instance_resources();
    let quota = quota as usize;
    let usable = |c: &Candidate<'_>| c.up && eligible(spec, c.node);
    let mut keep: Vec<&NodeId> = Vec::new();
    let mut remove = Vec::new();
    for node in current {
        match candidates.iter().find(|c| &c.node.start.node_id == node) {
            Some(c) if usable(c) && keep.len() < quota => keep.push(node),
            _ => remove.push(node.clone()),
        }
    }
    let mut open: Vec<&Candidate<'_>> = candidates
        .iter()
        .filter(|c| usable(c) && !c.cordoned && !current.contains(&c.node.start.node_id) && c.free.fits(&need))
        .collect();
    // Emptiest first (by memory, then cpu), then by id so the choice is deterministic.
    open.sort_by(|a, b| {
        (b.free.ram_mb, b.free.cpu_tenths)
            .cmp(&(a.free.ram_mb, a.free.cpu_tenths))
            .then(a.node.start.node_id.cmp(&b.node.start.node_id))
    });
    let want = quota.saturating_sub(keep.len());
    let place: Vec<NodeId> = open.iter().take(want).map(|c| c.node.start.node_id.clone()).collect();
    let placed = keep.len() + place.len();
    let shortfall = (placed < quota).then(|| {
        let eligible_up = candidates.iter().filter(|c| usable(c)).count();
        let down = candidates.iter().filter(|c| !c.up && eligible(spec, c.node)).count();
        format!(
            "{placed} of {quota} placed: {eligible_up} eligible node(s) up, {down} down, {} with room for cpu {} ram {} MB hdd {} GB",
            keep.len() + open.len(),
            need.cpu_tenths as f64 / 10.0,
            need.ram_mb,
            need.hdd_gb
        )
    });
    Decision { place, remove, shortfall }
}

#[cfg(test)]
mod tests;
