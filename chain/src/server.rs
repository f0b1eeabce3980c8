//! The devnet over HTTP, as `fluxplane chain` serves it: the tip (long-polled), blocks, and
//! transaction submission. [`crate::HttpChain`] is its client.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use client::paths;
use model::api::{ChainTip, ErrorBody, ErrorDetail, SubmitTxResponse, TxStatus, WalletView, status_of};
use model::chain::{Block, SignedTx};
use serde::Deserialize;

use crate::{ChainError, ChainSource, Devnet};

/// An error answer: `{"error": {"code", "message"}}` with the status the code maps to.
struct Refusal(String, String);

impl Refusal {
    fn new(code: &str, message: impl Into<String>) -> Self {
        Self(code.into(), message.into())
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(status_of(&self.0)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let detail = ErrorDetail { code: self.0, message: self.1, fields: Vec::new(), leader: None };
        (status, axum::Json(ErrorBody { error: detail })).into_response()
    }
}

impl From<ChainError> for Refusal {
    fn from(e: ChainError) -> Self {
        match e {
            ChainError::Rejected { code, message } => Refusal(code, message),
            ChainError::Busy(m) => Refusal::new("busy", m),
            ChainError::Unavailable { .. } => Refusal::new("unavailable", e.to_string()),
        }
    }
}

/// The router.
pub fn router(devnet: Devnet) -> Router {
    Router::new()
        .route(paths::CHAIN_TIP, get(tip))
        .route(paths::BLOCK_ROUTE, get(block))
        .route(paths::TRANSACTIONS, post(submit))
        .route(paths::TRANSACTION_ROUTE, get(tx_status))
        .route(paths::WALLET_ROUTE, get(wallet))
        .fallback(|| async { Refusal::new("not_found", "no such endpoint on the devnet chain") })
        .with_state(devnet)
        .layer(axum::middleware::from_fn(serve::json_errors))
}

#[derive(Deserialize)]
struct TipQuery {
    after: Option<u64>,
    wait_ms: Option<u64>,
}

async fn tip(State(devnet): State<Devnet>, Query(q): Query<TipQuery>) -> Result<axum::Json<ChainTip>, Refusal> {
    let tip = match q.after {
        Some(after) => {
            let wait = Duration::from_millis(q.wait_ms.unwrap_or(0).min(30_000));
            devnet.wait_for_tip(after, wait).await?
        }
        None => Devnet::tip(&devnet),
    };
    Ok(axum::Json(tip))
}

async fn block(State(devnet): State<Devnet>, Path(height): Path<String>) -> Result<axum::Json<Block>, Refusal> {
    let height: u64 = height.parse().map_err(|_| Refusal::new("bad_request", format!("`{height}` is not a height")))?;
    match ChainSource::block(&devnet, height).await? {
        Some(b) => Ok(axum::Json(b)),
        None => Err(Refusal::new(
            "not_found",
            format!("block {height} is not produced yet (tip {})", Devnet::tip(&devnet).height),
        )),
    }
}

async fn submit(State(devnet): State<Devnet>, body: Bytes) -> Result<axum::Json<SubmitTxResponse>, Refusal> {
    let stx: SignedTx = serde_json::from_slice(&body)
        .map_err(|e| Refusal::new("bad_request", format!("request body is not a signed transaction: {e}")))?;
    let tx_id = ChainSource::submit(&devnet, stx).await?;
    Ok(axum::Json(SubmitTxResponse { tx_id, height: Devnet::tip(&devnet).height }))
}

async fn tx_status(State(devnet): State<Devnet>, Path(id): Path<String>) -> axum::Json<TxStatus> {
    axum::Json(Devnet::tx_status(&devnet, &id))
}

async fn wallet(State(devnet): State<Devnet>, Path(address): Path<String>) -> axum::Json<WalletView> {
    let state = devnet.state();
    let address = model::keys::PublicKeyHex(address);
    axum::Json(WalletView {
        balance: state.balances.get(&address).copied().unwrap_or(0),
        nonce: state.nonces.get(&address).copied().unwrap_or(0),
        next_nonce: devnet.next_nonce(&address),
        address,
    })
}
