//! The control plane: one openraft group per region ("shard"), stored in redb, that caches the
//! chain state it follows and owns the region's operational state (node liveness, placements);
//! the pure scheduler; the public HTTP API under `/v1/`; and the Raft transport over HTTP.
//!
//! It depends on `model` and `chain` only. Actors that drive a shard (following blocks,
//! reconciling apps, watching heartbeats) live in `actors`, above this crate.

// openraft's storage traits return its large StorageError; boxing it would only add copies.
#![allow(clippy::result_large_err)]

pub mod api;
pub mod blobs;
pub mod log_store;
pub mod network;
pub mod openapi;
pub mod scheduler;
pub mod shard;
pub mod state;
pub mod state_machine;
pub mod typ;

pub use shard::{ProposeError, Shard, ShardConfig};

openraft::declare_raft_types!(
    /// The Raft types of a shard: commands and results come from `model`.
    pub TypeConfig:
        D = model::command::Command,
        R = model::command::CommandResult,
        SnapshotData = std::io::Cursor<Vec<u8>>,
);
