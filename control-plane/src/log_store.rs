//! The Raft log, vote and commit index in redb. An append is acknowledged to openraft only
//! after redb's commit returns (durability `Immediate`), so an acknowledged entry survives a crash.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, RaftLogReader};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::TypeConfig;
use crate::typ::{Entry, LogId, StorageError, Vote};

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

/// Log storage over a redb database shared with the snapshot store.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    /// The last committed index saved, plus one (0: none); shown in `fluxctl shard status`.
    committed: Arc<AtomicU64>,
}

fn io_err(subject: ErrorSubject<u64>, verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    StorageError::from_io_error(subject, verb, std::io::Error::other(e.to_string()))
}

impl LogStore {
    /// Opens the log tables in `db`, creating them if needed.
    pub fn new(db: Arc<Database>) -> Result<Self, redb::Error> {
        let tx = db.begin_write()?;
        tx.open_table(LOGS)?;
        tx.open_table(META)?;
        tx.commit()?;
        Ok(Self { db, committed: Arc::default() })
    }

    /// The last committed index this replica saved.
    pub fn committed(&self) -> Arc<AtomicU64> {
        self.committed.clone()
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
        r().map_err(|e| {
            StorageError::from_io_error(ErrorSubject::Store, ErrorVerb::Read, std::io::Error::other(e.to_string()))
        })
    }

    fn write_meta<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StorageError> {
        self.write_meta_with(key, value, redb::Durability::Immediate)
    }

    fn write_meta_with<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        durability: redb::Durability,
    ) -> Result<(), StorageError> {
        let w = || -> Result<(), Box<dyn std::error::Error>> {
            let mut tx = self.db.begin_write()?;
            tx.set_durability(durability)?;
            tx.open_table(META)?.insert(key, serde_json::to_vec(value)?.as_slice())?;
            tx.commit()?;
            Ok(())
        };
        w().map_err(|e| {
            StorageError::from_io_error(ErrorSubject::Store, ErrorVerb::Write, std::io::Error::other(e.to_string()))
        })
    }

    fn delete_range(&self, range: impl RangeBounds<u64>) -> Result<(), redb::Error> {
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(LOGS)?;
            let keys: Vec<u64> = table.range(range)?.map(|r| r.map(|(k, _)| k.value())).collect::<Result<_, _>>()?;
            for k in keys {
                table.remove(k)?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let read = || -> Result<Vec<Entry>, Box<dyn std::error::Error>> {
            let tx = self.db.begin_read()?;
            let table = tx.open_table(LOGS)?;
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
            let mut out = Vec::new();
            for row in table.range((Bound::Included(start), end))? {
                let (_, v) = row?;
                out.push(serde_json::from_slice(v.value())?);
            }
            Ok(out)
        };
        read().map_err(|e| {
            StorageError::from_io_error(ErrorSubject::Logs, ErrorVerb::Read, std::io::Error::other(e.to_string()))
        })
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.read_meta("last_purged")?;
        let last = || -> Result<Option<LogId>, Box<dyn std::error::Error>> {
            let tx = self.db.begin_read()?;
            let table = tx.open_table(LOGS)?;
            Ok(match table.last()? {
                Some((_, v)) => Some(serde_json::from_slice::<Entry>(v.value())?.log_id),
                None => None,
            })
        };
        let last_log_id = last()
            .map_err(|e| {
                StorageError::from_io_error(ErrorSubject::Logs, ErrorVerb::Read, std::io::Error::other(e.to_string()))
            })?
            .or(last_purged_log_id);
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
        // Not fsynced: the commit index is only a hint for how much to re-apply after a restart
        // (openraft re-learns it from the leader), and the next durable append persists it.
        self.write_meta_with("committed", &committed, redb::Durability::None)?;
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
        let write = || -> Result<(), Box<dyn std::error::Error>> {
            let tx = self.db.begin_write()?;
            {
                let mut table = tx.open_table(LOGS)?;
                for entry in entries {
                    table.insert(entry.log_id.index, serde_json::to_vec(&entry)?.as_slice())?;
                }
            }
            tx.commit()?;
            Ok(())
        };
        match write() {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let msg = e.to_string();
                callback.log_io_completed(Err(std::io::Error::other(msg.clone())));
                Err(StorageError::from_io_error(ErrorSubject::Logs, ErrorVerb::Write, std::io::Error::other(msg)))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.delete_range(log_id.index..).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.write_meta("last_purged", &Some(log_id))?;
        self.delete_range(..=log_id.index).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}
