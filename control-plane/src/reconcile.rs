//! One app's reconcile in one region, as a pure function of the shard state and the leader's
//! view of which nodes beat: the AppActor runs it on the leader and commits what it returns,
//! and benchmarks drive it without actors, Raft or I/O.

use std::collections::{BTreeMap, BTreeSet};

use model::chain::NodeRecord;
use model::command::{Command, Placement, Removal};

use crate::scheduler::{Candidate, eligible, place, spill_quota};
use crate::state::ShardState;

/// The most silent nodes (open in the log, not beating yet not declared down) one reconcile
/// walks past. Losing a region then costs each app a bounded walk, not the region. An app cut
/// short this way (only when nearly every node it could use is silent) counts as short until a
/// change touches it again or the sweep reaches it.
pub const MAX_SILENT_WALKED: usize = 64;

/// How long an app avoids a node that failed its instance.
pub const AVOID_MS: u64 = 60_000;

/// What the leader knows beyond the replicated state.
pub trait Liveness {
    /// Whether `node` beat within the node timeout: it keeps the instances it runs.
    fn is_fresh(&self, node: &str) -> bool;

    /// Whether `node` beat within half the node timeout: only such a node takes a new
    /// instance. A node that missed beats keeps what it runs until its timeout, but nothing is
    /// moved onto it: while a region dies node by node, instances would otherwise hop from
    /// one dying node to the next.
    fn is_steady(&self, node: &str) -> bool {
        self.is_fresh(node)
    }

    /// Why `node` cannot run workloads needing `needs` right now, though it declares them on
    /// chain: its last heartbeat said so (for example, its Docker engine does not answer).
    fn lacks(&self, _node: &str, _needs: model::chain::Capabilities) -> Option<String> {
        None
    }

    /// Why `node` may not take new instances yet (it keeps those it has): it has not proven its
    /// address to this leader.
    fn unproven(&self, _node: &str) -> Option<String> {
        None
    }
}

/// When and how the leader judges.
#[derive(Debug, Clone, Copy)]
pub struct Judgement {
    /// Now, ms since the epoch (the leader's clock).
    pub now_ms: u64,
    /// The placement lease, ms.
    pub lease_ms: u64,
    /// Whether the leader is past its grace: within it, a silent node's instances count as
    /// running (unless it is committed down), and no lease is judged, so a leader change never
    /// moves an instance.
    pub settled: bool,
}

/// The command that brings `app`'s placements in this region to its quota, if anything changes.
pub fn decide(s: &ShardState, app: &str, live: &dyn Liveness, j: Judgement) -> Option<Command> {
    let (decision, mut why) = judge(s, app, live, j)?;
    if !decision.changes(s.shortfall.get(app)) {
        return None;
    }
    why.retain(|node, _| decision.remove.contains(node));
    Some(Command::Reconcile {
        app: app.to_string(),
        place: decision
            .place
            .into_iter()
            .map(|node| Placement {
                app: app.to_string(),
                node,
                region: s.region.clone(),
                placed_at_ms: j.now_ms,
                started_at_ms: None,
                failed: None,
            })
            .collect(),
        remove: decision.remove,
        shortfall: decision.shortfall,
        at_ms: j.now_ms,
        why,
    })
}

/// Why `app` is short in this region as of now (the recorded shortfall keeps the counts of
/// when it last changed in a way that matters; see [`crate::scheduler::Decision::changes`]).
pub fn shortfall_now(s: &ShardState, app: &str, live: &dyn Liveness, j: Judgement) -> Option<String> {
    judge(s, app, live, j).and_then(|(d, _)| d.shortfall)
}

