//! One component's container: created (or adopted) with its labels, limits and ports,
//! supervised through restarts with a backoff, its output followed into the instance's logs.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, HostConfigLogConfig, NetworkConnectRequest, PortBinding,
    RestartPolicy,
};
use bollard::query_parameters as q;
use futures::StreamExt;
use model::spec::OciWorkload;
use runtime::{Endpoint, Health, Instance, LogBuffer, LogStream, RunState, StartSpec};
use tokio::sync::watch;

/// The node a container or volume belongs to (the agent's owner name: node id and key).
pub const LABEL_NODE: &str = "fluxplane.node";
/// Its app.
pub const LABEL_APP: &str = "fluxplane.app";
/// Its instance id (`app@node`).
pub const LABEL_INSTANCE: &str = "fluxplane.instance";
/// Its component.
pub const LABEL_COMPONENT: &str = "fluxplane.component";
/// Its run (spec height and secrets version): only a container of the same run is adopted.
pub const LABEL_RUN: &str = "fluxplane.run";

/// The first wait before a crashed container starts again, and the longest.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A container that ran this long before it exited starts again after the first wait.
const RAN_LONG_ENOUGH: Duration = Duration::from_secs(60);
/// Lines of an adopted container's earlier output read back into its logs.
const ADOPTED_TAIL: &str = "200";
/// Ports tried when the engine finds the chosen ones taken after all.
const PORT_ATTEMPTS: usize = 5;

/// A container's name: unique per node, app and component, so that a node finds its own.
/// The parts are DNS labels, which hold no `.`: no two apps' names can meet.
fn container_name(spec: &StartSpec) -> String {
    format!("fluxplane.{}.{}.{}", spec.node, spec.app, spec.component.name)
}

/// One lock per container name: a start and a stop of the same name (an instance unassigned
/// and assigned again while its container is stopping) take turns, so that the stop never
/// removes what the start made or adopted.
#[derive(Clone, Default)]
pub(crate) struct NameLocks(Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>);

impl NameLocks {
    pub(crate) async fn hold(&self, name: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.0.lock().unwrap_or_else(|e| e.into_inner());
            // Forget the locks nobody holds or waits for, so the map stays as small as the
            // node's containers.
            locks.retain(|_, l| Arc::strong_count(l) > 1);
            locks.entry(name.to_string()).or_default().clone()
        };
        lock.lock_owned().await
    }
}

fn labels(spec: &StartSpec) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_NODE.to_string(), spec.node.clone()),
        (LABEL_APP.to_string(), spec.app.clone()),
        (LABEL_INSTANCE.to_string(), spec.instance.clone()),
        (LABEL_COMPONENT.to_string(), spec.component.name.clone()),
        (LABEL_RUN.to_string(), spec.run.clone()),
    ])
}

pub(crate) fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })
}

