//! The typed client of fluxplane's HTTP API under `/v1/`, used by `fluxctl`, node agents,
//! gateways, the control plane itself (to ask other regions) and the chain source over HTTP.
//!
//! - Every path is written once, in [`paths`]; servers route on the same constants.
//! - A [`Client`] holds several base URLs and fails over between them: a connection that cannot
//!   be made moves on to the next URL, and a `not_leader` answer moves to the leader it names and
//!   remembers it.
//! - Errors are a [`ClientError`] that callers branch on: [`ClientError::NotFound`],
//!   [`ClientError::Api`] with the server's code, or [`ClientError::Unreachable`].
//!
//! Depends on `model` only, so any role can link it without the control plane.

mod api;
pub mod blobs;
mod error;
pub mod paths;
mod transport;
mod tx;

pub use error::ClientError;
pub use transport::{Client, DEFAULT_TIMEOUT, listener_of, parse_urls};
pub use tx::{jitter_ms, sign_and_submit};
