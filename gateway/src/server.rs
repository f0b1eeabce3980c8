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
use std::sync::atomic::{AtomicU64, Ordering};

use crate::endpoint::now_ms;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
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
                // Each connection holds a clone of `alive`: the drain waits until none is left.
                let (draining, _) = watch::channel(false);
                let (alive, mut all_gone) = tokio::sync::mpsc::channel::<()>(1);
                let drain = Drain { draining: draining.subscribe(), _alive: alive };
                let mut loops = Vec::new();
                for (socket, tls) in sockets.into_iter().zip(tls) {
                    let _ = socket.set_nonblocking(true);
                    match TcpListener::from_std(socket) {
                        Ok(l) => loops.push(accept(l, tls, service.clone(), shared.clone(), drain.clone())),
                        Err(e) => tracing::error!("gateway worker {w}: listener: {e}"),
                    }
                }
                drop(drain);
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
                let _ = draining.send(true);
                tokio::time::timeout(deadline, all_gone.recv()).await.is_ok()
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
    drain: Drain,
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
    // The protocol is chosen before hyper sees the connection (ALPN, or the first bytes), so
    // that the wait for those bytes has a deadline: hyper's own detection has none.
    let h1 = Arc::new(builder.clone().http1_only());
    let h2 = Arc::new(builder.http2_only());
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
            let (h1, h2) = (h1.clone(), h2.clone());
            let service = service.clone();
            let shared = shared.clone();
            let mut drain = drain.clone();
            tokio::spawn(async move {
                let _open = OpenConnection::new(&shared);
                let _slot = slot;
                let is_tls = tls.is_some();
                let max_head = limits.max_header_bytes;
                let stall = limits.body_idle_timeout;
                // When the last request began, for the HTTP/2 idle limit.
                let activity = Arc::new(AtomicU64::new(now_ms()));
                let request_began = activity.clone();
                let serve = move |framing: Option<Verdicts>| {
                    let activity = request_began;
                    hyper::service::service_fn(move |req: Request<Incoming>| {
                        activity.store(now_ms(), Ordering::Relaxed);
                        let mut req = req.map(boxed);
                        let peer = Peer { addr: peer, tls: is_tls, framing: framing.clone() };
                        req.extensions_mut().insert(peer);
                        service.clone().oneshot(req)
                    })
                };
                let deadline = limits.header_read_timeout;
                let result = match tls {
                    None => match tokio::time::timeout(deadline, speaks_h2(&stream)).await {
                        Ok(Some(true)) => {
                            let io = TokioIo::new(Watched::writes_only(stream, stall));
                            drive!(
                                h2.serve_connection_with_upgrades(io, serve(None)),
                                drain,
                                Some((activity.clone(), limits.idle_timeout))
                            )
                        }
                        Ok(Some(false)) => {
                            let verdicts = Verdicts::default();
                            let io = TokioIo::new(Watched::new(stream, max_head, verdicts.clone(), stall));
                            drive!(h1.serve_connection_with_upgrades(io, serve(Some(verdicts))), drain, None)
                        }
                        // Closed, or nothing (or half an HTTP/2 preface) within the deadline.
                        Ok(None) | Err(_) => return,
                    },
                    Some(acceptor) => {
                        let stream = match tokio::time::timeout(deadline, acceptor.accept(stream)).await {
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
                            let io = TokioIo::new(Watched::writes_only(stream, stall));
                            drive!(
                                h2.serve_connection_with_upgrades(io, serve(None)),
                                drain,
                                Some((activity.clone(), limits.idle_timeout))
                            )
                        } else {
                            let verdicts = Verdicts::default();
                            let io = TokioIo::new(Watched::new(stream, max_head, verdicts.clone(), stall));
                            drive!(h1.serve_connection_with_upgrades(io, serve(Some(verdicts))), drain, None)
                        }
                    }
                };
                if let Err(e) = result {
                    tracing::trace!(%peer, "connection ended: {e}");
                }
            });
        }
    }
}

/// What a connection needs to drain: the signal, and its share of `alive`.
#[derive(Clone)]
struct Drain {
    draining: watch::Receiver<bool>,
    /// Never sent on: dropped with the connection, which tells the drain one fewer is left.
    _alive: tokio::sync::mpsc::Sender<()>,
}

/// Serves one connection to its end; on a drain, or (HTTP/2) when no request has begun for
/// the idle time, asks it to finish gracefully (HTTP/2: GOAWAY; streams in flight finish).
macro_rules! drive {
    ($conn:expr, $drain:expr, $idle:expr) => {{
        let conn = $conn;
        tokio::pin!(conn);
        let idle: Option<(Arc<AtomicU64>, Duration)> = $idle;
        let mut closing = false;
        loop {
            let idle_for = async {
                match &idle {
                    Some((activity, limit)) if !closing => loop {
                        let quiet = now_ms().saturating_sub(activity.load(Ordering::Relaxed));
                        let left = limit.as_millis() as u64;
                        if quiet >= left {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(left - quiet)).await;
                    },
                    _ => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                result = conn.as_mut() => break result,
                _ = $drain.draining.changed(), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = idle_for => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }};
}
use drive;

/// Whether the client speaks HTTP/2 by prior knowledge: its first bytes are the HTTP/2
/// preface. `None` when it closes first.
async fn speaks_h2(stream: &tokio::net::TcpStream) -> Option<bool> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut buf = [0u8; 24];
    loop {
        let n = stream.peek(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        if !PREFACE.starts_with(&buf[..n]) {
            return Some(false);
        }
        if n == PREFACE.len() {
            return Some(true);
        }
        // Part of the preface: peek sees the same bytes until more come.
        tokio::time::sleep(Duration::from_millis(5)).await;
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
