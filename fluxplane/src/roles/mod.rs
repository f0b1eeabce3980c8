//! The four roles. Each has `Args` (flags, also a section of the config file; flags win), a
//! `Config` resolved from them and the shared [`DaemonConfig`](crate::config::DaemonConfig),
//! `build()` that binds sockets and opens stores (so mistakes fail at once), and `spawn()` that
//! starts it and returns a [`Running`] handle: a fatal-error future and a drain.

pub mod chain;
pub mod control;
pub mod gateway;
pub mod node;
pub mod node_api;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use actors::Fatal;

type DrainFn = Box<dyn FnOnce(Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// A running role.
pub struct Running {
    name: String,
    fatal: Fatal,
    drain: DrainFn,
}

impl Running {
    /// A role called `name` whose errors go to `fatal` and that `drain` stops.
    pub fn new<F>(name: impl Into<String>, fatal: Fatal, drain: impl FnOnce(Duration) -> F + Send + 'static) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        Self { name: name.into(), fatal, drain: Box::new(move |d| Box::pin(drain(d))) }
    }

    /// The role's name, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Resolves when the role cannot go on, with why.
    pub async fn fatal(&self) -> String {
        self.fatal.wait().await
    }

    /// Stops the role gracefully within `deadline`.
    pub async fn drain(self, deadline: Duration) {
        let name = self.name.clone();
        if tokio::time::timeout(deadline + Duration::from_secs(1), (self.drain)(deadline)).await.is_err() {
            tracing::warn!("{name} did not drain within {deadline:?}");
        }
    }
}

/// Runs `roles` until Ctrl-C, SIGTERM or a fatal error of any of them, then drains them in the
/// order given (callers put the front door, the gateway, first). A fatal error is returned.
pub async fn run_until_signal(roles: Vec<Running>, deadline: Duration) -> anyhow::Result<()> {
    let fatal = async {
        let waits = roles.iter().map(|r| Box::pin(async move { format!("{}: {}", r.name(), r.fatal().await) }));
        futures::future::select_all(waits).await.0
    };
    let failure = tokio::select! {
        _ = shutdown_signal() => None,
        why = fatal => Some(why),
    };
    match &failure {
        Some(why) => eprintln!("error: {why}; shutting down"),
        None => eprintln!("shutting down (draining within {})", humantime::format_duration(deadline)),
    }
    // All at once: each role's drain is bounded by the deadline, and `fluxplane dev` runs six
    // nodes whose agents each linger a node timeout; one after another, Ctrl-C took half a minute.
    futures::future::join_all(roles.into_iter().map(|role| role.drain(deadline))).await;
    match failure {
        Some(why) => Err(anyhow::anyhow!(why)),
        None => Ok(()),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Serves an axum router on `listener` with the hardened server.
pub fn serve_router(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    limits: serve::Limits,
) -> std::io::Result<serve::Server> {
    serve::spawn(listener, limits, move |_| hyper_util::service::TowerToHyperService::new(router.clone()))
}

/// Binds `addr`, naming what it is for when that fails.
pub async fn bind(addr: std::net::SocketAddr, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("binding the {what} on {addr}: {e}"))
}

/// Loads a key file, or makes one (readable by its owner only) when there is none.
pub fn load_or_create_key(path: &std::path::Path) -> anyhow::Result<model::keys::Keypair> {
    if path.exists() {
        return load_key(path);
    }
    let key = model::keys::Keypair::generate();
    ops::keys::write(path, &key)?;
    Ok(key)
}

/// Loads a key file.
pub fn load_key(path: &std::path::Path) -> anyhow::Result<model::keys::Keypair> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading key {}: {e}", path.display()))?;
    model::keys::Keypair::from_secret_hex(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}
