//! Whole-system tests: the real `fluxplane` binary as child processes (a `dev` cloud, or separate
//! chain, control, node and gateway roles) on ephemeral ports, driven through the real `fluxctl`
//! binary and over HTTP. Every process is held by a guard that kills it on drop.

mod archives;
mod cloud;
mod cluster;
mod containers;
mod domains;
mod gateway;
mod heal;
mod isolation;
mod oci;
mod util;

mod partition;
mod runtimes;
mod shard;
mod spine;
mod trust;
