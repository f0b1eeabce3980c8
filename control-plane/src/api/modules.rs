//! Modules by content hash. A replica that lacks a module fetches it from the other replicas in
//! the directory (checking the hash), so an upload to any replica reaches the nodes of every
//! region.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;

use super::{Api, ApiError};
use crate::blobs::BlobError;

fn blob_error(e: BlobError) -> ApiError {
    match e {
        BlobError::Io(e) => ApiError::internal(e),
        e => ApiError::bad_request(e.to_string()),
    }
}

pub(super) async fn put_blob(
    State(api): State<Arc<Api>>,
    Path(hash): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    api.blobs.put(&hash, &body).map_err(blob_error)?;
    Ok(StatusCode::NO_CONTENT)
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
