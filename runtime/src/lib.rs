//! The contract between a node's agent and the runtimes that run its workloads: the agent
//! starts, checks, stops and reads the logs of every instance only through [`Runtime`] and
//! [`Instance`], whether the component is a WASM module (`runtime-wasm`) or a container
//! (`runtime-oci`). Neither runtime crate is needed to use the contract, and
//! [`conformance`] is one suite that every runtime must pass.
//!
//! Depends only on `model`.

pub mod conformance;
mod logs;
mod ports;
mod probe;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub use logs::{LogBuffer, LogLine, LogStream};
pub use ports::HostPorts;
pub use probe::{http_probe, tcp_probe};

pub use model::api::RunState;
use model::chain::Capability;
use model::spec::ComponentSpec;

/// What one instance of a component may use.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Memory, bytes (the component's `ram`): a guest's linear memory, a container's cgroup.
    pub memory_bytes: u64,
    /// Cores' worth of CPU time (the component's `cpu`).
    pub cpu_share: f64,
    /// Most processes a container may hold (a fork bomb stops there).
    pub pids: i64,
    /// Longest one request may run in a WASM guest.
    pub request_deadline: Duration,
    /// How long a stop waits for the workload to end by itself (SIGTERM) before killing it.
    pub stop_grace: Duration,
}

impl Limits {
    /// The limits a component's spec sets, with the node's deadlines.
    pub fn of(component: &ComponentSpec, request_deadline: Duration, stop_grace: Duration) -> Limits {
        Limits {
            memory_bytes: u64::from(component.ram_mb) << 20,
            cpu_share: f64::from(component.cpu_tenths) / 10.0,
            pids: DEFAULT_PIDS_LIMIT,
            request_deadline,
            stop_grace,
        }
    }
}

/// Processes a container may hold.
pub const DEFAULT_PIDS_LIMIT: i64 = 256;

/// Everything a runtime needs to start one component of one instance.
#[derive(Debug, Clone)]
pub struct StartSpec {
    /// The node it runs on.
    pub node: String,
    /// The app.
    pub app: String,
    /// The instance id (`app@node`).
    pub instance: String,
    /// Which run of the instance this is: the spec and secrets it runs with. A container left
    /// from an earlier process of this node is adopted only when its run matches.
    pub run: String,
    /// The component.
    pub component: ComponentSpec,
    /// The bytes the component runs from, already fetched and checked against their hash: the
    /// module of a WASM component, the image archive of a container (if it names one).
    pub artifact: Option<bytes::Bytes>,
    /// Environment, secrets included.
    pub env: BTreeMap<String, String>,
    /// The address its ports are bound on.
    pub bind_ip: IpAddr,
    /// The host ports it may take.
    pub ports: HostPorts,
    /// Its limits.
    pub limits: Limits,
    /// Where its output goes. The agent owns it, so that output outlives a restart.
    pub logs: LogBuffer,
    /// Apps of the same owner (checked by the control plane) whose networks a container joins
    /// besides its own app's.
    pub network_with: Vec<String>,
}

/// A port an instance serves on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `component` for its main port, `component:PUBLIC` for each published port of a
    /// container (the main one too), so that a gateway finds `<app>_<PUBLIC>` hosts.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
}

/// The verdict of one health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Whether it may get traffic.
    pub healthy: bool,
    /// Why not, or what is worth knowing.
    pub message: Option<String>,
}

impl Health {
    /// Healthy, nothing to say.
    pub fn ok() -> Health {
        Health { healthy: true, message: None }
    }

    /// Unhealthy, because `why`.
    pub fn failing(why: impl Into<String>) -> Health {
        Health { healthy: false, message: Some(why.into()) }
    }
}

/// Why a start failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The runtime cannot run anything now (for example, its Docker engine does not answer).
    #[error("{0}")]
    Unavailable(String),
    /// This component cannot start (a module that does not compile, an image that is not
    /// there, every port taken); the message says which and why.
    #[error("{0}")]
    Failed(String),
}

/// A runtime: it runs the components of one [`Capability`].
#[async_trait::async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// What it runs.
    fn capability(&self) -> Capability;

    /// Why it cannot run anything now, if it cannot. Asked before every heartbeat: a node
    /// advertises the capability only while this is `None`.
    async fn unavailable(&self) -> Option<String>;

    /// Starts (or, for a container left by an earlier process of this node, adopts) one
    /// component of one instance.
    async fn start(&self, spec: StartSpec) -> Result<Box<dyn Instance>, StartError>;

    /// Removes everything this node left running that is not one of `keep` (instance ids),
    /// such as containers of instances unassigned while the node was down. Returns how many.
    async fn remove_others(&self, node: &str, keep: &[String]) -> anyhow::Result<usize>;

    /// The node stops for good, its instances stopped: removes what the runtime set up on the
    /// machine for them (a container runtime's networks, and its host rules once no other
    /// node on the machine needs them).
    async fn shutdown(&self, _node: &str) {}
}

/// One running component of one instance.
#[async_trait::async_trait]
pub trait Instance: Send + Sync {
    /// Where it serves.
    fn endpoints(&self) -> Vec<Endpoint>;

    /// Checks it, within `timeout`.
    async fn health(&self, timeout: Duration) -> Health;

    /// Restarts and exits so far.
    fn state(&self) -> RunState;

    /// Stops it: a graceful end first, then a kill after the grace period; removes what it
    /// leaves behind (a container, not its volumes).
    async fn stop(&self);
}
