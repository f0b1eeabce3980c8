//! Health probes both runtimes use.

use std::net::SocketAddr;
use std::time::Duration;

use crate::Health;

/// One pool of connections for every HTTP probe of this process; never through a proxy from
/// the environment (these are the node's own instances).
static PROBE_HTTP: std::sync::LazyLock<reqwest::Client> =
    // Never redirected: a hostile workload must not point the node's probe elsewhere.
    std::sync::LazyLock::new(|| {
        reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap_or_default()
    });

/// Healthy when `GET path` on `addr` answers below 500 within `timeout`.
pub async fn http_probe(name: &str, addr: SocketAddr, path: &str, timeout: Duration) -> Health {
    let probe = async { PROBE_HTTP.get(format!("http://{addr}{path}")).send().await.map(|r| r.status().as_u16()) };
    match tokio::time::timeout(timeout, probe).await {
        Ok(Ok(status)) if status < 500 => Health::ok(),
        Ok(Ok(status)) => Health::failing(format!("{name}: health check {path} answered {status}")),
        Ok(Err(e)) => Health::failing(format!("{name}: health check {path} failed: {e}")),
        Err(_) => Health::failing(format!("{name}: health check {path} got no answer within {timeout:?}")),
    }
}

/// Healthy when a TCP connection to `addr` opens within `timeout`.
pub async fn tcp_probe(name: &str, addr: SocketAddr, timeout: Duration) -> Health {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Health::ok(),
        Ok(Err(e)) => Health::failing(format!("{name}: port {} does not accept connections: {e}", addr.port())),
        Err(_) => Health::failing(format!("{name}: port {} did not accept within {timeout:?}", addr.port())),
    }
}
