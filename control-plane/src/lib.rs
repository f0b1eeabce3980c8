//! The control plane of one region: its shard (an openraft group stored in redb) that caches
//! the chain state it follows and owns the region's operational state (node liveness, admin
//! state, placements); the pure scheduler; the public HTTP API under `/v1/`; and the Raft
//! transport between replicas, where every call is signed by a member's replica key.
//!
//! It depends on `model`, `chain` (through the `ChainSource` trait only) and `client` (to ask
//! other regions and peers). The actors that drive a shard live in `actors`, above this crate.

// openraft's storage traits return its large StorageError; boxing it would only add copies.
#![allow(clippy::result_large_err)]

pub mod api;
pub mod auth;
pub mod blobs;
pub mod capacity;
pub mod domains;
pub mod log_store;
pub mod network;
pub mod openapi;
pub mod reconcile;
pub mod scheduler;
pub mod shard;
pub mod signatures;
pub mod state;
pub mod state_machine;
pub mod synthetic;
pub mod touched;
pub mod typ;

pub use shard::{ProposeError, RaftTiming, ReadError, Shard, ShardConfig, SoftError};

#[cfg(test)]
mod storage_suite;

openraft::declare_raft_types!(
    /// The Raft types of a shard: commands and results come from `model`; members are
    /// [`Replica`]s.
    pub TypeConfig:
        D = model::command::Command,
        R = model::command::CommandResult,
        Node = Replica,
        SnapshotData = std::io::Cursor<Vec<u8>>,
);

/// A member of a shard, as its membership records it: where it serves, and the key that signs
/// its Raft calls. Peers accept Raft calls only from members, checked against this key.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Replica {
    /// API (and Raft) base URL, `http://host:port`.
    pub api: String,
    /// ed25519 public key, hex.
    pub key: model::keys::PublicKeyHex,
}

impl std::fmt::Display for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.api)
    }
}
