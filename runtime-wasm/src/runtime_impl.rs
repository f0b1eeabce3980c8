//! [`WasmRuntime`]: the [`runtime::Runtime`] contract over the engine, the component cache and
//! one [`InstanceServer`] per instance component.

use std::net::SocketAddr;
use std::time::Duration;

use model::chain::Capability;
use model::spec::Workload;
use runtime::{Endpoint, Health, Instance, RunState, StartError, StartSpec};

use crate::{ComponentCache, InstanceLimits, InstanceServer};

/// Runs wasi:http components.
#[derive(Clone)]
pub struct WasmRuntime {
    cache: ComponentCache,
}

impl WasmRuntime {
    /// A runtime over `cache` (and its engine).
    pub fn new(cache: ComponentCache) -> Self {
        Self { cache }
    }
}

#[async_trait::async_trait]
impl runtime::Runtime for WasmRuntime {
    fn capability(&self) -> Capability {
        Capability::Wasm
    }

    async fn unavailable(&self) -> Option<String> {
        // The engine lives in this process: while the node runs, so does it.
        None
    }

    async fn start(&self, spec: StartSpec) -> Result<Box<dyn Instance>, StartError> {
        let name = spec.component.name.clone();
        if !matches!(spec.component.workload, Workload::Wasm(_)) {
            return Err(StartError::Failed(format!("component {name} is not a WASM component")));
        }
        let bytes = spec.artifact.as_ref().ok_or_else(|| StartError::Failed(format!("component {name}: no module")))?;
        let pre = self
            .cache
            .get(bytes)
            .await
            .map_err(|e| StartError::Failed(format!("compiling component {name}: {e:#}")))?;
        let limits = InstanceLimits {
            memory_bytes: usize::try_from(spec.limits.memory_bytes).unwrap_or(usize::MAX),
            deadline: spec.limits.request_deadline,
            cpu_share: spec.limits.cpu_share,
        };
        // The first free port of the node's registered range: the control plane refuses an
        // endpoint outside it.
        for port in spec.ports.candidates() {
            let bind = SocketAddr::new(spec.bind_ip, port);
            let started = InstanceServer::start(
                self.cache.engine(),
                pre.clone(),
                spec.env.clone(),
                limits.clone(),
                bind,
                spec.logs.clone(),
            )
            .await;
            match started {
                Ok(server) => return Ok(Box::new(WasmInstance { name, server })),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
                Err(e) => return Err(StartError::Failed(format!("binding {bind}: {e}"))),
            }
        }
        Err(StartError::Failed(format!("every instance port of this node ({}) is in use", spec.ports.range())))
    }

    async fn remove_others(&self, _node: &str, _keep: &[String]) -> anyhow::Result<usize> {
        // Guests live and die with this process: nothing outlives it.
        Ok(0)
    }
}

/// One component's server.
struct WasmInstance {
    name: String,
    server: InstanceServer,
}

#[async_trait::async_trait]
impl Instance for WasmInstance {
    fn endpoints(&self) -> Vec<Endpoint> {
        vec![Endpoint { name: self.name.clone(), addr: self.server.addr() }]
    }

    async fn health(&self, timeout: Duration) -> Health {
        // Healthy when it answers `GET /` below 500: the guest itself runs and responds.
        runtime::http_probe(&self.name, loopback(self.server.addr()), "/", timeout).await
    }

    fn state(&self) -> RunState {
        // A guest that traps fails its request only; the instance never exits.
        RunState::default()
    }

    async fn stop(&self) {
        self.server.stop();
    }
}

/// A server bound to every address is probed on loopback.
fn loopback(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port()),
        ip if ip.is_unspecified() => SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), addr.port()),
        _ => addr,
    }
}
