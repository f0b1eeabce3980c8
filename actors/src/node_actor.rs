//! Watches one node's heartbeats (soft state on the leader) and commits liveness changes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use control_plane::Shard;
use model::command::Command;
use ractor::{Actor, ActorProcessingErr, ActorRef};

/// A NodeActor checks its node this many times per node timeout, so a silent node is declared
/// down at most a fifth of a timeout late.
const CHECKS_PER_TIMEOUT: u32 = 5;

/// Messages to a NodeActor.
#[derive(Debug)]
pub enum NodeMsg {
    /// Check the node's last heartbeat.
    Check,
}

pub(crate) struct NodeActor;

pub(crate) struct NodeState {
    shard: Arc<Shard>,
    node: String,
    started: Instant,
    timer: tokio::task::JoinHandle<()>,
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
        let every = (shard.node_timeout() / CHECKS_PER_TIMEOUT).max(Duration::from_millis(20));
        let timer = myself.send_interval(every, || NodeMsg::Check);
        Ok(NodeState { shard, node, started: Instant::now(), timer })
    }

    async fn post_stop(&self, _: ActorRef<NodeMsg>, state: &mut NodeState) -> Result<(), ActorProcessingErr> {
        state.timer.abort();
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<NodeMsg>,
        msg: NodeMsg,
        state: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        let NodeMsg::Check = msg;
        let shard = &state.shard;
        if !shard.is_leader() {
            return Ok(());
        }
        let down = shard.read(|s| s.down.contains(&state.node));
        let fresh = shard.is_fresh(&state.node);
        // A node never heard from since this actor started gets one timeout of grace, so a
        // restarted leader does not declare every node dead before their first beat arrives.
        let stale =
            !fresh && (shard.since_heartbeat(&state.node).is_some() || state.started.elapsed() > shard.node_timeout());
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
        Ok(())
    }
}
