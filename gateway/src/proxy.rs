//! The proxy service: host routing, client location, nearest-first with retries.
//!
//! A request that provably never reached an instance (the connect failed) is retried on the
//! next instance whatever its method. An idempotent one (GET, HEAD, OPTIONS) is also retried
//! after a reset or when the response head does not come in time, since running it twice
//! changes nothing. Anything else that fails after it was sent is answered 502.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{HOST, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use model::geo::GeoPoint;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::forbidden::Forbidden;
use crate::routes::{RouteTable, follow};

/// The trusted client-location header.
pub const CLIENT_GEO: &str = "x-fluxplane-client-geo";
/// Largest request body buffered (bodies are buffered so a failed connect can be retried).
const MAX_BODY: usize = 16 << 20;

/// How a gateway is set up.
#[derive(Clone)]
pub struct GatewayConfig {
    /// The name it gives itself when it follows the feeds: the control plane tells `deploy
    /// --wait` which gateways hold which feed version.
    pub id: String,
    /// Where to listen.
    pub listen: SocketAddr,
    /// Apps answer at `<app>.app.<domain>`.
    pub domain: String,
    /// Control-plane URLs to learn regions and feeds from (any one finds them all).
    pub control: client::Client,
    /// Location used when the client's is unknown.
    pub geo: GeoPoint,
    /// Peers whose `x-fluxplane-client-geo` header is believed.
    pub trusted: Vec<IpAddr>,
    /// Longest a client may take to send a request body.
    pub body_timeout: Duration,
    /// Longest an instance may take to send its response head; an idempotent request is then
    /// tried on the next instance.
    pub response_header_timeout: Duration,
}

type Body = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

/// The gateway's request handler: the route table and the pool of connections to instances.
pub struct Gateway {
    config: GatewayConfig,
    table: Arc<ArcSwap<RouteTable>>,
    /// Listeners never dialed (its own, the control plane's); the feed followers add replicas.
    forbidden: Arc<ArcSwap<Forbidden>>,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// A running gateway: its listener and its feed followers.
pub struct GatewayHandle {
    server: serve::Server,
    stop_follow: watch::Sender<bool>,
}

impl GatewayHandle {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Stops accepting, finishes the requests in flight (within `deadline`), stops following.
    pub async fn drain(self, deadline: Duration) -> bool {
        let clean = self.server.drain(deadline).await;
        let _ = self.stop_follow.send(true);
        clean
    }
}

impl Gateway {
    /// Binds the listener and starts following the feeds.
    pub async fn spawn(config: GatewayConfig, limits: serve::Limits) -> anyhow::Result<GatewayHandle> {
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("binding the gateway on {}: {e}", config.listen))?;
        let table: Arc<ArcSwap<RouteTable>> = Arc::default();
        let mut forbidden = Forbidden::default();
        forbidden.add(listener.local_addr()?);
        for url in config.control.urls() {
            forbidden.add_url(url);
        }
        let forbidden = Arc::new(ArcSwap::from_pointee(forbidden));
        let (stop_follow, follow_stopped) = watch::channel(false);
        let follower =
            follow(config.id.clone(), config.control.clone(), table.clone(), forbidden.clone(), follow_stopped);
        tokio::spawn(follower);
        let client = instance_client();
        let gw = Arc::new(Gateway { config, table, forbidden, client });
        let server = gw.serve(listener, limits)?;
        Ok(GatewayHandle { server, stop_follow })
    }

    fn serve(self: Arc<Self>, listener: TcpListener, limits: serve::Limits) -> anyhow::Result<serve::Server> {
        let server = serve::spawn(listener, limits, move |peer: SocketAddr| {
            let gw = self.clone();
            hyper::service::service_fn(move |req| {
                let gw = gw.clone();
                async move { Ok::<_, std::convert::Infallible>(gw.handle(req, peer.ip()).await) }
            })
        })?;
        Ok(server)
    }

    /// The route key of a host: `<app>`, `<component>.<app>` or `<app>_<port>` under
    /// `.app.<domain>`, else the host as an app's custom domain.
    fn app_key(&self, host: &str) -> Option<String> {
        let host = host
            .rsplit_once(':')
            .map_or(host, |(h, port)| if port.bytes().all(|b| b.is_ascii_digit()) { h } else { host });
        let suffix = format!(".app.{}", self.config.domain);
        match host.strip_suffix(suffix.as_str()) {
            Some(key) if !key.is_empty() => Some(key.to_string()),
            Some(_) => None,
            None if model::spec::is_domain(host) => Some(crate::routes::domain_key(host)),
            None => None,
        }
    }

