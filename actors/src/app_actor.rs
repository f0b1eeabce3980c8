//! Reconciles one app's placements in the region: desired (the region's quota) against actual.

use std::collections::BTreeSet;
use std::sync::Arc;

use control_plane::Shard;
use control_plane::scheduler::{Candidate, place, region_quotas};
use model::command::{Command, Placement};
use ractor::{Actor, ActorProcessingErr, ActorRef};

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
        let command = shard.read(|s| {
            let record = s.chain.apps.get(&state.app)?;
            let quota = region_quotas(&record.spec, &s.chain).get(&s.region).copied().unwrap_or(0);
            let current: BTreeSet<String> =
                s.placements.get(&state.app).map(|p| p.keys().cloned().collect()).unwrap_or_default();
            let candidates: Vec<Candidate<'_>> = s
                .region_nodes()
                .map(|n| Candidate {
                    node: n,
                    up: !s.down.contains(&n.start.node_id) && shard.is_fresh(&n.start.node_id),
                    cordoned: s.cordoned.contains(&n.start.node_id),
                    free: n.resources().saturating_sub(&s.used_on(&n.start.node_id)),
                })
                .collect();
            let decision = place(&record.spec, quota, &candidates, &current);
            if !decision.changes(s.shortfall.get(&state.app)) {
                return None;
            }
            Some(Command::Reconcile {
                app: state.app.clone(),
                place: decision
                    .place
                    .into_iter()
                    .map(|node| Placement { app: state.app.clone(), node, region: s.region.clone() })
                    .collect(),
                remove: decision.remove,
                shortfall: decision.shortfall,
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
