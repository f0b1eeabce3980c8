//! Serving HTTP/1.1 on a listener so that no client can hold the server open: a cap on
//! connections, a deadline for the request head (on the first request and on every idle
//! keep-alive connection), and a drain that lets requests in flight finish before the server
//! stops. The control API, the chain and the gateway's admin listener are served through here
//! (the gateway's app listeners have their own server, for HTTP/2, TLS and upgrades).
//!
//! Request bodies are the service's business: it bounds how long it waits for one (the control
//! API buffers bodies under a deadline).
//!
//! [`json_errors`] keeps axum's own rejections in the API's JSON error shape.
//!
//! Depends on tokio, hyper and axum only.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

mod json_errors;
pub use json_errors::json_errors;

/// What a server allows each client.
#[derive(Debug, Clone)]
pub struct Limits {
    /// A connection that has not sent a whole request head within this is closed; this also
    /// ends idle keep-alive connections.
    pub header_read_timeout: Duration,
    /// Most connections open at once; more are closed as they arrive.
    pub max_connections: usize,
    /// Largest request head, bytes; larger gets 431.
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { header_read_timeout: Duration::from_secs(10), max_connections: 4096, max_header_bytes: 64 << 10 }
    }
}

/// A running server. Dropping it leaves it running; call [`Server::drain`] to stop it.
pub struct Server {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<GracefulShutdown>,
    refused: Arc<AtomicU64>,
}

/// Serves `listener`: each accepted connection gets `make(peer)` as its service.
pub fn spawn<F, S, B>(listener: TcpListener, limits: Limits, make: F) -> std::io::Result<Server>
where
    F: Fn(SocketAddr) -> S + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let addr = listener.local_addr()?;
    let (stop, mut stopped) = watch::channel(false);
    let refused = Arc::new(AtomicU64::new(0));
    let refused_count = refused.clone();
    let task = tokio::spawn(async move {
        let graceful = GracefulShutdown::new();
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        loop {
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(%addr, "accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stopped.changed() => break,
            };
            // Answers are written in one go; without this each small response waits on the
            // client's delayed ACK (about 40 ms per request through the gateway).
            let _ = stream.set_nodelay(true);
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                if refused_count.fetch_add(1, Ordering::Relaxed) % 1000 == 0 {
                    tracing::warn!(%addr, "{} connections open: refusing more", limits.max_connections);
                }
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(limits.max_header_bytes.max(8192))
                .serve_connection(TokioIo::new(stream), make(peer));
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::trace!(%peer, "connection ended: {e}");
                }
                drop(slot);
            });
        }
        graceful
    });
    Ok(Server { addr, stop, task, refused })
}

impl Server {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections closed on arrival because the cap was reached.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Stops accepting, lets requests in flight finish (idle connections close at once), and
    /// returns whether every connection closed within `deadline`.
    pub async fn drain(self, deadline: Duration) -> bool {
        let _ = self.stop.send(true);
        let Ok(graceful) = self.task.await else { return false };
        tokio::time::timeout(deadline, graceful.shutdown()).await.is_ok()
    }
}

#[cfg(test)]
mod tests;