    async fn handle(&self, req: Request<Incoming>, peer: IpAddr) -> Response<Body> {
        let host = req
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .or(req.uri().host())
            .unwrap_or("")
            .to_ascii_lowercase();
        // `OPTIONS *` asks about the server, not a resource: answered here, never forwarded.
        if req.method() == Method::OPTIONS && req.uri().path() == "*" {
            let mut resp = text(StatusCode::NO_CONTENT, String::new());
            *resp.body_mut() = Full::new(Bytes::new()).map_err(|never| match never {}).boxed();
            resp.headers_mut().remove(http::header::CONTENT_TYPE);
            resp.headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS"));
            return resp;
        }
        let Some(key) = self.app_key(&host) else {
            return text(StatusCode::NOT_FOUND, format!("no app serves host `{host}`"));
        };
        let client_geo = if self.config.trusted.contains(&peer) {
            req.headers()
                .get(CLIENT_GEO)
                .and_then(|v| v.to_str().ok())
                .and_then(GeoPoint::parse)
                .unwrap_or(self.config.geo)
        } else {
            self.config.geo
        };
        let table = self.table.load();
        let Some(routes) = table.nearest(&key, &client_geo) else {
            return text(StatusCode::NOT_FOUND, format!("no app serves host `{host}`"));
        };
        if routes.is_empty() {
            // Registered, with no healthy instance: a moment, not a missing app.
            let mut resp = text(StatusCode::SERVICE_UNAVAILABLE, format!("`{host}` has no healthy instance right now"));
            resp.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from_static("2"));
            return resp;
        }
        let (mut parts, body) = req.into_parts();
        let body = match tokio::time::timeout(self.config.body_timeout, Limited::new(body, MAX_BODY).collect()).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(_)) => {
                return text(StatusCode::PAYLOAD_TOO_LARGE, format!("request body is over {} MB", MAX_BODY >> 20));
            }
            Err(_) => {
                return text(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("request body not received within {:?}", self.config.body_timeout),
                );
            }
        };
        parts.headers.remove(CLIENT_GEO);
        if let Ok(v) = HeaderValue::from_str(&peer.to_string()) {
            parts.headers.append(HeaderName::from_static("x-forwarded-for"), v);
        }
        let path = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
        let idempotent = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
        let mut last_error = String::new();
        let mut attempts = 0u32;
        let forbidden = self.forbidden.load();
        for route in routes.iter() {
            // Only an instance: an address:port that is none of the listeners the gateway knows.
            let Ok(addr) = route.addr.parse::<SocketAddr>() else { continue };
            if forbidden.contains(&addr) {
                tracing::warn!(node = %route.node, addr = %route.addr, "route to a control-plane or gateway listener: not dialed");
                last_error = format!("the route on {} is not an instance", route.node);
                continue;
            }
            let Ok(uri) = format!("http://{addr}{path}").parse::<Uri>() else { continue };
            let mut out = Request::from_parts(parts.clone(), Full::new(body.clone()));
            *out.uri_mut() = uri;
            attempts += 1;
            let failure =
                match tokio::time::timeout(self.config.response_header_timeout, self.client.request(out)).await {
                    Ok(Ok(resp)) => {
                        let (mut rparts, rbody) = resp.into_parts();
                        if let Ok(v) = HeaderValue::from_str(&route.node) {
                            rparts.headers.insert(HeaderName::from_static("x-fluxplane-node"), v);
                        }
                        if let Ok(v) = HeaderValue::from_str(&route.region) {
                            rparts.headers.insert(HeaderName::from_static("x-fluxplane-region"), v);
                        }
                        if attempts > 1 {
                            rparts
                                .headers
                                .insert(HeaderName::from_static("x-fluxplane-attempts"), HeaderValue::from(attempts));
                        }
                        return Response::from_parts(rparts, rbody.boxed());
                    }
                    // Never reached the instance: safe to send elsewhere, whatever the method.
                    Ok(Err(e)) if e.is_connect() => format!("connect to {} failed: {e}", route.node),
                    Ok(Err(e)) if idempotent => format!("instance on {} failed: {e}", route.node),
                    Ok(Err(e)) => {
                        return text(StatusCode::BAD_GATEWAY, format!("instance on {} failed: {e}", route.node));
                    }
                    Err(_) if idempotent => format!(
                        "instance on {} sent no response head within {:?}",
                        route.node, self.config.response_header_timeout
                    ),
                    Err(_) => {
                        return text(
                            StatusCode::GATEWAY_TIMEOUT,
                            format!(
                                "instance on {} sent no response head within {:?}",
                                route.node, self.config.response_header_timeout
                            ),
                        );
                    }
                };
            tracing::debug!(node = %route.node, "trying the next instance: {failure}");
            last_error = failure;
        }
        text(StatusCode::BAD_GATEWAY, format!("no instance of `{host}` could be reached: {last_error}"))
    }
}

/// The pool of connections to instances.
fn instance_client() -> Client<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(1)));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector)
}

fn text(status: StatusCode, message: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(message + "\n")).map_err(|never| match never {}).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

#[cfg(test)]
mod tests;
