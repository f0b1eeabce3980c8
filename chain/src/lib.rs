//! The chain source: where blocks come from. This crate holds the built-in **devnet**, a local
//! block producer that keeps its blocks durably in redb, validates transactions with the same
//! rules every shard applies (`model::chain`), and produces a block every `block_time`.
//!
//! It depends on `model` only; the control plane follows it through [`Devnet::subscribe`] and
//! [`Devnet::block`]. A fluxd JSON-RPC source is not here yet.

mod devnet;
mod genesis;

pub use devnet::now_ms;
pub use devnet::{Devnet, SubmitError};
pub use genesis::{DevNode, dev_genesis, dev_node_key, dev_nodes};
