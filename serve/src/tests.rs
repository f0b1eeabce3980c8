use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

async fn slow_server(limits: Limits, delay: Duration) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    spawn(listener, limits, move |_| {
        hyper::service::service_fn(move |_req| async move {
            tokio::time::sleep(delay).await;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"done"))))
        })
    })
    .expect("spawn")
}

/// Reads until EOF or error; true when the server closed the connection before `within`.
async fn closed_within(mut s: TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    let r = tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    r.is_ok()
}

#[tokio::test]
async fn partial_request_heads_are_cut_off() {
    let limits = Limits { header_read_timeout: Duration::from_millis(300), ..Limits::default() };
    let server = slow_server(limits, Duration::ZERO).await;
    let mut conns = Vec::new();
    for _ in 0..300 {
        let mut s = TcpStream::connect(server.local_addr()).await.expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.expect("write");
        conns.push(s);
    }
    // An idle keep-alive connection that sent nothing is cut off too.
    conns.push(TcpStream::connect(server.local_addr()).await.expect("connect"));
    let started = Instant::now();
    for s in conns {
        assert!(closed_within(s, Duration::from_secs(5)).await, "a partial connection stayed open");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(server.drain(Duration::from_secs(1)).await);
}

#[tokio::test]
async fn connections_past_the_cap_are_refused() {
    let limits = Limits { max_connections: 4, ..Limits::default() };
    let server = slow_server(limits, Duration::ZERO).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(server.local_addr()).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let extra = TcpStream::connect(server.local_addr()).await.expect("connect");
    assert!(closed_within(extra, Duration::from_secs(2)).await, "the fifth connection was served");
    assert!(server.refused() >= 1);
    drop(held);
}

#[tokio::test]
async fn drain_finishes_requests_in_flight() {
    let server = slow_server(Limits::default(), Duration::from_millis(500)).await;
    let mut s = TcpStream::connect(server.local_addr()).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let addr = server.local_addr();
    let drained = tokio::spawn(server.drain(Duration::from_secs(5)));
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("done"), "{answer}");
    assert!(drained.await.expect("join"), "drain did not finish cleanly");
    // No longer accepting.
    assert!(TcpStream::connect(addr).await.is_err());
}
