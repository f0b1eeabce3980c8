//! One instance's HTTP server: a fresh store per request, with the app's memory limit, a
//! request deadline and a share of guest CPU time. It runs on the engine's guest threads.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use runtime::LogStream;
use tokio::net::TcpListener;
use wasmtime::component::ResourceTable;

use crate::output::GuestOutput;
use wasmtime::{Store, StoreLimits, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// Per-request state of a guest.
pub(crate) struct GuestState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    limits: StoreLimits,
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for GuestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: Default::default() }
    }
}

/// What one instance may use.
#[derive(Debug, Clone)]
pub struct InstanceLimits {
    /// Linear memory, bytes (the component's `ram`).
    pub memory_bytes: usize,
    /// Wall-clock time a request may run in the guest.
    pub deadline: Duration,
    /// Cores' worth of guest time the instance may use, all its requests together (the
    /// component's `cpu`). A guest past its share is paused until the share allows it more.
    pub cpu_share: f64,
}

/// Longest an instance may run at full speed before its share applies.
const CPU_BURST: Duration = Duration::from_millis(100);

/// One instance's guest time, as a token bucket: it fills at `share` seconds per second, up
/// to a burst, and every epoch tick a guest runs takes one tick out.
struct CpuBudget {
    share: f64,
    /// (last refill, seconds of guest time available; negative when overdrawn).
    state: Mutex<(Instant, f64)>,
}

impl CpuBudget {
    fn new(share: f64) -> Self {
        // A share too small to measure still lets the guest crawl forward.
        let share = share.max(0.01);
        Self { share, state: Mutex::new((Instant::now(), CPU_BURST.as_secs_f64() * share)) }
    }

    /// Charges `ran` of guest time; returns how long the guest must pause, if it overdrew.
    fn charge(&self, ran: Duration) -> Option<Duration> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (last, tokens) = &mut *state;
        let now = Instant::now();
        let burst = CPU_BURST.as_secs_f64() * self.share;
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.share).min(burst) - ran.as_secs_f64();
        *last = now;
        (*tokens < 0.0).then(|| Duration::from_secs_f64(-*tokens / self.share))
    }
}

/// A running instance server; dropping it does not stop it, call [`InstanceServer::stop`].
pub struct InstanceServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    /// Turns true on stop: every open connection finishes its request in flight and closes.
    stopping: tokio::sync::watch::Sender<bool>,
}

type GatewayBody = http_body_util::combinators::UnsyncBoxBody<Bytes, anyhow::Error>;

impl InstanceServer {
    /// Binds `bind` and serves `pre` with `env` and `limits`, on `engine`'s guest threads.
    pub async fn start(
        engine: &crate::WasmEngine,
        pre: ProxyPre<GuestState>,
        env: BTreeMap<String, String>,
        limits: InstanceLimits,
        bind: SocketAddr,
        logs: runtime::LogBuffer,
    ) -> std::io::Result<InstanceServer> {
        let listener = std::net::TcpListener::bind(bind)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let env: Arc<[(String, String)]> = env.into_iter().collect();
        let budget = Arc::new(CpuBudget::new(limits.cpu_share));
        let (stopping, stop_rx) = tokio::sync::watch::channel(false);
        let task = engine.guests().spawn(async move {
            // Registered with the guest runtime's reactor, so the instance's I/O runs there too.
            let listener = match TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(%addr, "instance listener: {e}");
                    return;
                }
            };
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors, say: wait for some to close instead of
                        // spinning a guest thread on the same error.
                        tracing::debug!(%addr, "instance accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let (pre, env, limits, budget, logs) =
                    (pre.clone(), env.clone(), limits.clone(), budget.clone(), logs.clone());
                let mut stop_rx = stop_rx.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let (pre, env, limits, budget, logs) =
                            (pre.clone(), env.clone(), limits.clone(), budget.clone(), logs.clone());
                        async move {
                            Ok::<_, std::convert::Infallible>(handle(pre, &env, &limits, budget, &logs, req).await)
                        }
                    });
                    let conn = http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(10))
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        // A server dropped without a stop keeps serving, as documented.
                        _ = async {
                            if stop_rx.wait_for(|stopping| *stopping).await.is_err() {
                                std::future::pending::<()>().await;
                            }
                        } => {
                            // The request in flight (if any) is answered; then the connection closes.
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                });
            }
        });
        Ok(InstanceServer { addr, task, stopping })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and closes every connection once its request in flight is answered.
    pub fn stop(&self) {
        self.task.abort();
        self.stopping.send_replace(true);
    }
}

