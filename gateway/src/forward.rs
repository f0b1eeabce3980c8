//! The innermost service: sends the request to the chosen instance and feeds what happened
//! back into the instance's latency and passive health.
//!
//! A pooled connection that turns out closed before the request went out is replaced by a new
//! one, and the request, never sent, goes on it. A failed connect hands the request back
//! (nothing was sent) so the retry layer can send it elsewhere, whatever its method.
//! A WebSocket upgrade gets a connection of its own, and after the instance's 101 the two
//! upgraded connections are joined until either side closes.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderName, StatusCode, Version};
use tower::Service;

use crate::Shared;
use crate::body::{Lease, LeasedBody, boxed};
use crate::endpoint::Endpoint;
use crate::metrics::inc;
use crate::select::{Chosen, NoneAvailable};
use crate::stack::{BoxFuture, Req, Resp};

const X_FLUXPLANE_NODE: HeaderName = HeaderName::from_static("x-fluxplane-node");
const X_FLUXPLANE_REGION: HeaderName = HeaderName::from_static("x-fluxplane-region");

/// Why an attempt did not produce a response.
#[derive(Debug)]
pub enum Failure {
    /// Nothing reached the instance: here is the request back, to send elsewhere.
    NotSent { req: Box<Req>, endpoint: Arc<Endpoint>, why: String },
    /// The request went out and the exchange broke (reset, closed, or no response head in
    /// time).
    Broken { endpoint: Arc<Endpoint>, why: String, timed_out: bool },
    /// No instance could be chosen.
    NoInstance(NoneAvailable),
    /// The client's request body broke off or was malformed: a 400, nobody else's fault.
    ClientBody(String),
}

/// The instance that answered, on the response.
#[derive(Debug, Clone)]
pub struct Served(pub Arc<Endpoint>);

/// Sends requests to instances.
#[derive(Clone)]
pub struct Forward {
    shared: Arc<Shared>,
}

impl Forward {
    pub fn new(shared: Arc<Shared>) -> Self {
        Forward { shared }
    }
}

impl Shared {
    /// Counts a failure against `endpoint`, ejecting it when that was one too many.
    pub(crate) fn failed(&self, endpoint: &Endpoint, siblings: &[Arc<Endpoint>]) {
        // A fast 500 or refused connect must not look like a fast instance: failures count
        // as slow, so two choices steer away from an instance that fails.
        endpoint.observe_latency(crate::endpoint::FAILURE_LATENCY);
        if let Some(time) = endpoint.record_failure(siblings) {
            inc(&self.metrics.ejections);
            tracing::warn!(
                instance = %endpoint.instance,
                addr = %endpoint.addr,
                "ejected for {time:?} after {} consecutive failures",
                crate::endpoint::EJECT_AFTER_FAILURES
            );
            self.ejections_changed.notify_waiters();
        }
    }
}

