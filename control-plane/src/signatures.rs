//! Heartbeat signatures are checked on a dedicated thread, in batches: 15,000 nodes beating twice
//! a second is 10,000 signatures a second per region leader. The thread takes whatever is
//! queued when it wakes (up to [`MAX_BATCH`]) and checks it with one ed25519 batch
//! verification, so a quiet leader checks each beat at once and a busy one gets cheaper per
//! beat. The async workers that serve the API never run the curve arithmetic, and a full queue
//! answers `busy` at once instead of queueing without bound.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use model::keys::{SignatureCheck, verify_batch_hex};
use tokio::sync::oneshot;

/// The most signatures checked in one batch.
pub const MAX_BATCH: usize = 256;
/// Signatures waiting at most; past it, callers are told the leader is busy.
const QUEUE: usize = 8192;

/// Why a signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// It does not match (or is not a signature).
    #[error("{0}")]
    Invalid(String),
    /// Too many signatures are waiting.
    #[error("{QUEUE} signatures are waiting to be checked")]
    Busy,
}

struct Job {
    check: SignatureCheck,
    answer: oneshot::Sender<Result<(), String>>,
}

/// The handle to a checker thread; the thread ends when the last handle is dropped.
pub struct SignatureChecker {
    jobs: SyncSender<Job>,
}

impl SignatureChecker {
    /// Starts a checker thread named `name`.
    pub fn start(name: &str) -> std::io::Result<Self> {
        let (jobs, queue) = sync_channel(QUEUE);
        std::thread::Builder::new().name(name.to_string()).spawn(move || run(queue))?;
        Ok(Self { jobs })
    }

    /// Checks one signature.
    pub async fn check(&self, check: SignatureCheck) -> Result<(), CheckError> {
        let (answer, answered) = oneshot::channel();
        match self.jobs.try_send(Job { check, answer }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(CheckError::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(CheckError::Invalid("the checker stopped".into())),
        }
        match answered.await {
            Ok(result) => result.map_err(CheckError::Invalid),
            Err(_) => Err(CheckError::Invalid("the checker stopped".into())),
        }
    }
}

fn run(queue: Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let checks: Vec<SignatureCheck> = batch.iter().map(|j| j.check.clone()).collect();
        for (job, result) in batch.into_iter().zip(verify_batch_hex(&checks)) {
            // The caller may have gone (its request ended): nothing to tell.
            let _ = job.answer.send(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use model::keys::Keypair;

    use super::*;

    #[tokio::test]
    async fn many_at_once_are_each_answered_and_a_forgery_is_refused() {
        let checker = std::sync::Arc::new(SignatureChecker::start("test-checker").expect("thread"));
        let mut tasks = Vec::new();
        for i in 0..200u32 {
            let checker = checker.clone();
            tasks.push(tokio::spawn(async move {
                let key = Keypair::from_seed([(i % 250) as u8; 32]);
                let message = format!("beat {i}").into_bytes();
                let signer = if i == 77 { Keypair::from_seed([251; 32]) } else { key.clone() };
                let check = SignatureCheck { key: key.public(), signature: signer.sign_hex(&message), message };
                (i, checker.check(check).await)
            }));
        }
        for task in tasks {
            let (i, result) = task.await.expect("task");
            if i == 77 {
                assert!(matches!(result, Err(CheckError::Invalid(_))), "{result:?}");
            } else {
                assert_eq!(result, Ok(()), "beat {i}");
            }
        }
    }
}
