//! The devnet block producer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use anyhow::Context;
use model::api::{ChainTip, TxStatus};
use model::chain::{Block, ChainState, SignedTx, TxError};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::watch;

const BLOCKS: TableDefinition<u64, &[u8]> = TableDefinition::new("blocks");
/// Accepted transactions not yet in a block, by acceptance order: a transaction is written here
/// before its id is given out, so a crash loses none. A block's write empties it.
const MEMPOOL: TableDefinition<u64, &[u8]> = TableDefinition::new("mempool");
/// Most transactions waiting for a block; past it, submissions are refused rather than queued
/// without bound.
const MEMPOOL_LIMIT: usize = 10_000;
/// Most transactions of one sender waiting for a block: no one wallet fills the mempool.
const MEMPOOL_PER_SENDER: usize = MEMPOOL_LIMIT / 4;

/// Why a transaction was not accepted into the mempool.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// It breaks a chain rule against the current state and the pending transactions.
    #[error(transparent)]
    Invalid(#[from] TxError),
    /// The mempool is full.
    #[error("the mempool is full ({MEMPOOL_LIMIT} transactions); try again after the next block")]
    Busy,
    /// The sender has its share of the mempool waiting already.
    #[error(
        "this sender has {MEMPOOL_PER_SENDER} transactions waiting for a block already; try again after the next block"
    )]
    SenderBusy,
    /// The chain store cannot be written (a full disk, say): nothing was accepted.
    #[error("the chain cannot store transactions now ({0}); nothing was accepted, try again later")]
    Storage(String),
}

/// A local block producer. Cloning shares it.
#[derive(Clone)]
pub struct Devnet {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// `None` after a write failed, until it opens again: redb refuses every write after an I/O
    /// error until the database is reopened.
    db: RwLock<Option<redb::Database>>,
    state: Mutex<State>,
    tip_tx: watch::Sender<u64>,
}

struct State {
    chain: ChainState,
    tip: Block,
    genesis_hash: String,
    /// Accepted transactions, in order, each with its key in the `mempool` table.
    mempool: Vec<(u64, SignedTx)>,
    /// The key the next accepted transaction is stored under.
    next_seq: u64,
    /// Why the last write failed, while writes fail; logged once per fault.
    storage_fault: Option<String>,
    /// How many of the mempool's transactions each sender signed.
    pending_per_sender: HashMap<model::keys::PublicKeyHex, usize>,
    pending_state: ChainState,
    /// Fate of the transactions seen since start (a devnet convenience for `fluxctl --wait`).
    statuses: HashMap<String, TxStatus>,
}

impl Devnet {
    /// Opens the chain stored at `path`, writing `genesis` first if it is new. Replays the stored
    /// blocks to rebuild the state, so a restart continues the same chain.
    pub fn open(path: &Path, genesis: impl FnOnce() -> Block) -> anyhow::Result<Devnet> {
        Self::open_inner(path, Some(Box::new(genesis)))
    }

    /// Opens a chain that must exist already: used when something that follows the chain (shards,
    /// a genesis key) is found beside it, so that a deleted or emptied `chain.redb` is reported
    /// instead of silently replaced by a new chain the followers would diverge from.
    pub fn open_existing(path: &Path) -> anyhow::Result<Devnet> {
        Self::open_inner(path, None)
    }

    fn open_inner(path: &Path, genesis: Option<Box<dyn FnOnce() -> Block + '_>>) -> anyhow::Result<Devnet> {
        crate::open_guarded(path, "chain store", || Self::open_unguarded(path, genesis))
    }

