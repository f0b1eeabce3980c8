//! The gateway: the front door end users reach apps through. It maps a host
//! (`<app>.app.<domain>`, or an app's custom domain) to the app's nearest healthy, least
//! loaded instance and streams the request there.
//!
//! It follows every region's routing feed (long poll) into a local, pre-indexed route table
//! and serves from that table, so it keeps serving its last routes when the control plane is
//! gone. The request path is a stack of small tower layers ([`stack::build`] says why each
//! sits where it does); around it, [`server`] holds the listeners (HTTP/1.1 and HTTP/2, TLS
//! with SNI) and their per-connection limits, and the admin listener serves `/metrics`.
//!
//! Depends on `model`, `client` and `serve`.

mod body;
mod endpoint;
mod follow;
mod forbidden;
mod forward;
mod framing;
pub mod geoip;
mod host;
mod hygiene;
mod limits;
mod locate;
mod metrics;
mod retry;
mod select;
mod server;
pub mod stack;
mod table;
pub mod tls;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use model::geo::GeoPoint;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, watch};

pub use body::Body;
pub use forbidden::Forbidden;
pub use locate::CLIENT_GEO;
pub use retry::X_FLUXPLANE_ATTEMPTS;
pub use table::{RouteTable, domain_key};

/// How a gateway is set up.
#[derive(Clone)]
pub struct GatewayConfig {
    /// The name it gives itself when it follows the feeds: the control plane tells `deploy
    /// --wait` which gateways hold which feed version.
    pub id: String,
    /// Where to listen for plain HTTP.
    pub listen: SocketAddr,
    /// Apps answer at `<app>.app.<domain>`.
    pub domain: String,
    /// Control-plane URLs to learn regions and feeds from (any one finds them all).
    pub control: client::Client,
    /// Location used when the client's is unknown.
    pub geo: GeoPoint,
    /// Peers whose `x-fluxplane-client-geo` and `x-forwarded-*` headers are believed.
    pub trusted: Vec<IpAddr>,
    /// A MaxMind-format (GeoLite2-City layout) database to locate clients by address.
    pub geoip_db: Option<PathBuf>,
    /// Regions within this many km of the nearest one share its load (0: the nearest region
    /// alone, until all its instances are ejected or full).
    pub spread_km: f64,
    /// Longest an instance may take to send its response head.
    pub response_header_timeout: Duration,
    /// TLS, when the gateway serves HTTPS too.
    pub tls: Option<TlsConfig>,
    /// Where to serve `/metrics` and `/healthz` (not on the app listener, whose every path
    /// belongs to the apps).
    pub admin_listen: Option<SocketAddr>,
    /// Worker threads serving connections (0: one per core).
    pub workers: usize,
    pub limits: Limits,
}

/// HTTPS.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub listen: SocketAddr,
    /// The certificate and key for `*.app.<domain>`; without them a self-signed one is made.
    pub default_cert: Option<(PathBuf, PathBuf)>,
    /// Custom domains' certificates, reloaded when their files change.
    pub domains: Vec<tls::DomainCert>,
    /// Whether plain HTTP requests are redirected to HTTPS.
    pub redirect_http: bool,
    /// How often certificate files are checked for changes.
    pub reload_every: Duration,
}

