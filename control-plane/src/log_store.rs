//! The Raft log, vote and commit index in redb.
//!
//! Appends are **group-committed**: `append` hands the entries to one writer thread and returns
//! at once; the writer takes every operation queued meanwhile, writes them in one redb
//! transaction (one fsync), and only then tells openraft the entries are flushed. An
//! acknowledged entry therefore survives a crash, and a burst of writes costs one fsync instead
//! of one each. Until they are written, appended entries are kept in memory so that readers (the
//! replication to followers) see them at once. Truncations and purges go through the same
//! writer, so every change to the log lands in the order openraft made it.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, mpsc};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, RaftLogReader};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::TypeConfig;
use crate::typ::{Entry, LogId, StorageError, Vote};

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
/// Most operations written in one transaction.
const MAX_BATCH: usize = 1024;

/// Log storage over a redb database shared with the snapshot store.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    /// The last committed index saved, plus one (0: none); shown in `fluxctl shard status`.
    committed: Arc<AtomicU64>,
    /// Entries appended but not yet written, by index.
    pending: Arc<RwLock<BTreeMap<u64, Entry>>>,
    writer: Arc<Writer>,
}

/// The writer thread's queue; when the last store lets go of it, the thread is joined, so the
/// database is closed by the time the store is gone (and can be opened again at once).
struct Writer {
    queue: Option<mpsc::Sender<Op>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn send(&self, op: Op) -> Result<(), ()> {
        self.queue.as_ref().ok_or(())?.send(op).map_err(|_| ())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.queue.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A change to the log, applied by the writer thread in the order it was made.
enum Op {
    Append {
        entries: Vec<Entry>,
        flushed: LogFlushed<TypeConfig>,
    },
    /// Delete every entry from this index on.
    Truncate {
        from: u64,
        done: mpsc::SyncSender<Result<(), String>>,
    },
    /// Delete every entry up to this log id, and record it as purged.
    Purge {
        upto: LogId,
        done: mpsc::SyncSender<Result<(), String>>,
    },
    /// Record the commit index; nobody waits for it (see `save_committed`).
    Committed(Option<LogId>),
}

fn io_err(subject: ErrorSubject<u64>, verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageError::from_io_error(subject, verb, std::io::Error::other(e.to_string()))
}

impl LogStore {
    /// Opens the log tables in `db`, creating them if needed, and starts the writer thread (it
    /// ends when the last clone of the store is dropped).
    pub fn new(db: Arc<Database>) -> Result<Self, redb::Error> {
        let tx = db.begin_write()?;
        tx.open_table(LOGS)?;
        tx.open_table(META)?;
        tx.commit()?;
        let pending: Arc<RwLock<BTreeMap<u64, Entry>>> = Arc::default();
        let (queue, ops) = mpsc::channel();
        let (wdb, wpending) = (db.clone(), pending.clone());
        let thread = std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || write_loop(&wdb, &wpending, &ops))
            .map_err(|e| redb::Error::Io(std::io::Error::other(e)))?;
        let writer = Arc::new(Writer { queue: Some(queue), thread: Some(thread) });
        Ok(Self { db, committed: Arc::default(), pending, writer })
    }

    /// The last committed index this replica saved.
    pub fn committed(&self) -> Arc<AtomicU64> {
        self.committed.clone()
    }

    fn pending(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, Entry>> {
        // Entries are inserted and removed whole, so a poisoned map is still consistent.
        self.pending.read().unwrap_or_else(|e| e.into_inner())
    }

    fn pending_mut(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<u64, Entry>> {
        self.pending.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StorageError> {
        let r = || -> Result<Option<T>, Box<dyn std::error::Error>> {
            let tx = self.db.begin_read()?;
            let table = tx.open_table(META)?;
            Ok(match table.get(key)? {
                Some(v) => Some(serde_json::from_slice(v.value())?),
                None => None,
            })
        };
        r().map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e))
    }

    fn write_meta<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StorageError> {
        let w = || -> Result<(), Box<dyn std::error::Error>> {
            let tx = self.db.begin_write()?;
            tx.open_table(META)?.insert(key, serde_json::to_vec(value)?.as_slice())?;
            tx.commit()?;
            Ok(())
        };
        w().map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))
    }

    /// Sends `op` to the writer and waits for it to be written.
    fn write_and_wait(
        &self,
        op: impl FnOnce(mpsc::SyncSender<Result<(), String>>) -> Op,
        verb: ErrorVerb,
    ) -> Result<(), StorageError> {
        let (done, wait) = mpsc::sync_channel(1);
        self.writer.send(op(done)).map_err(|_| io_err(ErrorSubject::Logs, verb, "the log writer stopped"))?;
        match wait.recv() {
            Ok(result) => result.map_err(|e| io_err(ErrorSubject::Logs, verb, e)),
            Err(_) => Err(io_err(ErrorSubject::Logs, verb, "the log writer stopped")),
        }
    }
}