    fn open_unguarded(path: &Path, genesis: Option<Box<dyn FnOnce() -> Block + '_>>) -> anyhow::Result<Devnet> {
        let db = redb::Database::create(path).with_context(|| format!("opening chain store {}", path.display()))?;
        let mut blocks = Vec::new();
        let mut waiting = Vec::new();
        {
            let tx = db.begin_read()?;
            match tx.open_table(BLOCKS) {
                Ok(table) => {
                    for row in table.iter()? {
                        let (_, bytes) = row?;
                        let block: Block = serde_json::from_slice(bytes.value()).with_context(|| {
                            format!(
                                "chain store {}: a stored block does not decode (written by an older fluxplane? \
                                 node starts gained `address` and `instance_ports`; a devnet is started afresh by \
                                 removing its data dir)",
                                path.display()
                            )
                        })?;
                        blocks.push(block);
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(e.into()),
            }
            match tx.open_table(MEMPOOL) {
                Ok(table) => {
                    for row in table.iter()? {
                        let (seq, bytes) = row?;
                        match serde_json::from_slice::<SignedTx>(bytes.value()) {
                            Ok(stx) => waiting.push((seq.value(), stx)),
                            Err(e) => tracing::warn!(seq = seq.value(), "dropping a stored mempool entry: {e}"),
                        }
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if blocks.is_empty() {
            let Some(genesis) = genesis else {
                anyhow::bail!(
                    "chain store {} holds no blocks, but this data dir already follows a chain; refusing to start \
                     a new chain that its shards would diverge from. Restore the file, or use a new data dir",
                    path.display()
                );
            };
            let g = genesis();
            write_block(&db, &g)?;
            blocks.push(g);
        }
        let mut chain = ChainState::default();
        for block in &blocks {
            anyhow::ensure!(chain.follows(block), "stored block {} does not follow its parent", block.height);
            chain.apply_block(block);
        }
        let genesis_hash = blocks.first().map(|b| b.hash.clone()).context("chain has no blocks")?;
        let tip = blocks.pop().context("chain has no blocks")?;
        let (tip_tx, _) = watch::channel(tip.height);
        let next_seq = waiting.last().map_or(0, |(seq, _)| seq + 1);
        let mut state = State {
            pending_state: chain.clone(),
            chain,
            tip,
            genesis_hash,
            mempool: Vec::new(),
            next_seq,
            storage_fault: None,
            pending_per_sender: HashMap::new(),
            statuses: HashMap::new(),
        };
        // The transactions that waited for a block when the chain stopped wait again. Each was
        // checked when accepted; one that no longer applies is dropped (it would be rejected).
        let next_height = state.tip.height + 1;
        for (seq, stx) in waiting {
            match state.pending_state.apply_tx(&stx, next_height) {
                Ok(()) => {
                    *state.pending_per_sender.entry(stx.signer.clone()).or_default() += 1;
                    state.statuses.insert(stx.id(), TxStatus::Pending);
                    state.mempool.push((seq, stx));
                }
                Err(e) => tracing::warn!(tx = stx.id(), "a stored mempool transaction no longer applies: {e}"),
            }
        }
        if !state.mempool.is_empty() {
            tracing::info!(count = state.mempool.len(), "transactions from before the restart wait for a block");
        }
        let inner = Inner { path: path.to_path_buf(), db: RwLock::new(Some(db)), state: Mutex::new(state), tip_tx };
        Ok(Devnet { inner: Arc::new(inner) })
    }

    /// Runs `write` in one durable write transaction. After a failed write the database is
    /// closed, and the next call opens it again, so writing resumes once the fault (a full disk)
    /// is gone.
    fn store(&self, write: impl FnOnce(&redb::WriteTransaction) -> anyhow::Result<()>) -> anyhow::Result<()> {
        let mut db = self.inner.db.write().unwrap_or_else(|e| e.into_inner());
        if db.is_none() {
            let path = &self.inner.path;
            let reopened = crate::open_guarded(path, "chain store", || {
                redb::Database::create(path).with_context(|| format!("reopening chain store {}", path.display()))
            })?;
            *db = Some(reopened);
        }
        let Some(open) = db.as_ref() else { anyhow::bail!("chain store {} is not open", self.inner.path.display()) };
        let result = (|| {
            let tx = open.begin_write()?;
            write(&tx)?;
            tx.commit()?;
            anyhow::Ok(())
        })();
        if result.is_err() {
            *db = None;
        }
        result
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-changed: every change is
        // computed first and assigned last, so the poisoned data is still consistent.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Accepts a transaction into the mempool if it applies on top of the pending ones.
    pub fn submit(&self, stx: SignedTx) -> Result<String, SubmitError> {
        let mut s = self.lock();
        if s.mempool.len() >= MEMPOOL_LIMIT {
            return Err(SubmitError::Busy);
        }
        if s.pending_per_sender.get(&stx.signer).is_some_and(|n| *n >= MEMPOOL_PER_SENDER) {
            return Err(SubmitError::SenderBusy);
        }
        let next_height = s.tip.height + 1;
        // In place: a transaction that does not apply changes nothing (`ChainState::apply_tx`).
        s.pending_state.apply_tx(&stx, next_height)?;
        let seq = s.next_seq;
        let bytes = serde_json::to_vec(&stx).unwrap_or_default();
        let stored = self.store(|tx| {
            tx.open_table(MEMPOOL)?.insert(seq, bytes.as_slice())?;
            Ok(())
        });
        if let Err(e) = stored {
            // Not accepted after all: the pending state goes back to the stored mempool's.
            let mut pending = s.chain.clone();
            for (_, waiting) in &s.mempool {
                let _ = pending.apply_tx(waiting, next_height);
            }
            s.pending_state = pending;
            note_fault(&mut s, &e);
            return Err(SubmitError::Storage(format!("{e:#}")));
        }
        if let Some(fault) = s.storage_fault.take() {
            tracing::info!("the chain store takes writes again (after: {fault})");
        }
        let id = stx.id();
        s.next_seq += 1;
        *s.pending_per_sender.entry(stx.signer.clone()).or_default() += 1;
        s.mempool.push((seq, stx));
        s.statuses.insert(id.clone(), TxStatus::Pending);
        Ok(id)
    }

    /// Builds, stores and announces the next block from the mempool. When the block cannot be
    /// stored, nothing changes: the mempool waits for the next attempt.
    pub fn produce_block(&self, time_ms: u64) -> anyhow::Result<Block> {
        let mut s = self.lock();
        let height = s.tip.height + 1;
        let txs = s.mempool.iter().map(|(_, stx)| stx.clone()).collect();
        let block = Block::new(height, s.tip.hash.clone(), time_ms, None, txs);
        let mut chain = s.chain.clone();
        let outcome = chain.apply_block(&block);
        let stored = self.store(|tx| {
            tx.open_table(BLOCKS)?.insert(block.height, serde_json::to_vec(&block)?.as_slice())?;
            // The block holds every waiting transaction now.
            tx.delete_table(MEMPOOL)?;
            Ok(())
        });
        if let Err(e) = stored {
            note_fault(&mut s, &e);
            return Err(e.context(format!("storing block {height}; its {} transactions wait", block.txs.len())));
        }
        if let Some(fault) = s.storage_fault.take() {
            tracing::info!("the chain store takes writes again (after: {fault})");
        }
        s.mempool.clear();
        s.pending_per_sender.clear();
        for stx in &block.txs {
            s.statuses.insert(stx.id(), TxStatus::Included { height });
        }
        for (id, err) in outcome.rejected {
            s.statuses.insert(id, TxStatus::Rejected { reason: err.to_string() });
        }
        s.pending_state = chain.clone();
        s.chain = chain;
        s.tip = block.clone();
        drop(s);
        self.inner.tip_tx.send_replace(height);
        Ok(block)
    }

    /// Produces a block every `block_time` until `shutdown` fires.
    pub async fn run(self, block_time: Duration, mut shutdown: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(block_time);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.changed() => return,
            }
            match self.produce_block(now_ms()) {
                Ok(b) => tracing::debug!(height = b.height, txs = b.txs.len(), "block produced"),
                // Logged by `note_fault` when the fault starts; retried every block time.
                Err(e) => tracing::debug!("no block this time: {e:#}"),
            }
        }
    }

    /// The block at `height`, if produced.
    pub fn block(&self, height: u64) -> anyhow::Result<Option<Block>> {
        let db = self.inner.db.read().unwrap_or_else(|e| e.into_inner());
        let Some(db) = db.as_ref() else {
            anyhow::bail!(
                "chain store {} is closed after a write failed; it reopens on the next write",
                self.inner.path.display()
            )
        };
        let tx = db.begin_read()?;
        let table = tx.open_table(BLOCKS)?;
        let Some(bytes) = table.get(height)? else { return Ok(None) };
        Ok(Some(serde_json::from_slice(bytes.value())?))
    }

    /// Height and hash of the tip, and the genesis hash.
    pub fn tip(&self) -> ChainTip {
        let s = self.lock();
        ChainTip { height: s.tip.height, hash: s.tip.hash.clone(), genesis_hash: s.genesis_hash.clone() }
    }

    /// Follows the tip height.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.tip_tx.subscribe()
    }

    /// The state at the tip (balances, nodes, apps).
    pub fn state(&self) -> ChainState {
        self.lock().chain.clone()
    }

    /// The nonce `signer`'s next transaction must carry, counting the mempool.
    pub fn next_nonce(&self, signer: &model::keys::PublicKeyHex) -> u64 {
        self.lock().pending_state.nonces.get(signer).copied().unwrap_or(0) + 1
    }

    /// What became of a submitted transaction.
    pub fn tx_status(&self, id: &str) -> TxStatus {
        self.lock().statuses.get(id).cloned().unwrap_or(TxStatus::Unknown)
    }
}

/// Remembers and logs (once per fault) why the store cannot be written.
fn note_fault(s: &mut State, e: &anyhow::Error) {
    let why = format!("{e:#}");
    if s.storage_fault.as_deref() != Some(why.as_str()) {
        tracing::error!("the chain store cannot be written: {why}; transactions are refused with 503 and blocks wait");
        s.storage_fault = Some(why);
    }
}

fn write_block(db: &redb::Database, block: &Block) -> anyhow::Result<()> {
    let tx = db.begin_write()?;
    {
        let mut table = tx.open_table(BLOCKS)?;
        table.insert(block.height, serde_json::to_vec(block)?.as_slice())?;
    }
    tx.commit()?;
    Ok(())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use model::chain::Tx;
    use model::keys::Keypair;
    use model::tier::FLUX;

    use super::*;
    use crate::dev_genesis;

    #[test]
    fn blocks_survive_a_restart_and_rejections_are_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("chain.redb");
        let wallet = Keypair::from_seed([7; 32]);
        let other = Keypair::generate();
        let devnet = Devnet::open(&path, || dev_genesis(&wallet, &crate::dev_nodes(), 1)).expect("open");
        let nonce = devnet.next_nonce(&wallet.public());
        let pay = SignedTx::sign(Tx::Transfer { to: other.public(), amount: 5 * FLUX }, nonce, &wallet);
        let id = devnet.submit(pay.clone()).expect("accepted");
        // The same transaction again fails against the pending state: its nonce is used.
        assert!(matches!(devnet.submit(pay), Err(SubmitError::Invalid(TxError::StaleNonce { .. }))));
        let block = devnet.produce_block(1).expect("block");
        assert_eq!(block.height, 1);
        assert_eq!(devnet.tx_status(&id), TxStatus::Included { height: 1 });
        let tip = devnet.tip();
        drop(devnet);

        let reopened = Devnet::open_existing(&path).expect("reopen");
        assert_eq!(reopened.tip(), tip);
        assert_eq!(reopened.state().balances[&other.public()], 5 * FLUX);
        assert_eq!(reopened.block(1).expect("read").expect("stored").hash, block.hash);
        assert!(reopened.block(2).expect("read").is_none());
        drop(reopened);

        // A deleted store under followers is refused by name, not replaced by a new chain.
        std::fs::remove_file(&path).expect("delete");
        let err = Devnet::open_existing(&path).err().expect("refused").to_string();
        assert!(err.contains("chain.redb") && err.contains("holds no blocks"), "{err}");
    }
}

#[cfg(test)]
mod damaged {
    use model::keys::Keypair;

    use super::*;
    use crate::dev_genesis;

    /// A store garbled on disk (here: its middle overwritten) is a clean error that names the
    /// file, never a panic.
    #[test]
    fn a_garbled_store_fails_cleanly_with_its_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("chain.redb");
        let wallet = Keypair::from_seed([7; 32]);
        let devnet = Devnet::open(&path, || dev_genesis(&wallet, &crate::dev_nodes(), 1)).expect("open");
        for h in 1..=5 {
            devnet.produce_block(h).expect("block");
        }
        drop(devnet);
        for garble in [0usize, 4096, 8192] {
            let mut bytes = std::fs::read(&path).expect("read");
            let end = (garble + 4096).min(bytes.len());
            for b in &mut bytes[garble..end] {
                *b = 0xa5;
            }
            let copy = dir.path().join(format!("garbled-{garble}.redb"));
            std::fs::write(&copy, &bytes).expect("write");
            let opened = std::panic::catch_unwind(|| Devnet::open_existing(&copy).map(|_| ()));
            let Ok(result) = opened else { panic!("opening a store garbled at {garble} panicked") };
            let err = result.expect_err("a garbled store is refused").to_string();
            assert!(err.contains(&format!("garbled-{garble}.redb")), "{err}");
        }
    }
}

#[cfg(test)]
mod fairness {
    use model::chain::{SignedTx, Tx};
    use model::keys::Keypair;
    use model::tier::FLUX;

    use super::*;
    use crate::dev_genesis;

    /// One sender may fill only its share of the mempool; others still get in, and the sender
    /// again after the next block.
    #[test]
    fn one_sender_cannot_fill_the_mempool() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wallet = Keypair::from_seed([7; 32]);
        let devnet = Devnet::open(&dir.path().join("chain.redb"), || dev_genesis(&wallet, &[], 1)).expect("open");
        let other = Keypair::generate();
        let fund = SignedTx::sign(Tx::Transfer { to: other.public(), amount: 10 * FLUX }, 1, &wallet);
        devnet.submit(fund).expect("fund");
        devnet.produce_block(1).expect("block");
        let to = Keypair::generate().public();
        let pay = |key: &Keypair, nonce| SignedTx::sign(Tx::Transfer { to: to.clone(), amount: 1 }, nonce, key);
        for nonce in 2..(2 + MEMPOOL_PER_SENDER as u64) {
            devnet.submit(pay(&wallet, nonce)).expect("within the sender's share");
        }
        let next = 2 + MEMPOOL_PER_SENDER as u64;
        assert!(matches!(devnet.submit(pay(&wallet, next)), Err(SubmitError::SenderBusy)));
        devnet.submit(pay(&other, 1)).expect("another sender still gets in");
        devnet.produce_block(2).expect("block");
        devnet.submit(pay(&wallet, next)).expect("after a block the sender gets in again");
    }
}

#[cfg(test)]
mod durable {
    use model::chain::{SignedTx, Tx};
    use model::keys::Keypair;
    use model::tier::FLUX;

