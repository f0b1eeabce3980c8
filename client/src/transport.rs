//! Sending one request: failover between URLs, leader redirects, error bodies.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use model::api::ErrorBody;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ClientError;

/// Per-request timeout unless a call sets its own (long polls do).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a call waits out `no_leader` answers (an election in progress) before giving up.
const NO_LEADER_PATIENCE: Duration = Duration::from_secs(5);
/// Most leader redirects followed by one call; more means the replicas disagree and is reported.
const MAX_REDIRECTS: usize = 4;
/// Header that carries the admin token.
pub(crate) const ADMIN_TOKEN_HEADER: &str = "x-fluxplane-admin-token";

/// Splits `a,b,c` into base URLs, adding `http://` where no scheme is given and dropping a
/// trailing `/`.
pub fn parse_urls(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            let u = u.trim_end_matches('/');
            if u.starts_with("http://") || u.starts_with("https://") { u.to_string() } else { format!("http://{u}") }
        })
        .collect()
}

/// A client of one set of equivalent API URLs (the replicas of one region, or any control
/// URLs). Cloning is cheap and shares the remembered leader.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    stale: bool,
    region_scoped: bool,
}

struct Inner {
    urls: Vec<String>,
    /// The URL that answered last or that a replica named as leader; tried first.
    preferred: Mutex<Option<String>>,
    http: reqwest::Client,
    admin_token: Option<String>,
    timeout: Duration,
}

/// How a request may be retried on another URL.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Safe to send again after any transport failure (reads, and writes the server dedups).
    Always,
    /// Only when it never reached a server (connect failures).
    BeforeSent,
}

/// One request, before it is sent.
pub(crate) struct Call {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) query: Vec<(&'static str, String)>,
    pub(crate) body: Option<(Bytes, &'static str)>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) retry: Retry,
    /// More headers (a signed upload's).
    pub(crate) headers: Vec<(&'static str, String)>,
}

impl Call {
    pub(crate) fn get(path: impl Into<String>) -> Self {
        Self {
            method: Method::GET,
            path: path.into(),
            query: Vec::new(),
            body: None,
            timeout: None,
            retry: Retry::Always,
            headers: Vec::new(),
        }
    }

    pub(crate) fn post_json<B: Serialize>(path: impl Into<String>, body: &B) -> Result<Self, ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ClientError::Usage(format!("encoding request: {e}")))?;
        Ok(Self {
            method: Method::POST,
            path: path.into(),
            query: Vec::new(),
            body: Some((Bytes::from(bytes), "application/json")),
            timeout: None,
            retry: Retry::BeforeSent,
            headers: Vec::new(),
        })
    }

    pub(crate) fn query(mut self, key: &'static str, value: impl ToString) -> Self {
        self.query.push((key, value.to_string()));
        self
    }

    pub(crate) fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    pub(crate) fn retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }
}

impl Client {
    /// A client of `urls` (base URLs; see [`parse_urls`]).
    pub fn new(urls: Vec<String>) -> Result<Client, ClientError> {
        Self::build(urls, None, DEFAULT_TIMEOUT)
    }

    /// A client of the comma-separated `list`.
    pub fn from_list(list: &str) -> Result<Client, ClientError> {
        Self::new(parse_urls(list))
    }

    fn build(urls: Vec<String>, admin_token: Option<String>, timeout: Duration) -> Result<Client, ClientError> {
        if urls.is_empty() {
            return Err(ClientError::Usage("no API URL given".into()));
        }
        let http = reqwest::Client::builder()
            // Redirects are followed here, not by reqwest, so the leader can be remembered.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| ClientError::Usage(format!("building the HTTP client: {e}")))?;
        let inner = Inner { urls, preferred: Mutex::new(None), http, admin_token, timeout };
        Ok(Client { inner: Arc::new(inner), stale: false, region_scoped: false })
    }

