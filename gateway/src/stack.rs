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
    let s = &shared;
    let service = ServiceBuilder::new()
        .layer(with_shared(s, crate::metrics::MetricsLayer::new))
        .layer(with_shared(s, crate::limits::ClientLimit::new))
        .layer(with_shared(s, crate::hygiene::Hygiene::new))
        .layer(with_shared(s, crate::host::HostRouting::new))
        .layer(with_shared(s, crate::locate::Locate::new))
        .layer(with_shared(s, crate::limits::BodyLimit::new))
        .layer(with_shared(s, crate::retry::Retry::new))
        .layer(with_shared(s, crate::select::Select::new))
        .service(crate::forward::Forward::new(shared.clone()));
    BoxCloneService::new(service)
}

/// The layer that wraps a service in `make(service, shared)`.
fn with_shared<S, L>(shared: &Arc<Shared>, make: fn(S, Arc<Shared>) -> L) -> impl tower::Layer<S, Service = L> {
    let shared = shared.clone();
    layer_fn(move |inner| make(inner, shared.clone()))
}

/// A layer's service: the service it wraps and what every layer shares, with `new`.
macro_rules! layer_service {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $name<S> {
            inner: S,
            shared: std::sync::Arc<crate::Shared>,
        }

        impl<S> $name<S> {
            pub fn new(inner: S, shared: std::sync::Arc<crate::Shared>) -> Self {
                $name { inner, shared }
            }
        }
    };
}
pub(crate) use layer_service;
