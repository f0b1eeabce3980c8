//! The gateway's listeners: plain HTTP and TLS, each serving HTTP/1.1 and HTTP/2 (h2 over TLS
//! through ALPN, h2c by prior knowledge on plain), with the per-connection limits:
//!
//! - at most `max_connections` open (more are closed as they arrive);
//! - a TLS handshake, and every HTTP/1.1 request head, within `header_read_timeout` (hyper
//!   starts that timer whenever it waits for a head, so it also closes idle keep-alive
//!   connections and slowloris clients);
//! - request heads of at most `max_header_bytes` (431 beyond);
//! - HTTP/2: a cap on concurrent streams and on the header list, and keep-alive pings that
//!   close a connection whose peer stopped answering.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

use crate::Shared;
use crate::body::boxed;
use crate::framing::{Verdicts, Watched};
use crate::stack::{GatewayService, Peer};

/// Concurrent streams one HTTP/2 connection may open.
const H2_MAX_STREAMS: u32 = 128;

/// A running listener.
pub struct Listener {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<GracefulShutdown>,
}

impl Listener {
    /// Stops accepting, lets requests in flight finish within `deadline`; whether all did.
    pub async fn drain(self, deadline: Duration) -> bool {
        let _ = self.stop.send(true);
        let Ok(graceful) = self.task.await else { return false };
        tokio::time::timeout(deadline, graceful.shutdown()).await.is_ok()
    }
}

/// Serves `listener` with `service`, TLS first when `tls` is given.
pub fn spawn(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    service: GatewayService,
    shared: Arc<Shared>,
) -> std::io::Result<Listener> {
    let addr = listener.local_addr()?;
    let (stop, mut stopped) = watch::channel(false);
    let limits = shared.config.limits.clone();
    let slots = shared.connection_slots.clone();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(limits.max_header_bytes as u32)
        .keep_alive_interval(Some(limits.header_read_timeout))
        .keep_alive_timeout(limits.header_read_timeout);
    let builder = Arc::new(builder);
    let task = tokio::spawn(async move {
        let graceful = GracefulShutdown::new();
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
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                if shared.metrics.connections_refused.fetch_add(1, Ordering::Relaxed) % 1000 == 0 {
                    tracing::warn!(%addr, "{} connections open: refusing more", limits.max_connections);
                }
                drop(stream);
                continue;
            };
            // Answers are written in one go; without this each small response waits on the
            // client's delayed ACK.
            let _ = stream.set_nodelay(true);
            let tls = tls.clone();
            let builder = builder.clone();
            let service = service.clone();
            let shared = shared.clone();
            let watcher = graceful.watcher();
            tokio::spawn(async move {
                let _open = OpenConnection::new(&shared);
                let is_tls = tls.is_some();
                let max_head = limits.max_header_bytes;
                let serve = move |framing: Option<Verdicts>| {
                    let service = service.clone();
                    hyper::service::service_fn(move |req: Request<Incoming>| {
                        let mut req = req.map(boxed);
                        let peer = Peer { addr: peer, tls: is_tls, framing: framing.clone() };
                        req.extensions_mut().insert(peer);
                        service.clone().oneshot(req)
                    })
                };
                let result = match tls {
                    None => {
                        let verdicts = Verdicts::default();
                        let io = TokioIo::new(Watched::new(stream, max_head, verdicts.clone()));
                        watcher
                            .watch(builder.serve_connection_with_upgrades(io, serve(Some(verdicts))).into_owned())
                            .await
                    }
                    Some(acceptor) => {
                        let handshake = tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)).await;
                        let stream = match handshake {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                crate::metrics::inc(&shared.metrics.tls_handshake_failures);
                                tracing::debug!(%peer, "TLS handshake failed: {e}");
                                return;
                            }
                            Err(_) => {
                                crate::metrics::inc(&shared.metrics.tls_handshake_failures);
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                        if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                            let io = TokioIo::new(stream);
                            watcher.watch(builder.serve_connection_with_upgrades(io, serve(None)).into_owned()).await
                        } else {
                            let verdicts = Verdicts::default();
                            let io = TokioIo::new(Watched::new(stream, max_head, verdicts.clone()));
                            watcher
                                .watch(builder.serve_connection_with_upgrades(io, serve(Some(verdicts))).into_owned())
                                .await
                        }
                    }
                };
                if let Err(e) = result {
                    tracing::trace!(%peer, "connection ended: {e}");
                }
                drop(slot);
            });
        }
        graceful
    });
    Ok(Listener { addr, stop, task })
}

/// Counts a connection as open while it lives.
struct OpenConnection(Arc<Shared>);

impl OpenConnection {
    fn new(shared: &Arc<Shared>) -> Self {
        shared.metrics.connections_open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(shared.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.metrics.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The connection slots shared by every listener.
pub fn connection_slots(max: usize) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(max))
}
