//! Placement, as pure functions of the shard state: how many instances each region runs
//! ([`region_quotas`], then [`spill_quota`]) and which nodes of a region run them ([`place`]).
//!
//! Base quotas depend only on the cached chain state, which every shard holds identically, so
//! every shard computes the same split without asking the others. Spill moves a region's
//! shortage to the nearest regions with room, from the capacity reports each shard commits
//! (`model::capacity`).

use std::collections::{BTreeMap, BTreeSet};

use model::NodeId;
use model::capacity::{RegionReport, Shortage};
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

/// How many instances of an app one region runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Instances to place (and keep).
    pub place: u32,
    /// Instances to keep, when the region already runs them: at least `place`. More while an
    /// instance it stands in for elsewhere is still starting.
    pub keep: u32,
}

impl Quota {
    /// Place and keep `n`.
    pub fn exactly(n: u32) -> Quota {
        Quota { place: n, keep: n }
    }
}

/// What a shard knows of every region's capacity: its own from its replicated liveness, the
/// others' from their last committed [`RegionReport`].
#[derive(Debug, Clone, Copy)]
pub struct Capacity<'a> {
    /// The region asking.
    pub region: &'a str,
    /// Its nodes committed down.
    pub down: &'a BTreeSet<NodeId>,
    /// Its cordoned nodes.
    pub cordoned: &'a BTreeSet<NodeId>,
    /// The other regions' reports; a region without one counts as whole.
    pub reports: &'a BTreeMap<String, RegionReport>,
}

/// This region's quota for `spec`: its base quota, plus what it takes over from regions that
/// are short. Each short region's deficit goes to the other regions in order of distance from
/// it (region centres; ties by name), each taking up to its spare room: eligible open nodes
/// less its own base quota and what nearer deficits took. Regions are visited in chain order,
/// so every shard with the same reports computes the same split. A deficit that was placed
/// elsewhere shrinks as the region's own instances come back, so the quota moves back by
/// itself; `keep` holds a stand-in until the instance it replaces has started.
pub fn spill_quota(spec: &AppSpec, chain: &ChainState, capacity: &Capacity<'_>) -> Quota {
    let base = region_quotas(spec, chain);
    let base_of = |region: &str| base.get(region).copied().unwrap_or(0);
    let me = capacity.region;
    let is_open = |region: &str, node: &NodeRecord| {
        let id = &node.start.node_id;
        if region == me {
            return !capacity.down.contains(id) && !capacity.cordoned.contains(id);
        }
        capacity.reports.get(region).is_none_or(|r| r.reachable && r.open.contains(id))
    };
    let open: BTreeMap<&str, u32> = chain
        .regions
        .iter()
        .map(|r| {
            let n = chain
                .nodes
                .values()
                .filter(|n| n.start.region == r.name && eligible(spec, n) && is_open(&r.name, n))
                .count();
            (r.name.as_str(), u32::try_from(n).unwrap_or(u32::MAX))
        })
        .collect();
    let short = |origin: &str, of: fn(&Shortage) -> u32| -> u32 {
        if origin == me {
            return 0;
        }
        match capacity.reports.get(origin) {
            None => 0,
            Some(r) if !r.reachable => base_of(origin),
            Some(r) => r.short.get(&spec.name).map_or(0, of).min(base_of(origin)),
        }
    };
    let taken_by_me = |of: fn(&Shortage) -> u32| -> u32 {
        let mut taken: BTreeMap<&str, u32> = BTreeMap::new();
        for origin in &chain.regions {
            let mut deficit = short(&origin.name, of);
            if deficit == 0 {
                continue;
            }
            let mut targets: Vec<&model::Region> = chain.regions.iter().filter(|t| t.name != origin.name).collect();
            targets.sort_by(|a, b| {
                let (da, db) = (origin.center.distance_km(&a.center), origin.center.distance_km(&b.center));
                da.total_cmp(&db).then_with(|| a.name.cmp(&b.name))
            });
            for target in targets {
                let name = target.name.as_str();
                let used = taken.get(name).copied().unwrap_or(0);
                let spare = open.get(name).copied().unwrap_or(0).saturating_sub(base_of(name).saturating_add(used));
                let take = deficit.min(spare);
                *taken.entry(name).or_default() += take;
                deficit -= take;
                if deficit == 0 {
                    break;
                }
            }
        }
        taken.get(me).copied().unwrap_or(0)
    };
    let place = base_of(me).saturating_add(taken_by_me(|s| s.unplaced));
    let keep = base_of(me).saturating_add(taken_by_me(|s| s.unstarted)).max(place);
    Quota { place, keep }
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

/// Places `quota.place` instances of `spec` on `candidates`, keeping healthy current
/// placements (up to `quota.keep`): never two on one node, only on eligible up nodes with room
/// (new ones not on cordoned nodes), emptiest nodes first.
pub fn place(spec: &AppSpec, quota: Quota, candidates: &[Candidate<'_>], current: &BTreeSet<NodeId>) -> Decision {
    let need = spec.instance_resources();
    let (quota, keep_up_to) = (quota.place as usize, quota.keep.max(quota.place) as usize);
    let usable = |c: &Candidate<'_>| c.up && eligible(spec, c.node);
    let by_id: std::collections::HashMap<&str, &Candidate<'_>> =
        candidates.iter().map(|c| (c.node.start.node_id.as_str(), c)).collect();
    let mut keep: Vec<&NodeId> = Vec::new();
    let mut remove = Vec::new();
    for node in current {
        match by_id.get(node.as_str()) {
            Some(c) if usable(c) && keep.len() < keep_up_to => keep.push(node),
            _ => remove.push(node.clone()),
        }
    }
    let mut open: Vec<&Candidate<'_>> = candidates
        .iter()
        .filter(|c| usable(c) && !c.cordoned && !current.contains(&c.node.start.node_id) && c.free.fits(&need))
        .collect();
    // Emptiest first (by memory, then cpu), then by id so the choice is deterministic. Only the
    // `want` best are needed: select them, then sort just those.
    let emptiest_first = |a: &&Candidate<'_>, b: &&Candidate<'_>| {
        (b.free.ram_mb, b.free.cpu_tenths)
            .cmp(&(a.free.ram_mb, a.free.cpu_tenths))
            .then(a.node.start.node_id.cmp(&b.node.start.node_id))
    };
    let want = quota.saturating_sub(keep.len());
    let open_count = open.len();
    if want > 0 && want < open.len() {
        open.select_nth_unstable_by(want - 1, emptiest_first);
        open.truncate(want);
    }
    open.sort_by(emptiest_first);
    let place: Vec<NodeId> = open.iter().take(want).map(|c| c.node.start.node_id.clone()).collect();
    let placed = keep.len() + place.len();
    let shortfall = (placed < quota).then(|| {
        let eligible_up = candidates.iter().filter(|c| usable(c)).count();
        let down = candidates.iter().filter(|c| !c.up && eligible(spec, c.node)).count();
        format!(
            "{placed} of {quota} placed: {eligible_up} eligible node(s) up, {down} down, {} with room for cpu {} ram {} MB hdd {} GB",
            keep.len() + open_count,
            need.cpu_tenths as f64 / 10.0,
            need.ram_mb,
            need.hdd_gb
        )
    });
    Decision { place, remove, shortfall }
}

#[cfg(test)]
mod tests;
