//! Raft between the replicas of one region, over HTTP/JSON on the API listener:
//! `POST /raft/{region}/{append|vote|snapshot|read-index|timeout-now}`.
//!
//! Every call is signed with the sender's replica key (see [`crate::auth`]); the receiver checks
//! it against its shard's membership before openraft sees the request.

mod client;
mod server;

pub use client::{Contacts, Network, PeerClient};
pub use server::router;
