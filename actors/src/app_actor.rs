//! Reconciles one app's placements in the region: desired (the region's quota) against actual.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use control_plane::Shard;
use control_plane::scheduler::{Candidate, eligible, place, spill_quota};
use model::command::{Command, Placement, Removal};
use ractor::{Actor, ActorProcessingErr, ActorRef};

/// How long an app avoids a node that failed its instance.
const AVOID_MS: u64 = 60_000;

/// Messages to an AppActor.
#[derive(Debug)]
pub enum AppMsg {
    /// Something changed: compare and commit what differs.
    Reconcile,
}

pub(crate) struct AppActor;

pub(crate) struct AppState {
    shard: Arc<Shard>,
    app: String,
}

impl Actor for AppActor {
    type Msg = AppMsg;
    type State = AppState;
    type Arguments = (Arc<Shard>, String);

    async fn pre_start(
        &self,
        myself: ActorRef<AppMsg>,
        (shard, app): Self::Arguments,
    ) -> Result<AppState, ActorProcessingErr> {
        myself.cast(AppMsg::Reconcile)?;
        Ok(AppState { shard, app })
    }

    async fn handle(&self, _: ActorRef<AppMsg>, msg: AppMsg, state: &mut AppState) -> Result<(), ActorProcessingErr> {
        let AppMsg::Reconcile = msg;
        let shard = &state.shard;
        if !shard.is_leader() {
            return Ok(());
        }
        let now = chain::now_ms();
        let lease_ms = shard.placement_lease().as_millis() as u64;
        // A leader within its grace has not yet heard every node's beats: it takes a silent
        // node's instances for running (unless the node is committed down), and judges no
        // lease, so a leader change never moves an instance.
        let settled = shard.past_leader_grace();
        let command = shard.read(|s| {
            let record = s.chain.apps.get(&state.app)?;
            let quota = spill_quota(&record.spec, &s.chain, &s.capacity());
            let placed = s.placements.get(&state.app);
            // Placements that failed to start, or outlived their lease without starting, go
            // elsewhere; their nodes are avoided for a while.
            let mut why: BTreeMap<String, Removal> = BTreeMap::new();
            for (node, p) in placed.into_iter().flatten() {
                if p.started_at_ms.is_some() {
                    continue;
                }
                if let Some(failure) = &p.failed {
                    why.insert(
                        node.clone(),
                        Removal { reason: format!("failed to start: {failure}"), avoid_ms: AVOID_MS },
                    );
                } else if settled && now.saturating_sub(p.placed_at_ms) > lease_ms {
                    let reason = format!("not healthy within its {} s placement lease", lease_ms / 1000);
                    why.insert(node.clone(), Removal { reason, avoid_ms: AVOID_MS });
                }
            }
            let avoided = |node: &str| {
                why.contains_key(node)
                    || s.avoid.get(&state.app).and_then(|a| a.get(node)).is_some_and(|until| *until > now)
            };
            let current: BTreeSet<String> = placed.map(|p| p.keys().cloned().collect()).unwrap_or_default();
            let candidates: Vec<Candidate<'_>> = s
                .region_nodes()
                .filter(|n| !avoided(&n.start.node_id))
                .map(|n| Candidate {
                    node: n,
                    up: !s.down.contains(&n.start.node_id)
                        && (shard.is_fresh(&n.start.node_id) || (!settled && current.contains(&n.start.node_id))),
                    cordoned: s.cordoned.contains(&n.start.node_id),
                    free: n.resources().saturating_sub(&s.used_on(&n.start.node_id)),
                })
                .collect();
            let decision = place(&record.spec, quota, &candidates, &current);
            if !decision.changes(s.shortfall.get(&state.app)) {
                return None;
            }
            for node in &decision.remove {
                why.entry(node.clone()).or_insert_with(|| Removal {
                    reason: removal_reason(s, shard, node, &candidates, &record.spec),
                    avoid_ms: 0,
                });
            }
            why.retain(|node, _| decision.remove.contains(node));
            Some(Command::Reconcile {
                app: state.app.clone(),
                place: decision
                    .place
                    .into_iter()
                    .map(|node| Placement {
                        app: state.app.clone(),
                        node,
                        region: s.region.clone(),
                        placed_at_ms: now,
                        started_at_ms: None,
                        failed: None,
                    })
                    .collect(),
                remove: decision.remove,
                shortfall: decision.shortfall,
                at_ms: now,
                why,
            })
        });
        if let Some(command) = command {
            tracing::info!(region = %shard.region, app = %state.app, ?command, "reconciling");
            if let Err(e) = shard.propose(command).await {
                tracing::warn!(region = %shard.region, app = %state.app, "reconcile not committed: {e}");
            }
        }
        Ok(())
    }
}

/// Why `place` took an instance off `node`.
fn removal_reason(
    s: &control_plane::state::ShardState,
    shard: &Shard,
    node: &str,
    candidates: &[Candidate<'_>],
    spec: &model::AppSpec,
) -> String {
    if s.down.contains(node) {
        return format!("node {node} is down");
    }
    if !shard.is_fresh(node) {
        return format!("node {node} stopped beating");
    }
    match candidates.iter().find(|c| c.node.start.node_id == node) {
        None => format!("node {node} left the region"),
        Some(c) if !eligible(spec, c.node) => format!("node {node} no longer fits the app's rules"),
        Some(_) => "over the region's quota".into(),
    }
}