/// What the supervisor and the instance share.
struct Shared {
    state: Mutex<RunState>,
    /// The container's own address on its network: health checks go there directly, not
    /// through the engine's port proxy (which accepts connections for a dead server too).
    container_ip: Mutex<Option<IpAddr>>,
    running: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, RunState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A started (or adopted) container.
pub(crate) struct OciInstance {
    docker: Docker,
    /// The container's id: the operations on it never go by name.
    id: String,
    /// Its name, whose lock a stop holds.
    name: String,
    names: NameLocks,
    /// The networks it is on, its own app's first; a stop removes those it leaves empty.
    networks: Vec<String>,
    network_locks: NameLocks,
    component: String,
    endpoints: Vec<Endpoint>,
    /// The container port of the main endpoint, and the health path.
    main_port: Option<u16>,
    health_path: Option<String>,
    grace: Duration,
    shared: Arc<Shared>,
    stopping: watch::Sender<bool>,
}

/// The locks a runtime's containers take turns by.
#[derive(Clone, Default)]
pub(crate) struct Locks {
    /// One per container name.
    pub(crate) names: NameLocks,
    /// One per network name: a network is made, joined and removed in turns.
    pub(crate) networks: NameLocks,
}

/// Holds the locks of `networks`, in name order, so that two starts never wait on each other
/// crosswise.
async fn hold_all(locks: &NameLocks, networks: &[String]) -> Vec<tokio::sync::OwnedMutexGuard<()>> {
    let mut sorted = networks.to_vec();
    sorted.sort();
    let mut held = Vec::new();
    for n in &sorted {
        held.push(locks.hold(n).await);
    }
    held
}

/// The networks a container of `spec` is on: its app's own first, then those it shares.
fn networks_of(spec: &StartSpec) -> Vec<(String, String)> {
    let mut apps = vec![spec.app.clone()];
    for other in &spec.network_with {
        if !apps.contains(other) {
            apps.push(other.clone());
        }
    }
    apps.into_iter().map(|app| (crate::network::network_name(&spec.node, &app), app)).collect()
}

/// Starts the container for `spec`, or adopts the one an earlier process of this node left
/// running for the very same run.
pub(crate) async fn start(
    docker: Docker,
    spec: &StartSpec,
    oci: &OciWorkload,
    image_id: &str,
    locks: &Locks,
    bridge_prefix: &str,
) -> Result<OciInstance, String> {
    let names = &locks.names;
    let name = container_name(spec);
    let _turn = names.hold(&name).await;
    let wanted = networks_of(spec);
    let networks: Vec<String> = wanted.iter().map(|(n, _)| n.clone()).collect();
    // Held until the container is on them (or gone), so that no sweep removes one meanwhile.
    let _networks_held = hold_all(&locks.networks, &networks).await;
    match docker.inspect_container(&name, None).await {
        Ok(existing) => {
            let labels = existing.config.as_ref().and_then(|c| c.labels.clone()).unwrap_or_default();
            let running = existing.state.as_ref().and_then(|s| s.running).unwrap_or(false);
            let same_run =
                labels.get(LABEL_RUN) == Some(&spec.run) && labels.get(LABEL_INSTANCE) == Some(&spec.instance);
            // On exactly its networks: one left from before app networks (on Docker's shared
            // bridge) is made anew.
            let mut on: Vec<String> = existing
                .network_settings
                .as_ref()
                .and_then(|n| n.networks.as_ref())
                .map(|n| n.keys().cloned().collect())
                .unwrap_or_default();
            on.sort();
            let mut want_on = networks.clone();
            want_on.sort();
            if same_run && running && on == want_on {
                let bound = existing.network_settings.as_ref().and_then(|n| n.ports.clone()).unwrap_or_default();
                if let (Some(host_ports), Some(id)) = (adopted_ports(&bound, oci), existing.id.clone()) {
                    tracing::info!(container = %name, "adopting the container an earlier run of this node left");
                    let instance = OciInstance::new(docker, id, name.clone(), locks, networks, spec, oci, &host_ports);
                    instance.shared.running.store(true, std::sync::atomic::Ordering::Relaxed);
                    instance.supervise(spec.logs.clone(), true);
                    return Ok(instance);
                }
            }
            // Another run's container, or one that stopped: it goes, and a new one is made.
            remove(&docker, &name).await?;
        }
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(format!("asking the Docker engine about {name}: {e}")),
    }
    for (_, app) in &wanted {
        crate::network::ensure(&docker, &spec.node, app, bridge_prefix).await?;
    }
    let result = create_and_start(&docker, spec, oci, image_id, &name, &networks).await;
    match result {
        Ok((id, host_ports)) => {
            let instance = OciInstance::new(docker, id, name.clone(), locks, networks, spec, oci, &host_ports);
            instance.shared.running.store(true, std::sync::atomic::Ordering::Relaxed);
            instance.supervise(spec.logs.clone(), false);
            Ok(instance)
        }
        Err(e) => {
            // Networks made for it alone go with it.
            for network in &networks {
                if let Err(e) = crate::network::remove_if_unused(&docker, network).await {
                    tracing::warn!("{e}");
                }
            }
            Err(e)
        }
    }
}

/// Creates the container on `networks` (its own first) and starts it: its id and host ports.
async fn create_and_start(
    docker: &Docker,
    spec: &StartSpec,
    oci: &OciWorkload,
    image_id: &str,
    name: &str,
    networks: &[String],
) -> Result<(String, Vec<u16>), String> {
    let binds = volumes(docker, spec, oci).await?;
    let mut last_error = String::new();
    for _ in 0..PORT_ATTEMPTS {
        let host_ports = pick_ports(spec, oci.ports.len())?;
        let body = create_body(spec, oci, image_id, &host_ports, &binds, &networks[0]);
        let options = q::CreateContainerOptions { name: Some(name.to_string()), ..Default::default() };
        let created =
            docker.create_container(Some(options), body).await.map_err(|e| format!("creating the container: {e}"))?;
        for other in &networks[1..] {
            let request = NetworkConnectRequest {
                container: created.id.clone(),
                endpoint_config: Some(EndpointSettings::default()),
            };
            if let Err(e) = docker.connect_network(other, request).await {
                remove(docker, &created.id).await?;
                return Err(format!("joining network {other}: {e}"));
            }
        }
        match docker.start_container(&created.id, None::<q::StartContainerOptions>).await {
            Ok(()) => return Ok((created.id, host_ports)),
            Err(e) => {
                remove(docker, &created.id).await?;
                last_error = e.to_string();
                // Another process took a chosen port between the check and the start.
                if last_error.contains("port is already allocated") || last_error.contains("address already in use") {
                    continue;
                }
                return Err(format!("starting the container: {last_error}"));
            }
        }
    }
    Err(format!("starting the container: every port tried was taken ({last_error})"))
}

/// The host ports of an adopted container, in the order of `oci.ports`; `None` when one is
/// not bound (it was made for other ports).
fn adopted_ports(bound: &HashMap<String, Option<Vec<PortBinding>>>, oci: &OciWorkload) -> Option<Vec<u16>> {
    oci.ports
        .iter()
        .map(|p| {
            let bindings = bound.get(&format!("{}/tcp", p.container))?.as_ref()?;
            bindings.iter().find_map(|b| b.host_port.as_deref()?.parse().ok())
        })
        .collect()
}

/// `count` host ports of the node's range that are free now.
fn pick_ports(spec: &StartSpec, count: usize) -> Result<Vec<u16>, String> {
    let mut chosen = Vec::new();
    for port in spec.ports.candidates() {
        if chosen.len() == count {
            break;
        }
        if std::net::TcpListener::bind(SocketAddr::new(spec.bind_ip, port)).is_ok() {
            chosen.push(port);
        }
    }
    if chosen.len() < count {
        return Err(format!("the node's instance ports ({}) have fewer than {count} free", spec.ports.range()));
    }
    Ok(chosen)
}

fn create_body(
    spec: &StartSpec,
    oci: &OciWorkload,
    image_id: &str,
    host_ports: &[u16],
    binds: &[String],
    network: &str,
) -> ContainerCreateBody {
    let port_bindings: HashMap<String, Option<Vec<PortBinding>>> = oci
        .ports
        .iter()
        .zip(host_ports)
        .map(|(p, host)| {
            let binding = PortBinding { host_ip: Some(spec.bind_ip.to_string()), host_port: Some(host.to_string()) };
            (format!("{}/tcp", p.container), Some(vec![binding]))
        })
        .collect();
    let limits = &spec.limits;
    let memory = i64::try_from(limits.memory_bytes).unwrap_or(i64::MAX);
    let host_config = HostConfig {
        memory: Some(memory),
        // Equal to the memory limit: no swap, so the limit is the limit.
        memory_swap: Some(memory),
        nano_cpus: Some((limits.cpu_share * 1e9) as i64),
        pids_limit: Some(limits.pids),
        privileged: Some(false),
        cap_drop: Some(vec!["ALL".into()]),
        // Serving a port below 1024 is all a web server needs.
        cap_add: Some(vec!["NET_BIND_SERVICE".into()]),
        security_opt: Some(vec!["no-new-privileges".into()]),
        port_bindings: Some(port_bindings),
        // The app's own network, never Docker's shared bridge.
        network_mode: Some(network.to_string()),
        binds: (!binds.is_empty()).then(|| binds.to_vec()),
        // Restarts are the supervisor's, with its backoff and its counts.
        restart_policy: Some(RestartPolicy {
            name: Some(bollard::models::RestartPolicyNameEnum::NO),
            maximum_retry_count: None,
        }),
        log_config: Some(HostConfigLogConfig {
            typ: Some("json-file".into()),
            config: Some(HashMap::from([("max-size".into(), "10m".into()), ("max-file".into(), "2".into())])),
        }),
        ..Default::default()
    };
    ContainerCreateBody {
        // By id: the tag may be moved after this, the id not.
        image: Some(image_id.to_string()),
        cmd: (!oci.commands.is_empty()).then(|| oci.commands.clone()),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        exposed_ports: Some(oci.ports.iter().map(|p| format!("{}/tcp", p.container)).collect()),
        labels: Some(labels(spec)),
        host_config: Some(host_config),
        ..Default::default()
    }
}

/// The named volumes for `oci.volumes`, made (with the instance's labels) if new; as binds.
async fn volumes(docker: &Docker, spec: &StartSpec, oci: &OciWorkload) -> Result<Vec<String>, String> {
    let mut binds = Vec::new();
    for (i, path) in oci.volumes.iter().enumerate() {
        let name = format!("{}.{i}", container_name(spec));
        let request = bollard::models::VolumeCreateRequest {
            name: Some(name.clone()),
            labels: Some(labels(spec)),
            ..Default::default()
        };
        docker.create_volume(request).await.map_err(|e| format!("creating volume {name} for {path}: {e}"))?;
        binds.push(format!("{name}:{path}"));
    }
    Ok(binds)
}

async fn remove(docker: &Docker, name: &str) -> Result<(), String> {
    // With its anonymous volumes (an image's `VOLUME`s), which carry no label to sweep by.
    let options = q::RemoveContainerOptions { force: true, v: true, ..Default::default() };
    match docker.remove_container(name, Some(options)).await {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(format!("removing container {name}: {e}")),
    }
}

impl OciInstance {
    #[allow(clippy::too_many_arguments)]
    fn new(
        docker: Docker,
        id: String,
        name: String,
        locks: &Locks,
        networks: Vec<String>,
        spec: &StartSpec,
        oci: &OciWorkload,
        host_ports: &[u16],
    ) -> Self {
        let component = spec.component.name.clone();
        let mut endpoints = Vec::new();
        for (i, (p, host)) in oci.ports.iter().zip(host_ports).enumerate() {
            let addr = SocketAddr::new(spec.bind_ip, *host);
            if i == 0 {
                endpoints.push(Endpoint { name: component.clone(), addr });
            }
            endpoints.push(Endpoint { name: format!("{component}:{}", p.public), addr });
        }
        let (stopping, _) = watch::channel(false);
        Self {
            docker,
            id,
            name,
            names: locks.names.clone(),
            networks,
            network_locks: locks.networks.clone(),
            component,
            endpoints,
            main_port: oci.ports.first().map(|p| p.container),
            health_path: oci.health_path.clone(),
            grace: spec.limits.stop_grace,
            shared: Arc::new(Shared {
                state: Mutex::default(),
                container_ip: Mutex::default(),
                running: std::sync::atomic::AtomicBool::new(false),
            }),
            stopping,
        }
    }

