//! The gateway over real sockets: TLS with SNI and certificate reload, h2 through ALPN,
//! WebSockets, hostile clients, smuggling, and (through `fluxplane dev`) GeoIP-based
//! selection and an ejection shown by `fluxctl app status`.
//!
//! The in-process tests run the gateway library on loopback with fixture instances (real
//! hyper servers), since they test the proxy and not the control plane's feed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::util::{Dev, repo};

/// A fixture instance: `/` answers `ok from <name>`, `/echo` echoes the body, and a WebSocket
/// upgrade on `/ws` is accepted and its bytes echoed back.
struct Fixture {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn fixture(name: &'static str) -> Fixture {
    fixture_with_delay(name, Duration::ZERO).await
}

/// [`fixture`] that takes `delay` before every answer; `/reset` reads the request and breaks
/// the connection without an answer.
async fn fixture_with_delay(name: &'static str, delay: Duration) -> Fixture {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let task = tokio::spawn(async move {
        // Connections die with the accept task, as with a killed process.
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            connections.spawn(async move {
                let service = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    async move {
                        tokio::time::sleep(delay).await;
                        let mut resp = http::Response::new(Full::new(Bytes::from(format!("ok from {name}"))));
                        match req.uri().path() {
                            "/reset" => {
                                let _ = req.into_body().collect().await;
                                return Err("reset");
                            }
                            "/ws" => {
                                let upgrade = hyper::upgrade::on(&mut req);
                                tokio::spawn(async move {
                                    let Ok(upgraded) = upgrade.await else { return };
                                    let mut io = TokioIo::new(upgraded);
                                    let mut buf = [0u8; 1024];
                                    while let Ok(n) = io.read(&mut buf).await {
                                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                            break;
                                        }
                                    }
                                });
                                *resp.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
                                resp.headers_mut().insert("upgrade", http::HeaderValue::from_static("websocket"));
                                resp.headers_mut().insert("connection", http::HeaderValue::from_static("upgrade"));
                                *resp.body_mut() = Full::new(Bytes::new());
                            }
                            "/big" => {
                                *resp.body_mut() = Full::new(Bytes::from(vec![b'x'; 32 << 20]));
                            }
                            "/echo" => {
                                let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                                *resp.body_mut() = Full::new(body);
                            }
                            _ => {}
                        }
                        Ok::<_, &str>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Fixture { addr, hits, task }
}

fn route(app: &str, node: &str, addr: SocketAddr, domain: Option<&str>) -> model::api::Route {
    model::api::Route {
        app: app.into(),
        component: "web".into(),
        primary: domain.is_none(),
        node: node.into(),
        region: "eu".into(),
        geo: model::geo::GeoPoint { lat: 50.0, lon: 8.0 },
        addr: addr.to_string(),
        port: domain.map(|_| 443),
        domain: domain.map(Into::into),
        traffic: model::spec::Traffic { max_concurrency: None, max_body_mb: Some(1) },
    }
}

fn config() -> gateway::GatewayConfig {
    gateway::GatewayConfig {
        id: "gw-test".into(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        domain: "test.local".into(),
        // No control plane: the routes are set by the test.
        control: client::Client::from_list("http://127.0.0.1:1").expect("client"),
        geo: model::geo::GeoPoint { lat: 50.0, lon: 8.0 },
        trusted: vec![],
        geoip_db: None,
        spread_km: 0.0,
        response_header_timeout: Duration::from_secs(5),
        tls: None,
        admin_listen: None,
        workers: 2,
        limits: gateway::Limits {
            header_read_timeout: Duration::from_secs(1),
            body_idle_timeout: Duration::from_millis(500),
            max_header_bytes: 8 << 10,
            ..gateway::Limits::default()
        },
    }
}

/// Sends raw bytes and reads until the server closes or `within` passes.
async fn raw(addr: SocketAddr, request: &[u8], within: Duration) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(within, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn roots(pems: &[&str]) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for pem in pems {
        let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem");
        roots.add(der).expect("root");
    }
    roots
}

use rustls::pki_types::pem::PemObject;

/// Connects with TLS to `addr` naming `sni`, offering `alpn`; returns the stream, the served
/// certificate and the protocol agreed.
async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    roots: rustls::RootCertStore,
    alpn: &[&[u8]],
) -> (tokio_rustls::client::TlsStream<TcpStream>, Vec<u8>, Option<Vec<u8>>) {
    try_tls_connect(addr, sni, roots, alpn).await.expect("handshake")
}

/// [`tls_connect`], or the handshake's error.
async fn try_tls_connect(
    addr: SocketAddr,
    sni: &str,
    roots: rustls::RootCertStore,
    alpn: &[&[u8]],
) -> std::io::Result<(tokio_rustls::client::TlsStream<TcpStream>, Vec<u8>, Option<Vec<u8>>)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).expect("name");
    let stream = connector.connect(name, tcp).await?;
    let (_, conn) = stream.get_ref();
    let cert = conn.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default();
    let alpn = conn.alpn_protocol().map(|p| p.to_vec());
    Ok((stream, cert, alpn))
}

fn der(pem: &str) -> Vec<u8> {
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem").to_vec()
}

/// GET `/` for `host` over an established TLS stream, with h2 or HTTP/1.1.
async fn get_over(
    stream: tokio_rustls::client::TlsStream<TcpStream>,
    host: &str,
    h2: bool,
) -> (http::StatusCode, http::Version, String) {
    let io = TokioIo::new(stream);
    let uri = format!("https://{host}/");
    let req = http::Request::get(uri).header("host", host).body(Full::new(Bytes::new())).expect("request");
    let resp = if h2 {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.expect("h2");
        tokio::spawn(conn);
        send.send_request(req).await.expect("h2 response")
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.expect("h1");
        tokio::spawn(conn);
        send.send_request(req).await.expect("h1 response")
    };
    let (status, version) = (resp.status(), resp.version());
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, version, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn tls_serves_each_custom_domain_its_certificate_h2_by_alpn_and_a_swapped_certificate() {
    let a = fixture("a").await;
    let b = fixture("b").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, (cert, key): &(String, String)| {
        std::fs::write(dir.path().join(format!("{name}.crt")), cert).expect("cert");
        std::fs::write(dir.path().join(format!("{name}.key")), key).expect("key");
    };
    let cert_a = gateway::tls::testing::self_signed(&["a.example.com"]);
    let cert_b = gateway::tls::testing::self_signed(&["b.example.org"]);
    let cert_default = gateway::tls::testing::self_signed(&["*.app.test.local"]);
    write("a", &cert_a);
    write("b", &cert_b);
    write("default", &cert_default);
    let file = |name: &str, ext: &str| dir.path().join(format!("{name}.{ext}"));
    let mut config = config();
    config.tls = Some(gateway::TlsConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        default_cert: Some((file("default", "crt"), file("default", "key"))),
        domains: vec![
            gateway::tls::DomainCert { domain: "a.example.com".into(), cert: file("a", "crt"), key: file("a", "key") },
            gateway::tls::DomainCert { domain: "b.example.org".into(), cert: file("b", "crt"), key: file("b", "key") },
        ],
        redirect_http: true,
        reload_every: Duration::from_millis(200),
    });
    let gw = gateway::Gateway::spawn(config).await.expect("gateway");
    gw.shared().set_routes(&[
        route("shop", "n1", a.addr, Some("a.example.com")),
        route("blog", "n2", b.addr, Some("b.example.org")),
        route("hello", "n1", a.addr, None),
    ]);
    let tls = gw.tls_addr().expect("tls listener");
    let trust = || roots(&[&cert_a.0, &cert_b.0, &cert_default.0]);

    // SNI picks the certificate; ALPN agrees h2 when offered.
    for (sni, cert, body) in [
        ("a.example.com", &cert_a, "ok from a"),
        ("b.example.org", &cert_b, "ok from b"),
        ("hello.app.test.local", &cert_default, "ok from a"),
    ] {
        let (stream, served, alpn) = tls_connect(tls, sni, trust(), &[b"h2", b"http/1.1"]).await;
        assert_eq!(served, der(&cert.0), "certificate for {sni}");
        assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
        let (status, version, text) = get_over(stream, sni, true).await;
        assert_eq!((status, version, text.as_str()), (http::StatusCode::OK, http::Version::HTTP_2, body));
    }
    // HTTP/1.1 over TLS when that is all the client speaks.
    let (stream, _, alpn) = tls_connect(tls, "a.example.com", trust(), &[b"http/1.1"]).await;
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    let (status, version, _) = get_over(stream, "a.example.com", false).await;
    assert_eq!((status, version), (http::StatusCode::OK, http::Version::HTTP_11));

    // Plain HTTP is redirected to HTTPS.
    let plain = raw(
        gw.local_addr(),
        b"GET /x?y=1 HTTP/1.1\r\nHost: a.example.com\r\nConnection: close\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(plain.starts_with("HTTP/1.1 308"), "{plain}");
    assert!(
        plain.to_ascii_lowercase().contains(&format!("location: https://a.example.com:{}/x?y=1", tls.port())),
        "{plain}"
    );

    // A new certificate written over a.example.com's files is served without a restart.
    let renewed = gateway::tls::testing::self_signed(&["a.example.com"]);
    write("a", &renewed);
    let trust_renewed = || roots(&[&renewed.0, &cert_b.0, &cert_default.0]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Until the reload, the old certificate fails against the renewed one's trust.
        if let Ok((_, served, _)) = try_tls_connect(tls, "a.example.com", trust_renewed(), &[b"h2"]).await
            && served == der(&renewed.0)
        {
            break;
        }
        assert!(Instant::now() < deadline, "the renewed certificate was not picked up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, served, _) = tls_connect(tls, "b.example.org", trust_renewed(), &[b"h2"]).await;
    assert_eq!(served, der(&cert_b.0), "the other domain kept its certificate");
    gw.drain(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_websocket_is_passed_through_both_ways() {
    let a = fixture("a").await;
    let gw = gateway::Gateway::spawn(config()).await.expect("gateway");
    gw.shared().set_routes(&[route("chat", "n1", a.addr, None)]);
    let mut stream = TcpStream::connect(gw.local_addr()).await.expect("connect");
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: chat.app.test.local\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
            .await
            .expect("head in time")
            .expect("read");
        assert_eq!(n, 1, "closed during the head: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    // A masked text frame "hello", both ways, twice.
    let frame = [0x81u8, 0x85, 1, 2, 3, 4, b'h' ^ 1, b'e' ^ 2, b'l' ^ 3, b'l' ^ 4, b'o' ^ 1];
    for _ in 0..2 {
        stream.write_all(&frame).await.expect("send frame");
        let mut back = [0u8; 11];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut back))
            .await
            .expect("echo in time")
            .expect("echo");
        assert_eq!(back, frame);
    }
    gw.drain(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn hostile_clients_get_431_413_and_a_slowloris_is_closed_while_others_are_served() {
    let a = fixture("a").await;
    let gw = gateway::Gateway::spawn(config()).await.expect("gateway");
    gw.shared().set_routes(&[route("hello", "n1", a.addr, None)]);
    let addr = gw.local_addr();
    // Others are served throughout.
    let served = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let background = {
        let (served, failed, stop) = (served.clone(), failed.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let out = raw(
                    addr,
                    b"GET / HTTP/1.1\r\nHost: hello.app.test.local\r\nConnection: close\r\n\r\n",
                    Duration::from_secs(3),
                )
                .await;
                if out.starts_with("HTTP/1.1 200") { &served } else { &failed }.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // Headers over 8 KB: 431.
    let big = format!("GET / HTTP/1.1\r\nHost: hello.app.test.local\r\nX-Big: {}\r\n\r\n", "a".repeat(16 << 10));
    let out = raw(addr, big.as_bytes(), Duration::from_secs(3)).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    // A body over the app's 1 MB: 413, declared or streamed.
    let out = raw(
        addr,
        b"POST /echo HTTP/1.1\r\nHost: hello.app.test.local\r\nContent-Length: 2000000\r\n\r\nabc",
        Duration::from_secs(3),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    let mut chunked =
        b"POST /echo HTTP/1.1\r\nHost: hello.app.test.local\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..20 {
        chunked.extend_from_slice(format!("{:x}\r\n", 64 << 10).as_bytes());
        chunked.extend_from_slice(&vec![b'x'; 64 << 10]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let out = raw(addr, &chunked, Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{}", &out[..out.len().min(200)]);
    // A slowloris: a head that never ends is closed within the 1 s header timeout.
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"GET / HTTP/1.1\r\nHost: hello.app.test.local\r\n").await.expect("write");
    let started = Instant::now();
    let mut closed = false;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if slow.write_all(b"X-a: b\r\n").await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 256];
        if let Ok(Ok(0)) | Ok(Err(_)) = tokio::time::timeout(Duration::from_millis(1), slow.read(&mut buf)).await {
            closed = true;
            break;
        }
    }
    assert!(closed, "the slowloris connection is still open after {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(3), "closed after {:?}", started.elapsed());
    // A connection that sends nothing, or half an HTTP/2 preface, is closed by the header
    // timeout too.
    for first in [&b""[..], b"PRI * HTTP/2.0\r\n"] {
        let mut silent = TcpStream::connect(addr).await.expect("connect");
        silent.write_all(first).await.expect("write");
        let started = Instant::now();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "still open after {:?}", started.elapsed());
        assert!(started.elapsed() < Duration::from_secs(3), "closed after {:?}", started.elapsed());
    }
    // A client that reads nothing of a large answer is cut off, and frees the instance.
    let mut reader = TcpStream::connect(addr).await.expect("connect");
    reader.write_all(b"GET /big HTTP/1.1\r\nHost: hello.app.test.local\r\n\r\n").await.expect("write");
    let shared = gw.shared().clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    let in_flight =
        |text: &str| text.lines().any(|l| l.starts_with("fluxplane_gateway_instance_in_flight") && l.ends_with(" 1"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(in_flight(&shared.metrics_text()), "the slow reader holds its instance at first");
    while in_flight(&shared.metrics_text()) {
        assert!(Instant::now() < deadline, "a client that reads nothing still holds its instance");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(reader);
    // A body that stops arriving: 408 within the body timeout, nothing held.
    let out = raw(
        addr,
        b"POST /echo HTTP/1.1\r\nHost: hello.app.test.local\r\nContent-Length: 100\r\n\r\nabc",
        Duration::from_secs(3),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    stop.store(true, Ordering::SeqCst);
    background.await.expect("background");
    assert!(served.load(Ordering::SeqCst) > 10, "served {}", served.load(Ordering::SeqCst));
    assert_eq!(failed.load(Ordering::SeqCst), 0);
    let metrics = gw.shared().metrics_text();
    assert!(metrics.contains("fluxplane_gateway_body_bytes_held 0"), "{metrics}");
    gw.drain(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn smuggling_and_open_proxy_attempts_are_refused() {
    let a = fixture("a").await;
    let gw = gateway::Gateway::spawn(config()).await.expect("gateway");
    gw.shared().set_routes(&[route("hello", "n1", a.addr, None)]);
    let addr = gw.local_addr();
    for attempt in [
        "POST / HTTP/1.1\r\nHost: hello.app.test.local\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: hello.app.test.local\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        "POST / HTTP/1.1\r\nHost: hello.app.test.local\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    ] {
        let out = raw(addr, attempt.as_bytes(), Duration::from_secs(3)).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{attempt:?} got {out}");
    }
    // Absolute form naming an address, or another host than Host: never dialed.
    let to_fixture = format!("GET http://{}/ HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", a.addr, a.addr);
    let out = raw(addr, to_fixture.as_bytes(), Duration::from_secs(3)).await;
    assert!(out.starts_with("HTTP/1.1 404") || out.starts_with("HTTP/1.1 400"), "{out}");
    let mixed = format!("GET http://{}/ HTTP/1.1\r\nHost: hello.app.test.local\r\nConnection: close\r\n\r\n", a.addr);
    let out = raw(addr, mixed.as_bytes(), Duration::from_secs(3)).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    let out = raw(
        addr,
        format!("CONNECT {} HTTP/1.1\r\nHost: {}\r\n\r\n", a.addr, a.addr).as_bytes(),
        Duration::from_secs(3),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 4"), "{out}");
    assert_eq!(a.hits.load(Ordering::SeqCst), 0, "nothing reached the instance");
    gw.drain(Duration::from_secs(2)).await;
}

/// `fluxplane dev --geoip-db`: clients are routed to their region by address, and an instance
/// that keeps failing is ejected and shown as such by `fluxctl app status`.
#[test]
fn geoip_picks_the_region_and_an_ejection_shows_in_app_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, config) = (dir.path().join("data"), dir.path().join("config"));
    let entry = |ip: &str, lat: f64, lon: f64, continent: &str| gateway::geoip::write::CityEntry {
        network: ip.parse().expect("ip"),
        prefix_len: 32,
        lat,
        lon,
        continent: continent.into(),
    };
    let db = gateway::geoip::write::city_db(&[
        entry("127.0.0.2", 1.29, 103.85, "AS"),
        entry("127.0.0.3", 38.9, -77.0, "NA"),
        entry("127.0.0.4", 50.11, 8.68, "EU"),
    ]);
    let db_path = dir.path().join("geo.mmdb");
    std::fs::write(&db_path, db).expect("db");
    let dev = Dev::start_with(&data, &config, &["--geoip-db", db_path.to_str().expect("utf-8")]);
    let app = dir.path().join("app");
    std::fs::create_dir_all(&app).expect("dir");
    std::fs::copy(repo().join("tests/guests/misbehave/misbehave.wasm"), app.join("misbehave.wasm")).expect("wasm");
    std::fs::write(
        app.join("fluxapp.toml"),
        "name = \"flaky\"\ninstances = 3\ngeolocation = [\"acEU\", \"acNA\", \"acAS\"]\n[[component]]\nname = \"web\"\nwasm = \"misbehave.wasm\"\n",
    )
    .expect("manifest");
    let out = dev.fluxctl(&config, &["app", "deploy", app.join("fluxapp.toml").to_str().expect("utf-8"), "--wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let client = |from: &str| {
        reqwest::blocking::Client::builder()
            .local_address(from.parse::<std::net::IpAddr>().expect("ip"))
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client")
    };
    let get = |from: &str, path: &str| {
        client(from).get(format!("http://{}{path}", dev.gateway)).header("host", "flaky.app.localhost").send()
    };
    let region = |from: &str| {
        let resp = get(from, "/").expect("answer");
        assert_eq!(resp.status(), 200);
        resp.headers()["x-fluxplane-region"].to_str().expect("region").to_string()
    };
    Dev::eventually(Duration::from_secs(20), "every region routed", || {
        ["127.0.0.2", "127.0.0.3", "127.0.0.4"].iter().all(|ip| get(ip, "/").is_ok_and(|r| r.status() == 200))
    });
    assert_eq!(region("127.0.0.2"), "as");
    assert_eq!(region("127.0.0.3"), "na");
    assert_eq!(region("127.0.0.4"), "eu");
    // Not in the database: the gateway's own place (Frankfurt).
    assert_eq!(region("127.0.0.1"), "eu");

    // The Asian instance traps on every `/crash`: after 5 in a row it is ejected.
    for _ in 0..5 {
        let resp = client("127.0.0.2")
            .post(format!("http://{}/crash", dev.gateway))
            .header("host", "flaky.app.localhost")
            .body("x")
            .send()
            .expect("answer");
        // The trap is a 500, or a 502 when the guest's connection breaks with it; a POST
        // that reached an instance is not sent to another either way.
        assert!(resp.status().is_server_error(), "{}", resp.status());
    }
    // Asian clients now go to the next nearest region, and `app status` says why.
    assert_ne!(region("127.0.0.2"), "as");
    Dev::eventually(Duration::from_secs(15), "the ejection shown by app status", || {
        let out = dev.fluxctl(&config, &["app", "status", "flaky"]);
        String::from_utf8_lossy(&out.stdout).contains("ejected by gateway dev-gateway")
    });
    let endpoints: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("endpoints.json")).expect("endpoints")).expect("json");
    let admin = endpoints["gateway_admin"].as_str().expect("admin");
    let metrics = reqwest::blocking::get(format!("http://{admin}/metrics")).expect("metrics").text().expect("text");
    assert!(metrics.contains("fluxplane_gateway_ejections_total 1"), "{metrics}");
}

#[tokio::test]
async fn two_choices_send_less_to_an_instance_that_is_made_slow() {
    let fast = fixture("fast").await;
    let slow = fixture_with_delay("slow", Duration::from_millis(30)).await;
    let gw = gateway::Gateway::spawn(config()).await.expect("gateway");
    gw.shared().set_routes(&[route("hello", "fast", fast.addr, None), route("hello", "slow", slow.addr, None)]);
    let client = reqwest::Client::new();
    let url = format!("http://{}/", gw.local_addr());
    // Eight clients at once, so that load as well as latency counts.
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (client, url) = (client.clone(), url.clone());
        clients.push(tokio::spawn(async move {
            for _ in 0..25 {
                let resp = client.get(&url).header("host", "hello.app.test.local").send().await.expect("answer");
                assert_eq!(resp.status(), 200);
            }
        }));
    }
    for c in clients {
        c.await.expect("client");
    }
    let (f, s) = (fast.hits.load(Ordering::SeqCst), slow.hits.load(Ordering::SeqCst));
    assert_eq!(f + s, 200);
    assert!(f > 4 * s, "fast {f}, slow {s}: the slow instance should get far less");
    gw.drain(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_post_is_not_sent_again_after_its_body_went_out_but_a_get_is() {
    let first = fixture("first").await;
    let second = fixture("second").await;
    let mut r1 = route("hello", "first", first.addr, None);
    let mut r2 = route("hello", "second", second.addr, None);
    // `first` is nearer, so it is always tried first.
    r2.geo = model::geo::GeoPoint { lat: 1.3, lon: 103.8 };
    r2.region = "as".into();
    r1.geo = model::geo::GeoPoint { lat: 50.0, lon: 8.0 };
    let gw = gateway::Gateway::spawn(config()).await.expect("gateway");
    gw.shared().set_routes(&[r1, r2]);
    let client = reqwest::Client::new();
    let url = format!("http://{}/reset", gw.local_addr());
    let resp = client.post(&url).header("host", "hello.app.test.local").body("payload").send().await.expect("answer");
    assert_eq!(resp.status(), 502);
    assert_eq!((first.hits.load(Ordering::SeqCst), second.hits.load(Ordering::SeqCst)), (1, 0));
    let resp = client.get(&url).header("host", "hello.app.test.local").send().await.expect("answer");
    assert_eq!(resp.status(), 502, "both reset");
    assert_eq!(resp.headers()["x-fluxplane-attempts"], "2");
    assert_eq!((first.hits.load(Ordering::SeqCst), second.hits.load(Ordering::SeqCst)), (2, 1));
    // A killed instance (its port closed): a GET, and a POST too, since nothing was sent.
    drop(first);
    tokio::time::sleep(Duration::from_millis(50)).await;
    for method in [reqwest::Method::GET, reqwest::Method::POST] {
        let resp = client
            .request(method.clone(), format!("http://{}/", gw.local_addr()))
            .header("host", "hello.app.test.local")
            .body("x")
            .send()
            .await
            .expect("answer");
        assert_eq!(resp.status(), 200, "{method}");
        assert_eq!(resp.text().await.expect("body"), "ok from second");
    }
    gw.drain(Duration::from_secs(2)).await;
}
