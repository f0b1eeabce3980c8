//! Retries, against instances that fail in each way a dying node does.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::routes::RouteTable;

/// How a fake instance treats each request it receives.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Answers 200 `ok`.
    Answer,
    /// Reads the request, then drops the connection without a word (a crash mid-request).
    Drop,
    /// Reads the request and never answers.
    Hang,
}

/// A fake instance on loopback; counts the requests that reached it.
async fn instance(behaviour: Behaviour) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                if stream.read(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
                counter.fetch_add(1, Ordering::SeqCst);
                match behaviour {
                    Behaviour::Answer => {
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n")
                            .await;
                    }
                    Behaviour::Drop => {}
                    Behaviour::Hang => tokio::time::sleep(Duration::from_secs(30)).await,
                }
            });
        }
    });
    (addr, seen)
}

fn route(node: &str, addr: &str, lon: f64) -> model::api::Route {
    model::api::Route {
        app: "hello".into(),
        component: "web".into(),
        primary: true,
        node: node.into(),
        region: "eu".into(),
        geo: GeoPoint { lat: 0.0, lon },
        addr: addr.into(),
        port: None,
        domain: None,
    }
}

/// A gateway at (0, 0) over `routes`, nearest first in the given order.
async fn gateway(routes: Vec<model::api::Route>) -> (String, serve::Server) {
    gateway_with_control(routes, "http://127.0.0.1:1").await
}

/// [`gateway`], following the control plane at `control`.
async fn gateway_with_control(routes: Vec<model::api::Route>, control: &str) -> (String, serve::Server) {
    let table = Arc::new(ArcSwap::from_pointee(RouteTable::build(routes.iter())));
    let config = GatewayConfig {
        id: "test".into(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        domain: "test".into(),
        control: client::Client::from_list(control).expect("client"),
        geo: GeoPoint { lat: 0.0, lon: 0.0 },
        trusted: vec![],
        body_timeout: Duration::from_secs(5),
        response_header_timeout: Duration::from_millis(300),
    };
    let listener = TcpListener::bind(config.listen).await.expect("bind");
    let mut forbidden = Forbidden::default();
    forbidden.add(listener.local_addr().expect("addr"));
    for url in config.control.urls() {
        forbidden.add_url(url);
    }
    let forbidden = Arc::new(ArcSwap::from_pointee(forbidden));
    let gw = Arc::new(Gateway { config, table, forbidden, client: instance_client() });
    let server = gw.serve(listener, serve::Limits::default()).expect("serve");
    (format!("http://{}", server.local_addr()), server)
}

async fn send(base: &str, method: reqwest::Method) -> reqwest::Response {
    reqwest::Client::new()
        .request(method, format!("{base}/"))
        .header("host", "hello.app.test")
        .body("x")
        .send()
        .await
        .expect("the gateway answers")
}

#[tokio::test]
async fn an_idempotent_request_is_retried_after_a_reset_or_a_silent_instance() {
    let (dropping, dropped) = instance(Behaviour::Drop).await;
    let (hanging, hung) = instance(Behaviour::Hang).await;
    let (good, answered) = instance(Behaviour::Answer).await;
    let (base, _server) =
        gateway(vec![route("n1", &dropping, 1.0), route("n2", &hanging, 2.0), route("n3", &good, 3.0)]).await;
    let resp = send(&base, reqwest::Method::GET).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-fluxplane-node"], "n3");
    assert_eq!(resp.headers()["x-fluxplane-attempts"], "3");
    assert_eq!(
        (dropped.load(Ordering::SeqCst), hung.load(Ordering::SeqCst), answered.load(Ordering::SeqCst)),
        (1, 1, 1)
    );
}

#[tokio::test]
async fn a_post_that_reached_an_instance_is_never_sent_twice() {
    let (dropping, dropped) = instance(Behaviour::Drop).await;
    let (good, answered) = instance(Behaviour::Answer).await;
    let (base, _server) = gateway(vec![route("n1", &dropping, 1.0), route("n2", &good, 2.0)]).await;
    let resp = send(&base, reqwest::Method::POST).await;
    assert_eq!(resp.status(), 502);
    assert_eq!((dropped.load(Ordering::SeqCst), answered.load(Ordering::SeqCst)), (1, 0));
}

#[tokio::test]
async fn a_post_whose_connect_failed_goes_to_the_next_instance() {
    // A port nobody listens on: the connect is refused, so the request provably went nowhere.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").to_string()
    };
    let (good, answered) = instance(Behaviour::Answer).await;
    let (base, _server) = gateway(vec![route("n1", &closed, 1.0), route("n2", &good, 2.0)]).await;
    let resp = send(&base, reqwest::Method::POST).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-fluxplane-attempts"], "2");
    assert_eq!(answered.load(Ordering::SeqCst), 1);
}

/// A route that names the control plane's listener (or the gateway's own) is never dialed,
/// whatever the feed says: the request goes to the next instance, or gets no answer from it.
#[tokio::test]
async fn a_route_to_the_control_plane_is_never_dialed() {
    let (control, control_hits) = instance(Behaviour::Answer).await;
    let (good, answered) = instance(Behaviour::Answer).await;
    let (base, _server) =
        gateway_with_control(vec![route("rogue", &control, 1.0), route("n2", &good, 2.0)], &control).await;
    let resp = send(&base, reqwest::Method::GET).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-fluxplane-node"], "n2");
    assert_eq!((control_hits.load(Ordering::SeqCst), answered.load(Ordering::SeqCst)), (0, 1));

    // Alone, it gets a 502 that says why, and the control plane still hears nothing.
    let (base, _server) = gateway_with_control(vec![route("rogue", &control, 1.0)], &control).await;
    let resp = send(&base, reqwest::Method::GET).await;
    assert_eq!(resp.status(), 502);
    assert!(resp.text().await.expect("body").contains("not an instance"));
    assert_eq!(control_hits.load(Ordering::SeqCst), 0);
}
