//! Modules by content hash. An upload is stored on the replica that takes it and handed to every
//! other replica in the directory; it is acknowledged once a majority of the region's voters
//! hold it, so losing any one replica loses no module. A replica that still lacks a module
//! fetches it from the others (checking the hash).

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

/// Middleware on `PUT /v1/blobs/{hash}`: waits for one of [`UPLOADS_AT_ONCE`] places.
pub(super) async fn one_of_few_uploads(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    // The semaphore is never closed, so acquiring cannot fail; without a place, go on anyway.
    let _place = UPLOADS.acquire().await.ok();
    next.run(req).await
}

pub(super) async fn put_blob(
    State(api): State<Arc<Api>>,
    Path(hash): Path<String>,
    Query(q): Query<BlobQuery>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    if !q.local {
        // Only a member knows whom the module must reach; the client tries another replica.
        api.member()?;
    }
    // Validating a component of up to 64 MB and writing it are blocking work.
    let (store, name, bytes) = (api.blobs.clone(), hash.clone(), body.clone());
    tokio::task::spawn_blocking(move || store.put(&name, &bytes))
        .await
        .map_err(ApiError::internal)?
        .map_err(blob_error)?;
    if !q.local {
        replicate(&api, &hash, body).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Hands a stored module to every other replica in the directory; returns once a majority of
/// this region's voters (this replica among them) hold it. The other regions' copies go on in
/// the background: they can also fetch it later.
async fn replicate(api: &Api, hash: &str, body: Bytes) -> Result<(), ApiError> {
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
        let (client, hash, body) = (api.client.clone(), hash.to_string(), body.to_vec());
        async move {
            let peer = client.sibling(vec![url.clone()]).map_err(|e| format!("{url}: {e}"))?;
            peer.put_blob_local(&hash, body).await.map_err(|e| format!("{url}: {e}"))
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
