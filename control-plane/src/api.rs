//! The public HTTP/JSON API under `/v1/`. Every error is `{"error": {"code", "message"}}` with a
//! 4xx status for bad requests; 5xx only when the control plane itself fails.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use chain::{Devnet, SubmitError};
use model::api::*;
use model::chain::{SignedTx, Tx, TxError};
use model::spec::FieldError;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::blobs::{BlobError, BlobStore, MAX_BLOB_BYTES};
use crate::scheduler::region_quotas;
use crate::shard::Shard;

/// What the API serves from.
pub struct Api {
    /// The chain source.
    pub devnet: Devnet,
    /// Shards served by this process, by region.
    pub shards: BTreeMap<String, Arc<Shard>>,
    /// Module store.
    pub blobs: BlobStore,
    /// This API's base URL, as announced in the region directory.
    pub public_url: String,
}

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    fields: Vec<FieldError>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), fields: Vec::new() }
    }
    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {e}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the control plane's log")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            ErrorBody { error: ErrorDetail { code: self.code.into(), message: self.message, fields: self.fields } };
        (self.status, axum::Json(body)).into_response()
    }
}

/// The one place chain rule violations become HTTP statuses.
impl From<TxError> for ApiError {
    fn from(e: TxError) -> Self {
        let (status, code) = match &e {
            TxError::BadSignature(_) => (StatusCode::UNAUTHORIZED, "bad_signature"),
            TxError::NotOwner { .. } => (StatusCode::FORBIDDEN, "forbidden"),
            TxError::UnknownApp(_) => (StatusCode::NOT_FOUND, "not_found"),
            TxError::AppExists(_) => (StatusCode::CONFLICT, "conflict"),
            TxError::StaleNonce { .. } => (StatusCode::CONFLICT, "stale_nonce"),
            TxError::Underpaid { .. } => (StatusCode::PAYMENT_REQUIRED, "underpaid"),
            TxError::InsufficientFunds { .. } => (StatusCode::PAYMENT_REQUIRED, "insufficient_funds"),
            TxError::InvalidSpec(_) => (StatusCode::BAD_REQUEST, "invalid_spec"),
            TxError::InvalidNode(_) => (StatusCode::BAD_REQUEST, "invalid_node"),
        };
        Self::new(status, code, e.to_string())
    }
}

type ApiResult<T> = Result<axum::Json<T>, ApiError>;

fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("request body is not valid: {e}")))
}

/// The API's router.
pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/status", get(status))
        .route("/v1/regions", get(regions))
        .route("/v1/apps", get(list_apps))
        .route("/v1/apps/{name}", get(get_app))
        .route("/v1/nodes", get(list_nodes))
        .route("/v1/wallets/{address}", get(wallet))
        .route("/v1/transactions", post(submit_tx))
        .route("/v1/transactions/{id}", get(tx_status))
        .route("/v1/chain/blocks/{height}", get(block))
        .route("/v1/blobs/{hash}", put(put_blob).get(get_blob).layer(DefaultBodyLimit::max(MAX_BLOB_BYTES)))
        .route("/v1/agent/heartbeat", post(heartbeat))
        .route("/v1/routes/{region}", get(routes))
        .fallback(|| async { ApiError::not_found("no such endpoint; see /v1/openapi.json") })
        .with_state(api)
}

async fn openapi() -> axum::Json<serde_json::Value> {
    axum::Json(crate::openapi::document())
}

async fn status(State(api): State<Arc<Api>>) -> ApiResult<StatusView> {
    let (chain_height, chain_tip) = api.devnet.tip();
    let regions = api
        .shards
        .values()
        .map(|shard| {
            let (leader, term) = shard.leader_and_term();
            let feed = shard.feed();
            shard.read(|s| {
                let nodes: Vec<&String> = s.region_nodes().map(|n| &n.start.node_id).collect();
                RegionStatus {
                    name: shard.region.clone(),
                    leader,
                    term,
                    applied_height: s.chain.height,
                    nodes: nodes.len(),
                    nodes_up: nodes.iter().filter(|n| !s.down.contains(n.as_str()) && shard.is_fresh(n)).count(),
                    instances_placed: s.placements.values().map(|p| p.len()).sum(),
                    instances_healthy: feed.routes.iter().filter(|r| r.primary).count(),
                    feed_version: feed.version,
                }
            })
        })
        .collect();
    Ok(axum::Json(StatusView { chain_height, chain_tip, regions }))
}

fn any_shard(api: &Api) -> Result<&Arc<Shard>, ApiError> {
    api.shards.values().next().ok_or_else(|| ApiError::internal("this process serves no shard"))
}

async fn regions(State(api): State<Arc<Api>>) -> ApiResult<Vec<RegionView>> {
    let regions = any_shard(&api)?.read(|s| s.chain.regions.clone());
    Ok(axum::Json(
        regions
            .into_iter()
            .map(|r| RegionView { name: r.name, continent: r.continent, center: r.center, api: api.public_url.clone() })
            .collect(),
    ))
}

