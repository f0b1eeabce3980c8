//! The gateway: an HTTP reverse proxy that maps `Host: <app>.app.<domain>` to the app's nearest
//! healthy instance. It follows every region's routing feed (long-poll) into a local table and
//! serves from that table, so it keeps serving its last routes when the control plane is gone.
//!
//! Depends on `model`, `client` and `serve`.

mod proxy;
mod routes;

pub use proxy::{Gateway, GatewayConfig, GatewayHandle};
pub use routes::RouteTable;
