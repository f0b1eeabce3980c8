//! One app's reconcile in one region, as a pure function of the shard state and the leader's
//! view of which nodes beat: the AppActor runs it on the leader and commits what it returns,
//! and benchmarks drive it without actors, Raft or I/O.

use std::collections::{BTreeMap, BTreeSet};

use model::command::{Command, Placement, Removal};

use crate::scheduler::{Candidate, eligible, place, spill_quota};
use crate::state::ShardState;

/// How long an app avoids a node that failed its instance.
pub const AVOID_MS: u64 = 60_000;

/// What the leader knows beyond the replicated state.
pub trait Liveness {
    /// Whether `node` beat within the node timeout.
    fn is_fresh(&self, node: &str) -> bool;
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
    let candidates: Vec<Candidate<'_>> = s
        .region_nodes()
        .filter(|n| !avoided(&n.start.node_id))
        .map(|n| Candidate {
            node: n,
            up: !s.down.contains(&n.start.node_id)
                && (live.is_fresh(&n.start.node_id) || (!j.settled && current.contains(&n.start.node_id))),
            cordoned: s.cordoned.contains(&n.start.node_id),
            free: n.resources().saturating_sub(&s.used_on(&n.start.node_id)),
        })
        .collect();
    let decision = place(&record.spec, quota, &candidates, &current);
    if !decision.changes(s.shortfall.get(app)) {
        return None;
    }
    for node in &decision.remove {
        why.entry(node.clone()).or_insert_with(|| Removal {
            reason: removal_reason(s, live, node, &candidates, &record.spec),
            avoid_ms: 0,
        });
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
