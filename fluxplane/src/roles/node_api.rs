//! The node's own API, on its status listener: `/healthz`, and `/v1/logs/{instance}`, which
//! streams an instance's output to its app's owner (one JSON [`LogEntry`] per line), signed
//! requests only (see [`model::api::LogsRequest`]).

use std::sync::{Arc, OnceLock};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use model::api::{LogEntry, LogsRequest};
use serde::Deserialize;

const OWNER_HEADER: &str = LogsRequest::OWNER_HEADER;
const AT_HEADER: &str = LogsRequest::AT_HEADER;
const SIGNATURE_HEADER: &str = LogsRequest::SIGNATURE_HEADER;

/// The agent, once it runs (the API listens before the node has joined).
pub type AgentSlot = Arc<OnceLock<agent::AgentHandle>>;

/// The node's router.
pub fn router(agent: AgentSlot) -> axum::Router {
    axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route("/v1/logs/{instance}", axum::routing::get(logs))
        .with_state(agent)
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

fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    (status, format!("{}\n", message.into())).into_response()
}

async fn logs(
    State(agent): State<AgentSlot>,
    Path(instance): Path<String>,
    Query(q): Query<LogsQuery>,
    headers: HeaderMap,
) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let (Some(owner), Some(at), Some(signature)) = (header(OWNER_HEADER), header(AT_HEADER), header(SIGNATURE_HEADER))
    else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            format!("a logs request is signed by the app's owner ({OWNER_HEADER}, {AT_HEADER}, {SIGNATURE_HEADER})"),
        );
    };
    let Ok(at_ms) = at.parse::<u64>() else {
        return refuse(StatusCode::BAD_REQUEST, format!("{AT_HEADER} must be ms since the epoch"));
    };
    let request = LogsRequest { instance: instance.clone(), at_ms, owner: model::keys::PublicKeyHex(owner), signature };
    let Some(agent) = agent.get() else {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "the node has not joined its region yet");
    };
    let buffers = match agent.logs(&request) {
        Ok(b) => b,
        Err(agent::LogsRefused::Unauthenticated(why)) => return refuse(StatusCode::UNAUTHORIZED, why),
        Err(agent::LogsRefused::NotOwner) => {
            return refuse(StatusCode::FORBIDDEN, format!("only the owner of {instance}'s app may read its logs"));
        }
        Err(agent::LogsRefused::Unknown(why)) => return refuse(StatusCode::NOT_FOUND, why),
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
    let body = past.chain(live).map(|e| {
        let mut line = serde_json::to_vec(&e).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, std::convert::Infallible>(Bytes::from(line))
    });
    ([(axum::http::header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(body)).into_response()
}
