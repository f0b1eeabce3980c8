//! Transactions, blocks and the chain tip, through the chain source.

use crate::blobs::BlobKind;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use model::api::{ChainTip, SubmitTxResponse, TxStatus};
use model::chain::{Block, SignedTx, Tx, TxError};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::{Api, ApiError};

type Json<T> = Result<axum::Json<T>, ApiError>;

/// Longest `?wait=applied` waits for the block and the shard.
const APPLIED_WAIT: Duration = Duration::from_secs(30);

pub(super) fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("request body is not valid: {e}")))
}

#[derive(Deserialize)]
pub(super) struct SubmitQuery {
    /// `applied`: answer once this replica's shard applied the block holding the transaction.
    wait: Option<String>,
}

/// Checks a transaction completely (signature, spec, uploaded modules) before it reaches the
/// chain, then submits it.
pub(super) async fn submit_tx(
    State(api): State<Arc<Api>>,
    Query(q): Query<SubmitQuery>,
    body: Bytes,
) -> Json<SubmitTxResponse> {
    let wait_applied = match q.wait.as_deref() {
        None => false,
        Some("applied") => true,
        Some(other) => return Err(ApiError::bad_request(format!("wait={other}: the only value is `applied`"))),
    };
    let stx: SignedTx = parse_json(&body)?;
    stx.verify().map_err(TxError::BadSignature)?;
    if wait_applied {
        // Checked before the chain sees the transaction, so a client may send it elsewhere: this
        // replica must be a member that a leader still answers (one that was removed without
        // hearing of it would wait for blocks it will never apply).
        api.member()?;
        api.shard.linearize().await.map_err(|e| ApiError::new("no_leader", e.to_string()))?;
    }
    if let Tx::AppRegister { spec, .. } | Tx::AppUpdate { spec, .. } = &stx.tx {
        if let Err(errors) = spec.validate_for_chain() {
            return Err(ApiError::invalid_spec(format!("the app spec is invalid:\n{errors}"), errors.0));
        }
        for (i, c) in spec.components.iter().enumerate() {
            for (field, blob) in c.blobs() {
                if !blob_present(&api, blob).await? {
                    return Err(ApiError::new(
                        "missing_module",
                        format!("component[{i}].{field}: {blob} was not uploaded; PUT it to /v1/blobs/<hash> first"),
                    ));
                }
                // A module named as an archive (or the other way) would be paid for and never start.
                let want = if field == "wasm" { BlobKind::Component } else { BlobKind::ImageArchive };
                let hash = blob.strip_prefix(model::spec::BLAKE3_PREFIX).unwrap_or(blob);
                if api.blobs.kind(hash) != Some(want) {
                    return Err(ApiError::bad_request(format!(
                        "component[{i}].{field}: {blob} is not {}",
                        if want == BlobKind::Component { "a WebAssembly component" } else { "an image archive" }
                    )));
                }
            }
        }
        check_feasible(&api, spec)?;
        check_network_with(&api, spec, &stx.signer)?;
    }
    let tx_id = api.chain.submit(stx).await?;
    let height = if wait_applied { wait_applied_at(&api, &tx_id).await? } else { api.chain.tip().await?.height };
    Ok(axum::Json(SubmitTxResponse { tx_id, height }))
}

/// Whether a `blake3:` blob (a module or an image archive) is held here, fetched from a peer
/// replica if need be.
async fn blob_present(api: &Api, blob: &str) -> Result<bool, ApiError> {
    match blob.strip_prefix(model::spec::BLAKE3_PREFIX) {
        Some(hash) => super::modules::ensure(api, hash).await,
        None => Ok(false),
    }
}

/// What deploying a spec (chain form) would do, without doing it: `fluxctl app deploy
/// --dry-run`. An invalid spec is a 400; an infeasible one is answered, with the reason.
pub(super) async fn check_app(State(api): State<Arc<Api>>, body: Bytes) -> Json<model::api::AppCheck> {
    let spec: model::AppSpec = parse_json(&body)?;
    if let Err(errors) = spec.validate_for_chain() {
        return Err(ApiError::invalid_spec(format!("the app spec is invalid:\n{errors}"), errors.0));
    }
    let mut missing_modules = Vec::new();
    for c in &spec.components {
        for (_, blob) in c.blobs() {
            if !blob_present(&api, blob).await? {
                missing_modules.push(blob.to_string());
            }
        }
    }
    let (quotas, feasible, owner) = api.shard.read(|s| {
        (
            s.quotas(&spec),
            crate::scheduler::feasibility(&spec, s.chain.nodes.values()),
            s.chain.apps.get(&spec.name).map(|app| app.owner.clone()),
        )
    });
    Ok(axum::Json(model::api::AppCheck {
        name: spec.name.clone(),
        price: model::price::app_price(&spec),
        quotas,
        feasible: feasible.is_ok(),
        reason: feasible.err(),
        missing_modules,
        exists: owner.is_some(),
        owner,
    }))
}

