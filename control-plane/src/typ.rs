//! Type aliases over the one `TypeConfig`, so the rest of the crate never spells generics.

use crate::{Replica, TypeConfig};

/// Raft node id.
pub type NodeId = u64;
/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id.
pub type LogId = openraft::LogId<NodeId>;
/// A vote.
pub type Vote = openraft::Vote<NodeId>;
/// Storage error.
pub type StorageError = openraft::StorageError<NodeId>;
/// Snapshot.
pub type Snapshot = openraft::Snapshot<TypeConfig>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Replica>;
/// Stored membership.
pub type StoredMembership = openraft::StoredMembership<NodeId, Replica>;
/// The Raft handle.
pub type Raft = openraft::Raft<TypeConfig>;
/// Raft metrics.
pub type RaftMetrics = openraft::RaftMetrics<NodeId, Replica>;
/// A Raft RPC error as the network returns it.
pub type RpcError<E = openraft::error::RaftError<NodeId>> = openraft::error::RPCError<NodeId, Replica, E>;
