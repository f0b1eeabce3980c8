//! One instance's HTTP server: a fresh store per request, with the app's memory limit and a
//! request deadline.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use wasmtime::component::ResourceTable;
use wasmtime::{Store, StoreLimits, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// Per-request state of a guest.
pub struct GuestState {
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
}

/// A running instance server; dropping it does not stop it, call [`InstanceServer::stop`].
pub struct InstanceServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

type GatewayBody = http_body_util::combinators::UnsyncBoxBody<Bytes, anyhow::Error>;

impl InstanceServer {
    /// Binds `bind` and serves `pre` with `env` and `limits`.
    pub async fn start(
        pre: ProxyPre<GuestState>,
        env: BTreeMap<String, String>,
        limits: InstanceLimits,
        bind: SocketAddr,
    ) -> std::io::Result<InstanceServer> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let env: Vec<(String, String)> = env.into_iter().collect();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (pre, env, limits) = (pre.clone(), env.clone(), limits.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let (pre, env, limits) = (pre.clone(), env.clone(), limits.clone());
                        async move { Ok::<_, std::convert::Infallible>(handle(pre, &env, &limits, req).await) }
                    });
                    let _ = http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(10))
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(InstanceServer { addr, task })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting; requests in flight end with their connections.
    pub fn stop(&self) {
        self.task.abort();
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
    req: Request<Incoming>,
) -> Response<GatewayBody> {
    match run_guest(pre, env, limits, req).await {
        Ok(resp) => resp.map(|b| b.map_err(anyhow::Error::from).boxed_unsync()),
        Err(failure) => plain(failure.0, failure.1),
    }
}

struct Failure(StatusCode, String);

async fn run_guest(
    pre: ProxyPre<GuestState>,
    env: &[(String, String)],
    limits: &InstanceLimits,
    req: Request<Incoming>,
) -> Result<Response<HyperOutgoingBody>, Failure> {
    let mut wasi = WasiCtx::builder();
    wasi.envs(env);
    let state = GuestState {
        wasi: wasi.build(),
        http: WasiHttpCtx::new(),
        table: ResourceTable::new(),
        limits: StoreLimitsBuilder::new().memory_size(limits.memory_bytes).instances(16).build(),
    };
    let mut store = Store::new(pre.engine(), state);
    store.limiter(|s| &mut s.limits);
    let deadline = Instant::now() + limits.deadline;
    // Yield to the executor every tick so a looping guest does not hold a runtime thread, and
    // interrupt it once its deadline passes.
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        if Instant::now() >= deadline { Ok(UpdateDeadline::Interrupt) } else { Ok(UpdateDeadline::Yield(1)) }
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