    /// The same URLs with an admin token sent on every request (for `shard` and node admin
    /// calls).
    pub fn with_admin_token(&self, token: Option<String>) -> Client {
        let mut c = Self::rebuild(self, token, self.inner.timeout);
        c.stale = self.stale;
        c.region_scoped = self.region_scoped;
        c
    }

    /// The same URLs with another default per-request timeout.
    pub fn with_timeout(&self, timeout: Duration) -> Client {
        let mut c = Self::rebuild(self, self.inner.admin_token.clone(), timeout);
        c.stale = self.stale;
        c.region_scoped = self.region_scoped;
        c
    }

    fn rebuild(&self, admin_token: Option<String>, timeout: Duration) -> Client {
        let inner = Inner {
            urls: self.inner.urls.clone(),
            preferred: Mutex::new(self.preferred()),
            http: self.inner.http.clone(),
            admin_token,
            timeout,
        };
        Client { inner: Arc::new(inner), stale: false, region_scoped: false }
    }

    /// A client of other URLs that keeps this one's admin token and timeout.
    pub fn sibling(&self, urls: Vec<String>) -> Result<Client, ClientError> {
        if urls.is_empty() {
            return Err(ClientError::Usage("no API URL given".into()));
        }
        let inner = Inner {
            urls,
            preferred: Mutex::new(None),
            http: self.inner.http.clone(),
            admin_token: self.inner.admin_token.clone(),
            timeout: self.inner.timeout,
        };
        Ok(Client { inner: Arc::new(inner), stale: self.stale, region_scoped: self.region_scoped })
    }

    /// Reads from here on are served from the answering replica's local state (`?stale=true`)
    /// instead of being linearized through the leader.
    pub fn stale(&self) -> Client {
        Client { stale: true, ..self.clone() }
    }

    /// Reads from here on cover only the answering replica's own region (`?scope=region`); the
    /// control plane uses it when it asks other regions, so that they do not ask further.
    pub fn region_scoped(&self) -> Client {
        Client { region_scoped: true, ..self.clone() }
    }

    /// The base URLs, in the order given.
    pub fn urls(&self) -> &[String] {
        &self.inner.urls
    }

    /// The URL tried first: the last that answered, or the leader a replica named.
    pub fn preferred(&self) -> Option<String> {
        self.inner.preferred.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_preferred(&self, url: &str) {
        let mut p = self.inner.preferred.lock().unwrap_or_else(|e| e.into_inner());
        if p.as_deref() != Some(url) {
            *p = Some(url.to_string());
        }
    }

    fn order(&self) -> Vec<String> {
        let mut order = Vec::with_capacity(self.inner.urls.len() + 1);
        if let Some(p) = self.preferred() {
            order.push(p);
        }
        for u in &self.inner.urls {
            if !order.contains(u) {
                order.push(u.clone());
            }
        }
        order
    }

    pub(crate) async fn json<T: DeserializeOwned>(&self, call: Call) -> Result<T, ClientError> {
        let (url, bytes) = self.send(call).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol { url, reason: e.to_string() })
    }

    pub(crate) async fn bytes(&self, call: Call) -> Result<Bytes, ClientError> {
        Ok(self.send(call).await?.1)
    }

