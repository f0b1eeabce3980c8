//! A look at each HTTP/1 request head as its bytes arrive, before hyper parses it.
//!
//! hyper resolves a request with both `Content-Length` and `Transfer-Encoding` by dropping
//! the length, reading the body as chunked and closing the connection afterwards (RFC 9112
//! §6.3). That is safe, but the layers never see that the client sent both, and a client
//! that does is probing for request smuggling: the gateway refuses it with 400. This reader
//! follows the framing of each request on a connection (heads, fixed bodies, chunks) and
//! queues a verdict per head, which the hygiene layer takes in order.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Per request head on one connection, in order: why its framing is refused, if it is.
#[derive(Debug, Clone, Default)]
pub struct Verdicts(Arc<Mutex<VecDeque<Option<&'static str>>>>);

impl Verdicts {
    /// The verdict on the next request's head (none once the reader stopped following).
    pub fn next(&self) -> Option<&'static str> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).pop_front().flatten()
    }

    fn push(&self, verdict: Option<&'static str>) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push_back(verdict);
    }
}

/// Where the reader is in the byte stream.
#[derive(Debug)]
enum State {
    /// In a request head (bytes so far).
    Head(Vec<u8>),
    /// In a body of known length: bytes left.
    Fixed(u64),
    /// In a chunk-size line.
    ChunkSize(Vec<u8>),
    /// In a chunk's data: bytes left, then its CRLF.
    ChunkData(u64),
    /// In the trailer section after the last chunk.
    Trailers(Vec<u8>),
    /// Not following: HTTP/2, an upgrade, or something hyper will refuse itself.
    Off,
}

/// An IO that watches the request heads read through it.
pub struct Watched<T> {
    inner: T,
    state: State,
    verdicts: Verdicts,
    max_head: usize,
}

impl<T> Watched<T> {
    /// Watches `inner`; heads longer than `max_head` stop the watch (hyper answers 431).
    pub fn new(inner: T, max_head: usize, verdicts: Verdicts) -> Watched<T> {
        Watched { inner, state: State::Head(Vec::new()), verdicts, max_head }
    }

    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match &mut self.state {
                State::Off => return,
                State::Head(head) => {
                    if head.is_empty() {
                        // Empty lines before a request are allowed (RFC 9112 §2.2).
                        let skip = data.iter().take_while(|b| **b == b'\r' || **b == b'\n').count();
                        data = &data[skip..];
                        if data.is_empty() {
                            return;
                        }
                    }
                    // Look for the blank line from just before the bytes already held.
                    let from = head.len().saturating_sub(3);
                    head.extend_from_slice(data);
                    let end = head[from..].windows(4).position(|w| w == b"\r\n\r\n").map(|i| from + i + 4);
                    match end {
                        Some(end) => {
                            // What follows the head goes back to be read as its body.
                            let after = head.len() - end;
                            data = &data[data.len() - after..];
                            head.truncate(end);
                            let head = std::mem::take(head);
                            self.state = self.judge(&head);
                        }
                        None if head.len() > self.max_head => {
                            self.state = State::Off;
                            return;
                        }
                        None => return,
                    }
                }
                State::Fixed(left) => {
                    let n = (*left).min(data.len() as u64);
                    data = &data[n as usize..];
                    *left -= n;
                    if *left == 0 {
                        self.state = State::Head(Vec::new());
                    }
                }
                State::ChunkSize(line) => {
                    while let Some((&b, rest)) = data.split_first() {
                        data = rest;
                        line.push(b);
                        if b == b'\n' {
                            break;
                        }
                        if line.len() > 1024 {
                            self.state = State::Off;
                            return;
                        }
                    }
                    if line.last() == Some(&b'\n') {
                        let digits = line.split(|b| *b == b';' || *b == b'\r' || *b == b'\n').next().unwrap_or(&[]);
                        let size =
                            std::str::from_utf8(digits.trim_ascii()).ok().and_then(|s| u64::from_str_radix(s, 16).ok());
                        self.state = match size {
                            Some(0) => State::Trailers(Vec::new()),
                            // The data, then its CRLF.
                            Some(n) => State::ChunkData(n.saturating_add(2)),
                            None => State::Off,
                        };
                    }
                }
                State::ChunkData(left) => {
                    let n = (*left).min(data.len() as u64);
                    data = &data[n as usize..];
                    *left -= n;
                    if *left == 0 {
                        self.state = State::ChunkSize(Vec::new());
                    }
                }
                State::Trailers(buf) => {
                    while let Some((&b, rest)) = data.split_first() {
                        data = rest;
                        buf.push(b);
                        if buf.as_slice() == b"\r\n" || buf.ends_with(b"\r\n\r\n") {
                            self.state = State::Head(Vec::new());
                            break;
                        }
                        if buf.len() > self.max_head {
                            self.state = State::Off;
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Queues the verdict on a complete head and says how its body is framed.
    fn judge(&self, head: &[u8]) -> State {
        if head.starts_with(b"PRI * HTTP/2.0") {
            return State::Off;
        }
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
            // hyper refuses it and closes the connection.
            self.verdicts.push(None);
            return State::Off;
        }
        let mut length: Option<u64> = None;
        let mut has_length = false;
        let mut chunked = false;
        let mut has_te = false;
        let mut upgrade = req.method == Some("CONNECT");
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                has_length = true;
                length = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse().ok());
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                has_te = true;
                chunked = h.value.trim_ascii().to_ascii_lowercase().ends_with(b"chunked");
            } else if h.name.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            }
        }
        self.verdicts.push((has_length && has_te).then_some("both Content-Length and Transfer-Encoding"));
        if upgrade {
            // After a 101 the bytes are the upgraded protocol's.
            State::Off
        } else if has_te {
            if chunked { State::ChunkSize(Vec::new()) } else { State::Off }
        } else if has_length {
            match length {
                Some(0) => State::Head(Vec::new()),
                Some(n) => State::Fixed(n),
                // An unreadable length: hyper answers 400 and closes.
                None => State::Off,
            }
        } else {
            State::Head(Vec::new())
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if !matches!(this.state, State::Off) {
            this.feed(&buf.filled()[before..]);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts(stream: &[&[u8]]) -> Vec<Option<&'static str>> {
        let v = Verdicts::default();
        let mut w = Watched::new(tokio::io::empty(), 8192, v.clone());
        for part in stream {
            w.feed(part);
        }
        v.0.lock().expect("lock").iter().copied().collect()
    }

    #[test]
    fn each_head_gets_its_verdict_in_order_across_bodies_and_chunks() {
        let both = Some("both Content-Length and Transfer-Encoding");
        let stream: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab",
            b"cde",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
            b"5;ext=1\r\nhe\r\n\n\r\n0\r\nX-Trailer: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n",
        ];
        assert_eq!(verdicts(stream), vec![None, None, None, both, None]);
        // Byte by byte, the same.
        let whole: Vec<u8> = stream.concat();
        let bytes: Vec<&[u8]> = whole.chunks(1).collect();
        assert_eq!(verdicts(&bytes), vec![None, None, None, both, None]);
    }

    #[test]
    fn http2_and_upgrades_stop_the_watch() {
        assert_eq!(verdicts(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n"]), vec![]);
        let upgraded: &[&[u8]] = &[
            b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"\x81\x85junk\r\n\r\n",
        ];
        assert_eq!(verdicts(upgraded), vec![None]);
    }
}
