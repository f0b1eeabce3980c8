//! The node's own API, on its status listener: `/healthz`, and `/v1/logs/{instance}`, which
//! streams an instance's output to its app's owner (one JSON [`LogEntry`] per line), signed
//! requests only (see [`model::api::LogsRequest`]): each signed request is answered once, and
//! each app has at most [`MAX_FOLLOWS_PER_APP`] follow streams open on a node. Errors use the
//! API's JSON shape, `{"error": {"code", "message"}}`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use client::paths;
use futures::StreamExt;
use model::api::{ErrorBody, ErrorDetail, LogEntry, LogsRequest};
use serde::Deserialize;

const OWNER_HEADER: &str = LogsRequest::OWNER_HEADER;
const AT_HEADER: &str = LogsRequest::AT_HEADER;
const NONCE_HEADER: &str = LogsRequest::NONCE_HEADER;
const SIGNATURE_HEADER: &str = LogsRequest::SIGNATURE_HEADER;

/// Follow streams one app may hold open on one node; the next is refused with 429.
pub const MAX_FOLLOWS_PER_APP: usize = 8;
/// Nonces remembered at most; a node this busy refuses new logs requests with 429 until the
/// oldest leave the skew window.
const MAX_NONCES: usize = 100_000;

/// The agent, once it runs (the API listens before the node has joined).
pub type AgentSlot = Arc<OnceLock<agent::AgentHandle>>;

/// What the node proves its address with: its id, its key, and the address it advertises.
pub struct Identity {
    /// The node id.
    pub id: String,
    /// The node key (registered on chain).
    pub key: model::keys::Keypair,
    /// The API address the node reports in its beats, where the leader dials it.
    pub api: std::net::SocketAddr,
}

struct NodeApi {
    agent: AgentSlot,
    identity: Identity,
    /// Nonces of logs requests answered, with their signing time, for the skew window.
    nonces: Mutex<HashMap<String, u64>>,
    /// Follow streams open, by app.
    follows: Arc<Mutex<HashMap<String, usize>>>,
}

/// The node's router.
pub fn router(agent: AgentSlot, identity: Identity) -> axum::Router {
    let api = Arc::new(NodeApi { agent, identity, nonces: Mutex::default(), follows: Arc::default() });
    axum::Router::new()
        .route(paths::NODE_HEALTHZ, axum::routing::get(|| async { "ok\n" }))
        .route(paths::NODE_ADDRESS_PROOF, axum::routing::get(address_proof))
        .route(paths::NODE_LOGS_ROUTE, axum::routing::get(logs))
        .with_state(api)
        // Outermost, so that axum's own rejections (a bad query) leave as JSON too.
        .layer(axum::middleware::from_fn(serve::json_errors))
}

#[derive(Deserialize)]
struct ChallengeQuery {
    node: String,
    nonce: String,
}

/// Answers the leader's challenge: the node key's signature over this node, its advertised API
/// address and the nonce. Only for this node's own id, and a nonce of plain hex, so the key
/// signs nothing a caller chose but the nonce.
async fn address_proof(State(api): State<Arc<NodeApi>>, Query(q): Query<ChallengeQuery>) -> Response {
    let me = &api.identity;
    if q.node != me.id {
        return refuse(StatusCode::NOT_FOUND, "not_found", format!("this is node {}, not {}", me.id, q.node));
    }
    if q.nonce.is_empty() || q.nonce.len() > 64 || !q.nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
        return refuse(StatusCode::BAD_REQUEST, "bad_request", "the nonce is 1 to 64 hex digits");
    }
    axum::Json(model::api::AddressProof::sign(&me.id, &me.api.to_string(), &q.nonce, &me.key)).into_response()
}

#[derive(Deserialize)]
struct LogsQuery {
    /// Lines written at or after this time (ms since the epoch).
    #[serde(default)]
    since_ms: u64,
    /// The last N lines of each component.
    tail: Option<usize>,
    /// Keep the answer open and send lines as they are written.
    #[serde(default)]
    follow: bool,
}

fn refuse(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let detail = ErrorDetail { code: code.into(), message: message.into(), fields: Vec::new(), leader: None };
    (status, axum::Json(ErrorBody { error: detail })).into_response()
}

/// A refusal: status, code and message, answered in the API's JSON error shape.
struct Refusal(StatusCode, &'static str, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        refuse(self.0, self.1, self.2)
    }
}

