//! The one suite every runtime passes: start, serve, health, logs, stop, a memory limit and a
//! crash, each asserted through the [`Runtime`] and [`Instance`] contract alone. A runtime's
//! tests build a [`Fixture`] of its own workloads and call [`run`].

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use model::spec::ComponentSpec;

use crate::{HostPorts, Instance, Limits, LogBuffer, Runtime, StartSpec};

/// A component and the bytes it runs from.
#[derive(Debug, Clone)]
pub struct Workload {
    /// The component.
    pub component: ComponentSpec,
    /// Its module or image archive, if it has one.
    pub artifact: Option<bytes::Bytes>,
}

/// The workloads a runtime is checked with.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// The node id the instances run for.
    pub node: String,
    /// The address they bind.
    pub bind_ip: IpAddr,
    /// The ports they may take.
    pub ports: HostPorts,
    /// Serves HTTP: `GET /` answers 200, and every request writes a line with its path to
    /// stdout or stderr.
    pub server: Workload,
    /// Goes over its memory limit: at once, or on `GET /alloc` when it serves.
    pub memory_hog: Workload,
    /// Crashes: at once, or on `GET /crash` when it serves.
    pub crasher: Workload,
    /// How long a start may take (an image load, a first compile).
    pub start_timeout: Duration,
}

/// Runs every check; the first failure is the error.
pub async fn run(runtime: &dyn Runtime, fixture: &Fixture) -> anyhow::Result<()> {
    ensure!(runtime.unavailable().await.is_none(), "the runtime says it is unavailable");
    serves_logs_and_stops(runtime, fixture).await.context("start, serve, health, logs, stop")?;
    holds_to_memory_limit(runtime, fixture).await.context("memory limit")?;
    let crash = survives_a_crash(runtime, fixture).await.context("crash");
    runtime.shutdown(&fixture.node).await;
    crash?;
    Ok(())
}

fn spec(fixture: &Fixture, workload: &Workload, instance: &str, logs: &LogBuffer) -> StartSpec {
    StartSpec {
        node: fixture.node.clone(),
        app: "conformance".into(),
        instance: format!("{instance}@{}", fixture.node),
        run: "1.0".into(),
        component: workload.component.clone(),
        artifact: workload.artifact.clone(),
        env: [("GREETING".to_string(), "conformance".to_string())].into(),
        bind_ip: fixture.bind_ip,
        ports: fixture.ports.clone(),
        limits: Limits::of(&workload.component, Duration::from_secs(5), Duration::from_secs(2)),
        logs: logs.clone(),
        network_with: Vec::new(),
    }
}

async fn start(runtime: &dyn Runtime, fixture: &Fixture, spec: StartSpec) -> anyhow::Result<Box<dyn Instance>> {
    let name = spec.instance.clone();
    tokio::time::timeout(fixture.start_timeout, runtime.start(spec))
        .await
        .with_context(|| format!("{name} did not start within {:?}", fixture.start_timeout))?
        .with_context(|| format!("starting {name}"))
}

/// Stops `instance` even when the check fails, so nothing outlives the suite.
async fn stopped<T>(instance: &dyn Instance, result: anyhow::Result<T>) -> anyhow::Result<T> {
    instance.stop().await;
    result
}

fn main_addr(instance: &dyn Instance) -> anyhow::Result<SocketAddr> {
    let endpoints = instance.endpoints();
    let first = endpoints.first().context("the instance reports no endpoint")?;
    // A server bound to every address is reached on loopback.
    Ok(match first.addr.ip() {
        ip if ip.is_unspecified() => SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), first.addr.port()),
        _ => first.addr,
    })
}

/// `GET path` on `addr`: the status, or the error as text.
async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let client =
        reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().map_err(|e| e.to_string())?;
    let resp = client.get(format!("http://{addr}{path}")).send().await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    Ok((status, resp.text().await.unwrap_or_default()))
}

