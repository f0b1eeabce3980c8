//! Pure domain types for fluxplane: the app manifest and its validation, Flux v8 JSON specs, geography and regions,
//! node tiers, the price formula and transaction fees, sealing secret values to a key, chain
//! transactions and the chain state they build, what an uploaded module or image archive must
//! be (wasmparser, sha2: parsing only), and the wire types that the API, `fluxctl`, agents and
//! gateways exchange.
//!
//! This crate does no I/O and must not depend on tokio, openraft, wasmtime or any other runtime
//! crate: every other crate builds on it, and `fluxctl` and the gateway link it without the
//! control plane.
#![deny(missing_docs)]

pub mod api;
pub mod blob;
pub mod capacity;
pub mod chain;
pub mod command;
pub mod domains;
pub mod event;
pub mod fee;
pub mod flux;
pub mod geo;
pub mod keys;
pub mod price;
pub mod sealed;
pub mod spec;
pub mod tar;
pub mod tier;

pub use geo::{GeoPoint, Region};
pub use spec::{AppSpec, ComponentSpec, GeoRule, ValidationErrors};
pub use tier::Tier;

/// A node's identifier, unique on the chain (for example `eu-1`).
pub type NodeId = String;
/// An app's name, unique on the chain; it is also the first label of the app's domain.
pub type AppName = String;
