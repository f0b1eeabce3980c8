//! Follows the chain source and applies every block through Raft, in order, idempotently by
//! height. It refuses a source whose genesis is not the one the shard follows.

use std::sync::Arc;
use std::time::Duration;

use chain::SharedChainSource;
use control_plane::Shard;
use model::command::{Command, CommandResult};
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::Fatal;

/// How long one long poll of the chain tip waits.
const TIP_POLL: Duration = Duration::from_secs(5);

/// Messages to the ChainActor.
#[derive(Debug)]
pub enum ChainMsg {
    /// The tip moved (or a periodic nudge): apply what is missing.
    CatchUp,
}

pub(crate) struct ChainActor;

pub(crate) struct ChainActorState {
    shard: Arc<Shard>,
    chain: SharedChainSource,
    fatal: Fatal,
    follow: tokio::task::JoinHandle<()>,
}

impl Actor for ChainActor {
    type Msg = ChainMsg;
    type State = ChainActorState;
    type Arguments = (Arc<Shard>, SharedChainSource, Fatal);

    async fn pre_start(
        &self,
        myself: ActorRef<ChainMsg>,
        (shard, chain, fatal): Self::Arguments,
    ) -> Result<ChainActorState, ActorProcessingErr> {
        let me = myself.clone();
        let source = chain.clone();
        let follow = tokio::spawn(async move {
            let mut seen = 0;
            loop {
                match source.wait_for_tip(seen, TIP_POLL).await {
                    Ok(tip) => seen = tip.height,
                    Err(e) => {
                        tracing::debug!("chain source: {e}");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
                if me.cast(ChainMsg::CatchUp).is_err() {
                    return;
                }
            }
        });
        myself.cast(ChainMsg::CatchUp)?;
        Ok(ChainActorState { shard, chain, fatal, follow })
    }

    async fn post_stop(&self, _: ActorRef<ChainMsg>, state: &mut ChainActorState) -> Result<(), ActorProcessingErr> {
        state.follow.abort();
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<ChainMsg>,
        msg: ChainMsg,
        state: &mut ChainActorState,
    ) -> Result<(), ActorProcessingErr> {
        let ChainMsg::CatchUp = msg;
        let shard = &state.shard;
        if !shard.is_leader() {
            return Ok(());
        }
        let tip = match state.chain.tip().await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(region = %shard.region, "cannot follow the chain: {e}");
                return Ok(());
            }
        };
        if let Err(e) = shard.read(|s| s.chain.check_genesis(&tip.genesis_hash)) {
            let message = format!("refusing chain source {}: {e}", state.chain.describe());
            tracing::error!(region = %shard.region, "{message}");
            state.fatal.raise(message);
            return Ok(());
        }
        loop {
            let next = shard.read(|s| s.chain.height.map_or(0, |h| h + 1));
            if next > tip.height {
                return Ok(());
            }
            let block = match state.chain.block(next).await {
                Ok(Some(b)) => b,
                Ok(None) => return Ok(()),
                Err(e) => {
                    tracing::warn!(region = %shard.region, "fetching block {next}: {e}");
                    return Ok(());
                }
            };
            match shard.propose(Command::ApplyBlock(block)).await {
                Ok(CommandResult::Rejected { reason }) => {
                    // A block that does not follow the cursor means the source reorganized or
                    // lied; the devnet never does, so stop here and say so instead of skipping.
                    tracing::error!(region = %shard.region, "block {next} rejected: {reason}");
                    return Ok(());
                }
                Ok(_) => tracing::debug!(region = %shard.region, height = next, "block applied"),
                Err(e) => {
                    tracing::warn!(region = %shard.region, "applying block {next}: {e}");
                    return Ok(());
                }
            }
        }
    }
}
