//! Raft between the replicas of one region, over HTTP/JSON on the API listener:
//! `POST /raft/{region}/{append|vote|snapshot|read-index|timeout-now}`.
//!
//! Every call is signed with the sender's replica key over its headers, its sequence number and
//! its body's digest (see [`crate::auth`]); the receiver checks the headers against its shard's
//! membership before it reads the body, and the body against the digest before openraft sees
//! the request.

mod client;
mod server;

pub use client::{Contacts, Network, PeerClient};
pub use server::{SNAPSHOT_CHUNK, body_limit, router};