/// Refuses an app no set of nodes on chain could ever run in full (see
/// [`crate::scheduler::feasibility`]), before it reaches the chain and is paid for.
pub(super) fn check_feasible(api: &Api, spec: &model::AppSpec) -> Result<(), ApiError> {
    api.shard
        .read(|s| crate::scheduler::feasibility(spec, s.chain.nodes.values()))
        .map_err(|why| ApiError::new("infeasible", format!("`{}` cannot be placed: {why}", spec.name)))
}

/// Refuses a spec that asks to share the network of an app another key owns: it would never
/// be honoured (see `agents::shared_networks`), and the owner should hear so now. A name no app
/// has yet is accepted; it is shared only if the same owner registers it.
pub(super) fn check_network_with(
    api: &Api,
    spec: &model::AppSpec,
    signer: &model::keys::PublicKeyHex,
) -> Result<(), ApiError> {
    let foreign: Vec<String> = api.shard.read(|s| {
        spec.network
            .with
            .iter()
            .filter(|name| s.chain.apps.get(*name).is_some_and(|other| &other.owner != signer))
            .cloned()
            .collect()
    });
    match foreign.is_empty() {
        true => Ok(()),
        false => Err(ApiError::new(
            "forbidden",
            format!(
                "network.with names {}, owned by another key: only apps of the same owner share a network",
                foreign.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

/// Waits until `tx_id` is in a block and this replica's shard has applied that block. A shard
/// applies only committed entries, so the answer means the write is durable in the region: an
/// isolated replica never gives it.
async fn wait_applied_at(api: &Api, tx_id: &str) -> Result<u64, ApiError> {
    let started = Instant::now();
    let left = || APPLIED_WAIT.saturating_sub(started.elapsed());
    let height = loop {
        match api.chain.tx_status(tx_id).await? {
            TxStatus::Included { height } => break height,
            TxStatus::Rejected { reason } => {
                return Err(ApiError::new("rejected", format!("the chain dropped the transaction: {reason}")));
            }
            TxStatus::Unknown => {
                return Err(ApiError::new("unavailable", "the chain source no longer knows the transaction"));
            }
            TxStatus::Pending => {}
        }
        if left().is_zero() {
            return Err(ApiError::new("not_committed", format!("transaction {tx_id} is still pending")));
        }
        let tip = api.chain.tip().await?;
        api.chain.wait_for_tip(tip.height, left().min(Duration::from_secs(1))).await?;
    };
    let mut changes = api.shard.subscribe();
    let applied = |api: &Api| api.shard.read(|s| s.chain.height.is_some_and(|h| h >= height));
    let removed = |api: &Api| !api.shard.is_self_member();
    let reached = tokio::time::timeout(left(), async {
        while !applied(api) && !removed(api) {
            if changes.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    if !applied(api) && removed(api) {
        // Removed from the shard meanwhile: this replica will apply nothing more, so waiting on
        // would only hold the client. The transaction is on chain; another member confirms it.
        return Err(ApiError::new(
            "not_committed",
            format!(
                "included in block {height}, but replica {} left shard {} before applying it; \
                 ask another replica for transaction {tx_id}",
                api.shard.id(),
                api.shard.region
            ),
        ));
    }
    if reached.is_err() || !applied(api) {
        return Err(ApiError::new(
            "not_committed",
            format!("included in block {height}, but region {}'s shard has not applied it here yet", api.shard.region),
        ));
    }
    Ok(height)
}

pub(super) async fn tx_status(State(api): State<Arc<Api>>, Path(id): Path<String>) -> Json<TxStatus> {
    Ok(axum::Json(api.chain.tx_status(&id).await?))
}

#[derive(Deserialize)]
pub(super) struct TipQuery {
    after: Option<u64>,
    wait_ms: Option<u64>,
}

pub(super) async fn tip(State(api): State<Arc<Api>>, Query(q): Query<TipQuery>) -> Json<ChainTip> {
    let tip = match q.after {
        Some(after) => {
            let wait = Duration::from_millis(q.wait_ms.unwrap_or(0).min(30_000));
            api.chain.wait_for_tip(after, wait).await?
        }
        None => api.chain.tip().await?,
    };
    Ok(axum::Json(tip))
}

pub(super) async fn block(State(api): State<Arc<Api>>, Path(height): Path<String>) -> Json<Block> {
    let height: u64 = height.parse().map_err(|_| ApiError::bad_request(format!("`{height}` is not a block height")))?;
    match api.chain.block(height).await? {
        Some(b) => Ok(axum::Json(b)),
        None => Err(ApiError::not_found(format!("block {height} is not produced yet"))),
    }
}
