//! Retries, on another instance each time.
//!
//! - A request that never reached an instance (the connect failed) is sent to the next one,
//!   whatever its method: nothing happened yet (Pingora's rule).
//! - After a 5xx, a reset, or no response head in time, only an idempotent request with no
//!   body is sent again: running it twice changes nothing, and no body was streamed away.
//! - Those second kind of retries come out of a budget of 20% of requests (plus a small
//!   reserve), so that a sick app does not get its load multiplied. Connect failures do not
//!   draw on it: they put no load on any instance.
//! - A response that took more than one attempt says how many in `x-fluxplane-attempts`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::task::{Context, Poll};

use http::header::HeaderValue;
use http::{HeaderName, Method, StatusCode};
use tower::{Service, ServiceExt};

use crate::Shared;
use crate::body::{empty, text};
use crate::forward::{Failure, Served};
use crate::host::Target;
use crate::metrics::inc;
use crate::select::{NoneAvailable, Tried};
use crate::stack::{BoxFuture, Req, Resp};

pub const X_FLUXPLANE_ATTEMPTS: HeaderName = HeaderName::from_static("x-fluxplane-attempts");
/// Most attempts per request, the first included.
pub const MAX_ATTEMPTS: u32 = 4;

/// Retries as a share of requests: each request adds `DEPOSIT` thousandths of a retry, each
/// retry takes a whole one.
#[derive(Debug)]
pub struct RetryBudget {
    milli: AtomicI64,
}

const DEPOSIT: i64 = 200;
const RETRY: i64 = 1000;
/// The reserve a quiet gateway starts with, and the most it saves up: ten retries.
const RESERVE: i64 = 10 * RETRY;

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget { milli: AtomicI64::new(RESERVE) }
    }
}

impl RetryBudget {
    fn deposit(&self) {
        let _ = self.milli.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| (m < RESERVE).then(|| m + DEPOSIT));
    }

    fn withdraw(&self) -> bool {
        self.milli.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| (m >= RETRY).then(|| m - RETRY)).is_ok()
    }
}

/// RFC 9110's idempotent methods.
fn idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

crate::stack::layer_service! {
    /// Tries again on the next instance when that is safe.
    Retry
}

/// What is kept of a request that may be sent again after it went out: all but its (empty)
/// body, and of its extensions those the layers below read.
struct Replay {
    method: Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
    target: Option<Target>,
    geo: Option<crate::locate::ClientGeo>,
}

impl Replay {
    fn of(req: &Req) -> Replay {
        Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
            target: req.extensions().get::<Target>().cloned(),
            geo: req.extensions().get::<crate::locate::ClientGeo>().copied(),
        }
    }

    fn request(&self) -> Req {
        let mut req = Req::new(empty());
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        if let Some(target) = &self.target {
            req.extensions_mut().insert(target.clone());
        }
        if let Some(geo) = self.geo {
            req.extensions_mut().insert(geo);
        }
        req
    }
}

