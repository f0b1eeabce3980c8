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
use model::chain::{Capabilities, ChainState, NodeRecord};
use model::spec::{AppSpec, geo_allows};
use model::tier::Resources;

/// Whether `node` may run `spec` at all (geolocation and the capabilities it declares on
/// chain), ignoring capacity and whether those capabilities work right now.
pub fn eligible(spec: &AppSpec, node: &NodeRecord) -> bool {
    declared(node).covers(spec.needs()) && geo_allows(&spec.geolocation, &node.start.continent, &node.start.country)
}

fn declared(node: &NodeRecord) -> Capabilities {
    Capabilities::of(&node.start.capabilities)
}

/// Whether every instance of `spec` could be placed on `nodes` (those on chain, live or not):
/// as many distinct nodes as instances that its geolocation rules allow and whose whole
/// capacity holds one instance. The reason when not: an app that can never run is refused
/// before it is paid for.
pub fn feasibility<'a>(spec: &AppSpec, nodes: impl IntoIterator<Item = &'a NodeRecord>) -> Result<(), String> {
    let need = spec.instance_resources();
    let (mut matching, mut fitting, mut lacking) = (0usize, 0usize, 0usize);
    for node in nodes {
        if !geo_allows(&spec.geolocation, &node.start.continent, &node.start.country) {
            continue;
        }
        if !declared(node).covers(spec.needs()) {
            lacking += 1;
            continue;
        }
        matching += 1;
        fitting += usize::from(node.resources().fits(&need));
    }
    if fitting >= spec.instances as usize {
        return Ok(());
    }
    let rules = if spec.geolocation.is_empty() {
        "anywhere".to_string()
    } else {
        spec.geolocation.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(", ")
    };
    let needs: Vec<String> = Capabilities::default().missing(spec.needs()).iter().map(|c| c.to_string()).collect();
    let without = match lacking {
        0 => String::new(),
        n => format!(" ({n} more match them but do not run {})", needs.join(" and ")),
    };
    Err(format!(
        "{} instance(s) need as many nodes, and no more than {fitting} could ever take one: {matching} node(s) on \
         chain match the geolocation rules ({rules}) and run {}{without}, {fitting} of them have room for cpu {} \
         ram {} MB hdd {} GB even when empty (the largest tier, stratus, has cpu 8 ram 64000 MB hdd 880 GB)",
        spec.instances,
        needs.join(" and "),
        need.cpu_tenths as f64 / 10.0,
        need.ram_mb,
        need.hdd_gb
    ))
}

/// Nodes counted by region, by `(continent, country)` and by the capabilities they declare:
/// all a quota depends on, so that quotas never walk every node (countries and capability
/// sets are few, nodes many).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeCounts(BTreeMap<String, BTreeMap<(String, String, Capabilities), u32>>);

impl NodeCounts {
    /// Counts `nodes`.
    pub fn of<'a>(nodes: impl IntoIterator<Item = &'a NodeRecord>) -> NodeCounts {
        let mut counts = NodeCounts::default();
        for n in nodes {
            counts.add(n);
        }
        counts
    }

    /// Counts one more node.
    pub fn add(&mut self, node: &NodeRecord) {
        let place = (node.start.continent.clone(), node.start.country.clone(), declared(node));
        *self.0.entry(node.start.region.clone()).or_default().entry(place).or_default() += 1;
    }

    /// Counts one node fewer.
    pub fn remove(&mut self, node: &NodeRecord) {
        let Some(region) = self.0.get_mut(&node.start.region) else { return };
        let place = (node.start.continent.clone(), node.start.country.clone(), declared(node));
        if let Some(n) = region.get_mut(&place) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                region.remove(&place);
            }
        }
        if region.is_empty() {
            self.0.remove(&node.start.region);
        }
    }

    /// Forgets every node of `region`.
    pub fn clear(&mut self, region: &str) {
        self.0.remove(region);
    }

    /// Nodes of `region` that `spec`'s geolocation allows and that declare what it needs.
    pub fn eligible(&self, spec: &AppSpec, region: &str) -> u32 {
        let needs = spec.needs();
        self.0.get(region).map_or(0, |places| {
            places
                .iter()
                .filter(|((continent, country, caps), _)| {
                    caps.covers(needs) && geo_allows(&spec.geolocation, continent, country)
                })
                .fold(0u32, |sum, (_, n)| sum.saturating_add(*n))
        })
    }
}

