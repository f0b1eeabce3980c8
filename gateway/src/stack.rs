//! The request path as one stack of small layers, and the one function that builds it.
//!
//! Each layer does one thing, in its own file; they share what they know through request
//! extensions ([`Peer`], [`crate::host::Target`], [`crate::locate::ClientGeo`], ...). Tests
//! drive the whole stack with `oneshot`, with no socket.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use http::{Request, Response};
use tower::ServiceBuilder;
use tower::layer::layer_fn;
use tower::util::BoxCloneService;

use crate::Shared;
use crate::body::Body;

pub type Req = Request<Body>;
pub type Resp = Response<Body>;
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The stack as the server holds it: cloned per connection.
pub type GatewayService = BoxCloneService<Req, Resp, Infallible>;

/// Who sent the request, set by the server on every request.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The connection's request-head verdicts (HTTP/1 only).
    pub framing: Option<crate::framing::Verdicts>,
}

/// Builds the request path, outermost layer first. Why each sits where it does:
///
/// 1. **metrics**: outermost, so that it counts every answer, the refusals of the layers
///    below included, and times the whole path.
/// 2. **client limits**: a client over its share of requests in flight is turned away before
///    any other work is spent on it.
/// 3. **hygiene**: refuses smuggling attempts (both `Content-Length` and `Transfer-Encoding`,
///    conflicting lengths) before anything trusts the framing, then strips hop-by-hop headers
///    and sets `x-forwarded-*` and `traceparent`, so every later layer sees clean headers.
/// 4. **host**: maps the host to an app (404 for none; never an open proxy) and redirects
///    plain HTTP to HTTPS when TLS is on. Everything below knows the app.
/// 5. **locate**: where the client is (GeoIP, then a trusted peer's header, then the
///    gateway's own place); only needed once the request is known to go to an app.
/// 6. **body limits**: the app's body size (413) and the body's pace, on the streamed body;
///    outside retry, since one body is sent at most once.
/// 7. **retry**: tries the next instance after a connect failure, and after a 5xx or a reset
///    for an idempotent request with no body, within the retry budget.
/// 8. **select**: nearest region first, two random choices by load within it; leaves the
///    region only when every local instance is ejected or full. Inside retry, so each attempt
///    chooses again without the instances already tried.
/// 9. **forward**: sends the request to the chosen instance over a pooled connection and
///    feeds the outcome back into the instance's latency and passive health.
pub fn build(shared: Arc<Shared>) -> GatewayService {
    let s = shared.clone();
    let service = ServiceBuilder::new()
        .layer(layer_fn({
            let s = s.clone();
            move |inner| crate::metrics::MetricsLayer::new(inner, s.clone())
        }))
        .layer(layer_fn({
            let s = s.clone();
            move |inner| crate::limits::ClientLimit::new(inner, s.clone())
        }))
        .layer(layer_fn({
            let s = s.clone();
            move |inner| crate::hygiene::Hygiene::new(inner, s.clone())
        }))
        .layer(layer_fn({
            let s = s.clone();
            move |inner| crate::host::HostRouting::new(inner, s.clone())
        }))
        .layer(layer_fn({
            let s = s.clone();
            move |inner| crate::locate::Locate::new(inner, s.clone())
        }))
        .layer(layer_fn({
            let s = s.clone();
            move |inner| crate::limits::BodyLimit::new(inner, s.clone())
        }))
        .layer(layer_fn({
            let s = s.clone();
            move |inner| crate::retry::Retry::new(inner, s.clone())
        }))
        .layer(layer_fn({
            let s = s.clone();
            move |inner| crate::select::Select::new(inner, s.clone())
        }))
        .service(crate::forward::Forward::new(shared));
    BoxCloneService::new(service)
}
