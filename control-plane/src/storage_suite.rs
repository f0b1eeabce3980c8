//! openraft's storage conformance suite, run against the redb log store and state machine.

use std::sync::Arc;

use openraft::testing::{StoreBuilder, Suite};
use tokio::sync::watch;

use crate::TypeConfig;
use crate::log_store::LogStore;
use crate::state_machine::StateMachine;
use crate::typ::StorageError;

struct RedbBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for RedbBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let fail = |e: &dyn std::fmt::Display| {
            StorageError::from_io_error(
                openraft::ErrorSubject::Store,
                openraft::ErrorVerb::Write,
                std::io::Error::other(e.to_string()),
            )
        };
        let dir = tempfile::tempdir().map_err(|e| fail(&e))?;
        let db = Arc::new(redb::Database::create(dir.path().join("suite.redb")).map_err(|e| fail(&e))?);
        let log = LogStore::new(db.clone()).map_err(|e| fail(&e))?;
        let sm = StateMachine::open(db, "eu", watch::channel(0).0, Default::default()).map_err(|e| fail(&e))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn redb_storage_passes_openraft_suite() {
    Suite::test_all(RedbBuilder).expect("openraft storage suite");
}
