//! Reconciles one app's placements in the region: desired (the region's quota) against actual.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use control_plane::Shard;
use control_plane::reconcile::{Judgement, decide};
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
    /// Set by the supervisor while a Reconcile is queued; cleared when one starts.
    queued: Arc<AtomicBool>,
}

impl Actor for AppActor {
    type Msg = AppMsg;
    type State = AppState;
    type Arguments = (Arc<Shard>, String, Arc<AtomicBool>);

    async fn pre_start(
        &self,
        myself: ActorRef<AppMsg>,
        (shard, app, queued): Self::Arguments,
    ) -> Result<AppState, ActorProcessingErr> {
        myself.cast(AppMsg::Reconcile)?;
        Ok(AppState { shard, app, queued })
    }

    async fn handle(&self, _: ActorRef<AppMsg>, msg: AppMsg, state: &mut AppState) -> Result<(), ActorProcessingErr> {
        let AppMsg::Reconcile = msg;
        // Cleared before reading the state: a change from here on queues another reconcile.
        state.queued.store(false, Ordering::Relaxed);
        let shard = &state.shard;
        if !shard.is_leader() {
            return Ok(());
        }
        let judgement = Judgement {
            now_ms: chain::now_ms(),
            lease_ms: shard.placement_lease().as_millis() as u64,
            settled: shard.past_leader_grace(),
        };
        let command = shard.read(|s| decide(s, &state.app, shard.as_ref(), judgement));
        if let Some(command) = command {
            tracing::info!(region = %shard.region, app = %state.app, ?command, "reconciling");
            if let Err(e) = shard.propose(command).await {
                tracing::warn!(region = %shard.region, app = %state.app, "reconcile not committed: {e}");
            }
        }
        Ok(())
    }
}