impl<S> Service<Req> for Retry<S>
where
    S: Service<Req, Response = Resp, Error = Failure> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Resp;
    type Error = Infallible;
    type Future = BoxFuture<Result<Resp, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        let shared = self.shared.clone();
        let mut inner = self.inner.clone();
        Box::pin(async move {
            shared.budget.deposit();
            let host = req.extensions().get::<Target>().map(|t| t.host.clone()).unwrap_or_default();
            // Kept only when there is another instance to send it to.
            let others = req.extensions().get::<Target>().is_some_and(|t| t.routes.endpoints.len() > 1);
            let replay = (others
                && idempotent(req.method())
                && hyper::body::Body::is_end_stream(req.body())
                && !crate::hygiene::is_websocket(req.headers(), req.version()))
            .then(|| Replay::of(&req));
            let mut tried: Vec<Arc<crate::endpoint::Endpoint>> = Vec::new();
            let mut last_answer: Option<Resp> = None;
            let mut last_why = String::new();
            let mut attempts = 0u32;
            let (resp, attempts) = loop {
                attempts += 1;
                req.extensions_mut().insert(Tried(tried.clone()));
                let result = match inner.ready().await {
                    Ok(svc) => svc.call(req).await,
                    Err(e) => Err(e),
                };
                let again = |shared: &Shared| {
                    let ok = attempts < MAX_ATTEMPTS && shared.budget.withdraw();
                    if !ok && attempts < MAX_ATTEMPTS {
                        inc(&shared.metrics.retries_refused_by_budget);
                    }
                    ok
                };
                match result {
                    Ok(resp) if resp.status().is_server_error() && replay.is_some() => {
                        let Some(Served(endpoint)) = resp.extensions().get::<Served>().cloned() else {
                            break (resp, attempts);
                        };
                        if !again(&shared) {
                            break (resp, attempts);
                        }
                        tried.push(endpoint);
                        last_answer = Some(resp);
                    }
                    Ok(resp) => break (resp, attempts),
                    Err(Failure::NotSent { req: back, endpoint, why }) => {
                        tried.push(endpoint);
                        last_why = why;
                        if attempts >= MAX_ATTEMPTS {
                            break (unreachable(&host, &last_why), attempts);
                        }
                        inc(&shared.metrics.retries);
                        req = *back;
                        continue;
                    }
                    Err(Failure::Broken { endpoint, why, timed_out }) => {
                        tried.push(endpoint);
                        if replay.is_none() || !again(&shared) {
                            let status = if timed_out { StatusCode::GATEWAY_TIMEOUT } else { StatusCode::BAD_GATEWAY };
                            break (text(status, why), attempts);
                        }
                        last_why = why;
                    }
                    Err(Failure::ClientBody(why)) => break (text(StatusCode::BAD_REQUEST, why), attempts),
                    Err(Failure::NoInstance(none)) => {
                        if let Some(resp) = last_answer.take() {
                            break (resp, attempts - 1);
                        }
                        if !tried.is_empty() {
                            break (unreachable(&host, &last_why), attempts - 1);
                        }
                        let resp = match none {
                            NoneAvailable::AllFull => {
                                inc(&shared.metrics.all_full);
                                let mut resp = text(
                                    StatusCode::SERVICE_UNAVAILABLE,
                                    format!("every instance of `{host}` is at its concurrency limit"),
                                );
                                resp.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
                                resp
                            }
                            NoneAvailable::Exhausted => {
                                let mut resp = text(
                                    StatusCode::SERVICE_UNAVAILABLE,
                                    format!("`{host}` has no instance to send to right now"),
                                );
                                resp.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from_static("2"));
                                resp
                            }
                        };
                        break (resp, attempts - 1);
                    }
                }
                // Sent again after it went out: only a replayable request gets here.
                let Some(replay) = &replay else { break (unreachable(&host, &last_why), attempts) };
                inc(&shared.metrics.retries);
                req = replay.request();
            };
            let mut resp = resp;
            if attempts > 1 {
                resp.headers_mut().insert(X_FLUXPLANE_ATTEMPTS, HeaderValue::from(attempts));
            }
            Ok(resp)
        })
    }
}

fn unreachable(host: &str, why: &str) -> Resp {
    text(StatusCode::BAD_GATEWAY, format!("no instance of `{host}` could be reached: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_allows_a_fifth_of_requests_after_its_reserve() {
        let b = RetryBudget::default();
        let mut allowed = 0;
        while b.withdraw() {
            allowed += 1;
        }
        assert_eq!(allowed, 10, "the reserve");
        for _ in 0..100 {
            b.deposit();
        }
        let mut more = 0;
        while b.withdraw() {
            more += 1;
        }
        assert_eq!(more, 10, "20% of 100 requests, capped by what can be saved");
        for _ in 0..20 {
            b.deposit();
        }
        assert!(b.withdraw() && b.withdraw() && b.withdraw() && b.withdraw());
        assert!(!b.withdraw());
    }
}