    /// Follows the container until it is stopped: its output into `logs`, its exits into the
    /// run state, each exit answered by a start after the backoff.
    fn supervise(&self, logs: LogBuffer, adopted: bool) {
        let (docker, name, shared) = (self.docker.clone(), self.id.clone(), self.shared.clone());
        let network = self.networks.first().cloned().unwrap_or_default();
        let mut stopping = self.stopping.subscribe();
        tokio::spawn(async move {
            let mut backoff = BACKOFF_FIRST;
            let mut first = true;
            loop {
                let started = Instant::now();
                refresh_ip(&docker, &name, &network, &shared).await;
                // This run's output: an adopted container's recent past, else all of it since
                // this start.
                let tail = if first && adopted { ADOPTED_TAIL } else { "all" };
                let since = if first { 0 } else { unix_secs().saturating_sub(1) };
                let follower = tokio::spawn(follow_logs(docker.clone(), name.clone(), logs.clone(), since, tail));
                first = false;
                let exited = tokio::select! {
                    exit = wait_exit(&docker, &name) => Some(exit),
                    _ = stopping.wait_for(|s| *s) => None,
                };
                follower.abort();
                shared.running.store(false, std::sync::atomic::Ordering::Relaxed);
                let Some(exit) = exited else { return };
                let Some((code, oom)) = exit else {
                    // Gone (removed by hand, or by a sweep): nothing left to restart.
                    logs.write(LogStream::Stderr, b"fluxplane: the container was removed\n");
                    return;
                };
                if started.elapsed() >= RAN_LONG_ENOUGH {
                    backoff = BACKOFF_FIRST;
                }
                {
                    let mut state = shared.state();
                    state.last_exit_code = Some(code);
                    state.oom_killed = oom;
                    state.backoff_ms = Some(backoff.as_millis() as u64);
                }
                let why = if oom { " (killed: out of memory)".to_string() } else { String::new() };
                let line =
                    format!("fluxplane: exited with code {code}{why}; starting again in {} s\n", backoff.as_secs());
                logs.write(LogStream::Stderr, line.as_bytes());
                tracing::info!(container = %name, code, oom, backoff = ?backoff, "container exited");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stopping.wait_for(|s| *s) => return,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                let restarted = docker.start_container(&name, None::<q::StartContainerOptions>).await;
                let mut state = shared.state();
                state.backoff_ms = None;
                state.restarts += 1;
                drop(state);
                match restarted {
                    Ok(()) => shared.running.store(true, std::sync::atomic::Ordering::Relaxed),
                    Err(e) => {
                        logs.write(LogStream::Stderr, format!("fluxplane: starting again failed: {e}\n").as_bytes())
                    }
                }
            }
        });
    }
}

/// Waits until the container stops: its exit code and whether it was OOM-killed, or `None`
/// when it no longer exists. An engine that does not answer is asked again.
async fn wait_exit(docker: &Docker, name: &str) -> Option<(i64, bool)> {
    loop {
        let mut wait = docker.wait_container(name, None::<q::WaitContainerOptions>);
        // Ends on exit: with the code, or as an error carrying a non-zero code.
        let _ = wait.next().await;
        match docker.inspect_container(name, None).await {
            Ok(c) => {
                let state = c.state.unwrap_or_default();
                if state.running != Some(true) {
                    return Some((state.exit_code.unwrap_or(-1), state.oom_killed.unwrap_or(false)));
                }
            }
            Err(e) if is_not_found(&e) => return None,
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The container's address on its own network (`network`), which health checks go to.
async fn refresh_ip(docker: &Docker, name: &str, network: &str, shared: &Shared) {
    let ip = match docker.inspect_container(name, None).await {
        Ok(c) => c
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|mut nets| nets.remove(network))
            .and_then(|e| e.ip_address.filter(|ip| !ip.is_empty()))
            .and_then(|ip| ip.parse().ok()),
        Err(_) => None,
    };
    *shared.container_ip.lock().unwrap_or_else(|e| e.into_inner()) = ip;
}

async fn follow_logs(docker: Docker, name: String, logs: LogBuffer, since: i64, tail: &'static str) {
    let options = q::LogsOptions {
        follow: true,
        stdout: true,
        stderr: true,
        since: i32::try_from(since).unwrap_or(0),
        tail: tail.to_string(),
        ..Default::default()
    };
    let mut output = docker.logs(&name, Some(options));
    while let Some(Ok(chunk)) = output.next().await {
        match chunk {
            bollard::container::LogOutput::StdErr { message } => logs.write(LogStream::Stderr, &message),
            bollard::container::LogOutput::StdOut { message } | bollard::container::LogOutput::Console { message } => {
                logs.write(LogStream::Stdout, &message)
            }
            bollard::container::LogOutput::StdIn { .. } => {}
        }
    }
}

fn unix_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

#[async_trait::async_trait]
impl Instance for OciInstance {
    fn endpoints(&self) -> Vec<Endpoint> {
        self.endpoints.clone()
    }

    async fn health(&self, timeout: Duration) -> Health {
        if *self.stopping.borrow() {
            return Health::failing(format!("{}: stopped", self.component));
        }
        let state = self.state();
        if let Some(ms) = state.backoff_ms {
            let oom = if state.oom_killed { ", killed: out of memory" } else { "" };
            return Health::failing(format!(
                "{}: exited with code {}{oom}; restart {} in {} s",
                self.component,
                state.last_exit_code.unwrap_or(-1),
                state.restarts + 1,
                ms / 1000
            ));
        }
        if !self.shared.running.load(std::sync::atomic::Ordering::Relaxed) {
            return Health::failing(format!("{}: not running", self.component));
        }
        let Some(port) = self.main_port else { return Health::ok() };
        let ip = *self.shared.container_ip.lock().unwrap_or_else(|e| e.into_inner());
        let target = match (ip, self.endpoints.first()) {
            (Some(ip), _) => SocketAddr::new(ip, port),
            (None, Some(e)) => e.addr,
            (None, None) => return Health::ok(),
        };
        match &self.health_path {
            Some(path) => runtime::http_probe(&self.component, target, path, timeout).await,
            None => runtime::tcp_probe(&self.component, target, timeout).await,
        }
    }

    fn state(&self) -> RunState {
        self.shared.state().clone()
    }

    async fn stop(&self) {
        self.stopping.send_replace(true);
        let _turn = self.names.hold(&self.name).await;
        let grace = i32::try_from(self.grace.as_secs()).unwrap_or(i32::MAX);
        let options = q::StopContainerOptions { t: Some(grace), signal: None };
        if let Err(e) = self.docker.stop_container(&self.id, Some(options)).await
            && !is_not_found(&e)
        {
            tracing::warn!(container = %self.id, "stopping: {e}");
        }
        if let Err(e) = remove(&self.docker, &self.id).await {
            tracing::warn!("{e}");
        }
        // The app's last container on this node takes its network with it.
        let _held = hold_all(&self.network_locks, &self.networks).await;
        for network in &self.networks {
            if let Err(e) = crate::network::remove_if_unused(&self.docker, network).await {
                tracing::warn!("{e}");
            }
        }
    }
}

/// Removes this node's containers and volumes whose instance is not in `keep`.
pub(crate) async fn remove_others(docker: &Docker, node: &str, keep: &[String]) -> anyhow::Result<usize> {
    let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_NODE}={node}")])]);
    let options = q::ListContainersOptions { all: true, filters: Some(filters.clone()), ..Default::default() };
    let mut removed = 0;
    for c in docker.list_containers(Some(options)).await? {
        let instance = c.labels.as_ref().and_then(|l| l.get(LABEL_INSTANCE)).cloned().unwrap_or_default();
        if keep.contains(&instance) {
            continue;
        }
        let Some(id) = c.id else { continue };
        remove(docker, &id).await.map_err(anyhow::Error::msg)?;
        removed += 1;
    }
    let volumes = docker.list_volumes(Some(q::ListVolumesOptions { filters: Some(filters) })).await?;
    for v in volumes.volumes.unwrap_or_default() {
        if keep.contains(&v.labels.get(LABEL_INSTANCE).cloned().unwrap_or_default()) {
            continue;
        }
        match docker.remove_volume(&v.name, None::<q::RemoveVolumeOptions>).await {
            Ok(()) => removed += 1,
            // Still held by a container being removed: the next sweep takes it.
            Err(e) => tracing::debug!(volume = %v.name, "not removed yet: {e}"),
        }
    }
    Ok(removed)
}
