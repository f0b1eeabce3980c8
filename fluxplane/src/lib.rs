//! The `fluxplane` daemon. `fluxplane dev` runs a whole local cloud in one process: the devnet
//! chain, one shard (with its actor tree) per region, the API, a node agent per dev node and the
//! gateway. The roles themselves live in their crates; this crate only wires them together.

pub mod dev;