impl Service<Req> for Forward {
    type Response = Resp;
    type Error = Failure;
    type Future = BoxFuture<Result<Resp, Failure>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Failure>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        let shared = self.shared.clone();
        let Some(Chosen(slot)) = req.extensions_mut().remove::<Chosen>() else {
            return Box::pin(async { Err(Failure::NoInstance(NoneAvailable::Exhausted)) });
        };
        let siblings = req.extensions().get::<crate::host::Target>().map(|t| t.routes.clone());
        let websocket = crate::hygiene::is_websocket(req.headers(), req.version());
        let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
        // Instances speak HTTP/1.1, whatever the client spoke.
        *req.version_mut() = Version::HTTP_11;
        Box::pin(async move {
            let endpoint = slot.endpoint().clone();
            let siblings = siblings.as_ref().map_or(&[][..], |s| s.endpoints.as_slice());
            let started = Instant::now();
            let (parts, body) = req.into_parts();
            let (body, body_sent) = crate::body::Sent::wrap(body);
            let mut req = Req::from_parts(parts, body);
            // An upgraded connection never goes back to the pool, so it never comes from it.
            let mut fresh = websocket;
            loop {
                let conn = if fresh { endpoint.connect().await } else { endpoint.connection().await };
                let mut conn = match conn {
                    Ok(c) => c,
                    Err(e) => {
                        inc(&shared.metrics.upstream_connect_errors);
                        shared.failed(&endpoint, siblings);
                        return Err(Failure::NotSent { req: Box::new(req), endpoint, why: e.0 });
                    }
                };
                // The wait for the head counts from the body's end: a slow upload is the
                // client's (its pace is bounded by the body idle timeout), not the instance's.
                let mut sent_rx = body_sent.clone();
                let head_timeout = shared.config.response_header_timeout;
                let waited = async move {
                    let _ = sent_rx.wait_for(|done| *done).await;
                    tokio::time::sleep(head_timeout).await;
                };
                let sent = tokio::select! {
                    r = conn.try_send_request(req) => Ok(r),
                    _ = waited => Err(()),
                };
                let resp = match sent {
                    Ok(Ok(resp)) => resp,
                    Ok(Err(mut e)) => match e.take_message() {
                        // The pooled connection had closed; the request never went out.
                        Some(back) if !fresh => {
                            req = back;
                            fresh = true;
                            continue;
                        }
                        back => {
                            let error = e.into_error();
                            if let Some(req) = back {
                                let why = format!("instance {} on {}: {error}", endpoint.addr, endpoint.node);
                                return Err(Failure::NotSent { req: Box::new(req), endpoint, why });
                            }
                            // The client's own body failing (cut off, malformed, over a limit)
                            // is not the instance's fault.
                            if error.is_user() {
                                return Err(Failure::ClientBody(format!(
                                    "the request body could not be read: {error}"
                                )));
                            }
                            inc(&shared.metrics.upstream_failures);
                            shared.failed(&endpoint, siblings);
                            let why = format!("instance {} on {}: {error}", endpoint.addr, endpoint.node);
                            return Err(Failure::Broken { endpoint, why, timed_out: false });
                        }
                    },
                    Err(_) => {
                        inc(&shared.metrics.upstream_failures);
                        shared.failed(&endpoint, siblings);
                        let why = format!(
                            "instance {} on {} sent no response head within {:?}",
                            endpoint.addr, endpoint.node, shared.config.response_header_timeout
                        );
                        return Err(Failure::Broken { endpoint, why, timed_out: true });
                    }
                };
                if resp.status().is_server_error() {
                    shared.failed(&endpoint, siblings);
                } else {
                    endpoint.observe_latency(started.elapsed());
                    endpoint.record_success();
                }
                let (mut parts, body) = resp.into_parts();
                parts.headers.insert(X_FLUXPLANE_NODE, endpoint.node_header.clone());
                parts.headers.insert(X_FLUXPLANE_REGION, endpoint.region_header.clone());
                parts.extensions.insert(Served(endpoint.clone()));
                let upgraded = parts.status == StatusCode::SWITCHING_PROTOCOLS;
                let mut resp = Resp::from_parts(parts, crate::body::empty());
                let lease = Lease { slot, conn: (!upgraded).then_some(conn) };
                if upgraded && let Some(client_upgrade) = client_upgrade {
                    inc(&shared.metrics.websocket_upgrades);
                    let instance_upgrade = hyper::upgrade::on(&mut resp);
                    tokio::spawn(tunnel(client_upgrade, instance_upgrade, lease));
                } else {
                    *resp.body_mut() = boxed(LeasedBody::new(body, lease));
                }
                return Ok(resp);
            }
        })
    }
}

/// Joins the client's and the instance's upgraded connections until either side closes.
/// The lease holds the instance's concurrency slot for as long.
async fn tunnel(client: hyper::upgrade::OnUpgrade, instance: hyper::upgrade::OnUpgrade, lease: Lease) {
    let (client, instance) = tokio::join!(client, instance);
    let (Ok(client), Ok(instance)) = (client, instance) else {
        tracing::debug!("an upgrade did not complete");
        return;
    };
    let mut client = hyper_util::rt::TokioIo::new(client);
    let mut instance = hyper_util::rt::TokioIo::new(instance);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut instance).await {
        tracing::trace!("upgraded connection ended: {e}");
    }
    drop(lease);
}
