//! One instance as the gateway sees it: its pooled connections, its load (requests in flight
//! and an EWMA of latency) and its passive health (consecutive failures and ejections).
//!
//! An endpoint outlives route-table rebuilds: the table keeps the same `Arc<Endpoint>` for the
//! same instance and address, so load and ejections survive a feed change.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use http::HeaderValue;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::Body;

/// Consecutive connect errors or 5xx answers that eject an instance.
pub const EJECT_AFTER_FAILURES: u32 = 5;
/// Each ejection lasts this times the number of ejections so far ...
pub const EJECTION_STEP: Duration = Duration::from_secs(10);
/// ... capped at this.
pub const EJECTION_MAX: Duration = Duration::from_secs(300);
/// How long a connect may take before the next instance is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The latency a failed request counts as in the EWMA.
pub const FAILURE_LATENCY: Duration = Duration::from_millis(250);
/// Idle connections kept per instance.
const MAX_IDLE: usize = 256;
/// Latency of an instance nothing has been measured on yet, µs: none, so a new instance is
/// tried soon and measured, rather than starved by the ones already known.
const INITIAL_LATENCY_US: u64 = 0;

/// Milliseconds since the gateway's clock started (monotonic).
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// One instance of one component.
pub struct Endpoint {
    /// `app@node`.
    pub instance: String,
    pub node: String,
    pub region: String,
    pub geo: model::geo::GeoPoint,
    pub addr: SocketAddr,
    /// The debug headers' values, made once.
    pub node_header: HeaderValue,
    pub region_header: HeaderValue,
    max_concurrency: AtomicU32,
    in_flight: AtomicU32,
    /// EWMA of the time to the response head, µs.
    latency_us: AtomicU64,
    consecutive_failures: AtomicU32,
    ejections: AtomicU32,
    /// Ejected until this [`now_ms`] (0: never ejected).
    ejected_until_ms: AtomicU64,
    /// Idle connections, each with the worker thread whose runtime drives it: a request takes
    /// one of its own worker's, so that it never waits on another thread.
    idle: Mutex<Vec<(usize, SendRequest<Body>)>>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("instance", &self.instance).field("addr", &self.addr).finish()
    }
}

/// Why a connection could not be had.
#[derive(Debug)]
pub struct ConnectError(pub String);

impl Endpoint {
    pub fn new(route: &model::api::Route, addr: SocketAddr) -> Endpoint {
        Endpoint {
            instance: route.instance(),
            node: route.node.clone(),
            region: route.region.clone(),
            geo: route.geo,
            addr,
            node_header: HeaderValue::from_str(&route.node).unwrap_or(HeaderValue::from_static("?")),
            region_header: HeaderValue::from_str(&route.region).unwrap_or(HeaderValue::from_static("?")),
            max_concurrency: AtomicU32::new(route.traffic.concurrency()),
            in_flight: AtomicU32::new(0),
            latency_us: AtomicU64::new(INITIAL_LATENCY_US),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// A spec update can change the limit of a live instance.
    pub fn set_max_concurrency(&self, n: u32) {
        self.max_concurrency.store(n, Ordering::Relaxed);
    }

    pub fn max_concurrency(&self) -> u32 {
        self.max_concurrency.load(Ordering::Relaxed)
    }

    /// EWMA of the time to the response head, µs.
    pub fn latency_us(&self) -> u64 {
        self.latency_us.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether it is ejected at `now` (a [`now_ms`]).
    pub fn ejected(&self, now: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now
    }

    /// Milliseconds of ejection left at `now`.
    pub fn ejected_for_ms(&self, now: u64) -> u64 {
        self.ejected_until_ms.load(Ordering::Relaxed).saturating_sub(now)
    }

    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Whether it has room for one more request (not counting ejection).
    pub fn has_room(&self) -> bool {
        self.in_flight() < self.max_concurrency()
    }

    /// The P2C score: expected latency times the queue it would join. Lower is better.
    pub fn load_score(&self) -> u64 {
        self.latency_us.load(Ordering::Relaxed).saturating_mul(u64::from(self.in_flight()) + 1)
    }

    /// Takes one of its concurrency slots, if one is free. The slot is given back on drop.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Slot> {
        let max = self.max_concurrency();
        self.in_flight.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| (n < max).then_some(n + 1)).ok()?;
        Some(Slot { endpoint: self.clone() })
    }

    /// A response head arrived after `took`: folded into the latency EWMA.
    pub fn observe_latency(&self, took: Duration) {
        let sample = (took.as_micros() as u64).max(1);
        // α = 1/4: a slow instance shows within a few requests, one outlier does not dominate.
        let _ = self.latency_us.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
            Some(if old == INITIAL_LATENCY_US { sample } else { (old * 3 + sample) / 4 })
        });
    }

    pub fn record_success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a connect error or 5xx. Returns how long the instance is now ejected for, when
    /// this failure ejects it; `siblings` are the instances of its app (at most half of them
    /// may be ejected at once).
    pub fn record_failure(&self, siblings: &[Arc<Endpoint>]) -> Option<Duration> {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let now = now_ms();
        if failures < EJECT_AFTER_FAILURES || self.ejected(now) {
            return None;
        }
        let ejected = siblings.iter().filter(|e| e.ejected(now)).count();
        if (ejected + 1) * 2 > siblings.len() {
            // Envoy's rule: never eject the last healthy half; a struggling instance beats none.
            return None;
        }
        let n = self.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let time = EJECTION_STEP.saturating_mul(n).min(EJECTION_MAX);
        self.ejected_until_ms.store(now + time.as_millis() as u64, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        Some(time)
    }

    /// An open connection: an idle pooled one, else a new one.
    pub async fn connection(&self) -> Result<SendRequest<Body>, ConnectError> {
        if let Some(conn) = self.pooled() {
            return Ok(conn);
        }
        self.connect().await
    }

    fn pooled(&self) -> Option<SendRequest<Body>> {
        let worker = crate::server::worker();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        // Closed connections are dropped on the way.
        idle.retain(|(_, c)| !c.is_closed());
        let at = idle.iter().rposition(|(w, c)| *w == worker && c.is_ready())?;
        Some(idle.swap_remove(at).1)
    }

    /// A new connection, never from the pool (a pooled connection that died under a request
    /// that never went out is replaced by this).
    pub async fn connect(&self) -> Result<SendRequest<Body>, ConnectError> {
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(ConnectError(format!("connect to {} on {}: {e}", self.addr, self.node))),
            Err(_) => {
                return Err(ConnectError(format!(
                    "connect to {} on {}: no answer within {CONNECT_TIMEOUT:?}",
                    self.addr, self.node
                )));
            }
        };
        let _ = stream.set_nodelay(true);
        let (mut send, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ConnectError(format!("handshake with {} on {}: {e}", self.addr, self.node)))?;
        // With upgrades, so that a WebSocket's 101 hands the connection over.
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::trace!("instance connection ended: {e}");
            }
        });
        send.ready().await.map_err(|e| ConnectError(format!("connection to {} on {}: {e}", self.addr, self.node)))?;
        Ok(send)
    }

    /// Gives a connection back after its response was read to the end.
    pub fn give_back(&self, conn: SendRequest<Body>) {
        if conn.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push((crate::server::worker(), conn));
        }
    }
}

