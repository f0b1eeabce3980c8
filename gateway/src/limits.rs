//! Limits against hostile clients that are applied per request: requests in flight per client
//! address (429), and the request body's size per app (413), pace (408) and the memory all
//! bodies may hold (503). The per-connection limits (header size and time, keep-alive, number
//! of connections) are the server's, in `server.rs`.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use dashmap::DashMap;
use http::{HeaderValue, StatusCode};
use tower::Service;

use crate::body::{BodyFault, FaultCell, LimitedBody, text};
use crate::host::Target;
use crate::metrics::inc;
use crate::stack::{BoxFuture, Peer, Req, Resp};

/// Requests in flight per client address.
#[derive(Debug, Default)]
pub struct ClientCounts {
    by_ip: DashMap<IpAddr, u32>,
}

impl ClientCounts {
    fn enter(self: &Arc<Self>, ip: IpAddr, max: u32) -> Option<ClientTicket> {
        let mut n = self.by_ip.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ClientTicket { counts: self.clone(), ip })
    }

    /// Addresses with a request in flight.
    pub fn len(&self) -> usize {
        self.by_ip.len()
    }
}

/// One request's place in its client's count; the entry goes when the count reaches 0, so the
/// map holds only clients with requests in flight.
struct ClientTicket {
    counts: Arc<ClientCounts>,
    ip: IpAddr,
}

impl Drop for ClientTicket {
    fn drop(&mut self) {
        self.counts.by_ip.remove_if_mut(&self.ip, |_, n| {
            *n -= 1;
            *n == 0
        });
    }
}

crate::stack::layer_service! {
    /// Turns away a client with too many requests in flight (429).
    ClientLimit
}

impl<S> Service<Req> for ClientLimit<S>
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

    fn call(&mut self, req: Req) -> Self::Future {
        let Some(peer) = req.extensions().get::<Peer>().map(|p| p.addr) else {
            return Box::pin(async { Ok(text(StatusCode::INTERNAL_SERVER_ERROR, "request without its peer")) });
        };
        let max = self.shared.config.limits.max_in_flight_per_client;
        // Behind a trusted proxy every client shares its address: counted by the forwarded one.
        let client = self.shared.client_ip(&req, peer.ip()).to_canonical();
        let Some(ticket) = self.shared.clients.enter(client, max) else {
            inc(&self.shared.metrics.refused_client_in_flight);
            return Box::pin(async move {
                let mut resp =
                    text(StatusCode::TOO_MANY_REQUESTS, format!("more than {max} requests in flight from one address"));
                resp.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
                Ok(resp)
            });
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await;
            // Counted until the response head: a long download does not hold the client's share.
            drop(ticket);
            resp
        })
    }
}

crate::stack::layer_service! {
    /// Puts the request body under its app's size limit, the body-read timeout and the memory
    /// cap, and answers for a body that broke one of them.
    BodyLimit
}

impl<S> Service<Req> for BodyLimit<S>
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

    fn call(&mut self, req: Req) -> Self::Future {
        let shared = self.shared.clone();
        let max = req.extensions().get::<Target>().map_or(u64::MAX, |t| t.routes.max_body);
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max) {
            inc(&shared.metrics.refused_body_too_large);
            return Box::pin(async move { Ok(too_large(max)) });
        }
        let (parts, body) = req.into_parts();
        let fault = FaultCell::default();
        let body = if hyper::body::Body::is_end_stream(&body) {
            body
        } else {
            crate::body::boxed(LimitedBody::new(
                body,
                max,
                shared.config.limits.body_idle_timeout,
                shared.body_memory.clone(),
                fault.clone(),
            ))
        };
        let fut = self.inner.call(Req::from_parts(parts, body));
        Box::pin(async move {
            let resp = fut.await?;
            // The instance may have answered the broken stream with anything (or the forward
            // layer with a 502): the client is told what it did wrong.
            Ok(match fault.get() {
                None => resp,
                Some(BodyFault::TooLarge) => {
                    inc(&shared.metrics.refused_body_too_large);
                    too_large(max)
                }
                Some(BodyFault::TooSlow) => {
                    inc(&shared.metrics.refused_body_too_slow);
                    text(
                        StatusCode::REQUEST_TIMEOUT,
                        format!(
                            "request body stalled: nothing received for {:?}",
                            shared.config.limits.body_idle_timeout
                        ),
                    )
                }
                Some(BodyFault::MemoryFull) => {
                    inc(&shared.metrics.refused_body_memory);
                    let mut resp =
                        text(StatusCode::SERVICE_UNAVAILABLE, "the gateway is holding too many request bodies");
                    resp.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
                    resp
                }
            })
        })
    }
}

fn too_large(max: u64) -> Resp {
    let mut resp = text(StatusCode::PAYLOAD_TOO_LARGE, format!("request body is over this app's limit of {max} bytes"));
    // The rest of the body is not read: the connection cannot be reused.
    resp.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    resp
}