fn app_view(api: &Api, name: &str) -> Result<AppView, ApiError> {
    let record = any_shard(api)?
        .read(|s| s.chain.apps.get(name).cloned())
        .ok_or_else(|| ApiError::not_found(format!("app `{name}` is not registered")))?;
    let quotas = any_shard(api)?.read(|s| region_quotas(&record.spec, &s.chain));
    let mut placements = Vec::new();
    let mut shortfall = BTreeMap::new();
    for shard in api.shards.values() {
        let (placed, short, down) = shard.read(|s| {
            (s.placements.get(name).cloned().unwrap_or_default(), s.shortfall.get(name).cloned(), s.down.clone())
        });
        if let Some(why) = short {
            shortfall.insert(shard.region.clone(), why);
        }
        for p in placed.values() {
            let id = p.instance_id();
            let report = shard.reports(&p.node).into_iter().find(|r| r.id == id);
            let state = if down.contains(&p.node) || !shard.is_fresh(&p.node) {
                InstanceState::NodeDown
            } else {
                match &report {
                    Some(r) if r.healthy && r.spec_height == record.updated_height => InstanceState::Running,
                    Some(r) if r.spec_height == record.updated_height => InstanceState::Unhealthy,
                    _ => InstanceState::Starting,
                }
            };
            placements.push(InstanceView {
                id,
                node: p.node.clone(),
                region: p.region.clone(),
                state,
                endpoints: report.as_ref().map(|r| r.endpoints.clone()).unwrap_or_default(),
                message: report.and_then(|r| r.message),
            });
        }
    }
    let quota_total: u32 = quotas.values().sum();
    if quota_total < record.spec.instances {
        // Not a region's shortfall: no region has enough eligible nodes at all.
        shortfall.insert(
            "all".into(),
            format!(
                "only {quota_total} of {} instances can be placed: too few nodes match the geolocation rules ({})",
                record.spec.instances,
                if record.spec.geolocation.is_empty() {
                    "anywhere".to_string()
                } else {
                    record.spec.geolocation.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(", ")
                }
            ),
        );
    }
    Ok(AppView {
        name: record.spec.name.clone(),
        owner: record.owner,
        description: record.spec.description.clone(),
        instances: record.spec.instances,
        geolocation: record.spec.geolocation.iter().map(|g| g.to_string()).collect(),
        registered_height: record.registered_height,
        updated_height: record.updated_height,
        expires_height: record.expires_height,
        quotas,
        placements,
        shortfall,
        components: record.spec.components,
    })
}

async fn list_apps(State(api): State<Arc<Api>>) -> ApiResult<Vec<AppView>> {
    let names: Vec<String> = any_shard(&api)?.read(|s| s.chain.apps.keys().cloned().collect());
    Ok(axum::Json(names.iter().filter_map(|n| app_view(&api, n).ok()).collect()))
}

async fn get_app(State(api): State<Arc<Api>>, Path(name): Path<String>) -> ApiResult<AppView> {
    app_view(&api, &name).map(axum::Json)
}

async fn list_nodes(State(api): State<Arc<Api>>) -> ApiResult<Vec<NodeView>> {
    let mut out = Vec::new();
    for shard in api.shards.values() {
        shard.read(|s| {
            for n in s.region_nodes() {
                let id = &n.start.node_id;
                out.push(NodeView {
                    id: id.clone(),
                    region: n.start.region.clone(),
                    tier: n.tier,
                    geo: n.start.geo,
                    continent: n.start.continent.clone(),
                    country: n.start.country.clone(),
                    capabilities: n.start.capabilities.clone(),
                    up: !s.down.contains(id) && shard.is_fresh(id),
                    last_heartbeat_ms_ago: shard.since_heartbeat(id).map(|d| d.as_millis() as u64),
                    instances: s.placements_on(id).count(),
                    free: n.resources().saturating_sub(&s.used_on(id)),
                });
            }
        });
    }
    Ok(axum::Json(out))
}

async fn wallet(State(api): State<Arc<Api>>, Path(address): Path<String>) -> ApiResult<WalletView> {
    let state = api.devnet.state();
    let address = model::keys::PublicKeyHex(address);
    Ok(axum::Json(WalletView {
        balance: state.balances.get(&address).copied().unwrap_or(0),
        nonce: state.nonces.get(&address).copied().unwrap_or(0),
        address,
    }))
}