    /// Sends `call`, failing over and following leaders; returns the URL that answered and the
    /// body of a 2xx answer.
    pub(crate) async fn send(&self, mut call: Call) -> Result<(String, Bytes), ClientError> {
        if call.method == Method::GET {
            if self.stale {
                call.query.push(("stale", "true".into()));
            }
            if self.region_scoped {
                call.query.push(("scope", "region".into()));
            }
        }
        let started = Instant::now();
        let mut order = self.order();
        let mut i = 0;
        let mut redirects = 0;
        let mut last_error = String::new();
        loop {
            let Some(base) = order.get(i).cloned() else {
                return Err(ClientError::Unreachable { urls: order.join(","), reason: last_error });
            };
            let mut req = self
                .inner
                .http
                .request(call.method.clone(), format!("{base}{}", call.path))
                .timeout(call.timeout.unwrap_or(self.inner.timeout));
            if !call.query.is_empty() {
                req = req.query(&call.query);
            }
            if let Some((body, content_type)) = &call.body {
                req = req.header(reqwest::header::CONTENT_TYPE, *content_type).body(body.clone());
            }
            if let Some(token) = &self.inner.admin_token {
                req = req.header(ADMIN_TOKEN_HEADER, token);
            }
            for (name, value) in &call.headers {
                req = req.header(*name, value);
            }
            let resp = match req.send().await {
                Ok(resp) => resp,
                Err(e) => {
                    let never_sent = e.is_connect() || is_refused(&e);
                    last_error = format!("{base}: {}", error_chain(&e));
                    if never_sent || call.retry == Retry::Always {
                        tracing::debug!("{last_error}; trying the next URL");
                        i += 1;
                        continue;
                    }
                    return Err(ClientError::Unreachable {
                        urls: base,
                        reason: format!("{last_error} (the request may or may not have been applied)"),
                    });
                }
            };
            let status = resp.status();
            let bytes = match resp.bytes().await {
                Ok(b) => b,
                Err(e) => {
                    last_error = format!("{base}: reading the answer: {}", error_chain(&e));
                    if call.retry == Retry::Always {
                        i += 1;
                        continue;
                    }
                    return Err(ClientError::Unreachable { urls: base, reason: last_error });
                }
            };
            if status.is_success() {
                tracing::debug!("{} {base}{}: {status}", call.method, call.path);
                self.set_preferred(&base);
                return Ok((base, bytes));
            }
            let body = serde_json::from_slice::<ErrorBody>(&bytes).ok();
            let code = body.as_ref().map(|b| b.error.code.as_str()).unwrap_or("");
            tracing::debug!("{} {base}{}: {status} {code}", call.method, call.path);
            // A replica names the leader: go there, and remember it. Only this answer is followed
            // (never a bare redirect), so a server cannot send our headers anywhere it likes.
            if code == "not_leader" {
                let leader = body.as_ref().and_then(|b| b.error.leader.clone()).and_then(|l| parse_urls(&l).pop());
                if let Some(leader) = leader
                    && redirects < MAX_REDIRECTS
                    && leader != base
                {
                    redirects += 1;
                    self.set_preferred(&leader);
                    order = self.order();
                    i = 0;
                    continue;
                }
            }
            // This replica cannot help now (it knows no leader, is not a member yet, or a new
            // leader is still learning the soft state): another may; when none can, wait a
            // little (an election) and ask again.
            let transient = matches!(code, "no_leader" | "not_leader" | "warming_up" | "not_member");
            if transient && started.elapsed() < NO_LEADER_PATIENCE {
                last_error = format!("{base}: {code}");
                if i + 1 < order.len() {
                    i += 1;
                } else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    order = self.order();
                    i = 0;
                }
                continue;
            }
            return Err(match body {
                Some(b) if status == StatusCode::NOT_FOUND => ClientError::NotFound { message: b.error.message },
                Some(b) => ClientError::Api {
                    status: status.as_u16(),
                    code: b.error.code,
                    message: b.error.message,
                    fields: b.error.fields,
                },
                None if status == StatusCode::NOT_FOUND => {
                    ClientError::NotFound { message: format!("{base}{} is not found", call.path) }
                }
                None => ClientError::Protocol {
                    url: base,
                    reason: format!("{status}: {}", String::from_utf8_lossy(&bytes[..bytes.len().min(300)])),
                },
            });
        }
    }
}

fn is_refused(e: &reqwest::Error) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && matches!(io.kind(), std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NetworkUnreachable)
        {
            return true;
        }
        source = err.source();
    }
    false
}

/// reqwest's top-level message hides the cause ("error sending request"): name the cause.
fn error_chain(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut root: &dyn std::error::Error = e;
    while let Some(next) = root.source() {
        root = next;
    }
    let what = if e.is_connect() { "connect" } else { "request" };
    format!("{what}: {root}")
}

