//! The receiving side: authenticates each call against the shard's membership, then hands it to
//! openraft. A call from a non-member is refused with 401 before openraft sees it, so it can
//! neither append nor change a term.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use client::paths;
use model::api::{ErrorBody, ErrorDetail};
use model::keys::PublicKeyHex;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::de::DeserializeOwned;

use crate::TypeConfig;
use crate::auth::{self, SignedCall};
use crate::shard::{ReadIndexError, Shard};

/// Largest Raft call body: a batch of entries or a snapshot chunk.
const MAX_RAFT_BODY: usize = 64 << 20;

/// The router for incoming Raft calls to `shard`.
pub fn router(shard: Arc<Shard>) -> Router {
    Router::new().route(paths::RAFT_ROUTE, post(rpc)).layer(DefaultBodyLimit::max(MAX_RAFT_BODY)).with_state(shard)
}

fn refuse(status: StatusCode, code: &str, message: String) -> Response {
    let body = ErrorBody { error: ErrorDetail { code: code.into(), message, fields: Vec::new(), leader: None } };
    (status, axum::Json(body)).into_response()
}

/// Checks the call's signature, and that it comes from a member with the key the membership
/// records; returns the sender's id.
fn authenticate(shard: &Shard, rpc: &str, headers: &HeaderMap, body: &[u8]) -> Result<u64, String> {
    let header = |name: &str| {
        headers.get(name).and_then(|v| v.to_str().ok()).ok_or_else(|| format!("the call has no {name} header"))
    };
    let from: u64 = header(auth::REPLICA_ID)?.parse().map_err(|_| format!("bad {} header", auth::REPLICA_ID))?;
    let call = SignedCall {
        from,
        key: PublicKeyHex(header(auth::REPLICA_KEY)?.to_string()),
        timestamp_ms: header(auth::TIMESTAMP)?.parse().map_err(|_| format!("bad {} header", auth::TIMESTAMP))?,
        signature: header(auth::SIGNATURE)?.to_string(),
        vouch: header(auth::VOUCH).unwrap_or_default().to_string(),
    };
    if shard.is_member(from, &call.key) {
        call.verify(&shard.region, rpc, shard.id(), body, None)?;
    } else if !shard.is_self_member() {
        // Not a member yet (or any more): only a call vouched for with the admin token may make
        // this replica one.
        call.verify(&shard.region, rpc, shard.id(), body, Some(shard.admin()))?;
    } else {
        return Err(format!("replica {from} (key {}) is not a member of shard {}", call.key, shard.region));
    }
    Ok(from)
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    serde_json::from_slice(body)
        .map_err(|e| refuse(StatusCode::BAD_REQUEST, "bad_request", format!("not a Raft request: {e}")))
}

fn check_sender(claimed: Option<u64>, from: u64) -> Result<(), Response> {
    if claimed == Some(from) {
        return Ok(());
    }
    Err(refuse(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        format!("the call speaks for replica {claimed:?} but is signed by replica {from}"),
    ))
}

async fn rpc(
    State(shard): State<Arc<Shard>>,
    Path((region, rpc)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if region != shard.region {
        return refuse(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("this replica serves region {}, not {region}", shard.region),
        );
    }
    let from = match authenticate(&shard, &rpc, &headers, &body) {
        Ok(from) => from,
        Err(why) => {
            tracing::warn!(region = %shard.region, rpc, "refused a Raft call: {why}");
            return refuse(StatusCode::UNAUTHORIZED, "unauthorized", why);
        }
    };
    match handle(&shard, &rpc, from, &body).await {
        Ok(r) | Err(r) => r,
    }
}

async fn handle(shard: &Shard, rpc: &str, from: u64, body: &[u8]) -> Result<Response, Response> {
    Ok(match rpc {
        "append" => {
            let req: AppendEntriesRequest<TypeConfig> = parse(body)?;
            check_sender(req.vote.leader_id().voted_for(), from)?;
            let resp = shard.raft.append_entries(req).await;
            if resp.is_ok() {
                shard.touch_leader_contact();
            }
            axum::Json(resp).into_response()
        }
        "vote" => {
            let req: VoteRequest<u64> = parse(body)?;
            check_sender(req.vote.leader_id().voted_for(), from)?;
            axum::Json(shard.raft.vote(req).await).into_response()
        }
        "snapshot" => {
            let req: InstallSnapshotRequest<TypeConfig> = parse(body)?;
            check_sender(req.vote.leader_id().voted_for(), from)?;
            let resp = shard.raft.install_snapshot(req).await;
            if resp.is_ok() {
                shard.touch_leader_contact();
            }
            axum::Json(resp).into_response()
        }
        "read-index" => axum::Json(shard.leader_read_index().await).into_response(),
        "timeout-now" => {
            let r: Result<(), ReadIndexError> =
                shard.raft.trigger().elect().await.map_err(|e| ReadIndexError(e.to_string()));
            axum::Json(r).into_response()
        }
        other => refuse(StatusCode::NOT_FOUND, "not_found", format!("no Raft call `{other}`")),
    })
}
