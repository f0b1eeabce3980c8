//! The receiving side: authenticates each call against the shard's membership, then hands it to
//! openraft. A call is authenticated from its signed headers before its body is read, so a
//! stranger's body costs the replica nothing; the body is then read up to its kind's limit and
//! must hash to the digest the signature covers. A call from a non-member is refused with 401
//! before openraft sees it, so it can neither append nor change a term.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use client::paths;
use model::api::{ErrorBody, ErrorDetail};
use model::keys::PublicKeyHex;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::de::DeserializeOwned;

use crate::TypeConfig;
use crate::auth::{self, ReplayWindow, SignedCall};
use crate::shard::{ReadIndexError, Shard};

/// Largest body of a Raft call of kind `rpc`. Votes and the small calls carry a few ids;
/// snapshots come in chunks of [`SNAPSHOT_CHUNK`] bytes, which JSON spells in at most four
/// characters each.
pub fn body_limit(rpc: &str) -> usize {
    match rpc {
        "append" => 64 << 20,
        "snapshot" => 4 * SNAPSHOT_CHUNK + (1 << 20),
        _ => 64 << 10,
    }
}

/// The snapshot bytes a leader sends in one call (openraft's `snapshot_max_chunk_size`).
pub const SNAPSHOT_CHUNK: usize = 3 << 20;

struct RaftService {
    shard: Arc<Shard>,
    replays: ReplayWindow,
    body_timeout: Duration,
}

/// The router for incoming Raft calls to `shard`, whose bodies must arrive within
/// `body_timeout`. A call is authenticated from its headers before its body is read.
pub fn router(shard: Arc<Shard>, body_timeout: Duration) -> Router {
    let service = Arc::new(RaftService { shard, replays: ReplayWindow::default(), body_timeout });
    Router::new().route(paths::RAFT_ROUTE, post(rpc)).with_state(service)
}

fn refuse(status: StatusCode, code: &str, message: String) -> Response {
    let body = ErrorBody { error: ErrorDetail { code: code.into(), message, fields: Vec::new(), leader: None } };
    (status, axum::Json(body)).into_response()
}

/// Checks the call's signed headers, and that they come from a member with the key the
/// membership records, and have not been seen before; returns the call.
fn authenticate(service: &RaftService, rpc: &str, headers: &HeaderMap) -> Result<SignedCall, String> {
    let shard = &service.shard;
    let header = |name: &str| {
        headers.get(name).and_then(|v| v.to_str().ok()).ok_or_else(|| format!("the call has no {name} header"))
    };
    let number =
        |name: &str| -> Result<u64, String> { header(name)?.parse().map_err(|_| format!("bad {name} header")) };
    let call = SignedCall {
        from: number(auth::REPLICA_ID)?,
        key: PublicKeyHex(header(auth::REPLICA_KEY)?.to_string()),
        timestamp_ms: number(auth::TIMESTAMP)?,
        sequence: number(auth::SEQUENCE)?,
        body_digest: header(auth::BODY_DIGEST)?.to_string(),
        signature: header(auth::SIGNATURE)?.to_string(),
        vouch: header(auth::VOUCH).unwrap_or_default().to_string(),
    };
    if shard.is_member(call.from, &call.key) {
        call.verify(&shard.region, rpc, shard.id(), None)?;
    } else if !shard.is_self_member() {
        // Not a member yet (or any more): only a call vouched for with the admin token may make
        // this replica one.
        call.verify(&shard.region, rpc, shard.id(), Some(shard.admin()))?;
    } else {
        return Err(format!("replica {} (key {}) is not a member of shard {}", call.from, call.key, shard.region));
    }
    service.replays.take(call.from, call.sequence)?;
    Ok(call)
}

/// Reads the body of an authenticated call: at most `limit` bytes, within the timeout, and
/// only the body its signature covers.
async fn read_body(service: &RaftService, call: &SignedCall, rpc: &str, req: Request) -> Result<Vec<u8>, Response> {
    let limit = body_limit(rpc);
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || {
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("a Raft {rpc} call is at most {limit} bytes"),
        )
    };
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let body = match tokio::time::timeout(service.body_timeout, axum::body::to_bytes(req.into_body(), limit)).await {
        Err(_) => {
            let why = format!("the call's body did not arrive within {:?}", service.body_timeout);
            return Err(refuse(StatusCode::REQUEST_TIMEOUT, "timeout", why));
        }
        Ok(Err(e)) if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) => {
            return Err(too_large());
        }
        Ok(Err(e)) => {
            return Err(refuse(StatusCode::BAD_REQUEST, "bad_request", format!("reading the call's body: {e}")));
        }
        Ok(Ok(body)) => body,
    };
    call.check_body(&body).map_err(|why| refuse(StatusCode::UNAUTHORIZED, "unauthorized", why))?;
    Ok(body.to_vec())
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
    State(service): State<Arc<RaftService>>,
    Path((region, rpc)): Path<(String, String)>,
    req: Request,
) -> Response {
    let shard = &service.shard;
    if region != shard.region {
        return refuse(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("this replica serves region {}, not {region}", shard.region),
        );
    }
    let call = match authenticate(&service, &rpc, req.headers()) {
        Ok(call) => call,
        Err(why) => {
            tracing::warn!(region = %shard.region, rpc, "refused a Raft call: {why}");
            return refuse(StatusCode::UNAUTHORIZED, "unauthorized", why);
        }
    };
    let body = match read_body(&service, &call, &rpc, req).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    match handle(shard, &rpc, call.from, &body).await {
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
