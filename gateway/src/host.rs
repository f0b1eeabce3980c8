//! Host resolution: which app a request is for.
//!
//! The host comes from the request target when it is in absolute form (HTTP/1.1 says it wins)
//! or from `:authority`, else from `Host`; when both are given and differ the request is
//! refused, since a proxy in front may have read the other one. The host must be an app's:
//! `<app>`, `<component>.<app>` or `<app>_<port>` under `.app.<domain>`, or a custom domain an
//! app claims. The request goes on in origin form with `Host` set, so whatever the client
//! wrote, traffic only ever reaches an app's instances: the gateway is not an open proxy.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Method, StatusCode};
use tower::Service;

use crate::body::{empty, text};
use crate::stack::{BoxFuture, Peer, Req, Resp};
use crate::table::{AppRoutes, domain_key};

/// The app a request is for, set on the request by this layer.
#[derive(Debug, Clone)]
pub struct Target {
    /// The host as the client named it, lower case, without a port.
    pub host: String,
    pub routes: Arc<AppRoutes>,
}

/// The route key of a host (lower case, without port): `<app>`, `<component>.<app>` or
/// `<app>_<port>` under `.app.<domain>`, else the host as an app's custom domain.
pub fn app_key(host: &str, domain: &str) -> Option<String> {
    if let Some(before) = host.strip_suffix(domain) {
        // `app.<domain>` itself is no app's.
        if before == "app." {
            return None;
        }
        if let Some(key) = before.strip_suffix(".app.") {
            return (!key.is_empty()).then(|| key.to_string());
        }
    }
    model::spec::is_domain(host).then(|| domain_key(host))
}

/// `host[:port]` without the port, lower case; `None` when it is not a plain host name.
fn host_only(authority: &str) -> Option<String> {
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => {
            port.parse::<u16>().ok()?;
            h
        }
        _ => authority,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    (!host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_'))
        .then(|| host.to_ascii_lowercase())
}

crate::stack::layer_service! {
    /// Maps the host to its app.
    HostRouting
}

impl<S> Service<Req> for HostRouting<S>
where
    S: Service<Req, Response = Resp, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Resp;
    type Error = Infallible;
    type Future = BoxFuture<Result<Resp, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        let answer = |resp: Resp| -> Self::Future { Box::pin(async move { Ok(resp) }) };
        // `OPTIONS *` asks about the server, not a resource: answered here, never forwarded.
        if req.method() == Method::OPTIONS && req.uri() == "*" {
            let mut resp = Resp::new(empty());
            *resp.status_mut() = StatusCode::NO_CONTENT;
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS"));
            return answer(resp);
        }
        if req.method() == Method::CONNECT {
            return answer(text(StatusCode::METHOD_NOT_ALLOWED, "CONNECT: this gateway is not a forward proxy"));
        }
        if req.uri() == "*" {
            return answer(text(StatusCode::BAD_REQUEST, "`*` is a target for OPTIONS only"));
        }
        if req.uri().scheme().is_some_and(|s| *s != http::uri::Scheme::HTTP && *s != http::uri::Scheme::HTTPS) {
            return answer(text(StatusCode::BAD_REQUEST, "the request target's scheme is not http or https"));
        }
        // RFC 9112 §3.2: more than one Host is a 400.
        if req.headers().get_all(header::HOST).iter().nth(1).is_some() {
            return answer(text(StatusCode::BAD_REQUEST, "more than one Host header"));
        }
        let from_target = req.uri().authority().map(|a| a.as_str().to_string());
        let from_header = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string);
        let named = match (&from_target, &from_header) {
            (Some(t), Some(h)) if host_only(t) != host_only(h) => {
                return answer(text(
                    StatusCode::BAD_REQUEST,
                    format!("the request target names `{t}` but Host is `{h}`"),
                ));
            }
            (Some(a), _) | (None, Some(a)) => a.clone(),
            (None, None) => return answer(text(StatusCode::BAD_REQUEST, "the request names no host")),
        };
        let Some(host) = host_only(&named) else {
            return answer(text(StatusCode::BAD_REQUEST, "the Host header is not a host name"));
        };
        let tls = req.extensions().get::<Peer>().is_some_and(|p| p.tls);
        if !tls && let Some(https_port) = self.shared.https_port {
            let path = req.uri().path_and_query().map_or("/", PathAndQuery::as_str);
            let location = if https_port == 443 {
                format!("https://{host}{path}")
            } else {
                format!("https://{host}:{https_port}{path}")
            };
            let mut resp = text(StatusCode::PERMANENT_REDIRECT, format!("moved to {location}"));
            if let Ok(v) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            return answer(resp);
        }
        let table = self.shared.table.load();
        let routes = app_key(&host, &self.shared.config.domain).and_then(|key| table.get(&key).cloned());
        let Some(routes) = routes else {
            return answer(text(StatusCode::NOT_FOUND, format!("no app serves host `{host}`")));
        };
        if routes.endpoints.is_empty() {
            // Registered, with no healthy instance: a moment, not a missing app.
            let mut resp = text(StatusCode::SERVICE_UNAVAILABLE, format!("`{host}` has no healthy instance right now"));
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
            return answer(resp);
        }
        // Origin form from here on, with the host the client named.
        let path = req.uri().path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(path);
        if let Ok(v) = HeaderValue::from_str(&named) {
            req.headers_mut().insert(header::HOST, v);
        }
        req.extensions_mut().insert(Target { host, routes });
        Box::pin(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_map_to_keys() {
        assert_eq!(app_key("hello.app.test", "test").as_deref(), Some("hello"));
        assert_eq!(app_key("web.hello.app.test", "test").as_deref(), Some("web.hello"));
        assert_eq!(app_key("shop_31000.app.test", "test").as_deref(), Some("shop_31000"));
        assert_eq!(app_key("app.test", "test"), None);
        assert_eq!(app_key("myapp.test", "test").as_deref(), Some("domain:myapp.test"));
        assert_eq!(app_key("shop.example.com", "test").as_deref(), Some("domain:shop.example.com"));
        assert_eq!(host_only("Hello.App.Test:8080").as_deref(), Some("hello.app.test"));
        assert_eq!(host_only("hello.app.test.").as_deref(), Some("hello.app.test"));
        assert_eq!(host_only("evil/host"), None);
        assert_eq!(host_only("[::1]:80"), None);
        assert_eq!(host_only("hello.app.test:999999999999"), None);
        assert_eq!(host_only("user@hello.app.test"), None);
    }
}
