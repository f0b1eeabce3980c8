//! An axum middleware that keeps error answers in the API's shape: a 4xx/5xx whose body is not
//! JSON (a rejection from axum itself: a bad query string, a path that is not UTF-8, a wrong
//! method, a body over a limit) becomes `{"error": {"code", "message"}}`; and a leader redirect
//! keeps the request's path, so plain HTTP clients (`curl -L`) land on the same resource.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

/// Longest error body rewritten; axum's own messages are far shorter.
const MAX_REWRITTEN: usize = 64 << 10;

fn code_for(status: StatusCode) -> &'static str {
    match status.as_u16() {
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "timeout",
        413 => "payload_too_large",
        415 => "unsupported_media_type",
        400..=499 => "bad_request",
        _ => "internal",
    }
}

/// The middleware.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let path = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
    let mut resp = next.run(req).await;
    if resp.status() == StatusCode::TEMPORARY_REDIRECT
        && let Some(base) = resp.headers().get(header::LOCATION).and_then(|v| v.to_str().ok())
        && !base.trim_start_matches("http://").trim_start_matches("https://").contains('/')
        && let Ok(v) = HeaderValue::from_str(&format!("{base}{path}"))
    {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, MAX_REWRITTEN).await.unwrap_or_default();
    let message = String::from_utf8_lossy(&text).trim().to_string();
    let message = if message.is_empty() { status.canonical_reason().unwrap_or("error").to_string() } else { message };
    let json = serde_json::json!({ "error": { "code": code_for(status), "message": message } });
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(json.to_string()))
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::extract::Query;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    #[derive(serde::Deserialize)]
    struct Q {
        #[allow(dead_code)]
        n: u64,
    }

    fn app() -> Router {
        Router::new()
            .route("/q", get(|Query(_): Query<Q>| async { "ok" }))
            .route(
                "/moved",
                get(|| async {
                    let mut r = Response::new(Body::empty());
                    *r.status_mut() = StatusCode::TEMPORARY_REDIRECT;
                    r.headers_mut().insert(header::LOCATION, HeaderValue::from_static("http://leader:1"));
                    r
                }),
            )
            .layer(axum::middleware::from_fn(json_errors))
    }

    async fn call(uri: &str) -> (StatusCode, Option<String>, String) {
        let resp = app().oneshot(Request::get(uri).body(Body::empty()).expect("request")).await.expect("answer");
        let location = resp.headers().get(header::LOCATION).and_then(|v| v.to_str().ok()).map(String::from);
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.expect("body");
        (status, location, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn rejections_become_json_and_redirects_keep_the_path() {
        let (status, _, body) = call("/q?n=-1").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["error"]["code"], "bad_request");
        let (_, location, _) = call("/moved?stale=true").await;
        assert_eq!(location.as_deref(), Some("http://leader:1/moved?stale=true"));
        let (status, _, _) = call("/q?n=1").await;
        assert_eq!(status, StatusCode::OK);
    }
}
