//! `fluxctl`, the CLI for developers and SREs: deploy and inspect apps, list and cordon nodes,
//! check the cloud's status, manage shard membership and wallet keys. Talks to the control
//! plane's `/v1/` API only, through the typed `client`; depends on `model` for the manifest,
//! signing and wire types.

pub mod commands;
pub mod keys;

pub use commands::{Cli, run};
