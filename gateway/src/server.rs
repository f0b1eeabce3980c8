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
//!
//! Connections are served by worker threads, each with a single-threaded runtime and its own
//! `SO_REUSEPORT` socket on every listener (the kernel spreads connections over them), as
//! nginx's workers do. A request and the connection to its instance then stay on one thread:
//! no work stealing, no cross-thread wake-ups, which on a loaded gateway cost more than the
//! proxying itself.

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

/// Binds `addr` for the workers to share (`SO_REUSEPORT`).
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(1024)?;
    listener.into_std()
}

/// One listener to serve: its socket, and TLS if it is an HTTPS one.
pub struct Bound {
    pub listener: std::net::TcpListener,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// The running worker threads.
pub struct Workers {
    stop: watch::Sender<Option<Duration>>,
    done: Vec<tokio::sync::oneshot::Receiver<bool>>,
}

impl Workers {
    /// Stops accepting, lets requests in flight finish within `deadline`; whether all did.
    pub async fn drain(self, deadline: Duration) -> bool {
        let _ = self.stop.send(Some(deadline));
        let mut clean = true;
        for done in self.done {
            clean &= done.await.unwrap_or(false);
        }
        clean
    }
}

thread_local! {
    /// The worker this thread is (0 elsewhere): each keeps its own idle instance connections.
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The worker the calling thread is.
pub fn worker() -> usize {
    WORKER.with(|w| w.get())
}

/// Starts `workers` threads serving every listener in `bound` with `service`.
pub fn start(
    bound: Vec<Bound>,
    workers: usize,
    service: GatewayService,
    shared: Arc<Shared>,
) -> std::io::Result<Workers> {
    let (stop, stopped) = watch::channel(None);
    let mut done = Vec::new();
    let addrs: Vec<SocketAddr> = bound.iter().map(|b| b.listener.local_addr()).collect::<Result<_, _>>()?;
    let mut first: Vec<Option<std::net::TcpListener>> = Vec::new();
    for b in &bound {
        first.push(Some(b.listener.try_clone()?));
    }
    for w in 0..workers.max(1) {
        // The first worker takes the sockets bound already; the others bind their own.
        let sockets: Vec<std::net::TcpListener> = if w == 0 {
            first.iter_mut().filter_map(Option::take).collect()
        } else {
            addrs.iter().map(|a| bind(*a)).collect::<Result<_, _>>()?
        };
        let tls: Vec<Option<tokio_rustls::TlsAcceptor>> = bound.iter().map(|b| b.tls.clone()).collect();
        let (finished, finished_rx) = tokio::sync::oneshot::channel();
        done.push(finished_rx);
        let (service, shared, mut stopped) = (service.clone(), shared.clone(), stopped.clone());
        std::thread::Builder::new().name(format!("gateway-{w}")).spawn(move || {
            WORKER.with(|c| c.set(w));
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("gateway worker {w}: no runtime: {e}");
                    let _ = finished.send(false);
                    return;
                }
            };
            let clean = runtime.block_on(async move {
                let graceful = GracefulShutdown::new();
                let mut loops = Vec::new();
                for (socket, tls) in sockets.into_iter().zip(tls) {
                    let _ = socket.set_nonblocking(true);
                    match TcpListener::from_std(socket) {
                        Ok(l) => loops.push(accept(l, tls, service.clone(), shared.clone(), &graceful)),
                        Err(e) => tracing::error!("gateway worker {w}: listener: {e}"),
                    }
                }
                let stop = async {
                    loop {
                        if let Some(deadline) = *stopped.borrow_and_update() {
                            return deadline;
                        }
                        if stopped.changed().await.is_err() {
                            return Duration::ZERO;
                        }
                    }
                };
                let deadline = tokio::select! {
                    _ = futures::future::join_all(loops) => Duration::ZERO,
                    deadline = stop => deadline,
                };
                tokio::time::timeout(deadline, graceful.shutdown()).await.is_ok()
            });
            let _ = finished.send(clean);
        })?;
    }
    Ok(Workers { stop, done })
}

/// One worker's accept loop on one listener.
async fn accept(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    service: GatewayService,
    shared: Arc<Shared>,
    graceful: &GracefulShutdown,
) {
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
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
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%addr, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        {
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
    }
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