impl NodeApi {
    /// Takes the request's nonce; refuses one already answered within the skew window.
    fn take_nonce(&self, request: &LogsRequest) -> Result<(), Refusal> {
        let now = chain::now_ms();
        // The map holds plain data; one left by a panicking holder is still whole.
        let mut nonces = self.nonces.lock().unwrap_or_else(|e| e.into_inner());
        nonces.retain(|_, at| now.abs_diff(*at) <= LogsRequest::MAX_SKEW_MS);
        if nonces.contains_key(&request.nonce) {
            let why = "this signed request was already answered (a replay)".to_string();
            return Err(Refusal(StatusCode::UNAUTHORIZED, "unauthorized", why));
        }
        if nonces.len() >= MAX_NONCES {
            let why = "too many logs requests: try again in 30 s".to_string();
            return Err(Refusal(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", why));
        }
        nonces.insert(request.nonce.clone(), request.at_ms);
        Ok(())
    }

    /// A place among `app`'s follow streams, given back when the guard drops.
    fn follow_slot(&self, app: &str) -> Result<FollowSlot, Refusal> {
        let mut follows = self.follows.lock().unwrap_or_else(|e| e.into_inner());
        let open = follows.entry(app.to_string()).or_default();
        if *open >= MAX_FOLLOWS_PER_APP {
            return Err(Refusal(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                format!("{app} already has {MAX_FOLLOWS_PER_APP} follow streams open on this node"),
            ));
        }
        *open += 1;
        Ok(FollowSlot { follows: self.follows.clone(), app: app.to_string() })
    }
}

/// One open follow stream of an app; dropped with the response body.
struct FollowSlot {
    follows: Arc<Mutex<HashMap<String, usize>>>,
    app: String,
}

impl Drop for FollowSlot {
    fn drop(&mut self) {
        let mut follows = self.follows.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(open) = follows.get_mut(&self.app) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                follows.remove(&self.app);
            }
        }
    }
}

async fn logs(
    State(api): State<Arc<NodeApi>>,
    Path(instance): Path<String>,
    Query(q): Query<LogsQuery>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let (Some(owner), Some(at), Some(nonce), Some(signature)) =
        (header(OWNER_HEADER), header(AT_HEADER), header(NONCE_HEADER), header(SIGNATURE_HEADER))
    else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            format!(
                "a logs request is signed by the app's owner ({OWNER_HEADER}, {AT_HEADER}, {NONCE_HEADER}, \
                 {SIGNATURE_HEADER})"
            ),
        );
    };
    let Ok(at_ms) = at.parse::<u64>() else {
        return refuse(StatusCode::BAD_REQUEST, "bad_request", format!("{AT_HEADER} must be ms since the epoch"));
    };
    // What was signed is the request as it arrived: its method, path and query.
    let path_and_query = uri.path_and_query().map_or_else(|| uri.path().to_string(), |p| p.as_str().to_string());
    let request = LogsRequest {
        method: method.as_str().to_string(),
        path_and_query,
        at_ms,
        nonce,
        owner: model::keys::PublicKeyHex(owner),
        signature,
    };
    let Some(agent) = api.agent.get() else {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the node has not joined its region yet");
    };
    let buffers = match agent.logs(&instance, &request) {
        Ok(b) => b,
        Err(agent::LogsRefused::Unauthenticated(why)) => return refuse(StatusCode::UNAUTHORIZED, "unauthorized", why),
        Err(agent::LogsRefused::NotOwner) => {
            let why = format!("only the owner of {instance}'s app may read its logs");
            return refuse(StatusCode::FORBIDDEN, "forbidden", why);
        }
        Err(agent::LogsRefused::Unknown(why)) => return refuse(StatusCode::NOT_FOUND, "not_found", why),
    };
    if let Err(refused) = api.take_nonce(&request) {
        return refused.into_response();
    }
    let app = instance.split('@').next().unwrap_or(&instance).to_string();
    let slot = if q.follow {
        match api.follow_slot(&app) {
            Ok(slot) => Some(slot),
            Err(refused) => return refused.into_response(),
        }
    } else {
        None
    };
    let entry = |component: &str, line: runtime::LogLine| LogEntry {
        instance: instance.clone(),
        component: component.to_string(),
        at_ms: line.at_ms,
        stream: match line.stream {
            runtime::LogStream::Stdout => "stdout".into(),
            runtime::LogStream::Stderr => "stderr".into(),
        },
        text: line.text,
    };
    let mut past = Vec::new();
    let mut followers = Vec::new();
    for (component, buffer) in &buffers {
        let (lines, follower) = buffer.read_and_follow(q.since_ms, q.tail);
        past.extend(lines.into_iter().map(|l| entry(component, l)));
        if q.follow {
            followers.push((component.clone(), follower));
        }
    }
    past.sort_by_key(|e| e.at_ms);
    let past = futures::stream::iter(past);
    let live = futures::stream::select_all(followers.into_iter().map(|(component, rx)| {
        let instance = instance.clone();
        futures::stream::unfold(rx, move |mut rx| {
            let (component, instance) = (component.clone(), instance.clone());
            async move {
                loop {
                    match rx.recv().await {
                        Ok(line) => {
                            let stream = match line.stream {
                                runtime::LogStream::Stdout => "stdout",
                                runtime::LogStream::Stderr => "stderr",
                            };
                            let e = LogEntry {
                                instance,
                                component,
                                at_ms: line.at_ms,
                                stream: stream.into(),
                                text: line.text,
                            };
                            return Some((e, rx));
                        }
                        // A reader this far behind skips ahead rather than hold the node's memory.
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        })
        .boxed()
    }));
    let body = past.chain(live).map(move |e| {
        // The stream holds the follow slot, so it is given back when the client goes.
        let _held = &slot;
        let mut line = serde_json::to_vec(&e).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, std::convert::Infallible>(Bytes::from(line))
    });
    ([(axum::http::header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(body)).into_response()
}