/// What the gateway allows each client.
#[derive(Debug, Clone)]
pub struct Limits {
    /// A TLS handshake or a request head not complete within this closes the connection;
    /// this also closes idle keep-alive connections.
    pub header_read_timeout: Duration,
    /// Most client connections open at once, over all listeners.
    pub max_connections: usize,
    /// Largest request head, bytes (431 beyond).
    pub max_header_bytes: usize,
    /// Most requests in flight from one client address (429 beyond).
    pub max_in_flight_per_client: u32,
    /// A request body that sends nothing for this long is cut off (408), and a client that
    /// reads nothing of its response for this long is disconnected.
    pub body_idle_timeout: Duration,
    /// Most bytes all request bodies in flight may hold in the gateway at once.
    pub body_memory: usize,
    /// An HTTP/2 connection on which no request began for this long is closed (GOAWAY: its
    /// streams in flight finish). HTTP/1.1 keep-alive connections are closed by
    /// `header_read_timeout`, which runs while hyper waits for the next head.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            max_header_bytes: 32 << 10,
            max_in_flight_per_client: 256,
            body_idle_timeout: Duration::from_secs(10),
            body_memory: 256 << 20,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// What every layer and listener shares.
pub struct Shared {
    pub(crate) config: GatewayConfig,
    pub(crate) table: ArcSwap<RouteTable>,
    pub(crate) endpoints: table::Endpoints,
    /// Listeners never dialed (its own, the control plane's); the feed followers add replicas.
    pub(crate) forbidden: ArcSwap<Forbidden>,
    pub(crate) metrics: metrics::Metrics,
    pub(crate) geoip: Option<geoip::GeoIpDb>,
    pub(crate) budget: retry::RetryBudget,
    pub(crate) clients: Arc<limits::ClientCounts>,
    pub(crate) body_memory: Arc<body::BodyMemory>,
    pub(crate) connection_slots: Arc<Semaphore>,
    /// The HTTPS port plain requests are redirected to.
    pub(crate) https_port: Option<u16>,
    /// Every region's last feed.
    pub(crate) feeds: Mutex<std::collections::HashMap<String, model::api::RouteFeed>>,
    /// Woken when an instance is ejected, so the feed followers report it at once.
    pub(crate) ejections_changed: Notify,
}

impl Shared {
    /// Shared state for `config`, with no routes yet.
    pub fn new(config: GatewayConfig) -> anyhow::Result<Arc<Shared>> {
        let geoip = match &config.geoip_db {
            Some(path) => {
                let db = geoip::GeoIpDb::open(path)?;
                tracing::info!("GeoIP: {}", db.description());
                Some(db)
            }
            None => None,
        };
        let mut forbidden = Forbidden::default();
        for url in config.control.urls() {
            forbidden.add_url(url);
        }
        Ok(Arc::new(Shared {
            body_memory: body::BodyMemory::new(config.limits.body_memory),
            connection_slots: server::connection_slots(config.limits.max_connections),
            https_port: None,
            config,
            table: ArcSwap::default(),
            endpoints: table::Endpoints::default(),
            forbidden: ArcSwap::from_pointee(forbidden),
            metrics: metrics::Metrics::default(),
            geoip,
            budget: retry::RetryBudget::default(),
            clients: Arc::default(),
            feeds: Mutex::default(),
            ejections_changed: Notify::new(),
        }))
    }

    /// Whether `ip` is a trusted peer.
    pub(crate) fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.config.trusted.iter().any(|t| t.to_canonical() == ip)
    }

    /// Rebuilds the route table from the feeds held.
    pub(crate) fn rebuild(&self) {
        let feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
        let routes = feeds.values().flat_map(|f| f.routes.iter());
        let unrouted = feeds.values().flat_map(|f| f.unrouted.iter());
        let domains = feeds.values().flat_map(|f| f.domains.iter());
        let table = RouteTable::build(routes, unrouted, domains, &self.forbidden.load(), &self.endpoints);
        self.table.store(Arc::new(table));
    }

    /// Replaces the table with one built from `routes` (tests and benchmarks that have no
    /// control plane). With no control plane to prove them, every custom domain in `routes`
    /// counts as proven by its app (two apps on one domain: the first by name).
    pub fn set_routes(&self, routes: &[model::api::Route]) {
        let mut domains = std::collections::BTreeMap::new();
        for r in routes {
            if let Some(domain) = &r.domain {
                let winner = model::domains::DomainWinner { app: r.app.clone(), since: 0 };
                let best = domains.entry(domain.clone()).or_insert_with(|| winner.clone());
                if winner.beats(best) {
                    *best = winner;
                }
            }
        }
        let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
        feeds.clear();
        feeds.insert(
            String::new(),
            model::api::RouteFeed {
                region: String::new(),
                version: 0,
                routes: routes.to_vec(),
                unrouted: Default::default(),
                domains,
            },
        );
        drop(feeds);
        self.rebuild();
    }

    /// The instances ejected now, by region.
    pub(crate) fn ejected(&self) -> std::collections::BTreeMap<String, Vec<String>> {
        let now = endpoint::now_ms();
        let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for e in self.endpoints.all() {
            if e.ejected(now) {
                out.entry(e.region.clone()).or_default().push(e.instance.clone());
            }
        }
        for list in out.values_mut() {
            list.sort();
            list.dedup();
        }
        out
    }

    /// The Prometheus text of the gateway's metrics.
    pub fn metrics_text(&self) -> String {
        self.metrics.render(self)
    }
}

/// A running gateway: its listeners and its feed followers.
pub struct GatewayHandle {
    workers: server::Workers,
    http_addr: SocketAddr,
    https_addr: Option<SocketAddr>,
    admin: Option<serve::Server>,
    stop: watch::Sender<bool>,
    shared: Arc<Shared>,
    cert_watch: Option<tokio::task::JoinHandle<()>>,
}

