//! Batches the leader's writes into as few Raft entries as it can.
//!
//! openraft 0.9 writes each proposed entry to the log, and waits for it to be flushed, before it
//! takes the next one: a shard that proposed every write on its own would pay one fsync per
//! write, one after another. So writes go through one queue. While [`IN_FLIGHT`] batches are
//! being committed, new writes wait in the queue; the next batch takes everything queued (up to
//! [`MAX_BATCH`]) as one [`Command::Batch`]. A lone write goes out at once and alone, so an idle
//! shard adds no latency; under load the batches grow with the load.

use std::sync::Arc;
use std::time::Duration;

use model::command::{Command, CommandResult};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{ProposeError, write_error};
use crate::typ::Raft;

/// Batches being committed at once. More than one, so that a batch is appended while the one
/// before it is replicated; few, so that a burst waits and joins a batch.
const IN_FLIGHT: usize = 2;
/// Most commands in one entry (a `Reconcile` carries one app's placements, so entries stay small).
const MAX_BATCH: usize = 512;

type Reply = oneshot::Sender<Result<CommandResult, ProposeError>>;

/// The sending side of the queue; the batching task ends when it is dropped.
pub(super) struct Proposer {
    queue: mpsc::UnboundedSender<(Command, Reply)>,
}

impl Proposer {
    /// Starts the batching task for `raft`; a batch that has not committed within
    /// `write_timeout` is reported as timed out (it may still commit later).
    pub(super) fn start(raft: Raft, region: String, write_timeout: Duration) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(batch_loop(raft, Arc::from(region), write_timeout, rx));
        Self { queue }
    }

    /// Queues `cmd`; the answer comes when its batch commits, or fails.
    pub(super) fn submit(&self, cmd: Command) -> oneshot::Receiver<Result<CommandResult, ProposeError>> {
        let (reply, answer) = oneshot::channel();
        // A send fails only once the task is gone (the shard is shutting down); the dropped reply
        // then tells the caller.
        let _ = self.queue.send((cmd, reply));
        answer
    }
}

async fn batch_loop(
    raft: Raft,
    region: Arc<str>,
    write_timeout: Duration,
    mut rx: mpsc::UnboundedReceiver<(Command, Reply)>,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        // Wait for a slot before taking the rest, so that what arrives meanwhile joins this batch.
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let (raft, region) = (raft.clone(), region.clone());
        tokio::spawn(async move {
            commit(&raft, &region, write_timeout, batch).await;
            drop(slot);
        });
    }
}

async fn commit(raft: &Raft, region: &str, write_timeout: Duration, mut batch: Vec<(Command, Reply)>) {
    let timed_out = || ProposeError::Timeout { region: region.to_string(), after: write_timeout };
    if batch.len() == 1 {
        let Some((cmd, reply)) = batch.pop() else { return };
        let answer = match tokio::time::timeout(write_timeout, raft.client_write(cmd)).await {
            Err(_) => Err(timed_out()),
            Ok(Ok(resp)) => Ok(resp.data),
            Ok(Err(e)) => Err(write_error(region, e)),
        };
        let _ = reply.send(answer);
        return;
    }
    let (commands, replies): (Vec<Command>, Vec<Reply>) = batch.into_iter().unzip();
    let n = commands.len();
    let answers: Vec<Result<CommandResult, ProposeError>> =
        match tokio::time::timeout(write_timeout, raft.client_write(Command::Batch { commands })).await {
            Err(_) => vec![Err(timed_out()); n],
            Ok(Err(e)) => vec![Err(write_error(region, e)); n],
            Ok(Ok(resp)) => match resp.data {
                CommandResult::Batch { results } if results.len() == n => results.into_iter().map(Ok).collect(),
                other => {
                    // The state machine answers a batch with one result per command; anything else
                    // is a bug, reported rather than guessed at.
                    let message = format!("a batch of {n} commands was answered with {other:?}");
                    tracing::error!(region, "{message}");
                    vec![Err(ProposeError::Raft { region: region.to_string(), message }); n]
                }
            },
        };
    for (reply, answer) in replies.into_iter().zip(answers) {
        let _ = reply.send(answer);
    }
}
