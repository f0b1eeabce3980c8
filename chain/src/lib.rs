//! The chain source: where blocks come from and where transactions go.
//!
//! - [`ChainSource`] is the one interface control replicas follow the chain through.
//! - [`Devnet`] is the built-in local block producer: blocks durable in redb, transactions checked
//!   with the same rules every shard applies (`model::chain`), a block every `block_time`. It is a
//!   `ChainSource` in process, and [`server::router`] serves it over HTTP for
//!   `fluxplane chain`, where [`HttpChain`] follows it.
//!
//! Depends on `model` and `client`. A fluxd JSON-RPC source is not here yet.

mod devnet;
mod genesis;
pub mod server;
mod source;
mod store;

pub use devnet::now_ms;
pub use devnet::{Devnet, SubmitError};
pub use genesis::{DevNode, chain_genesis, dev_genesis, dev_node_key, dev_nodes, funded_genesis};
pub use source::{ChainError, ChainSource, HttpChain, SharedChainSource};
pub use store::open_guarded;

#[cfg(test)]
mod conformance;
