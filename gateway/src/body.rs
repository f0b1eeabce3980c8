//! The bodies that pass through the gateway, streamed and never buffered whole.
//!
//! - [`Body`]: what every layer passes (a boxed stream of frames).
//! - [`LimitedBody`]: a client's request body under its app's size limit, an inactivity timeout
//!   and the gateway-wide cap on body bytes held.
//! - [`LeasedBody`]: an instance's response body, holding the instance's concurrency slot and
//!   its connection until the last frame, when the connection goes back to the pool.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};
use hyper::client::conn::http1::SendRequest;

use crate::endpoint::Slot;

pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A request or response body as the layers pass it. A type of its own rather than an alias
/// of the boxed body: rustc cannot prove an alias with a `dyn Error` in it `Send` for every
/// lifetime in the layers' bounds.
pub struct Body(http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>);

/// Boxes any body into a [`Body`].
pub fn boxed<B>(body: B) -> Body
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    Body(body.map_err(Into::into).boxed_unsync())
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.0).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Body")
    }
}

/// An empty body.
pub fn empty() -> Body {
    boxed(http_body_util::Empty::<Bytes>::new())
}

/// A plain-text answer from the gateway itself.
pub fn text(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    let mut message = message.into();
    message.push('\n');
    let mut resp = Response::new(boxed(http_body_util::Full::new(Bytes::from(message))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// Why a request body stopped: read by the layer that answers the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFault {
    TooLarge,
    TooSlow,
    MemoryFull,
}

impl std::fmt::Display for BodyFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BodyFault::TooLarge => "request body over the app's limit",
            BodyFault::TooSlow => "request body stalled",
            BodyFault::MemoryFull => "gateway body memory full",
        })
    }
}

impl std::error::Error for BodyFault {}

/// Where a [`LimitedBody`] reports why it stopped, for the response.
#[derive(Debug, Default, Clone)]
pub struct FaultCell(Arc<std::sync::Mutex<Option<BodyFault>>>);

impl FaultCell {
    fn set(&self, fault: BodyFault) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(fault);
    }

    pub fn get(&self) -> Option<BodyFault> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The bytes all request bodies in flight hold: each frame counts from when it is read from
/// the client until the next one is asked for (by then the instance's connection took it).
#[derive(Debug)]
pub struct BodyMemory {
    held: AtomicUsize,
    cap: usize,
}

impl BodyMemory {
    pub fn new(cap: usize) -> Arc<BodyMemory> {
        Arc::new(BodyMemory { held: AtomicUsize::new(0), cap })
    }

    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    fn take(&self, n: usize) -> bool {
        self.held.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |h| (h + n <= self.cap).then_some(h + n)).is_ok()
    }

    fn give(&self, n: usize) {
        self.held.fetch_sub(n, Ordering::AcqRel);
    }
}

/// A client's request body under the limits.
pub struct LimitedBody {
    inner: Body,
    max: u64,
    seen: u64,
    idle: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    memory: Arc<BodyMemory>,
    /// Bytes of the last frame, still counted in `memory`.
    holding: usize,
    fault: FaultCell,
}

impl LimitedBody {
    pub fn new(inner: Body, max: u64, idle: Duration, memory: Arc<BodyMemory>, fault: FaultCell) -> LimitedBody {
        LimitedBody { inner, max, seen: 0, idle, timer: None, memory, holding: 0, fault }
    }

    fn release(&mut self) {
        if self.holding > 0 {
            self.memory.give(self.holding);
            self.holding = 0;
        }
    }

    fn fail(&mut self, fault: BodyFault) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.fault.set(fault);
        self.release();
        Poll::Ready(Some(Err(Box::new(fault))))
    }
}

impl hyper::body::Body for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        this.release();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {
                let idle = this.idle;
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                ready!(timer.as_mut().poll(cx));
                this.fail(BodyFault::TooSlow)
            }
            Poll::Ready(Some(Ok(frame))) => {
                this.timer = None;
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if this.seen > this.max {
                        return this.fail(BodyFault::TooLarge);
                    }
                    if !this.memory.take(data.len()) {
                        return this.fail(BodyFault::MemoryFull);
                    }
                    this.holding = data.len();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => {
                this.timer = None;
                other
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LimitedBody {
    fn drop(&mut self) {
        self.release();
    }
}

use std::future::Future as _;

/// An instance's response body with what it holds until the end.
pub struct LeasedBody {
    inner: hyper::body::Incoming,
    lease: Option<Lease>,
}

/// Held for the length of a response: the slot, and the connection to give back at the end.
pub struct Lease {
    pub slot: Arc<Slot>,
    pub conn: Option<SendRequest<Body>>,
}

impl LeasedBody {
    pub fn new(inner: hyper::body::Incoming, lease: Lease) -> LeasedBody {
        let mut body = LeasedBody { inner, lease: Some(lease) };
        if hyper::body::Body::is_end_stream(&body.inner) {
            body.finish();
        }
        body
    }

    fn finish(&mut self) {
        if let Some(lease) = self.lease.take()
            && let Some(conn) = lease.conn
        {
            lease.slot.endpoint().give_back(conn);
        }
    }
}

impl hyper::body::Body for LeasedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            None => this.finish(),
            Some(Ok(_)) if hyper::body::Body::is_end_stream(&this.inner) => this.finish(),
            // A broken response: its connection is not reused (dropped with the lease).
            Some(Err(_)) => this.lease = None,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that says when it has been sent to the end (or given up): the wait for
/// the response head starts then, so a slow upload is not taken for a silent instance.
pub struct Sent {
    inner: Body,
    done: tokio::sync::watch::Sender<bool>,
}

impl Sent {
    /// `body`, and what turns true once it has been read to its end (or dropped).
    pub fn wrap(body: Body) -> (Body, tokio::sync::watch::Receiver<bool>) {
        let ended = hyper::body::Body::is_end_stream(&body);
        let (done, rx) = tokio::sync::watch::channel(ended);
        if ended {
            return (body, rx);
        }
        (boxed(Sent { inner: body, done }), rx)
    }
}

impl hyper::body::Body for Sent {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if frame.is_none() || hyper::body::Body::is_end_stream(&this.inner) {
            let _ = this.done.send(true);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