/// One request's hold on an endpoint's concurrency; released on drop.
#[derive(Debug)]
pub struct Slot {
    endpoint: Arc<Endpoint>,
}

impl Slot {
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(n: u32) -> Arc<Endpoint> {
        let route = model::api::Route {
            app: "a".into(),
            component: "web".into(),
            primary: true,
            node: format!("n{n}"),
            region: "eu".into(),
            geo: model::geo::GeoPoint { lat: 0.0, lon: 0.0 },
            addr: format!("127.0.0.1:{}", 20000 + n),
            port: None,
            domain: None,
            traffic: model::spec::Traffic { max_concurrency: Some(2), max_body_mb: None },
        };
        Arc::new(Endpoint::new(&route, route.addr.parse().expect("addr")))
    }

    #[test]
    fn five_failures_eject_for_longer_each_time_but_never_more_than_half() {
        let all: Vec<_> = (0..4).map(endpoint).collect();
        for _ in 0..4 {
            assert_eq!(all[0].record_failure(&all), None);
        }
        assert_eq!(all[0].record_failure(&all), Some(EJECTION_STEP));
        assert!(all[0].ejected(now_ms()));
        // A success in between resets the count.
        for _ in 0..4 {
            all[1].record_failure(&all);
        }
        all[1].record_success();
        assert_eq!(all[1].record_failure(&all), None);
        for _ in 0..3 {
            all[1].record_failure(&all);
        }
        assert_eq!(all[1].record_failure(&all), Some(EJECTION_STEP), "second of four: half");
        for _ in 0..10 {
            assert_eq!(all[2].record_failure(&all), None, "a third of four would be over half");
        }
        // The second ejection of one instance lasts twice as long.
        all[0].ejected_until_ms.store(0, Ordering::Relaxed);
        all[1].ejected_until_ms.store(0, Ordering::Relaxed);
        for _ in 0..4 {
            all[0].record_failure(&all);
        }
        assert_eq!(all[0].record_failure(&all), Some(EJECTION_STEP * 2));
        all[0].ejections.store(100, Ordering::Relaxed);
        all[0].ejected_until_ms.store(0, Ordering::Relaxed);
        for _ in 0..4 {
            all[0].record_failure(&all);
        }
        assert_eq!(all[0].record_failure(&all), Some(EJECTION_MAX));
    }

    #[test]
    fn slots_stop_at_max_concurrency_and_come_back_on_drop() {
        let e = endpoint(0);
        let a = e.try_acquire().expect("first");
        let _b = e.try_acquire().expect("second");
        assert!(e.try_acquire().is_none());
        assert!(!e.has_room());
        drop(a);
        assert!(e.try_acquire().is_some());
    }
}
