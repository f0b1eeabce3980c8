//! The gateway's counters, the layer that counts every answer, and their Prometheus text.
//!
//! Plain atomics rather than a metrics registry: the request path pays a few relaxed adds,
//! and everything per instance (in flight, latency, ejections) is read off the endpoints
//! themselves when `/metrics` is scraped.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use tower::Service;

use crate::Shared;
use crate::stack::{BoxFuture, Req, Resp};

/// Upper bounds of the request-duration histogram, seconds.
const BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// Every counter the gateway keeps.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Answers by status class: 1xx .. 5xx.
    answers: [AtomicU64; 5],
    duration_buckets: [AtomicU64; BUCKETS.len()],
    duration_sum_us: AtomicU64,
    pub retries: AtomicU64,
    pub retries_refused_by_budget: AtomicU64,
    pub ejections: AtomicU64,
    pub upstream_connect_errors: AtomicU64,
    pub upstream_failures: AtomicU64,
    pub refused_client_in_flight: AtomicU64,
    pub refused_body_too_large: AtomicU64,
    pub refused_body_too_slow: AtomicU64,
    pub refused_body_memory: AtomicU64,
    pub refused_smuggling: AtomicU64,
    pub all_full: AtomicU64,
    pub websocket_upgrades: AtomicU64,
    pub connections_open: AtomicU64,
    pub connections_refused: AtomicU64,
    pub tls_handshake_failures: AtomicU64,
}

/// Adds one.
pub fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    fn observe(&self, status: u16, started: Instant) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        inc(&self.answers[class]);
        let took = started.elapsed();
        self.duration_sum_us.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            inc(&self.duration_buckets[i]);
        }
    }

    /// Prometheus text exposition of the counters and of every endpoint's state.
    pub fn render(&self, shared: &Shared) -> String {
        let mut out = String::with_capacity(4096);
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        out.push_str("# TYPE fluxplane_gateway_responses_total counter\n");
        for (i, c) in self.answers.iter().enumerate() {
            let _ = writeln!(out, "fluxplane_gateway_responses_total{{class=\"{}xx\"}} {}", i + 1, get(c));
        }
        let total: u64 = self.answers.iter().map(get).sum();
        out.push_str("# TYPE fluxplane_gateway_request_duration_seconds histogram\n");
        let mut cumulative = 0;
        for (b, c) in BUCKETS.iter().zip(&self.duration_buckets) {
            cumulative += get(c);
            let _ = writeln!(out, "fluxplane_gateway_request_duration_seconds_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let _ = writeln!(out, "fluxplane_gateway_request_duration_seconds_bucket{{le=\"+Inf\"}} {total}");
        let _ =
            writeln!(out, "fluxplane_gateway_request_duration_seconds_sum {}", get(&self.duration_sum_us) as f64 / 1e6);
        let _ = writeln!(out, "fluxplane_gateway_request_duration_seconds_count {total}");
        let counters: [(&str, &str, &AtomicU64); 15] = [
            ("retries_total", "requests sent again to another instance", &self.retries),
            ("retries_refused_total", "retries the budget did not allow", &self.retries_refused_by_budget),
            ("ejections_total", "instances ejected after consecutive failures", &self.ejections),
            ("upstream_connect_errors_total", "connects to instances that failed", &self.upstream_connect_errors),
            ("upstream_failures_total", "requests that failed after reaching an instance", &self.upstream_failures),
            (
                "refused_client_in_flight_total",
                "429s: a client over its requests in flight",
                &self.refused_client_in_flight,
            ),
            ("refused_body_too_large_total", "413s", &self.refused_body_too_large),
            ("refused_body_too_slow_total", "408s: request bodies that stalled", &self.refused_body_too_slow),
            ("refused_body_memory_total", "503s: body memory cap reached", &self.refused_body_memory),
            ("refused_smuggling_total", "400s: ambiguous request framing", &self.refused_smuggling),
            ("all_instances_full_total", "503s: every instance at its concurrency limit", &self.all_full),
            ("websocket_upgrades_total", "upgraded connections", &self.websocket_upgrades),
            ("connections_refused_total", "connections closed on arrival: too many open", &self.connections_refused),
            ("tls_handshake_failures_total", "TLS handshakes that failed or timed out", &self.tls_handshake_failures),
            ("connections_open", "client connections open", &self.connections_open),
        ];
        for (name, help, c) in counters {
            let kind = if name.ends_with("_total") { "counter" } else { "gauge" };
            let _ = writeln!(out, "# HELP fluxplane_gateway_{name} {help}");
            let _ = writeln!(out, "# TYPE fluxplane_gateway_{name} {kind}");
            let _ = writeln!(out, "fluxplane_gateway_{name} {}", get(c));
        }
        let _ = writeln!(out, "# TYPE fluxplane_gateway_clients_in_flight gauge");
        let _ = writeln!(out, "fluxplane_gateway_clients_in_flight {}", shared.clients.len());
        let _ = writeln!(out, "# TYPE fluxplane_gateway_body_bytes_held gauge");
        let _ = writeln!(out, "fluxplane_gateway_body_bytes_held {}", shared.body_memory.held());
        let now = crate::endpoint::now_ms();
        let mut endpoints = shared.endpoints.all();
        endpoints.sort_by(|a, b| a.instance.cmp(&b.instance).then(a.addr.cmp(&b.addr)));
        for (name, kind) in [
            ("instance_in_flight", "gauge"),
            ("instance_ejected", "gauge"),
            ("instance_ejected_seconds", "gauge"),
            ("instance_ejections", "counter"),
            ("instance_latency_ewma_seconds", "gauge"),
        ] {
            let _ = writeln!(out, "# TYPE fluxplane_gateway_{name} {kind}");
            for e in &endpoints {
                let value = match name {
                    "instance_in_flight" => f64::from(e.in_flight()),
                    "instance_ejected" => f64::from(u8::from(e.ejected(now))),
                    "instance_ejected_seconds" => e.ejected_for_ms(now) as f64 / 1e3,
                    "instance_ejections" => f64::from(e.ejections()),
                    _ => e.latency_us() as f64 / 1e6,
                };
                let _ = writeln!(
                    out,
                    "fluxplane_gateway_{name}{{instance=\"{}\",addr=\"{}\",region=\"{}\"}} {value}",
                    e.instance, e.addr, e.region
                );
            }
        }
        out
    }
}

crate::stack::layer_service! {
    /// Counts and times every answer.
    MetricsLayer
}

impl<S> Service<Req> for MetricsLayer<S>
where
    S: Service<Req, Response = Resp, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Resp;
    type Error = Infallible;
    type Future = BoxFuture<Result<Resp, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let started = Instant::now();
        let shared = self.shared.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            shared.metrics.observe(resp.status().as_u16(), started);
            Ok(resp)
        })
    }
}