async fn submit_tx(State(api): State<Arc<Api>>, body: Bytes) -> ApiResult<SubmitTxResponse> {
    let stx: SignedTx = parse_json(&body)?;
    stx.verify().map_err(TxError::BadSignature)?;
    if let Tx::AppRegister { spec, .. } | Tx::AppUpdate { spec, .. } = &stx.tx {
        if let Err(errors) = spec.validate_for_chain() {
            let mut e =
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_spec", format!("the app spec is invalid:\n{errors}"));
            e.fields = errors.0;
            return Err(e);
        }
        for (i, c) in spec.components.iter().enumerate() {
            if !c.wasm_hash().is_some_and(|h| api.blobs.contains(h)) {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "missing_module",
                    format!("component[{i}].wasm: {} was not uploaded; PUT it to /v1/blobs/<hash> first", c.wasm),
                ));
            }
        }
    }
    let tx_id = api.devnet.submit(stx).map_err(|e| match e {
        SubmitError::Invalid(e) => ApiError::from(e),
        SubmitError::Busy => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", e.to_string()),
    })?;
    Ok(axum::Json(SubmitTxResponse { tx_id, height: api.devnet.tip().0 }))
}

async fn tx_status(State(api): State<Arc<Api>>, Path(id): Path<String>) -> ApiResult<TxStatus> {
    Ok(axum::Json(api.devnet.tx_status(&id)))
}

async fn block(State(api): State<Arc<Api>>, Path(height): Path<u64>) -> ApiResult<model::chain::Block> {
    match api.devnet.block(height).map_err(ApiError::internal)? {
        Some(b) => Ok(axum::Json(b)),
        None => Err(ApiError::not_found(format!("block {height} is not produced yet (tip {})", api.devnet.tip().0))),
    }
}

async fn put_blob(State(api): State<Arc<Api>>, Path(hash): Path<String>, body: Bytes) -> Result<StatusCode, ApiError> {
    api.blobs.put(&hash, &body).map_err(|e| match e {
        BlobError::Io(e) => ApiError::internal(e),
        e => ApiError::bad_request(e.to_string()),
    })?;
    Ok(StatusCode::NO_CONTENT)
}

async fn get_blob(State(api): State<Arc<Api>>, Path(hash): Path<String>) -> Result<Vec<u8>, ApiError> {
    match api.blobs.get(&hash) {
        Ok(Some(bytes)) => Ok(bytes),
        Ok(None) => Err(ApiError::not_found(format!("no blob {hash}"))),
        Err(BlobError::Io(e)) => Err(ApiError::internal(e)),
        Err(e) => Err(ApiError::bad_request(e.to_string())),
    }
}

/// Beats older or newer than this are refused, so a captured beat cannot be replayed later.
const HEARTBEAT_SKEW_MS: u64 = 30_000;

async fn heartbeat(State(api): State<Arc<Api>>, body: Bytes) -> ApiResult<Assignments> {
    let signed: SignedHeartbeat = parse_json(&body)?;
    let node_id = signed.beat.node.clone();
    let record = any_shard(&api)?
        .read(|s| s.chain.nodes.get(&node_id).cloned())
        .ok_or_else(|| ApiError::not_found(format!("node `{node_id}` is not started on chain")))?;
    signed.verify(&record.start.node_key).map_err(|e| {
        ApiError::new(StatusCode::UNAUTHORIZED, "bad_signature", format!("heartbeat of `{node_id}`: {e}"))
    })?;
    if chain::now_ms().abs_diff(signed.beat.at_ms) > HEARTBEAT_SKEW_MS {
        return Err(ApiError::bad_request("heartbeat timestamp is more than 30 s off; check the node's clock"));
    }
    let shard = api
        .shards
        .get(&record.start.region)
        .ok_or_else(|| ApiError::not_found(format!("region `{}` is not served here", record.start.region)))?;
    shard.record_heartbeat(&node_id, signed.beat.instances);
    let instances = shard.read(|s| {
        s.placements_on(&node_id)
            .filter_map(|p| {
                let app = s.chain.apps.get(&p.app)?;
                Some(Assignment {
                    id: p.instance_id(),
                    app: p.app.clone(),
                    spec_height: app.updated_height,
                    components: app.spec.components.clone(),
                })
            })
            .collect()
    });
    Ok(axum::Json(Assignments { instances }))
}

#[derive(Deserialize)]
struct FeedQuery {
    after: Option<u64>,
    wait_ms: Option<u64>,
}

/// The routing feed. With `after=V`, waits up to `wait_ms` (at most 30 s) for a version other
/// than V, so gateways learn of changes at once without polling hard.
async fn routes(
    State(api): State<Arc<Api>>,
    Path(region): Path<String>,
    Query(q): Query<FeedQuery>,
) -> ApiResult<RouteFeed> {
    let shard =
        api.shards.get(&region).ok_or_else(|| ApiError::not_found(format!("region `{region}` is not served here")))?;
    if let Some(after) = q.after {
        let mut rx = shard.subscribe();
        let wait = Duration::from_millis(q.wait_ms.unwrap_or(0).min(30_000));
        let _ = tokio::time::timeout(wait, rx.wait_for(|v| *v != after)).await;
    }
    Ok(axum::Json(shard.feed()))
}