/// Instances per region: spread over the regions that have eligible nodes (counted in
/// `eligible`), round-robin in the chain's region order, at most one per eligible node; what
/// cannot fit anywhere is left out (the region shards report the shortfall).
pub fn region_quotas(spec: &AppSpec, regions: &[model::Region], eligible: &NodeCounts) -> BTreeMap<String, u32> {
    let mut room: Vec<(String, u32)> =
        regions.iter().map(|r| (r.name.clone(), eligible.eligible(spec, &r.name))).filter(|(_, n)| *n > 0).collect();
    let mut quotas: BTreeMap<String, u32> = room.iter().map(|(r, _)| (r.clone(), 0)).collect();
    // Round robin, a whole round at a time: every region with room left takes one per round.
    let mut left = spec.instances;
    loop {
        let open: Vec<usize> = (0..room.len()).filter(|i| room[*i].1 > 0).collect();
        let Some(fewest) = open.iter().map(|i| room[*i].1).min() else { break };
        if left == 0 {
            break;
        }
        let width = u32::try_from(open.len()).unwrap_or(u32::MAX);
        let rounds = fewest.min(left / width);
        if rounds == 0 {
            // Less than a round left: the first regions in order take one each.
            for i in open.into_iter().take(left as usize) {
                *quotas.entry(room[i].0.clone()).or_default() += 1;
            }
            break;
        }
        for i in open {
            room[i].1 -= rounds;
            *quotas.entry(room[i].0.clone()).or_default() += rounds;
        }
        left -= rounds * width;
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
    /// The regions, in chain order.
    pub regions: &'a [model::Region],
    /// Every region's nodes, live or not.
    pub eligible: &'a NodeCounts,
    /// Every region's open nodes: here, up and not cordoned; elsewhere, as its report says (a
    /// region without one counts as whole, an unreachable one as empty).
    pub open: &'a NodeCounts,
    /// The other regions' reports.
    pub reports: &'a BTreeMap<String, RegionReport>,
}

/// Counts for a [`Capacity`] from scratch: every node, and the open ones as seen from `region`
/// (its own `down` and `cordoned` nodes, the other regions' `reports`).
pub fn count_nodes(
    chain: &ChainState,
    region: &str,
    down: &BTreeSet<NodeId>,
    cordoned: &BTreeSet<NodeId>,
    reports: &BTreeMap<String, RegionReport>,
) -> (NodeCounts, NodeCounts) {
    let eligible = NodeCounts::of(chain.nodes.values());
    let open = NodeCounts::of(chain.nodes.values().filter(|n| is_open(n, region, down, cordoned, reports)));
    (eligible, open)
}

/// Whether `node` takes new instances, as seen from `region`.
pub fn is_open(
    node: &NodeRecord,
    region: &str,
    down: &BTreeSet<NodeId>,
    cordoned: &BTreeSet<NodeId>,
    reports: &BTreeMap<String, RegionReport>,
) -> bool {
    let id = &node.start.node_id;
    if node.start.region == region {
        return !down.contains(id) && !cordoned.contains(id);
    }
    reports.get(&node.start.region).is_none_or(|r| r.reachable && r.open.contains(id))
}

/// This region's quota for `spec`: its base quota, plus what it takes over from regions that
/// are short. Each short region's deficit goes to the other regions in order of distance from
/// it (region centres; ties by name), each taking up to its spare room: eligible open nodes
/// less its own base quota and what nearer deficits took. Regions are visited in chain order,
/// so every shard with the same reports computes the same split. A deficit that was placed
/// elsewhere shrinks as the region's own instances come back, so the quota moves back by
/// itself; `keep` holds a stand-in until the instance it replaces has started.
pub fn spill_quota(spec: &AppSpec, capacity: &Capacity<'_>) -> Quota {
    let base = region_quotas(spec, capacity.regions, capacity.eligible);
    let base_of = |region: &str| base.get(region).copied().unwrap_or(0);
    let me = capacity.region;
    let open: BTreeMap<&str, u32> =
        capacity.regions.iter().map(|r| (r.name.as_str(), capacity.open.eligible(spec, &r.name))).collect();
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
        for origin in capacity.regions {
            let mut deficit = short(&origin.name, of);
            if deficit == 0 {
                continue;
            }
            let mut targets: Vec<&model::Region> = capacity.regions.iter().filter(|t| t.name != origin.name).collect();
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
    /// Why the node cannot run the app's workloads right now although it declares them (its
    /// Docker engine does not answer, say), from its last heartbeat.
    pub lacks: Option<String>,
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
    /// Whether anything changes (given the shortfall currently recorded). A shortfall changes
    /// when it starts, ends, or its "N of Q placed" does; the node counts that follow drift
    /// with every node that fails while a region dies, and recommitting every short app for
    /// each would flood the log. Views show the counts as of now
    /// ([`crate::reconcile::shortfall_now`]).
    pub fn changes(&self, current_shortfall: Option<&String>) -> bool {
        let head = |why: &String| why.split_once(':').map_or(why.as_str(), |(head, _)| head).to_string();
        !self.place.is_empty()
            || !self.remove.is_empty()
            || self.shortfall.as_ref().map(head) != current_shortfall.map(head)
    }
}

/// Places `quota.place` instances of `spec` on `candidates`, keeping healthy current
/// placements (up to `quota.keep`): never two on one node, only on eligible up nodes with room
/// (new ones not on cordoned nodes), emptiest nodes first.
pub fn place(spec: &AppSpec, quota: Quota, candidates: &[Candidate<'_>], current: &BTreeSet<NodeId>) -> Decision {
    let need = spec.instance_resources();
    let (quota, keep_up_to) = (quota.place as usize, quota.keep.max(quota.place) as usize);
    let usable = |c: &Candidate<'_>| c.up && c.lacks.is_none() && eligible(spec, c.node);
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
            "{placed} of {quota} placed: {eligible_up} eligible node(s) up, {down} down, {} with room for cpu {} ram {} MB hdd {} GB{}",
            keep.len() + open_count,
            need.cpu_tenths as f64 / 10.0,
            need.ram_mb,
            need.hdd_gb,
            lacking_note(candidates.iter().filter(|c| c.up && eligible(spec, c.node)))
        )
    });
    Decision { place, remove, shortfall }
}

/// `; N up node(s) cannot run it now: why` for candidates that lack a capability they declare.
pub fn lacking_note<'a, 'b: 'a>(candidates: impl Iterator<Item = &'a Candidate<'b>>) -> String {
    let lacking: Vec<(&str, &str)> =
        candidates.filter_map(|c| Some((c.node.start.node_id.as_str(), c.lacks.as_deref()?))).collect();
    match lacking.as_slice() {
        [] => String::new(),
        [(node, why), rest @ ..] => {
            let more = if rest.is_empty() { String::new() } else { format!(" (and {} more)", rest.len()) };
            format!("; {} up node(s) cannot run it now: {node}: {why}{more}", lacking.len())
        }
    }
}

#[cfg(test)]
mod tests;