impl GatewayHandle {
    /// The plain HTTP listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The HTTPS listener's address.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.https_addr
    }

    /// The admin listener's address (`/metrics`).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.local_addr())
    }

    /// What the layers share (metrics, routes).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops accepting, finishes the requests in flight (within `deadline`), stops following.
    pub async fn drain(self, deadline: Duration) -> bool {
        let clean = self.workers.drain(deadline).await;
        if let Some(admin) = self.admin {
            admin.drain(Duration::from_millis(100)).await;
        }
        if let Some(w) = self.cert_watch {
            w.abort();
        }
        let _ = self.stop.send(true);
        clean
    }
}

/// The gateway.
pub struct Gateway;

impl Gateway {
    /// Binds the listeners and starts following the feeds.
    pub async fn spawn(config: GatewayConfig) -> anyhow::Result<GatewayHandle> {
        let listener = server::bind(config.listen)
            .map_err(|e| anyhow::anyhow!("binding the gateway on {}: {e}", config.listen))?;
        let tls = match &config.tls {
            Some(tls) => {
                let certs = tls::Certificates::load(&config.domain, tls.default_cert.clone(), tls.domains.clone())?;
                tracing::info!("TLS certificates: {}", certs.names().join(", "));
                let acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config(certs.clone())?);
                let listener = server::bind(tls.listen)
                    .map_err(|e| anyhow::anyhow!("binding the gateway's TLS listener on {}: {e}", tls.listen))?;
                Some((listener, acceptor, certs.watch(tls.reload_every), tls.redirect_http))
            }
            None => None,
        };
        let mut shared = Shared::new(config)?;
        let http_addr = listener.local_addr()?;
        let https_addr = match &tls {
            Some((l, ..)) => Some(l.local_addr()?),
            None => None,
        };
        {
            let Some(s) = Arc::get_mut(&mut shared) else { anyhow::bail!("gateway state shared too early") };
            let mut forbidden = (**s.forbidden.load()).clone();
            for addr in std::iter::once(http_addr).chain(https_addr) {
                forbidden.add(addr);
            }
            s.forbidden.store(Arc::new(forbidden));
            if let Some((_, _, _, true)) = &tls {
                s.https_port = https_addr.map(|a| a.port());
            }
        }
        let service = stack::build(shared.clone());
        let mut bound = vec![server::Bound { listener, tls: None }];
        let mut cert_watch = None;
        if let Some((listener, acceptor, watch, _)) = tls {
            bound.push(server::Bound { listener, tls: Some(acceptor) });
            cert_watch = Some(watch);
        }
        let workers = match shared.config.workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let workers = server::start(bound, workers, service, shared.clone())?;
        let admin = match shared.config.admin_listen {
            Some(addr) => Some(admin(addr, shared.clone()).await?),
            None => None,
        };
        if let Some(admin) = &admin {
            // Never proxied to, like the app listeners: a node reporting it as an endpoint
            // would put `/metrics` behind an app's host.
            let mut forbidden = (**shared.forbidden.load()).clone();
            forbidden.add(admin.local_addr());
            shared.forbidden.store(Arc::new(forbidden));
            shared.rebuild();
        }
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(follow::follow(shared.clone(), stopped));
        Ok(GatewayHandle { workers, http_addr, https_addr, admin, stop, shared, cert_watch })
    }
}

/// `/metrics` and `/healthz`.
async fn admin(addr: SocketAddr, shared: Arc<Shared>) -> anyhow::Result<serve::Server> {
    use http_body_util::Full;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding the gateway's admin listener on {addr}: {e}"))?;
    let server = serve::spawn(listener, serve::Limits::default(), move |_peer| {
        let shared = shared.clone();
        hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let shared = shared.clone();
            async move {
                let (status, body) = match req.uri().path() {
                    "/metrics" => (http::StatusCode::OK, shared.metrics_text()),
                    "/healthz" => (http::StatusCode::OK, "ok\n".to_string()),
                    _ => (http::StatusCode::NOT_FOUND, "try /metrics or /healthz\n".to_string()),
                };
                let mut resp = http::Response::new(Full::new(bytes::Bytes::from(body)));
                *resp.status_mut() = status;
                resp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                Ok::<_, std::convert::Infallible>(resp)
            }
        })
    })?;
    Ok(server)
}

/// A gateway id for when none is configured: `gw-` and 8 random hex digits.
pub fn random_id() -> String {
    use std::hash::BuildHasher;
    let seed = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
    format!("gw-{:08x}", seed as u32)
}

#[cfg(test)]
mod tests;
