//! The `fluxplane` daemon: [`roles`] compose the crates below into the four roles (chain,
//! control, node, gateway), each `Config -> build() -> spawn() -> Running{fatal, drain}`;
//! [`dev`] runs all four in one process from the same role code; [`config`] is the one config
//! file and its checks. Nothing here but wiring.

pub mod config;
pub mod dev;
pub mod roles;
