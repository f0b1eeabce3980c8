//! Modules and image archives by content hash. An upload is paid for on chain first (a
//! `blob_upload` transaction, per started MB) and signed by the key that paid; a replica checks
//! both from the headers before it reads the body. It is stored on the replica that takes it and
//! handed to every other replica in the directory, with the uploader's signed headers; it is
//! acknowledged once a majority of the region's voters hold it, so losing any one replica loses
//! no module. A replica that still lacks a module fetches it from the others (checking the
//! hash). Blobs the chain no longer keeps (unreferenced past their grace) are removed by
//! [`collect_garbage`] on every replica.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::header::CONTENT_LENGTH;
use axum::http::{HeaderMap, StatusCode};
use model::api::{BlobStatus, SignedUpload};
use model::keys::PublicKeyHex;
use serde::Deserialize;

use super::{Api, ApiError};
use crate::blobs::BlobError;

fn blob_error(e: BlobError) -> ApiError {
    match e {
        BlobError::Io(e) => ApiError::internal(e),
        e @ BlobError::NotAComponent(_) => ApiError::new("invalid_module", e.to_string()),
        e @ BlobError::NotAnArchive(_) => ApiError::new("invalid_archive", e.to_string()),
        e => ApiError::bad_request(e.to_string()),
    }
}

/// Uploads read and checked at once, in this process. Each holds up to 64 MB in memory and a
/// core while it is validated; more wait their turn before their body is read, so a flood of
/// uploads queues instead of taking the replica's memory.
const UPLOADS_AT_ONCE: usize = 4;
static UPLOADS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(UPLOADS_AT_ONCE);

/// How long a replica handed a copy waits for its shard to apply the block with the payment
/// (the sender applied it first).
const PAYMENT_WAIT: Duration = Duration::from_secs(10);

/// The signed upload headers of `req` for blob `hash`, and its length: 401 without a valid
/// signature, 411 without a length.
fn signed_upload(hash: &str, headers: &HeaderMap) -> Result<SignedUpload, ApiError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(uploader), Some(at), Some(signature)) = (
        header(SignedUpload::UPLOADER_HEADER),
        header(SignedUpload::AT_HEADER),
        header(SignedUpload::SIGNATURE_HEADER),
    ) else {
        return Err(ApiError::new(
            "unauthorized",
            format!(
                "an upload is signed by the key that paid for it ({}, {}, {}); `fluxctl app deploy` pays and \
                 uploads",
                SignedUpload::UPLOADER_HEADER,
                SignedUpload::AT_HEADER,
                SignedUpload::SIGNATURE_HEADER
            ),
        ));
    };
    let at_ms: u64 = at.parse().map_err(|_| {
        ApiError::new("unauthorized", format!("{} must be ms since the epoch", SignedUpload::AT_HEADER))
    })?;
    let size = header(CONTENT_LENGTH.as_str())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| ApiError::new("length_required", "an upload states its length (Content-Length)"))?;
    let upload = SignedUpload {
        uploader: PublicKeyHex(uploader.to_string()),
        hash: hash.to_ascii_lowercase(),
        size,
        at_ms,
        signature: signature.to_string(),
    };
    upload.verify().map_err(|e| ApiError::new("unauthorized", format!("the upload's signature: {e}")))?;
    let skew = chain::now_ms().abs_diff(at_ms);
    if skew > SignedUpload::MAX_SKEW_MS {
        return Err(ApiError::new(
            "unauthorized",
            format!("the upload was signed {} s from this replica's clock", skew / 1000),
        ));
    }
    Ok(upload)
}

/// Checks that the chain records the uploader's payment for this blob and size: 402 when it
/// does not, saying whether the key can pay.
fn check_paid(api: &Api, upload: &SignedUpload) -> Result<(), ApiError> {
    let (paid, balance) = api.shard.read(|s| {
        (s.chain.blobs.get(&upload.hash).cloned(), s.chain.balances.get(&upload.uploader).copied().unwrap_or(0))
    });
    match paid {
        Some(p) if p.payer == upload.uploader && p.size == upload.size => Ok(()),
        Some(p) if p.payer == upload.uploader => Err(ApiError::bad_request(format!(
            "blob {} was paid for as {} bytes, but the upload is {} bytes",
            upload.hash, p.size, upload.size
        ))),
        _ => {
            let cost = model::fee::blob_fee(upload.size) + model::fee::MIN_TX_FEE;
            if balance < cost {
                return Err(ApiError::new(
                    "insufficient_funds",
                    format!(
                        "key {} has {balance} and storing {} bytes costs {cost} (a fee per started MB): fund it \
                         first",
                        upload.uploader, upload.size
                    ),
                ));
            }
            Err(ApiError::new(
                "payment_required",
                format!(
                    "no payment of key {} for blob {} ({} bytes) is on chain (as this replica has applied it): \
                     submit a blob_upload transaction first (`fluxctl app deploy` does)",
                    upload.uploader, upload.hash, upload.size
                ),
            ))
        }
    }
}