/// The writer thread: takes everything queued, writes it in one transaction, then reports.
fn write_loop(db: &Database, pending: &RwLock<BTreeMap<u64, Entry>>, ops: &mpsc::Receiver<Op>) {
    while let Ok(first) = ops.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match ops.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let result = write_batch(db, &batch).map_err(|e| e.to_string());
        if result.is_ok() {
            // Written entries need not be kept in memory, unless a later append replaced one.
            let mut p = pending.write().unwrap_or_else(|e| e.into_inner());
            for op in &batch {
                if let Op::Append { entries, .. } = op {
                    for e in entries {
                        if p.get(&e.log_id.index).is_some_and(|kept| kept.log_id == e.log_id) {
                            p.remove(&e.log_id.index);
                        }
                    }
                }
            }
        }
        for op in batch {
            match op {
                Op::Append { flushed, .. } => {
                    flushed.log_io_completed(result.clone().map_err(std::io::Error::other));
                }
                Op::Truncate { done, .. } | Op::Purge { done, .. } => {
                    let _ = done.send(result.clone());
                }
                Op::Committed(_) => {}
            }
        }
    }
}

fn write_batch(db: &Database, batch: &[Op]) -> Result<(), Box<dyn std::error::Error>> {
    let mut tx = db.begin_write()?;
    if batch.iter().all(|op| matches!(op, Op::Committed(_))) {
        // Only a commit-index hint: no fsync of its own; the next durable write carries it.
        tx.set_durability(redb::Durability::None)?;
    }
    for op in batch {
        match op {
            Op::Append { entries, .. } => {
                let mut table = tx.open_table(LOGS)?;
                for entry in entries {
                    table.insert(entry.log_id.index, serde_json::to_vec(entry)?.as_slice())?;
                }
            }
            Op::Truncate { from, .. } => delete_range(&tx, *from..)?,
            Op::Purge { upto, .. } => {
                tx.open_table(META)?.insert("last_purged", serde_json::to_vec(&Some(*upto))?.as_slice())?;
                delete_range(&tx, ..=upto.index)?;
            }
            Op::Committed(committed) => {
                tx.open_table(META)?.insert("committed", serde_json::to_vec(committed)?.as_slice())?;
            }
        }
    }
    tx.commit()?;
    Ok(())
}

fn delete_range(tx: &WriteTransaction, range: impl RangeBounds<u64>) -> Result<(), redb::Error> {
    let mut table = tx.open_table(LOGS)?;
    let keys: Vec<u64> = table.range(range)?.map(|r| r.map(|(k, _)| k.value())).collect::<Result<_, _>>()?;
    for k in keys {
        table.remove(k)?;
    }
    Ok(())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(e) => Bound::Included(*e),
            Bound::Excluded(e) => Bound::Excluded(*e),
            Bound::Unbounded => Bound::Unbounded,
        };
        // Snapshot the pending entries first: an entry leaves them only once it is written, so
        // every entry is in one place or the other when redb is read next.
        let pending: Vec<Entry> = self.pending().range((Bound::Included(start), end)).map(|(_, e)| e.clone()).collect();
        let read = || -> Result<BTreeMap<u64, Entry>, Box<dyn std::error::Error>> {
            let tx = self.db.begin_read()?;
            let table = tx.open_table(LOGS)?;
            let mut out = BTreeMap::new();
            for row in table.range((Bound::Included(start), end))? {
                let (k, v) = row?;
                out.insert(k.value(), serde_json::from_slice(v.value())?);
            }
            Ok(out)
        };
        let mut entries = read().map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        for e in pending {
            entries.insert(e.log_id.index, e);
        }
        Ok(entries.into_values().collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.read_meta::<Option<LogId>>("last_purged")?.flatten();
        let last_pending = self.pending().values().next_back().map(|e| e.log_id);
        let last_written = || -> Result<Option<LogId>, Box<dyn std::error::Error>> {
            let tx = self.db.begin_read()?;
            let table = tx.open_table(LOGS)?;
            Ok(match table.last()? {
                Some((_, v)) => Some(serde_json::from_slice::<Entry>(v.value())?.log_id),
                None => None,
            })
        };
        let last_written = last_written().map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        let last_log_id = last_pending.max(last_written).or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.write_meta("vote", vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_meta("vote")
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Queued, not waited for: the commit index is only a hint for how much to re-apply after
        // a restart (openraft re-learns it from the leader). Waiting would stall the Raft core
        // behind the writer's fsync on every commit.
        self.writer
            .send(Op::Committed(committed))
            .map_err(|_| io_err(ErrorSubject::Store, ErrorVerb::Write, "the log writer stopped"))?;
        self.committed.store(committed.map_or(0, |c| c.index + 1), Ordering::Relaxed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed = self.read_meta::<Option<LogId>>("committed")?.flatten();
        self.committed.store(committed.map_or(0, |c| c.index + 1), Ordering::Relaxed);
        Ok(committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        {
            let mut p = self.pending_mut();
            for e in &entries {
                p.insert(e.log_id.index, e.clone());
            }
        }
        self.writer
            .send(Op::Append { entries, flushed: callback })
            .map_err(|_| io_err(ErrorSubject::Logs, ErrorVerb::Write, "the log writer stopped"))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.pending_mut().retain(|i, _| *i < log_id.index);
        self.write_and_wait(|done| Op::Truncate { from: log_id.index, done }, ErrorVerb::Delete)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.pending_mut().retain(|i, _| *i > log_id.index);
        self.write_and_wait(|done| Op::Purge { upto: log_id, done }, ErrorVerb::Delete)
    }
}
