//! The container runtime of a node: OCI images run as Docker containers through the Docker
//! Engine API (bollard, over the engine's unix socket), behind the `runtime` contract.
//!
//! - **Ownership.** Every container and volume carries labels naming its node, app, instance,
//!   component and run. A node that starts again adopts the containers it still wants (same
//!   run, still running) and the agent's sweep removes the rest, so nothing leaks even after a
//!   `kill -9` of the node.
//! - **Networks.** Each app's containers are on a network of their own per node
//!   (`fluxplane.<node>.<app>`, labelled like the containers), made before the first starts
//!   and removed with the last, and swept with them. Host rules ([`Firewall`]) keep app
//!   networks from each other, from the host's own addresses and from private ranges; while
//!   they cannot be installed, the runtime is unavailable and starts nothing.
//! - **Lockdown.** Never privileged; every capability dropped but `NET_BIND_SERVICE`;
//!   `no-new-privileges`; memory from `ram` with swap off, CPU from `cpu`, a pids limit, bounded
//!   log files. The Docker socket is never mounted.
//! - **Restarts.** A container that exits is started again after 1 s, 2 s, 4 s … up to 60 s
//!   (reset once it ran a minute), and its restarts, last exit code and OOM kill are reported.
//! - **Images** come from an uploaded archive (`docker load`), from the node's own images, or
//!   from a registry pull, which needs network access.
//!
//! Depends on `model` and `runtime`.

mod container;
mod firewall;
mod images;
mod network;

use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use model::chain::Capability;
use model::spec::Workload;
use runtime::{Instance, StartError, StartSpec};

pub use container::{LABEL_APP, LABEL_COMPONENT, LABEL_INSTANCE, LABEL_NODE, LABEL_RUN};
pub use firewall::{Firewall, FirewallConfig};

/// The Docker engine's socket when none is given.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// How long one call to the engine may take before it counts as not answering (an image load
/// streams, and is bounded by its own progress instead).
const ENGINE_TIMEOUT_SECS: u64 = 30;

/// Runs OCI containers on one Docker engine.
#[derive(Clone)]
pub struct OciRuntime {
    socket: String,
    /// The engine client once connected, its API version agreed with the engine; dropped
    /// when the engine stops answering, so that a restarted engine is found again.
    client: Arc<std::sync::Mutex<Option<Docker>>>,
    images: Arc<images::Images>,
    locks: container::Locks,
    firewall: Arc<Firewall>,
    /// Whether the host rules were in place at the last check: until they are, nothing runs.
    rules_in_place: Arc<std::sync::atomic::AtomicBool>,
}

impl OciRuntime {
    /// A runtime on the engine at `socket`. It connects when first used: an engine that is
    /// down (or not installed) now makes the runtime unavailable, never the node fail to start.
    pub fn new(socket: &str) -> Self {
        Self {
            socket: socket.to_string(),
            client: Arc::default(),
            images: Arc::default(),
            locks: Default::default(),
            firewall: Arc::new(Firewall::new(FirewallConfig::default())),
            rules_in_place: Arc::default(),
        }
    }

    /// The same, its host rules installed as `config` says.
    pub fn with_firewall(self, config: FirewallConfig) -> Self {
        Self { firewall: Arc::new(Firewall::new(config)), ..self }
    }

    /// Checks the host rules, installing what is missing; why they cannot be in place.
    async fn ensure_rules(&self) -> Result<(), String> {
        let checked = self.firewall.ensure().await;
        let ok = checked.is_ok();
        let was = self.rules_in_place.swap(ok, std::sync::atomic::Ordering::Relaxed);
        match &checked {
            Err(e) if was => tracing::warn!("containers would reach their neighbours: {e}"),
            Ok(()) if !was => tracing::info!("isolation rules in place"),
            _ => {}
        }
        checked.map_err(|e| format!("containers would reach their neighbours: {e}"))
    }