/// Waits up to `within` for `check` to hold.
async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts the server, gets a 200 and a healthy verdict, finds the request in its logs, stops
/// it and finds the port closed.
pub async fn serves_logs_and_stops(runtime: &dyn Runtime, fixture: &Fixture) -> anyhow::Result<()> {
    let logs = LogBuffer::new();
    let instance = start(runtime, fixture, spec(fixture, &fixture.server, "server", &logs)).await?;
    let checked = async {
        let endpoints = instance.endpoints();
        for e in &endpoints {
            ensure!(fixture.ports.range().contains(e.addr.port()), "endpoint {} is outside the node's ports", e.addr);
        }
        let addr = main_addr(&*instance)?;
        // A container may take a moment to listen after it starts.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let last = get(addr, "/").await;
            if matches!(last, Ok((200, _))) {
                break;
            }
            ensure!(Instant::now() < deadline, "GET / never answered 200 (last: {last:?})");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let health = instance.health(Duration::from_secs(2)).await;
        ensure!(health.healthy, "a serving instance is unhealthy: {:?}", health.message);
        // Any answer will do: the request is what must show in the logs.
        get(addr, "/conformance-path").await.map_err(anyhow::Error::msg)?;
        let logged = eventually(Duration::from_secs(10), || {
            let found = logs.read(0, None).iter().any(|l| l.text.contains("/conformance-path"));
            async move { found }
        })
        .await;
        ensure!(logged, "the request never showed in its logs: {:?}", logs.read(0, Some(20)));
        Ok(addr)
    }
    .await;
    let addr = stopped(&*instance, checked).await?;
    let closed = eventually(Duration::from_secs(10), || async move { get(addr, "/").await.is_err() }).await;
    ensure!(closed, "{addr} still answers after stop");
    let health = instance.health(Duration::from_secs(1)).await;
    ensure!(!health.healthy, "a stopped instance is healthy");
    Ok(())
}

/// The memory hog never gets what it asks for: its request fails while the instance serves
/// on, or its process is OOM-killed and reported so.
pub async fn holds_to_memory_limit(runtime: &dyn Runtime, fixture: &Fixture) -> anyhow::Result<()> {
    let logs = LogBuffer::new();
    let instance = start(runtime, fixture, spec(fixture, &fixture.memory_hog, "hog", &logs)).await?;
    let checked = async {
        let addr = instance.endpoints().first().map(|_| main_addr(&*instance)).transpose()?;
        let answer = match addr {
            Some(addr) => Some(get(addr, "/alloc").await),
            None => None,
        };
        let (answered, instance) = (&answer, &*instance);
        let held = eventually(Duration::from_secs(30), || async move {
            if instance.state().oom_killed {
                return true;
            }
            match (answered, addr) {
                (Some(Ok((status, _))), Some(addr)) if *status >= 500 => matches!(get(addr, "/").await, Ok((200, _))),
                _ => false,
            }
        })
        .await;
        if let Some(Ok((status, _))) = &answer
            && *status < 300
        {
            bail!("allocating past the limit answered {status}");
        }
        ensure!(
            held,
            "neither an OOM kill nor a failed request with the instance serving on: {answer:?}, {:?}",
            instance.state()
        );
        Ok(())
    }
    .await;
    stopped(&*instance, checked).await
}

/// A crash never takes the runtime down: the request that crashed fails and the instance
/// serves on, or the process exits, is reported with its exit code and is started again.
pub async fn survives_a_crash(runtime: &dyn Runtime, fixture: &Fixture) -> anyhow::Result<()> {
    let logs = LogBuffer::new();
    let instance = start(runtime, fixture, spec(fixture, &fixture.crasher, "crasher", &logs)).await?;
    let checked = async {
        let addr = instance.endpoints().first().map(|_| main_addr(&*instance)).transpose()?;
        let crashed_request = match addr {
            Some(addr) => Some(get(addr, "/crash").await),
            None => None,
        };
        let (answered, instance) = (&crashed_request, &*instance);
        let survived = eventually(Duration::from_secs(30), || async move {
            let state = instance.state();
            if state.restarts >= 1 && state.last_exit_code.is_some() {
                return true;
            }
            match (answered, addr) {
                (Some(Ok((status, _))), Some(addr)) if *status >= 500 => matches!(get(addr, "/").await, Ok((200, _))),
                _ => false,
            }
        })
        .await;
        ensure!(
            survived,
            "the crash was neither contained to its request nor reported and restarted: {crashed_request:?}, {:?}",
            instance.state()
        );
        Ok(())
    }
    .await;
    stopped(&*instance, checked).await
}
