//! Reconciles one app's placements in the region: desired (the region's quota) against actual.
//! It runs when something it depends on changed (the supervisor tells it why), when a deadline
//! it set passes (a placement lease, an avoidance, a retry), or when the sweep reaches it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use control_plane::Shard;
use control_plane::reconcile::{decide, next_deadline};
use control_plane::touched::Cause;
use model::command::CommandResult;
use ractor::{Actor, ActorProcessingErr, ActorRef};

/// How long an app waits before trying again after its change was not committed.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// The soonest a deadline wakes the actor again.
const MIN_WAIT_MS: u64 = 50;

/// Messages to an AppActor.
#[derive(Debug)]
pub enum AppMsg {
    /// Something changed, for this reason: compare and commit what differs.
    Reconcile(Cause),
}

pub(crate) struct AppActor;

pub(crate) struct AppState {
    shard: Arc<Shard>,
    app: String,
    /// Set while a Reconcile is queued (by the supervisor or a timer); cleared when one starts.
    queued: Arc<AtomicBool>,
    /// The pending wake-up, if any: (when, ms since the epoch; its task).
    timer: Option<(u64, tokio::task::JoinHandle<()>)>,
}

impl AppState {
    /// Reconciles again at `at_ms` (or sooner, if a wake-up is already set sooner).
    fn wake_at(&mut self, myself: &ActorRef<AppMsg>, at_ms: u64) {
        if let Some((when, task)) = &self.timer
            && !task.is_finished()
            && *when <= at_ms
        {
            return;
        }
        if let Some((_, task)) = self.timer.take() {
            task.abort();
        }
        let wait = Duration::from_millis(at_ms.saturating_sub(chain::now_ms()));
        let (me, queued) = (myself.clone(), self.queued.clone());
        let task = tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            if !queued.swap(true, Ordering::Relaxed) {
                let _ = me.cast(AppMsg::Reconcile(Cause::Timer));
            }
        });
        self.timer = Some((at_ms, task));
    }
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
        myself.cast(AppMsg::Reconcile(Cause::Start))?;
        Ok(AppState { shard, app, queued, timer: None })
    }

    async fn post_stop(&self, _: ActorRef<AppMsg>, state: &mut AppState) -> Result<(), ActorProcessingErr> {
        if let Some((_, task)) = state.timer.take() {
            task.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<AppMsg>,
        msg: AppMsg,
        state: &mut AppState,
    ) -> Result<(), ActorProcessingErr> {
        let AppMsg::Reconcile(cause) = msg;
        // Cleared before reading the state: a change from here on queues another reconcile.
        state.queued.store(false, Ordering::Relaxed);
        let shard = state.shard.clone();
        if !shard.is_leader() {
            return Ok(());
        }
        let judgement = shard.judgement();
        let (command, deadline) = shard.read(|s| {
            let command = decide(s, &state.app, shard.as_ref(), judgement);
            (command, next_deadline(s, &state.app, judgement))
        });
        shard.loop_stats().count(cause, &state.app, command.is_some());
        if let Some(command) = command {
            tracing::info!(region = %shard.region, app = %state.app, cause = cause.as_str(), ?command, "reconciling");
            let retry = match shard.propose(command).await {
                Ok(CommandResult::Rejected { reason }) => Some(reason),
                Ok(_) => None,
                Err(e) => Some(e.to_string()),
            };
            if let Some(why) = retry {
                tracing::warn!(region = %shard.region, app = %state.app, "reconcile not committed: {why}; retrying");
                state.wake_at(&myself, chain::now_ms() + RETRY_AFTER.as_millis() as u64);
                return Ok(());
            }
        }
        if let Some(at_ms) = deadline {
            // Never sooner than a moment from now: a deadline that passed without a change
            // must not spin the actor.
            state.wake_at(&myself, at_ms.max(chain::now_ms() + MIN_WAIT_MS));
        }
        Ok(())
    }
}