    use super::*;
    use crate::dev_genesis;

    /// A transaction given an id is stored before the answer: a chain that stops before the next
    /// block (the process dies) still holds it when it starts again, and puts it in that block.
    #[test]
    fn accepted_transactions_survive_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("chain.redb");
        let wallet = Keypair::from_seed([7; 32]);
        let devnet = Devnet::open(&path, || dev_genesis(&wallet, &[], 1)).expect("open");
        let friend = Keypair::generate().public();
        let pay = |nonce| SignedTx::sign(Tx::Transfer { to: friend.clone(), amount: FLUX }, nonce, &wallet);
        let first = devnet.submit(pay(1)).expect("accepted");
        let second = devnet.submit(pay(2)).expect("accepted");
        assert_eq!(devnet.next_nonce(&wallet.public()), 3, "the next nonce counts the mempool");
        drop(devnet);

        let reopened = Devnet::open_existing(&path).expect("reopen");
        assert_eq!(reopened.tx_status(&first), TxStatus::Pending);
        assert_eq!(reopened.next_nonce(&wallet.public()), 3);
        let block = reopened.produce_block(2).expect("block");
        assert_eq!(block.txs.len(), 2);
        assert_eq!(reopened.tx_status(&second), TxStatus::Included { height: 1 });
        assert_eq!(reopened.state().balances[&friend], 2 * FLUX);
        drop(reopened);

        // The block took them: a second restart does not offer them again.
        let again = Devnet::open_existing(&path).expect("reopen");
        assert_eq!(again.produce_block(3).expect("block").txs.len(), 0);
    }
}
