//! The public HTTP/JSON API under `/v1/` of one control replica. Every error is
//! `{"error": {"code", "message"}}` with the status `model::api::status_of` gives its code;
//! 5xx only when the control plane itself fails or cannot reach what it needs.
//!
//! - Views that carry soft state (instance health, node liveness) are served by the leader:
//!   a follower answers `not_leader` (307, with the leader's URL), unless the caller asks for
//!   `?stale=true`, which reads the answering replica's own state.
//! - Other reads are linearizable on any replica (`ensure_linearizable` on the leader, the
//!   leader's read index on a follower), or local with `?stale=true`.
//! - Cloud-wide views (status, apps, nodes) ask the other regions' shards too, unless
//!   `?scope=region`; a region that does not answer is named, not fatal.

mod admin;
mod agents;
mod error;
mod ledger;
mod modules;
mod secrets;
mod views;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post, put};
use chain::SharedChainSource;
use client::paths;
use serde::Deserialize;

pub use self::error::ApiError;
use crate::blobs::BlobStore;
use crate::shard::Shard;

/// What one control replica's API serves from.
pub struct Api {
    /// This replica's shard.
    pub shard: Arc<Shard>,
    /// The chain source, for transactions, blocks and the tip.
    pub chain: SharedChainSource,
    /// Module store.
    pub blobs: BlobStore,
    /// The replicas `shard init` makes voters, by Raft id (this one included), from `--peers`.
    pub peers: BTreeMap<u64, String>,
    /// A client to build clients of other replicas and regions from.
    pub client: client::Client,
    /// How long a request body may take to arrive (uploads read their own).
    pub body_timeout: std::time::Duration,
}

/// Removes, every little while until `stopped`, the blobs the chain no longer keeps (see
/// [`modules::collect_garbage`]): as often as a quarter of the chain's grace period, at most
/// once a second and at least once a minute.
pub async fn sweep_blobs(api: Arc<Api>, mut stopped: tokio::sync::watch::Receiver<bool>) {
    let mut last = std::time::Instant::now();
    loop {
        // Looked at every second: the grace is known only once the shard applied genesis.
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            _ = stopped.changed() => return,
        }
        let grace = api.shard.read(|s| s.chain.blob_rules.grace_ms);
        if last.elapsed() < std::time::Duration::from_millis((grace / 4).clamp(1_000, 60_000)) {
            continue;
        }
        last = std::time::Instant::now();
        let this = api.clone();
        match tokio::task::spawn_blocking(move || modules::collect_garbage(&this)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(region = %api.shard.region, removed = n, "removed blobs no app refers to"),
            Ok(Err(e)) => tracing::warn!(region = %api.shard.region, "sweeping blobs: {e}"),
            Err(e) => tracing::warn!(region = %api.shard.region, "sweeping blobs: {e}"),
        }
    }
}

/// Query flags every read takes.
#[derive(Debug, Default, Deserialize)]
pub struct ReadOpts {
    /// Read this replica's state as it is, without linearizing or redirecting to the leader.
    #[serde(default)]
    pub stale: bool,
    /// `region`: do not ask other regions.
    #[serde(default)]
    pub scope: Option<String>,
}

impl ReadOpts {
    fn region_only(&self) -> bool {
        self.scope.as_deref() == Some("region")
    }
}

/// The API's router.
pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route(paths::OPENAPI, get(views::openapi))
        .route(paths::STATUS, get(views::status))
        .route(paths::REGIONS, get(views::regions))
        .route(paths::APPS, get(views::list_apps))
        .route(paths::APP_ROUTE, get(views::get_app))
        .route(paths::NODES, get(views::list_nodes))
        .route(paths::WALLET_ROUTE, get(views::wallet))
        .route(paths::TRANSACTIONS, post(ledger::submit_tx))
        .route(paths::APP_CHECKS, post(ledger::check_app))
        .route(paths::APP_SECRETS_ROUTE, post(secrets::put_secrets))
        .route(paths::SECRETS_KEY, get(secrets::secrets_key))
        .route(paths::TRANSACTION_ROUTE, get(ledger::tx_status))
        .route(paths::CHAIN_TIP, get(ledger::tip))
        .route(paths::BLOCK_ROUTE, get(ledger::block))
        .route(paths::BLOB_ROUTE, put(modules::put_blob).get(modules::get_blob))
        .route(paths::BLOB_STATUS_ROUTE, get(modules::blob_status))
        .route(paths::HEARTBEAT, post(agents::heartbeat))
        .route(paths::ROUTES_ROUTE, get(agents::routes))
        .route(paths::EVENTS_ROUTE, get(views::events))
        .route(paths::NODE_CORDON_ROUTE, post(admin::cordon))
        .route(paths::NODE_UNCORDON_ROUTE, post(admin::uncordon))
        .route(paths::SHARD_ROUTE, get(admin::shard_view))
        .route(paths::SHARD_REPLICA_ROUTE, get(admin::replica))
        .route(paths::SHARD_IDENTITY_ROUTE, get(admin::identity))
        .route(paths::SHARD_CAPACITY_ROUTE, get(views::capacity))
        .route(paths::SHARD_INIT_ROUTE, post(admin::init))
        .route(paths::SHARD_LEARNERS_ROUTE, post(admin::add_learner))
        .route(paths::SHARD_PROMOTE_ROUTE, post(admin::promote))
        .route(paths::SHARD_REMOVE_ROUTE, post(admin::remove))
        .route(paths::SHARD_TRANSFER_ROUTE, post(admin::transfer_leader))
        .fallback(|| async { ApiError::not_found("no such endpoint; see /v1/openapi.json") })
        .with_state(api)
}

