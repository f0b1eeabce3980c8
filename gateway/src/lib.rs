//! The gateway: an HTTP reverse proxy that maps `Host: <app>.app.<domain>` to the app's nearest
//! healthy instance. It follows every region's routing feed (long-poll) into a local table and
//! serves from that table, so it keeps serving its last routes when the control plane is gone.
//!
//! Depends on `model`, `client` and `serve`.

mod forbidden;
mod proxy;
mod routes;

pub use forbidden::Forbidden;
pub use proxy::{Gateway, GatewayConfig, GatewayHandle};
pub use routes::RouteTable;

/// A gateway id for when none is configured: `gw-` and 8 random hex digits.
pub fn random_id() -> String {
    use std::hash::BuildHasher;
    let seed = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
    format!("gw-{:08x}", seed as u32)
}