/// `PUT /v1/blobs/{hash}`: authenticated and checked against the chain's payment from its
/// headers, before the body is read.
pub(super) async fn put_blob(
    State(api): State<Arc<Api>>,
    Path(hash): Path<String>,
    Query(q): Query<BlobQuery>,
    req: Request,
) -> Result<StatusCode, ApiError> {
    if !model::chain::is_blob_hash(&hash.to_ascii_lowercase()) {
        return Err(ApiError::bad_request(format!("`{hash}` is not a blake3 hash (64 hex digits)")));
    }
    let hash = hash.to_ascii_lowercase();
    if !q.local {
        // Only a member knows whom the module must reach; the client tries another replica.
        api.member()?;
    }
    let upload = signed_upload(&hash, req.headers())?;
    if upload.size > model::chain::MAX_BLOB_BYTES {
        return Err(ApiError::new(
            "payload_too_large",
            format!("a blob is at most {} MB", model::chain::MAX_BLOB_BYTES >> 20),
        ));
    }
    if q.local {
        // A copy from a peer that applied the payment already; this shard may be a block behind.
        let mut changes = api.shard.subscribe();
        let _ = tokio::time::timeout(PAYMENT_WAIT, async {
            while check_paid(&api, &upload).is_err() {
                if changes.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }
    check_paid(&api, &upload)?;
    if api.blobs.contains(&hash) {
        // Stored already: nothing to read.
        if !q.local {
            replicate(&api, &upload, None).await?;
        }
        return Ok(StatusCode::NO_CONTENT);
    }
    // The semaphore is never closed, so acquiring cannot fail; without a place, go on anyway.
    let place = UPLOADS.acquire().await.ok();
    let limit = usize::try_from(upload.size).unwrap_or(usize::MAX);
    let body = match tokio::time::timeout(api.body_timeout, axum::body::to_bytes(req.into_body(), limit)).await {
        Err(_) => {
            return Err(ApiError::new("timeout", format!("the upload did not arrive within {:?}", api.body_timeout)));
        }
        Ok(Err(e)) if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) => {
            return Err(ApiError::new("payload_too_large", format!("the upload is longer than its {limit} bytes")));
        }
        Ok(Err(e)) => return Err(ApiError::bad_request(format!("reading the upload: {e}"))),
        Ok(Ok(body)) => body,
    };
    // Validating a component of up to 64 MB and writing it are blocking work.
    let (store, name, bytes) = (api.blobs.clone(), hash.clone(), body.clone());
    tokio::task::spawn_blocking(move || store.put(&name, &bytes))
        .await
        .map_err(ApiError::internal)?
        .map_err(blob_error)?;
    drop(place);
    if !q.local {
        replicate(&api, &upload, Some(body)).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/blobs/{hash}/status`.
pub(super) async fn blob_status(
    State(api): State<Arc<Api>>,
    Path(hash): Path<String>,
) -> Result<axum::Json<BlobStatus>, ApiError> {
    let hash = hash.to_ascii_lowercase();
    if !model::chain::is_blob_hash(&hash) {
        return Err(ApiError::bad_request(format!("`{hash}` is not a blake3 hash (64 hex digits)")));
    }
    let stored = ensure(&api, &hash).await?;
    let paid = api.shard.read(|s| s.chain.blobs.get(&hash).cloned());
    Ok(axum::Json(BlobStatus { stored, paid_by: paid.as_ref().map(|p| p.payer.clone()), size: paid.map(|p| p.size) }))
}

/// Removes stored blobs the chain no longer keeps: not paid for within the grace period and
/// referred to by no app. Returns how many went.
pub fn collect_garbage(api: &Api) -> std::io::Result<usize> {
    let keep: std::collections::HashSet<String> = api.shard.read(|s| {
        let mut keep: std::collections::HashSet<String> = s.chain.blobs.keys().cloned().collect();
        keep.extend(s.chain.referenced_blobs().into_iter().map(str::to_string));
        keep
    });
    // A shard that has not applied genesis yet knows nothing to keep: wait for it.
    if api.shard.read(|s| s.chain.height.is_none()) {
        return Ok(0);
    }
    api.blobs.retain(|hash| keep.contains(hash))
}

/// Hands a stored module to every other replica in the directory; returns once a majority of
/// this region's voters (this replica among them) hold it. The other regions' copies go on in
/// the background: they can also fetch it later.
async fn replicate(api: &Api, upload: &SignedUpload, body: Option<Bytes>) -> Result<(), ApiError> {
    let hash = upload.hash.as_str();
    let body = match body {
        Some(body) => body,
        None => match api.blobs.get(hash).map_err(blob_error)? {
            Some(bytes) => Bytes::from(bytes),
            None => return Ok(()),
        },
    };
    let own = api.shard.api_url().to_string();
    let voters: Vec<String> = api.shard.members().into_iter().filter(|m| m.voter).map(|m| m.api).collect();
    let others: Vec<String> = api.shard.read(|s| {
        s.chain
            .directory
            .values()
            .flat_map(|d| d.values().cloned())
            .filter(|u| *u != own && !voters.contains(u))
            .collect()
    });
    let peers: Vec<String> = voters.iter().filter(|u| **u != own).cloned().collect();
    let held_here = usize::from(voters.contains(&own));
    let needed = (voters.len() / 2 + 1).saturating_sub(held_here);
    let push = |url: String| {
        let (client, upload, body) = (api.client.clone(), upload.clone(), body.to_vec());
        async move {
            let peer = client.sibling(vec![url.clone()]).map_err(|e| format!("{url}: {e}"))?;
            peer.put_blob_local(&upload, body).await.map_err(|e| format!("{url}: {e}"))
        }
    };
    for url in others {
        let push = push(url);
        tokio::spawn(async move {
            if let Err(e) = push.await {
                tracing::debug!("module copy to another region: {e}");
            }
        });
    }
    let mut pending: futures::stream::FuturesUnordered<_> = peers.into_iter().map(push).collect();
    let (mut stored, mut failures) = (0, Vec::new());
    while stored < needed {
        match futures::StreamExt::next(&mut pending).await {
            Some(Ok(())) => stored += 1,
            Some(Err(e)) => failures.push(e),
            None => break,
        }
    }
    // The slower peers still get their copy.
    tokio::spawn(async move { while futures::StreamExt::next(&mut pending).await.is_some() {} });
    if stored < needed {
        return Err(ApiError::new(
            "unavailable",
            format!(
                "module {hash} reached {} of the {} replicas of region {} that must hold it before it is \
                 acknowledged (so that losing a replica loses no module); try again: {}",
                stored + held_here,
                voters.len() / 2 + 1,
                api.shard.region,
                failures.join("; ")
            ),
        ));
    }
    Ok(())
}

#[derive(Deserialize)]
pub(super) struct BlobQuery {
    /// Only this replica's store: how replicas ask each other, so a miss never cascades.
    #[serde(default)]
    local: bool,
}

pub(super) async fn get_blob(
    State(api): State<Arc<Api>>,
    Path(hash): Path<String>,
    Query(q): Query<BlobQuery>,
) -> Result<Vec<u8>, ApiError> {
    if let Some(bytes) = api.blobs.get(&hash).map_err(blob_error)? {
        return Ok(bytes);
    }
    if !q.local && fetch(&api, &hash).await? {
        return api.blobs.get(&hash).map_err(blob_error)?.ok_or_else(|| ApiError::not_found(format!("no blob {hash}")));
    }
    Err(ApiError::not_found(format!("no blob {hash}")))
}

/// Whether `hash` is stored here, fetching it from another replica if need be.
pub(super) async fn ensure(api: &Api, hash: &str) -> Result<bool, ApiError> {
    if api.blobs.contains(hash) {
        return Ok(true);
    }
    fetch(api, hash).await
}

async fn fetch(api: &Api, hash: &str) -> Result<bool, ApiError> {
    let own = api.shard.api_url().to_string();
    let urls: Vec<String> = api
        .shard
        .read(|s| s.chain.directory.values().flat_map(|d| d.values().cloned()).filter(|u| *u != own).collect());
    for url in urls {
        let Ok(peer) = api.client.sibling(vec![url.clone()]) else { continue };
        match peer.get_blob_local(hash).await {
            Ok(bytes) => match api.blobs.put(hash, &bytes) {
                Ok(()) => return Ok(true),
                Err(BlobError::Io(e)) => return Err(ApiError::internal(e)),
                Err(e) => tracing::warn!("module {hash} from {url} refused: {e}"),
            },
            Err(e) if e.is_not_found() => {}
            Err(e) => tracing::debug!("module {hash} from {url}: {e}"),
        }
    }
    Ok(false)
}
