//! `fluxctl`, the CLI for developers and SREs: deploy and inspect apps, list nodes, check the
//! cloud's status and manage wallet keys. Talks to the control plane's `/v1/` API only, and
//! depends on `model` for the manifest, signing and wire types.

pub mod client;
pub mod commands;
pub mod keys;

pub use commands::{Cli, run};