impl Api {
    /// Refuses what needs this replica's shard while it is not a member of it (not initialized
    /// or added yet, or removed): its state is not the region's.
    pub(crate) fn member(&self) -> Result<(), ApiError> {
        if self.shard.is_self_member() {
            return Ok(());
        }
        Err(ApiError::new(
            "not_member",
            format!(
                "replica {} is not a member of shard {}: `fluxctl shard init` or `shard add-learner` makes it one",
                self.shard.id(),
                self.shard.region
            ),
        ))
    }

    /// Makes a read linearizable unless the caller asked for a stale one.
    async fn consistent(&self, opts: &ReadOpts) -> Result<(), ApiError> {
        if opts.stale {
            return Ok(());
        }
        self.member()?;
        self.shard.linearize().await.map_err(ApiError::from)
    }

    /// For views that carry soft state: unless stale, only the leader answers (a follower names
    /// the leader), after confirming it still leads.
    async fn leader_view(&self, opts: &ReadOpts) -> Result<(), ApiError> {
        if opts.stale {
            return Ok(());
        }
        self.member()?;
        if !self.shard.is_leader() {
            return Err(ApiError::not_leader(&self.shard.region, self.shard.leader_api()));
        }
        self.shard.linearize().await.map_err(ApiError::from)
    }

    /// The other regions' replica URLs, from the directory this shard holds.
    fn other_regions(&self) -> Vec<(String, Vec<String>)> {
        self.shard.read(|s| s.other_regions())
    }

    /// A client of another region's replicas that asks for that region's part only.
    fn region_client(&self, urls: Vec<String>, opts: &ReadOpts) -> Result<client::Client, client::ClientError> {
        if urls.is_empty() {
            return Err(client::ClientError::Usage("no control replica of this region is published yet".into()));
        }
        let c = self.client.sibling(urls)?.with_timeout(FAN_OUT_TIMEOUT).region_scoped();
        Ok(if opts.stale { c.stale() } else { c })
    }
}

/// How long a cloud-wide view waits for another region.
const FAN_OUT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Largest request body of the calls that do not read their own (transactions, heartbeats,
/// admin calls).
const MAX_SMALL_BODY: usize = 2 << 20;

/// Everything a control replica serves on its one listener: the API and the Raft transport,
/// with request bodies read within `body_timeout`, so that a slow client cannot hold a
/// request open.
pub fn service(api: Arc<Api>, body_timeout: std::time::Duration) -> Router {
    router(api.clone())
        .merge(crate::network::router(api.shard.clone(), body_timeout))
        .layer(axum::middleware::from_fn(move |req: axum::extract::Request, next: axum::middleware::Next| {
            read_body_within(req, next, body_timeout)
        }))
        // Outermost, so that every error, ours or axum's, leaves as JSON.
        .layer(axum::middleware::from_fn(serve::json_errors))
}

async fn read_body_within(
    req: axum::extract::Request,
    next: axum::middleware::Next,
    within: std::time::Duration,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    // Raft calls and uploads read their own bodies, once their signed headers are checked.
    let path = req.uri().path();
    if path.starts_with("/raft/") || (req.method() == axum::http::Method::PUT && path.starts_with("/v1/blobs/")) {
        return next.run(req).await;
    }
    // A stranger's body is held to 2 MB.
    let limit = MAX_SMALL_BODY;
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(within, axum::body::to_bytes(body, limit)).await {
        Err(_) => ApiError::new("timeout", format!("request body not received within {within:?}")).into_response(),
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if too_large {
                ApiError::new("payload_too_large", format!("request body is over {} MB", limit >> 20)).into_response()
            } else {
                ApiError::bad_request(format!("reading the request body: {e}")).into_response()
            }
        }
        Ok(Ok(bytes)) => next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes))).await,
    }
}