/// What `app`'s placements here should be, and why each removal happens.
fn judge<'a>(
    s: &'a ShardState,
    app: &str,
    live: &dyn Liveness,
    j: Judgement,
) -> Option<(crate::scheduler::Decision, BTreeMap<String, Removal>)> {
    let record = s.chain.apps.get(app)?;
    let quota = spill_quota(&record.spec, &s.capacity());
    let placed = s.placements.get(app);
    // Placements that failed to start, or outlived their lease without starting, go elsewhere;
    // their nodes are avoided for a while.
    let mut why: BTreeMap<String, Removal> = BTreeMap::new();
    for (node, p) in placed.into_iter().flatten() {
        if p.started_at_ms.is_some() {
            continue;
        }
        if let Some(failure) = &p.failed {
            why.insert(node.clone(), Removal { reason: format!("failed to start: {failure}"), avoid_ms: AVOID_MS });
        } else if j.settled && j.now_ms.saturating_sub(p.placed_at_ms) > j.lease_ms {
            let reason = format!("not healthy within its {} s placement lease", j.lease_ms / 1000);
            why.insert(node.clone(), Removal { reason, avoid_ms: AVOID_MS });
        }
    }
    let avoided = |node: &str| {
        why.contains_key(node) || s.avoid.get(app).and_then(|a| a.get(node)).is_some_and(|until| *until > j.now_ms)
    };
    let current: BTreeSet<String> = placed.map(|p| p.keys().cloned().collect()).unwrap_or_default();
    let needs = record.spec.needs();
    let candidate = |n: &'a NodeRecord| Candidate {
        node: n,
        up: up(s, live, j, &current, &n.start.node_id),
        // A node that has not proven its address keeps its instances but takes none, as if
        // cordoned.
        cordoned: s.cordoned.contains(&n.start.node_id) || live.unproven(&n.start.node_id).is_some(),
        free: n.resources().saturating_sub(&s.used_on(&n.start.node_id)),
        lacks: live.lacks(&n.start.node_id, needs),
    };
    // The nodes that hold an instance, then new ones walked from the emptiest open node: only as
    // many as could be placed, each filtered as `place` would. So `place` sees a handful of
    // nodes, not the region, and picks what it would have picked from all of them.
    let need = record.spec.instance_resources();
    let mut candidates: Vec<Candidate<'a>> = current
        .iter()
        .filter(|id| !avoided(id))
        .filter_map(|id| s.chain.nodes.get(id))
        .filter(|n| n.start.region == s.region)
        .map(candidate)
        .collect();
    let from_current = candidates.len();
    // Nodes still open in the log but silent (not yet declared down) are skipped, up to a
    // limit: when a whole region falls silent, every app would otherwise walk every node.
    let silent = std::cell::Cell::new(0usize);
    let beats = |id: &str| {
        let steady = live.is_steady(id);
        if !steady {
            silent.set(silent.get() + 1);
        }
        steady
    };
    let fresh = s
        .open_by_free()
        .take_while(|_| silent.get() < MAX_SILENT_WALKED)
        .filter(|n| {
            let id = &n.start.node_id;
            !current.contains(id) && !avoided(id) && eligible(&record.spec, n) && beats(id)
        })
        .map(candidate)
        .filter(|c| c.free.fits(&need))
        .take(quota.place as usize);
    candidates.extend(fresh);
    let mut decision = place(&record.spec, quota, &candidates, &current);
    if decision.shortfall.is_some() {
        // Short of room: every open node is a candidate (only a node that is up and not
        // cordoned can take an instance), and the shortfall says how many have room. Down
        // and cordoned nodes are counted from the index, so a region whose nodes all died
        // costs nothing per app here.
        candidates.truncate(from_current);
        silent.set(0);
        let open = s
            .open_by_free()
            .take_while(|_| silent.get() < MAX_SILENT_WALKED)
            .filter(|n| !current.contains(&n.start.node_id) && !avoided(&n.start.node_id))
            .inspect(|n| {
                beats(&n.start.node_id);
            });
        candidates.extend(open.map(candidate));
        decision = place(&record.spec, quota, &candidates, &current);
        if let Some(short) = decision.shortfall.is_some().then(|| {
            let message = shortfall_message(s, &record.spec, quota, &decision, &candidates, &current);
            if silent.get() >= MAX_SILENT_WALKED {
                format!("{message} (looked no further than {MAX_SILENT_WALKED} silent nodes)")
            } else {
                message
            }
        }) {
            decision.shortfall = Some(short);
        }
    }
    for node in &decision.remove {
        why.entry(node.clone()).or_insert_with(|| Removal {
            reason: removal_reason(s, live, node, &candidates, &record.spec),
            avoid_ms: 0,
        });
    }
    Some((decision, why))
}

/// Whether `node` counts as up for `app`: not down, and beating (within the node timeout for
/// a node that holds one of its instances, or within the leader's grace not at all; within
/// half of it for a node that would take a new one).
pub fn up(s: &ShardState, live: &dyn Liveness, j: Judgement, current: &BTreeSet<String>, node: &str) -> bool {
    if s.down.contains(node) {
        return false;
    }
    if current.contains(node) { live.is_fresh(node) || !j.settled } else { live.is_steady(node) }
}