fn plain(status: StatusCode, message: String) -> Response<GatewayBody> {
    let mut resp = Response::new(Full::new(Bytes::from(message + "\n")).map_err(|never| match never {}).boxed_unsync());
    *resp.status_mut() = status;
    resp
}

async fn handle(
    pre: ProxyPre<GuestState>,
    env: &[(String, String)],
    limits: &InstanceLimits,
    budget: Arc<CpuBudget>,
    logs: &runtime::LogBuffer,
    req: Request<Incoming>,
) -> Response<GatewayBody> {
    match run_guest(pre, env, limits, budget, logs, req).await {
        Ok(resp) => resp.map(|b| b.map_err(anyhow::Error::from).boxed_unsync()),
        Err(failure) => {
            // The developer reads why in the instance's logs, beside the guest's own output.
            logs.write(LogStream::Stderr, format!("fluxplane: {} {}\n", failure.0.as_u16(), failure.1).as_bytes());
            plain(failure.0, failure.1)
        }
    }
}

struct Failure(StatusCode, String);

async fn run_guest(
    pre: ProxyPre<GuestState>,
    env: &[(String, String)],
    limits: &InstanceLimits,
    budget: Arc<CpuBudget>,
    logs: &runtime::LogBuffer,
    req: Request<Incoming>,
) -> Result<Response<HyperOutgoingBody>, Failure> {
    let mut wasi = WasiCtx::builder();
    wasi.envs(env);
    wasi.stdout(GuestOutput { logs: logs.clone(), stream: LogStream::Stdout });
    wasi.stderr(GuestOutput { logs: logs.clone(), stream: LogStream::Stderr });
    let state = GuestState {
        wasi: wasi.build(),
        http: WasiHttpCtx::new(),
        table: ResourceTable::new(),
        limits: StoreLimitsBuilder::new().memory_size(limits.memory_bytes).instances(16).build(),
    };
    let mut store = Store::new(pre.engine(), state);
    store.limiter(|s| &mut s.limits);
    let deadline = Instant::now() + limits.deadline;
    // Every tick: interrupt a guest past its deadline; pause one past its CPU share; otherwise
    // yield to the executor, so a looping guest never holds a guest thread.
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        if Instant::now() >= deadline {
            return Ok(UpdateDeadline::Interrupt);
        }
        Ok(match budget.charge(crate::engine::EPOCH_TICK) {
            None => UpdateDeadline::Yield(1),
            Some(pause) => {
                // Never paused past the deadline: the next tick then interrupts it on time.
                let pause = pause.min(deadline.saturating_duration_since(Instant::now()));
                UpdateDeadline::YieldCustom(1, Box::pin(tokio::time::sleep(pause)))
            }
        })
    });
    let internal = |e: wasmtime::Error| Failure(StatusCode::BAD_GATEWAY, format!("guest setup failed: {e}"));
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let req = store.data_mut().http().new_incoming_request(Scheme::Http, req).map_err(internal)?;
    let out = store.data_mut().http().new_response_outparam(sender).map_err(internal)?;
    let task = tokio::spawn(async move {
        let proxy = pre.instantiate_async(&mut store).await?;
        proxy.wasi_http_incoming_handler().call_handle(&mut store, req, out).await
    });
    match receiver.await {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(code)) => Err(Failure(StatusCode::BAD_GATEWAY, format!("guest answered with an error: {code:?}"))),
        Err(_) => {
            let err = match task.await {
                Ok(Ok(())) => return Err(Failure(StatusCode::BAD_GATEWAY, "guest returned without a response".into())),
                Ok(Err(e)) => e,
                Err(e) => return Err(Failure(StatusCode::BAD_GATEWAY, format!("guest task failed: {e}"))),
            };
            if matches!(err.downcast_ref::<wasmtime::Trap>(), Some(wasmtime::Trap::Interrupt)) {
                return Err(Failure(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("guest exceeded its {:?} request deadline", limits.deadline),
                ));
            }
            Err(Failure(
                StatusCode::BAD_GATEWAY,
                format!("guest trapped (memory limit {} MB): {}", limits.memory_bytes >> 20, err.root_cause()),
            ))
        }
    }
}