    fn cached(&self) -> std::sync::MutexGuard<'_, Option<Docker>> {
        self.client.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The engine client, connected and with its API version agreed with the engine (Docker
    /// answers a newer version than it knows with an error).
    async fn engine(&self) -> Result<Docker, String> {
        if let Some(docker) = self.cached().clone() {
            return Ok(docker);
        }
        let docker = Docker::connect_with_unix(&self.socket, ENGINE_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
            .map_err(|e| format!("the Docker engine at {} cannot be reached: {e}", self.socket))?;
        let docker = match tokio::time::timeout(Duration::from_secs(5), docker.negotiate_version()).await {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => return Err(format!("the Docker engine at {} does not answer: {e}", self.socket)),
            Err(_) => return Err(format!("the Docker engine at {} did not answer within 5 s", self.socket)),
        };
        *self.cached() = Some(docker.clone());
        Ok(docker)
    }
}

#[async_trait::async_trait]
impl runtime::Runtime for OciRuntime {
    fn capability(&self) -> Capability {
        Capability::Oci
    }

    async fn unavailable(&self) -> Option<String> {
        let docker = match self.engine().await {
            Ok(d) => d,
            Err(why) => return Some(why),
        };
        if let Err(e) = docker.ping().await {
            *self.cached() = None;
            return Some(format!("the Docker engine at {} does not answer: {e}", self.socket));
        }
        // Installed at the first check (node start), then checked by every sweep and start.
        if self.rules_in_place.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        self.ensure_rules().await.err()
    }

    async fn start(&self, spec: StartSpec) -> Result<Box<dyn Instance>, StartError> {
        let Workload::Oci(oci) = spec.component.workload.clone() else {
            return Err(StartError::Failed(format!("component {} is not a container", spec.component.name)));
        };
        let docker = self.engine().await.map_err(StartError::Unavailable)?;
        // No container runs open to its neighbours.
        self.ensure_rules().await.map_err(StartError::Unavailable)?;
        let image =
            self.images.resolve(&docker, &oci.image, spec.artifact.as_ref()).await.map_err(StartError::Failed)?;
        let instance = container::start(docker, &spec, &oci, &image, &self.locks, self.firewall.bridge_prefix())
            .await
            .map_err(StartError::Failed)?;
        Ok(Box::new(instance))
    }

    async fn remove_others(&self, node: &str, keep: &[String]) -> anyhow::Result<usize> {
        let docker = self.engine().await.map_err(anyhow::Error::msg)?;
        // The sweep checks the host rules too, and puts back what is missing.
        let rules = self.ensure_rules().await;
        let removed = container::remove_others(&docker, node, keep).await?;
        let networks = network::sweep(&docker, node, &self.locks.networks).await.map_err(anyhow::Error::msg)?;
        rules.map_err(anyhow::Error::msg)?;
        Ok(removed + networks)
    }

    async fn shutdown(&self, node: &str) {
        let Ok(docker) = self.engine().await else { return };
        if let Err(e) = network::sweep(&docker, node, &self.locks.networks).await {
            tracing::warn!("removing this node's networks: {e}");
        }
        // The rules serve every node on the machine: they go with the last app network.
        let prefix = self.firewall.bridge_prefix().to_string();
        let others = match network::bridged(&docker, &prefix).await {
            Ok(left) => left,
            Err(e) => return tracing::warn!("isolation rules kept: {e}"),
        };
        if !others.is_empty() {
            return tracing::info!("isolation rules kept for {} app network(s) of other nodes", others.len());
        }
        match self.firewall.remove().await {
            Ok(()) => tracing::info!("isolation rules removed: no app network is left on this machine"),
            Err(e) => tracing::warn!("removing the isolation rules: {e}"),
        }
        // Another node made one meanwhile: it keeps its rules.
        if network::bridged(&docker, &prefix).await.is_ok_and(|left| !left.is_empty())
            && let Err(e) = self.firewall.ensure().await
        {
            tracing::warn!("{e}");
        }
    }
}