/// When `app`'s decision may next change with nothing else changing (ms since the epoch): the
/// earliest placement lease to run out, or, for an app short of nodes, the earliest avoidance
/// to end. The loop reconciles it again then. Within the leader's grace no lease is judged (the
/// loop reconciles every app when the grace ends).
pub fn next_deadline(s: &ShardState, app: &str, j: Judgement) -> Option<u64> {
    let leases = s
        .placements
        .get(app)
        .into_iter()
        .flatten()
        .filter(|_| j.settled)
        .filter(|(_, p)| p.started_at_ms.is_none() && p.failed.is_none())
        .map(|(_, p)| p.placed_at_ms.saturating_add(j.lease_ms).saturating_add(1));
    let avoids = s
        .shortfall
        .contains_key(app)
        .then(|| s.avoid.get(app))
        .flatten()
        .into_iter()
        .flat_map(|a| a.values().copied())
        .filter(|until| *until > j.now_ms);
    leases.chain(avoids).min()
}

/// Why an app has fewer instances than its quota: how many are placed, how many of the
/// region's nodes it may use, how many of those are open (up, not cordoned), and how many have
/// room for it. Counts come from the index, and rooms from the candidates `place` saw, which
/// hold every open node.
pub fn shortfall_message(
    s: &ShardState,
    spec: &model::AppSpec,
    quota: crate::scheduler::Quota,
    decision: &crate::scheduler::Decision,
    candidates: &[Candidate<'_>],
    current: &BTreeSet<String>,
) -> String {
    let need = spec.instance_resources();
    let kept = current.len() - decision.remove.len();
    let placed = kept + decision.place.len();
    let capacity = s.capacity();
    let (eligible_nodes, open) = (capacity.eligible.eligible(spec, &s.region), capacity.open.eligible(spec, &s.region));
    let room = candidates
        .iter()
        .filter(|c| c.up && c.lacks.is_none() && !c.cordoned && eligible(spec, c.node))
        .filter(|c| !current.contains(&c.node.start.node_id))
        .filter(|c| c.free.fits(&need))
        .count();
    format!(
        "{placed} of {} placed: {eligible_nodes} eligible node(s) in {}, {open} open (up, not cordoned), {} with room \
         for cpu {} ram {} MB hdd {} GB{}",
        quota.place,
        s.region,
        kept + room,
        need.cpu_tenths as f64 / 10.0,
        need.ram_mb,
        need.hdd_gb,
        crate::scheduler::lacking_note(candidates.iter().filter(|c| c.up && eligible(spec, c.node)))
    )
}

/// Why `place` took an instance off `node`.
fn removal_reason(
    s: &ShardState,
    live: &dyn Liveness,
    node: &str,
    candidates: &[Candidate<'_>],
    spec: &model::AppSpec,
) -> String {
    if s.down.contains(node) {
        return format!("node {node} is down");
    }
    if !live.is_fresh(node) {
        return format!("node {node} stopped beating");
    }
    match candidates.iter().find(|c| c.node.start.node_id == node) {
        None => format!("node {node} left the region"),
        Some(c) if !eligible(spec, c.node) => format!("node {node} no longer fits the app's rules"),
        Some(_) => "over the region's quota".into(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use model::command::CommandResult;
    use proptest::prelude::*;

    use super::*;

    /// Nodes in this set beat.
    pub(super) struct Fresh(pub(super) BTreeSet<String>);

    impl Liveness for Fresh {
        fn is_fresh(&self, node: &str) -> bool {
            self.0.contains(node)
        }
    }

    /// Nodes in `fresh` beat; those of them not in `suspect` beat steadily.
    struct Beating {
        fresh: BTreeSet<String>,
        suspect: BTreeSet<String>,
    }

    impl Liveness for Beating {
        fn is_fresh(&self, node: &str) -> bool {
            self.fresh.contains(node)
        }
        fn is_steady(&self, node: &str) -> bool {
            self.fresh.contains(node) && !self.suspect.contains(node)
        }
    }

    /// Region eu with nodes eu-1..eu-8 of two tiers, and apps a0..a3 of different sizes.
    fn state() -> ShardState {
        let wallet = model::keys::Keypair::from_seed([3; 32]);
        let mut state = ShardState::new("eu");
        let genesis = chain::dev_genesis(&wallet, &chain::dev_nodes(), 0);
        assert_eq!(state.apply(&Command::ApplyBlock(genesis)), CommandResult::Applied);
        for i in 3..=8 {
            let mut node = state.chain.nodes[if i % 2 == 0 { "eu-1" } else { "eu-2" }].clone();
            node.start.node_id = format!("eu-{i}");
            state.chain.nodes.insert(node.start.node_id.clone(), node);
        }
        for (i, (ram, instances)) in [(64u32, 2u32), (512, 3), (2048, 4), (128, 1)].into_iter().enumerate() {
            let spec = model::AppSpec::from_toml(&format!(
                "name = \"a{i}\"\ninstances = {instances}\n[[component]]\nname = \"web\"\nwasm = \"x.wasm\"\nram = {ram}\n"
            ))
            .expect("spec");
            let record = model::chain::AppRecord {
                spec,
                owner: wallet.public(),
                registered_height: 0,
                updated_height: 0,
                expires_height: 1000,
                domains: Default::default(),
            };
            state.chain.apps.insert(format!("a{i}"), record);
        }
        state
    }

    /// `decide` as it was: every node of the region a candidate.
    fn decide_over_all(s: &ShardState, app: &str, live: &dyn Liveness, j: Judgement) -> Option<Command> {
        let record = s.chain.apps.get(app)?;
        let quota = spill_quota(&record.spec, &s.capacity());
        let current: BTreeSet<String> = s.placements.get(app).map(|p| p.keys().cloned().collect()).unwrap_or_default();
        let avoided = |node: &str| s.avoid.get(app).and_then(|a| a.get(node)).is_some_and(|until| *until > j.now_ms);
        let candidates: Vec<Candidate<'_>> = s
            .region_nodes()
            .filter(|n| !avoided(&n.start.node_id))
            .map(|n| Candidate {
                node: n,
                up: up(s, live, j, &current, &n.start.node_id),
                cordoned: s.cordoned.contains(&n.start.node_id),
                free: n.resources().saturating_sub(&s.used_on(&n.start.node_id)),
                lacks: None,
            })
            .collect();
        let mut d = place(&record.spec, quota, &candidates, &current);
        if d.shortfall.is_some() {
            d.shortfall = Some(shortfall_message(s, &record.spec, quota, &d, &candidates, &current));
        }
        d.changes(s.shortfall.get(app)).then(|| Command::Reconcile {
            app: app.into(),
            place: d.place.into_iter().map(|node| Placement { app: app.into(), node, ..placement() }).collect(),
            remove: d.remove,
            shortfall: d.shortfall,
            at_ms: j.now_ms,
            why: BTreeMap::new(),
        })
    }

    fn placement() -> Placement {
        Placement {
            app: String::new(),
            node: String::new(),
            region: "eu".into(),
            placed_at_ms: 5,
            started_at_ms: None,
            failed: None,
        }
    }

    /// The parts of a reconcile that say where instances go.
    fn where_to(cmd: Option<Command>) -> Option<(Vec<String>, Vec<String>, Option<String>)> {
        match cmd? {
            Command::Reconcile { place, remove, shortfall, .. } => {
                Some((place.into_iter().map(|p| p.node).collect(), remove, shortfall))
            }
            _ => None,
        }
    }

    /// A node that missed beats keeps the instance it runs until its timeout, but takes no new
    /// one: the instance that must move goes to a steady node.
    #[test]
    fn a_node_that_missed_beats_keeps_its_instance_but_gets_no_new_one() {
        let mut s = state();
        let j = Judgement { now_ms: 5, lease_ms: 10_000, settled: true };
        let all: BTreeSet<String> = (1..=8).map(|i| format!("eu-{i}")).collect();
        let steady = Beating { fresh: all.clone(), suspect: BTreeSet::new() };
        for app in ["a0", "a1", "a2", "a3"] {
            let first = decide(&s, app, &steady, j).expect("the app is placed");
            s.apply(&first);
        }
        let app =
            ["a0", "a1", "a2", "a3"].into_iter().find(|a| s.placements[*a].len() >= 2).expect("an app with two here");
        let held: Vec<String> = s.placements[app].keys().cloned().collect();
        let (holder, lost) = (held[0].clone(), held[1].clone());
        // `lost` stopped beating. Were every other node steady, its instance would go to
        // `first_choice`; but every node except `spare` missed beats.
        let fresh: BTreeSet<String> = all.iter().filter(|n| **n != lost).cloned().collect();
        let first_choice = match decide(&s, app, &Beating { fresh: fresh.clone(), suspect: BTreeSet::new() }, j) {
            Some(Command::Reconcile { place, .. }) => place[0].node.clone(),
            other => panic!("the instance moves: {other:?}"),
        };
        let spare = all.iter().find(|n| !held.contains(n) && **n != first_choice).expect("another spare node").clone();
        let suspect: BTreeSet<String> = all.iter().filter(|n| **n != spare).cloned().collect();
        let live = Beating { fresh, suspect };
        let Some(Command::Reconcile { place, remove, .. }) = decide(&s, app, &live, j) else {
            panic!("the instance on the silent node moves");
        };
        assert_eq!(remove, vec![lost]);
        assert_eq!(place.iter().map(|p| p.node.as_str()).collect::<Vec<_>>(), vec![spare.as_str()]);
        assert!(!remove.contains(&holder), "the suspect node keeps its instance");
    }

    proptest! {
        /// Walking the emptiest open nodes picks what looking at every node picked, through any
        /// sequence of reconciles, node failures and cordons.
        #[test]
        fn walking_the_emptiest_nodes_decides_as_every_node_would(
            steps in proptest::collection::vec((0u8..4, 0usize..4, 1usize..=8, any::<bool>()), 1..60),
            stale in proptest::collection::btree_set(1usize..=8, 0..3),
            suspect in proptest::collection::btree_set(1usize..=8, 0..3),
        ) {
            let mut s = state();
            let live = Beating {
                fresh: (1..=8).filter(|i| !stale.contains(i)).map(|i| format!("eu-{i}")).collect(),
                suspect: suspect.iter().map(|i| format!("eu-{i}")).collect(),
            };
            let j = Judgement { now_ms: 5, lease_ms: 10_000, settled: true };
            for (op, app, node, flag) in steps {
                let (app, node) = (format!("a{app}"), format!("eu-{node}"));
                match op {
                    0 | 1 => {
                        let fast = decide(&s, &app, &live, j);
                        prop_assert_eq!(where_to(fast.clone()), where_to(decide_over_all(&s, &app, &live, j)));
                        if let Some(cmd) = fast {
                            s.apply(&cmd);
                        }
                    }
                    2 => {
                        s.apply(&Command::SetLiveness { node, up: flag, at_ms: 5 });
                    }
                    _ => {
                        s.apply(&Command::SetCordon { node, cordoned: flag });
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod convergence {
    use std::collections::BTreeSet;

    use super::tests::Fresh;
    use super::*;

    /// Reconciles every app of every shard until nothing changes; the rounds it took.
    fn settle(shards: &mut [ShardState], live: &Fresh) -> usize {
        let j = Judgement { now_ms: 1, lease_ms: 10_000, settled: true };
        for round in 1..=5 {
            let mut changed = false;
            for s in shards.iter_mut() {
                let apps: Vec<String> = s.chain.apps.keys().cloned().collect();
                for app in apps {
                    if let Some(cmd) = decide(s, &app, live, j) {
                        s.apply(&cmd);
                        changed = true;
                    }
                }
            }
            if !changed {
                return round;
            }
        }
        panic!("no convergence in 5 rounds");
    }

    /// Every app has exactly its 4 instances across the regions, and none is on a down node.
    fn check(shards: &[ShardState], down: &BTreeSet<String>) {
        let apps: Vec<&String> = shards[0].chain.apps.keys().collect();
        for app in apps {
            let nodes: Vec<&String> =
                shards.iter().flat_map(|s| s.placements.get(app).into_iter().flat_map(|p| p.keys())).collect();
            assert_eq!(nodes.len(), 4, "{app}: {nodes:?}");
            assert!(nodes.iter().all(|n| !down.contains(*n)), "{app} on a down node: {nodes:?}");
        }
    }

    /// 1,500 nodes, 10,000 instances: all placed, none over its count; then 150 nodes go down and
    /// every instance they held is placed again elsewhere.
    #[test]
    fn ten_thousand_instances_converge_and_heal() {
        let chain = crate::synthetic::cloud(1_500, 2_500);
        let mut shards: Vec<ShardState> = chain
            .regions
            .iter()
            .map(|r| {
                let mut s = ShardState::new(&r.name);
                s.chain = chain.clone();
                s
            })
            .collect();
        let mut live = Fresh(chain.nodes.keys().cloned().collect());
        settle(&mut shards, &live);
        check(&shards, &BTreeSet::new());

        let down: BTreeSet<String> = chain.nodes.keys().step_by(10).cloned().collect();
        for s in shards.iter_mut() {
            let region = format!("{}-", s.region);
            for node in down.iter().filter(|n| n.starts_with(&region)) {
                s.apply(&Command::SetLiveness { node: node.clone(), up: false, at_ms: 1 });
            }
        }
        live.0.retain(|n| !down.contains(n));
        let moved: usize = shards.iter().map(|s| down.iter().map(|n| s.placements_on(n).count()).sum::<usize>()).sum();
        assert!(moved > 0);
        settle(&mut shards, &live);
        check(&shards, &down);
    }
}
