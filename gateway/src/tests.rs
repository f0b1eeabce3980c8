//! The whole stack driven with `oneshot`: no gateway socket, real instances on loopback.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use model::geo::GeoPoint;
use tokio::net::TcpListener;
use tower::ServiceExt;

use super::*;
use crate::body::boxed;
use crate::stack::{GatewayService, Peer};

/// A test instance: answers by path, and counts what reached it.
struct Instance {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    /// The last request's headers, as `name: value` lines.
    seen: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What an instance does with every request.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// `/` 200 `ok`, `/fail` 500, `/reset` drops the connection, `/slow` waits 50 ms, and
    /// `/echo` answers with the body it read.
    ByPath,
    /// 500 to everything.
    Fail,
    /// Reads the request and never answers.
    Hang,
}

async fn instance(mode: Mode) -> Instance {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (h, s) = (hits.clone(), seen.clone());
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (h, s) = (h.clone(), s.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (h, s) = (h.clone(), s.clone());
                    async move {
                        h.fetch_add(1, Ordering::SeqCst);
                        *s.lock().expect("lock") =
                            req.headers().iter().map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?"))).collect();
                        let path = req.uri().path().to_string();
                        if mode == Mode::Hang {
                            tokio::time::sleep(Duration::from_secs(60)).await;
                        }
                        let (status, body) = match (mode, path.as_str()) {
                            (Mode::Fail, _) | (_, "/fail") => (500, Bytes::from_static(b"boom")),
                            (_, "/reset") => return Err("reset"),
                            (_, "/slow") => {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                (200, Bytes::from_static(b"slow"))
                            }
                            (_, "/echo") => {
                                let body = req.into_body().collect().await.map_err(|_| "body")?.to_bytes();
                                (200, body)
                            }
                            _ => (200, Bytes::from_static(b"ok")),
                        };
                        let mut resp = http::Response::new(http_body_util::Full::new(body));
                        *resp.status_mut() = StatusCode::from_u16(status).expect("status");
                        Ok::<_, &str>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Instance { addr, hits, seen, task }
}

fn route(node: &str, region: &str, lon: f64, addr: impl ToString) -> model::api::Route {
    model::api::Route {
        app: "hello".into(),
        component: "web".into(),
        primary: true,
        node: node.into(),
        region: region.into(),
        geo: GeoPoint { lat: 0.0, lon },
        addr: addr.to_string(),
        port: None,
        domain: None,
        traffic: Default::default(),
    }
}

fn config() -> GatewayConfig {
    GatewayConfig {
        id: "test".into(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        domain: "test".into(),
        control: client::Client::from_list("http://127.0.0.1:1").expect("client"),
        geo: GeoPoint { lat: 0.0, lon: 0.0 },
        trusted: vec!["127.0.0.1".parse().expect("ip")],
        geoip_db: None,
        spread_km: 0.0,
        response_header_timeout: Duration::from_secs(2),
        tls: None,
        admin_listen: None,
        workers: 1,
        limits: Limits { body_idle_timeout: Duration::from_millis(300), ..Limits::default() },
    }
}

fn stack(config: GatewayConfig, routes: &[model::api::Route]) -> (Arc<Shared>, GatewayService) {
    let shared = Shared::new(config).expect("shared");
    shared.set_routes(routes);
    (shared.clone(), stack::build(shared))
}

const STRANGER: &str = "203.0.113.7:40000";

fn request(method: Method, host: &str, path: &str, from: &str) -> Req {
    let mut req =
        Request::builder().method(method).uri(path).header("host", host).body(crate::body::empty()).expect("request");
    req.extensions_mut().insert(Peer { addr: from.parse().expect("peer"), tls: false, framing: None });
    req
}

type Req = crate::stack::Req;

async fn send(svc: &GatewayService, req: Req) -> (StatusCode, http::HeaderMap, String) {
    let resp = svc.clone().oneshot(req).await.expect("infallible");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    (parts.status, parts.headers, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn hosts_resolve_to_apps_and_nothing_else() {
    let a = instance(Mode::ByPath).await;
    let (_, svc) = stack(config(), &[route("n1", "eu", 0.0, a.addr)]);
    let (status, headers, body) = send(&svc, request(Method::GET, "hello.app.test", "/", STRANGER)).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    assert_eq!(headers["x-fluxplane-node"], "n1");
    assert_eq!(headers["x-fluxplane-region"], "eu");
    let (status, _, _) = send(&svc, request(Method::GET, "nope.app.test", "/", STRANGER)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Absolute form: the target's host wins, and must agree with Host; another host is
    // never dialed.
    let mut req = request(Method::GET, "hello.app.test", "http://127.0.0.1:22/", STRANGER);
    *req.uri_mut() = "http://127.0.0.1:22/".parse().expect("uri");
    assert_eq!(send(&svc, req).await.0, StatusCode::BAD_REQUEST);
    let mut req = request(Method::GET, "hello.app.test", "/", STRANGER);
    *req.uri_mut() = "http://hello.app.test/".parse().expect("uri");
    assert_eq!(send(&svc, req).await.0, StatusCode::OK);
    let mut req = request(Method::GET, "example.com", "/", STRANGER);
    *req.uri_mut() = "http://example.com/".parse().expect("uri");
    assert_eq!(send(&svc, req).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        send(&svc, request(Method::CONNECT, "hello.app.test", "/", STRANGER)).await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(a.hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn headers_are_cleaned_and_forwarded_for_is_replaced() {
    let a = instance(Mode::ByPath).await;
    let (_, svc) = stack(config(), &[route("n1", "eu", 0.0, a.addr)]);
    let mut req = request(Method::GET, "hello.app.test", "/", STRANGER);
    for (k, v) in [
        ("connection", "keep-alive, x-drop-me"),
        ("x-drop-me", "1"),
        ("te", "trailers"),
        ("upgrade", "h2c"),
        ("proxy-authorization", "Basic Zm9v"),
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-proto", "https"),
        ("x-fluxplane-client-geo", "1,1"),
        ("forwarded", "for=6.6.6.6;proto=https"),
        ("x-real-ip", "6.6.6.6"),
        ("x-forwarded-port", "443"),
        ("x_forwarded_for", "6.6.6.6"),
        ("http2-settings", "AAMAAABkAAQAAP__"),
    ] {
        req.headers_mut().insert(http::HeaderName::from_static(k), http::HeaderValue::from_static(v));
    }
    assert_eq!(send(&svc, req).await.0, StatusCode::OK);
    let seen = a.seen.lock().expect("lock").clone();
    let has = |prefix: &str| seen.iter().any(|h| h.starts_with(prefix));
    for gone in [
        "x-drop-me",
        "te:",
        "upgrade",
        "proxy-authorization",
        "x-fluxplane-client-geo",
        "forwarded",
        "x-real-ip",
        "x-forwarded-port",
        "x_forwarded_for",
        "http2-settings",
    ] {
        assert!(!has(gone), "{gone} reached the instance: {seen:?}");
    }
    assert!(seen.contains(&"x-forwarded-for: 203.0.113.7".to_string()), "{seen:?}");
    assert!(seen.contains(&"x-forwarded-proto: http".to_string()), "{seen:?}");
    assert!(seen.contains(&"x-forwarded-host: hello.app.test".to_string()), "{seen:?}");
    assert!(has("traceparent: 00-"), "a trace is started: {seen:?}");
    // A trusted peer's chain is appended to, and its traceparent passed on.
    let mut req = request(Method::GET, "hello.app.test", "/", "127.0.0.1:5000");
    req.headers_mut().insert("x-forwarded-for", http::HeaderValue::from_static("198.51.100.1"));
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    req.headers_mut().insert("traceparent", http::HeaderValue::from_static(trace));
    assert_eq!(send(&svc, req).await.0, StatusCode::OK);
    let seen = a.seen.lock().expect("lock").clone();
    assert!(seen.contains(&"x-forwarded-for: 198.51.100.1, 127.0.0.1".to_string()), "{seen:?}");
    assert!(seen.contains(&format!("traceparent: {trace}")), "{seen:?}");
}

#[tokio::test]
async fn smuggling_attempts_are_refused_before_any_instance_sees_them() {
    let a = instance(Mode::ByPath).await;
    let (shared, svc) = stack(config(), &[route("n1", "eu", 0.0, a.addr)]);
    for headers in [
        vec![("content-length", "4"), ("transfer-encoding", "chunked")],
        vec![("content-length", "4"), ("content-length", "5")],
        vec![("transfer-encoding", "gzip, chunked")],
    ] {
        let mut req = request(Method::POST, "hello.app.test", "/echo", STRANGER);
        for (k, v) in &headers {
            req.headers_mut().append(http::HeaderName::from_static(k), http::HeaderValue::from_static(v));
        }
        let (status, headers_back, _) = send(&svc, req).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{headers:?}");
        assert_eq!(headers_back["connection"], "close");
    }
    assert_eq!(a.hits.load(Ordering::SeqCst), 0);
    assert_eq!(shared.metrics.refused_smuggling.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn a_failed_connect_is_retried_for_any_method_but_a_post_is_not_sent_twice() {
    let dead = TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("addr");
    let a = instance(Mode::ByPath).await;
    // The dead instance is nearer: every request tries it first.
    let (_, svc) = stack(config(), &[route("dead", "eu", 0.0, dead), route("n1", "as", 90.0, a.addr)]);
    let mut req = request(Method::POST, "hello.app.test", "/echo", STRANGER);
    *req.body_mut() = boxed(http_body_util::Full::new(Bytes::from_static(b"payload")));
    let (status, headers, body) = send(&svc, req).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "payload"));
    assert_eq!(headers["x-fluxplane-attempts"], "2");
    // A POST that reached an instance which then failed is not sent again.
    let b = instance(Mode::ByPath).await;
    let (_, svc) = stack(config(), &[route("n1", "eu", 0.0, a.addr), route("n2", "as", 90.0, b.addr)]);
    let before = a.hits.load(Ordering::SeqCst);
    let mut req = request(Method::POST, "hello.app.test", "/reset", STRANGER);
    *req.body_mut() = boxed(http_body_util::Full::new(Bytes::from_static(b"x")));
    let (status, _, _) = send(&svc, req).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(a.hits.load(Ordering::SeqCst) - before, 1);
    assert_eq!(b.hits.load(Ordering::SeqCst), 0, "the POST was not sent to a second instance");
    // The same failure on a GET is retried on the next instance... which resets too.
    let (status, headers, _) = send(&svc, request(Method::GET, "hello.app.test", "/reset", STRANGER)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(b.hits.load(Ordering::SeqCst), 1);
    assert_eq!(headers["x-fluxplane-attempts"], "2");
}

#[tokio::test]
async fn five_failures_eject_and_traffic_spills_to_the_next_region() {
    let local_bad = instance(Mode::Fail).await;
    let far = instance(Mode::ByPath).await;
    let (shared, svc) = stack(config(), &[route("bad", "eu", 0.0, local_bad.addr), route("far", "as", 90.0, far.addr)]);
    let mut statuses = Vec::new();
    for _ in 0..10 {
        // POSTs: never retried after they reached an instance, so each 500 is seen.
        statuses.push(send(&svc, request(Method::POST, "hello.app.test", "/", STRANGER)).await.0.as_u16());
    }
    assert_eq!(statuses, [500, 500, 500, 500, 500, 200, 200, 200, 200, 200]);
    assert_eq!((local_bad.hits.load(Ordering::SeqCst), far.hits.load(Ordering::SeqCst)), (5, 5));
    let text = shared.metrics_text();
    assert!(text.contains("fluxplane_gateway_ejections_total 1"), "{text}");
    let ejected = format!(
        "fluxplane_gateway_instance_ejected{{instance=\"hello@bad\",addr=\"{}\",region=\"eu\"}} 1",
        local_bad.addr
    );
    assert!(text.contains(&ejected), "{text}");
    assert_eq!(shared.ejected(), BTreeMap::from([("eu".to_string(), vec!["hello@bad".to_string()])]));
}

#[tokio::test]
async fn traffic_leaves_the_region_only_when_every_local_instance_is_full() {
    let local = instance(Mode::ByPath).await;
    let far = instance(Mode::ByPath).await;
    let (shared, svc) = stack(config(), &[route("local", "eu", 0.0, local.addr), route("far", "as", 90.0, far.addr)]);
    let node = |h: &http::HeaderMap| h["x-fluxplane-node"].to_str().expect("node").to_string();
    for _ in 0..5 {
        assert_eq!(node(&send(&svc, request(Method::GET, "hello.app.test", "/", STRANGER)).await.1), "local");
    }
    let full = shared.endpoints.all().into_iter().find(|e| e.node == "local").expect("local");
    let held: Vec<_> = (0..full.max_concurrency()).map(|_| full.try_acquire().expect("slot")).collect();
    assert_eq!(node(&send(&svc, request(Method::GET, "hello.app.test", "/", STRANGER)).await.1), "far");
    drop(held);
    assert_eq!(node(&send(&svc, request(Method::GET, "hello.app.test", "/", STRANGER)).await.1), "local");
}

#[tokio::test]
async fn every_instance_full_is_a_503_with_retry_after() {
    let a = instance(Mode::ByPath).await;
    let mut r = route("n1", "eu", 0.0, a.addr);
    r.traffic.max_concurrency = Some(1);
    let (shared, svc) = stack(config(), &[r]);
    let e = shared.endpoints.all().pop().expect("endpoint");
    let slot = e.try_acquire().expect("slot");
    let (status, headers, body) = send(&svc, request(Method::GET, "hello.app.test", "/", STRANGER)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(headers["retry-after"], "1");
    drop(slot);
    assert_eq!(send(&svc, request(Method::GET, "hello.app.test", "/", STRANGER)).await.0, StatusCode::OK);
}

#[tokio::test]
async fn bodies_over_the_limit_or_stalled_are_refused() {
    let a = instance(Mode::ByPath).await;
    let mut r = route("n1", "eu", 0.0, a.addr);
    r.traffic.max_body_mb = Some(1);
    let (shared, svc) = stack(config(), &[r]);
    // Declared too large: refused before anything is read.
    let mut req = request(Method::POST, "hello.app.test", "/echo", STRANGER);
    req.headers_mut().insert("content-length", http::HeaderValue::from_static("2000000"));
    assert_eq!(send(&svc, req).await.0, StatusCode::PAYLOAD_TOO_LARGE);
    // Streamed past the limit without a length.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, std::io::Error>>(4);
    tokio::spawn(async move {
        for _ in 0..40 {
            if tx.send(Ok(hyper::body::Frame::data(Bytes::from(vec![b'x'; 64 << 10])))).await.is_err() {
                break;
            }
        }
    });
    let mut req = request(Method::POST, "hello.app.test", "/echo", STRANGER);
    *req.body_mut() = boxed(http_body_util::StreamBody::new(stream_of(rx)));
    assert_eq!(send(&svc, req).await.0, StatusCode::PAYLOAD_TOO_LARGE);
    // A body that stops arriving.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, std::io::Error>>(1);
    tx.send(Ok(hyper::body::Frame::data(Bytes::from_static(b"start")))).await.expect("send");
    let mut req = request(Method::POST, "hello.app.test", "/echo", STRANGER);
    *req.body_mut() = boxed(http_body_util::StreamBody::new(stream_of(rx)));
    let started = std::time::Instant::now();
    assert_eq!(send(&svc, req).await.0, StatusCode::REQUEST_TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(2));
    drop(tx);
    assert_eq!(shared.body_memory.held(), 0, "no body bytes left counted");
}

/// A stream of the frames sent on `rx`.
fn stream_of<T: Send + 'static>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn per_client_in_flight_is_capped() {
    let a = instance(Mode::ByPath).await;
    let mut config = config();
    config.limits.max_in_flight_per_client = 2;
    let (_, svc) = stack(config, &[route("n1", "eu", 0.0, a.addr)]);
    let slow = |svc: GatewayService| async move {
        send(&svc, request(Method::GET, "hello.app.test", "/slow", STRANGER)).await.0
    };
    let (x, y, z) = tokio::join!(slow(svc.clone()), slow(svc.clone()), slow(svc.clone()));
    let mut got = [x, y, z];
    got.sort();
    assert_eq!(got, [StatusCode::OK, StatusCode::OK, StatusCode::TOO_MANY_REQUESTS]);
    // Another address is not held back by the first.
    assert_eq!(send(&svc, request(Method::GET, "hello.app.test", "/", "198.51.100.9:1")).await.0, StatusCode::OK);
    // Behind a trusted proxy, each forwarded client has its own share.
    let proxied = |svc: GatewayService, client: &'static str| async move {
        let mut req = request(Method::GET, "hello.app.test", "/slow", "127.0.0.1:9");
        req.headers_mut().insert("x-forwarded-for", http::HeaderValue::from_static(client));
        send(&svc, req).await.0
    };
    let all = tokio::join!(
        proxied(svc.clone(), "198.51.100.1"),
        proxied(svc.clone(), "198.51.100.2"),
        proxied(svc.clone(), "198.51.100.3"),
    );
    assert_eq!(all, (StatusCode::OK, StatusCode::OK, StatusCode::OK));
}

#[tokio::test]
async fn clients_are_located_by_geoip_then_trusted_header_then_the_gateway() {
    let near_eu = instance(Mode::ByPath).await;
    let near_as = instance(Mode::ByPath).await;
    let routes = [route("eu-node", "eu", 8.7, near_eu.addr), route("as-node", "as", 103.8, near_as.addr)];
    let db = geoip::write::city_db(&[geoip::write::CityEntry {
        network: "198.51.100.0".parse::<IpAddr>().expect("ip"),
        prefix_len: 24,
        lat: 1.35,
        lon: 103.82,
        continent: "AS".into(),
    }]);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("geo.mmdb");
    std::fs::write(&path, db).expect("write");
    let mut config = config();
    config.geoip_db = Some(path);
    config.geo = GeoPoint { lat: 50.1, lon: 8.7 };
    let (_, svc) = stack(config, &routes);
    let node =
        |resp: (StatusCode, http::HeaderMap, String)| resp.1["x-fluxplane-node"].to_str().expect("node").to_string();
    // In the database: Singapore.
    assert_eq!(node(send(&svc, request(Method::GET, "hello.app.test", "/", "198.51.100.20:1")).await), "as-node");
    // Not in it: the gateway's own place, Frankfurt; a stranger's header is ignored.
    let mut req = request(Method::GET, "hello.app.test", "/", STRANGER);
    req.headers_mut().insert(CLIENT_GEO, http::HeaderValue::from_static("1.35,103.82"));
    assert_eq!(node(send(&svc, req).await), "eu-node");
    // A trusted peer's header is believed when the database does not know the address.
    let mut req = request(Method::GET, "hello.app.test", "/", "127.0.0.1:1");
    req.headers_mut().insert(CLIENT_GEO, http::HeaderValue::from_static("1.35,103.82"));
    assert_eq!(node(send(&svc, req).await), "as-node");
    // A trusted proxy's client, by x-forwarded-for, is looked up in the database.
    let mut req = request(Method::GET, "hello.app.test", "/", "127.0.0.1:1");
    req.headers_mut().insert("x-forwarded-for", http::HeaderValue::from_static("198.51.100.77"));
    assert_eq!(node(send(&svc, req).await), "as-node");
}

#[tokio::test]
async fn a_slow_instance_gets_less_of_the_traffic() {
    let fast = instance(Mode::ByPath).await;
    let slow = instance(Mode::ByPath).await;
    let (shared, svc) = stack(config(), &[route("fast", "eu", 0.0, fast.addr), route("slow", "eu", 0.0, slow.addr)]);
    let slow_endpoint = shared.endpoints.all().into_iter().find(|e| e.node == "slow").expect("slow");
    for _ in 0..10 {
        slow_endpoint.observe_latency(Duration::from_millis(50));
    }
    for _ in 0..40 {
        assert_eq!(send(&svc, request(Method::GET, "hello.app.test", "/", STRANGER)).await.0, StatusCode::OK);
    }
    let (f, s) = (fast.hits.load(Ordering::SeqCst), slow.hits.load(Ordering::SeqCst));
    assert!(f > 3 * s, "fast {f}, slow {s}");
}

#[tokio::test]
async fn a_silent_instance_times_out_and_only_an_idempotent_request_moves_on() {
    let hanging = instance(Mode::Hang).await;
    let good = instance(Mode::ByPath).await;
    let mut config = config();
    config.response_header_timeout = Duration::from_millis(300);
    let (_, svc) = stack(config, &[route("hang", "eu", 0.0, hanging.addr), route("good", "as", 90.0, good.addr)]);
    let (status, headers, _) = send(&svc, request(Method::GET, "hello.app.test", "/", STRANGER)).await;
    assert_eq!((status, &headers["x-fluxplane-node"]), (StatusCode::OK, &http::HeaderValue::from_static("good")));
    assert_eq!(headers["x-fluxplane-attempts"], "2");
    let mut req = request(Method::POST, "hello.app.test", "/", STRANGER);
    *req.body_mut() = boxed(http_body_util::Full::new(Bytes::from_static(b"x")));
    assert_eq!(send(&svc, req).await.0, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(good.hits.load(Ordering::SeqCst), 1, "the POST stayed where it was sent");
}

/// A route that names the control plane's listener (or the gateway's own) is never dialed,
/// whatever the feed says.
#[tokio::test]
async fn a_route_to_the_control_plane_is_never_dialed() {
    let control = instance(Mode::ByPath).await;
    let good = instance(Mode::ByPath).await;
    let mut config = config();
    config.control = client::Client::from_list(&format!("http://{}", control.addr)).expect("client");
    let (shared, svc) = stack(config, &[route("rogue", "eu", 0.0, control.addr), route("n2", "as", 90.0, good.addr)]);
    let (status, headers, _) = send(&svc, request(Method::GET, "hello.app.test", "/", STRANGER)).await;
    assert_eq!((status, &headers["x-fluxplane-node"]), (StatusCode::OK, &http::HeaderValue::from_static("n2")));
    // Alone, it leaves the app with no instance: 503, and the control plane hears nothing.
    shared.set_routes(&[route("rogue", "eu", 0.0, control.addr)]);
    assert_eq!(
        send(&svc, request(Method::GET, "hello.app.test", "/", STRANGER)).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(control.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_slow_upload_is_not_taken_for_a_silent_instance_and_a_broken_body_is_a_400() {
    let a = instance(Mode::ByPath).await;
    let mut config = config();
    config.response_header_timeout = Duration::from_millis(300);
    let (shared, svc) = stack(config, &[route("n1", "eu", 0.0, a.addr)]);
    // Ten frames 150 ms apart: 1.5 s of upload, five times the wait for a response head.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, std::io::Error>>(1);
    tokio::spawn(async move {
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            if tx.send(Ok(hyper::body::Frame::data(Bytes::from_static(b"0123456789")))).await.is_err() {
                break;
            }
        }
    });
    let mut req = request(Method::POST, "hello.app.test", "/echo", STRANGER);
    *req.body_mut() = boxed(http_body_util::StreamBody::new(stream_of(rx)));
    let (status, _, body) = send(&svc, req).await;
    assert_eq!((status, body.len()), (StatusCode::OK, 100));
    // A body that breaks off with an error is the client's doing: 400, the instance not blamed.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, std::io::Error>>(2);
    tx.send(Ok(hyper::body::Frame::data(Bytes::from_static(b"start")))).await.expect("send");
    tx.send(Err(std::io::Error::other("client went away"))).await.expect("send");
    let mut req = request(Method::POST, "hello.app.test", "/echo", STRANGER);
    *req.body_mut() = boxed(http_body_util::StreamBody::new(stream_of(rx)));
    assert_eq!(send(&svc, req).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(shared.metrics.upstream_failures.load(Ordering::Relaxed), 0);
}
