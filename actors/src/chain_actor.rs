//! Follows the chain source and applies every block through Raft, in order, idempotently by height.

use std::sync::Arc;

use chain::Devnet;
use control_plane::Shard;
use model::command::{Command, CommandResult};
use ractor::{Actor, ActorProcessingErr, ActorRef};

/// Messages to the ChainActor.
#[derive(Debug)]
pub enum ChainMsg {
    /// The tip moved (or a periodic nudge): apply what is missing.
    CatchUp,
}

pub(crate) struct ChainActor;

pub(crate) struct ChainState {
    shard: Arc<Shard>,
    devnet: Devnet,
    follow: tokio::task::JoinHandle<()>,
}

impl Actor for ChainActor {
    type Msg = ChainMsg;
    type State = ChainState;
    type Arguments = (Arc<Shard>, Devnet);

    async fn pre_start(
        &self,
        myself: ActorRef<ChainMsg>,
        (shard, devnet): Self::Arguments,
    ) -> Result<ChainState, ActorProcessingErr> {
        let mut tips = devnet.subscribe();
        let me = myself.clone();
        let follow = tokio::spawn(async move {
            while tips.changed().await.is_ok() {
                if me.cast(ChainMsg::CatchUp).is_err() {
                    return;
                }
            }
        });
        myself.cast(ChainMsg::CatchUp)?;
        Ok(ChainState { shard, devnet, follow })
    }

    async fn post_stop(&self, _: ActorRef<ChainMsg>, state: &mut ChainState) -> Result<(), ActorProcessingErr> {
        state.follow.abort();
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<ChainMsg>,
        msg: ChainMsg,
        state: &mut ChainState,
    ) -> Result<(), ActorProcessingErr> {
        let ChainMsg::CatchUp = msg;
        if !state.shard.is_leader() {
            return Ok(());
        }
        let (tip, _) = state.devnet.tip();
        loop {
            let next = state.shard.read(|s| s.chain.height.map_or(0, |h| h + 1));
            if next > tip {
                return Ok(());
            }
            let Some(block) = state.devnet.block(next)? else { return Ok(()) };
            match state.shard.propose(Command::ApplyBlock(block)).await? {
                CommandResult::Rejected { reason } => {
                    // A block that does not follow the cursor means the source reorganized; the
                    // devnet never does, so stop here and say so instead of skipping ahead.
                    tracing::error!(region = %state.shard.region, "block {next} rejected: {reason}");
                    return Ok(());
                }
                _ => tracing::debug!(region = %state.shard.region, height = next, "block applied"),
            }
        }
    }
}