/// The listener behind `url` (`http://IP:PORT/...`) in canonical form (`::ffff:a.b.c.d` is
/// `a.b.c.d`), when the URL names it by address; a host name gives `None`.
pub fn listener_of(url: &str) -> Option<std::net::SocketAddr> {
    let url = reqwest::Url::parse(url).ok()?;
    let ip: std::net::IpAddr = url.host_str()?.trim_start_matches('[').trim_end_matches(']').parse().ok()?;
    Some(std::net::SocketAddr::new(ip.to_canonical(), url.port_or_known_default()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_normalized() {
        assert_eq!(
            parse_urls("127.0.0.1:1, http://a:2/,https://b"),
            vec!["http://127.0.0.1:1", "http://a:2", "https://b"]
        );
        assert!(parse_urls(" , ").is_empty());
        assert!(Client::from_list("").is_err());
    }
}

#[cfg(test)]
mod failover_tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;
    use axum::http::StatusCode;
    use axum::routing::get;

    use super::*;

    async fn serve(router: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(axum::serve(listener, router).into_future());
        format!("http://{addr}")
    }

    fn error(status: StatusCode, code: &str, leader: Option<String>) -> (StatusCode, axum::Json<serde_json::Value>) {
        (status, axum::Json(serde_json::json!({ "error": { "code": code, "message": code, "leader": leader } })))
    }

    #[tokio::test]
    async fn skips_dead_urls_follows_the_leader_and_remembers_it() {
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let leader = serve(Router::new().route(
            "/v1/chain/tip",
            get(move || {
                h.fetch_add(1, Ordering::Relaxed);
                async { axum::Json(serde_json::json!({ "height": 7, "hash": "h", "genesis_hash": "g" })) }
            }),
        ))
        .await;
        let l = leader.clone();
        let follower = serve(Router::new().route(
            "/v1/chain/tip",
            get(move || {
                let l = l.clone();
                async move { error(StatusCode::TEMPORARY_REDIRECT, "not_leader", Some(l)) }
            }),
        ))
        .await;
        let client = Client::new(vec!["http://127.0.0.1:1".into(), follower.clone()]).expect("client");
        assert_eq!(client.chain_tip().await.expect("tip").height, 7);
        assert_eq!(client.preferred().as_deref(), Some(leader.as_str()));
        client.chain_tip().await.expect("tip");
        assert_eq!(hits.load(Ordering::Relaxed), 2, "the second call went straight to the leader");
    }

    #[tokio::test]
    async fn errors_are_typed() {
        let server = serve(
            Router::new()
                .route("/v1/apps/{name}", get(|| async { error(StatusCode::NOT_FOUND, "not_found", None) }))
                .route("/v1/chain/tip", get(|| async { error(StatusCode::PAYMENT_REQUIRED, "underpaid", None) })),
        )
        .await;
        let client = Client::new(vec![server]).expect("client");
        assert!(client.app("nope").await.expect_err("missing").is_not_found());
        assert_eq!(client.chain_tip().await.expect_err("refused").code(), Some("underpaid"));
        let dead = Client::new(vec!["http://127.0.0.1:1".into()]).expect("client");
        assert!(dead.chain_tip().await.expect_err("down").is_unreachable());
    }

    #[tokio::test]
    async fn a_replica_without_a_leader_sends_the_call_to_the_next() {
        let lost = serve(
            Router::new()
                .route("/v1/chain/tip", get(|| async { error(StatusCode::SERVICE_UNAVAILABLE, "not_member", None) })),
        )
        .await;
        let good = serve(Router::new().route(
            "/v1/chain/tip",
            get(|| async { axum::Json(serde_json::json!({ "height": 1, "hash": "h", "genesis_hash": "g" })) }),
        ))
        .await;
        let client = Client::new(vec![lost, good]).expect("client");
        assert_eq!(client.chain_tip().await.expect("failed over").height, 1);
    }
}
