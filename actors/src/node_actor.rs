//! Watches one node's heartbeats (soft state on the leader): commits liveness changes, and
//! records when each of the node's placed instances first reports healthy, or fails to start.
//!
//! It looks when its node's agent reports something new (the supervisor forwards it) and
//! when the node's deadline passes (its last beat plus the node timeout), not on a fixed tick:
//! a node that beats steadily costs one wake-up per timeout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use control_plane::Shard;
use model::api::START_FAILED;
use model::command::Command;
use model::event::EventKind;
use ractor::{Actor, ActorProcessingErr, ActorRef};

/// How late after its deadline a NodeActor looks: a beat that arrives right at the deadline
/// still counts.
const SLACK: Duration = Duration::from_millis(5);

/// Messages to a NodeActor.
#[derive(Debug)]
pub enum NodeMsg {
    /// Check the node's last heartbeat and reports.
    Check,
}

pub(crate) struct NodeActor;

pub(crate) struct NodeState {
    shard: Arc<Shard>,
    node: String,
    started: Instant,
    /// The next deadline check.
    timer: Option<tokio::task::AbortHandle>,
}

impl Actor for NodeActor {
    type Msg = NodeMsg;
    type State = NodeState;
    type Arguments = (Arc<Shard>, String);

    async fn pre_start(
        &self,
        myself: ActorRef<NodeMsg>,
        (shard, node): Self::Arguments,
    ) -> Result<NodeState, ActorProcessingErr> {
        myself.cast(NodeMsg::Check)?;
        Ok(NodeState { shard, node, started: Instant::now(), timer: None })
    }

    async fn post_stop(&self, _: ActorRef<NodeMsg>, state: &mut NodeState) -> Result<(), ActorProcessingErr> {
        if let Some(timer) = state.timer.take() {
            timer.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<NodeMsg>,
        msg: NodeMsg,
        state: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        let NodeMsg::Check = msg;
        let shard = state.shard.clone();
        let shard = &shard;
        if let Some(timer) = state.timer.take() {
            timer.abort();
        }
        let wait = next_check(shard, &state.node, state.started);
        state.timer = Some(myself.send_after(wait, || NodeMsg::Check).abort_handle());
        if !shard.is_leader() {
            return Ok(());
        }
        let down = shard.read(|s| s.down.contains(&state.node));
        let fresh = shard.is_fresh(&state.node);
        // A node this leader never heard from gets the leader's grace, so a new leader does not
        // declare every node dead before their beats find it.
        let stale = !fresh
            && (shard.since_heartbeat(&state.node).is_some()
                || (state.started.elapsed() > shard.leader_grace() && shard.past_leader_grace()));
        if stale && !down {
            tracing::warn!(region = %shard.region, node = %state.node, "node missed its heartbeats: declaring it down");
            let cmd = Command::SetLiveness { node: state.node.clone(), up: false, at_ms: chain::now_ms() };
            if let Err(e) = shard.propose(cmd).await {
                tracing::warn!(region = %shard.region, node = %state.node, "liveness change not committed: {e}");
            }
        } else if fresh && down {
            tracing::info!(region = %shard.region, node = %state.node, "node is beating again: declaring it up");
            let cmd = Command::SetLiveness { node: state.node.clone(), up: true, at_ms: chain::now_ms() };
            if let Err(e) = shard.propose(cmd).await {
                tracing::warn!(region = %shard.region, node = %state.node, "liveness change not committed: {e}");
            }
        }
        if fresh && !down {
            let observed = observe_instances(shard, &state.node);
            if !observed.is_empty() {
                let cmd = Command::Record { at_ms: chain::now_ms(), events: observed };
                if let Err(e) = shard.propose(cmd).await {
                    tracing::warn!(region = %shard.region, node = %state.node, "instance states not recorded: {e}");
                }
            }
        }
        Ok(())
    }
}

/// When to look next without news: at the node's deadline (its last beat plus the timeout),
/// or, for a node this leader never heard from, when the leader's grace for it ends; and at
/// least once per node timeout.
fn next_check(shard: &Shard, node: &str, started: Instant) -> Duration {
    let timeout = shard.node_timeout();
    let wait = match shard.since_heartbeat(node) {
        Some(since) => timeout.saturating_sub(since),
        None => {
            let grace = shard.leader_grace();
            let leader_left = grace.saturating_sub(shard.leading_for().unwrap_or_default());
            grace.saturating_sub(started.elapsed()).max(leader_left)
        }
    };
    // Past its deadline already (declared down, or the change is being retried): once a timeout.
    if wait.is_zero() { timeout } else { wait.min(timeout) + SLACK }
}

/// Placed instances on `node` that have not started yet and that its last report shows started
/// (healthy, with the current spec) or failed.
fn observe_instances(shard: &Shard, node: &str) -> Vec<EventKind> {
    let reports = shard.reports(node);
    shard.read(|s| {
        s.placements_on(node)
            .filter(|p| p.started_at_ms.is_none())
            .filter_map(|p| {
                let instance = p.instance_id();
                let report = reports.iter().find(|r| r.id == instance)?;
                let spec_height = s.chain.apps.get(&p.app)?.updated_height;
                if report.healthy && report.spec_height == spec_height {
                    return Some(EventKind::InstanceStarted { instance, node: node.to_string() });
                }
                let failure = report.message.as_deref().and_then(|m| m.strip_prefix(START_FAILED))?;
                (p.failed.is_none()).then(|| EventKind::InstanceFailed {
                    instance,
                    node: node.to_string(),
                    reason: failure.to_string(),
                })
            })
            .collect()
    })
}
