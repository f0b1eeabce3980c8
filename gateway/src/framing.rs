//! A look at each HTTP/1 request head as its bytes arrive, before hyper parses it.
//!
//! hyper resolves a request with both `Content-Length` and `Transfer-Encoding` by dropping
//! the length, reading the body as chunked and closing the connection afterwards (RFC 9112
//! §6.3). That is safe, but the layers never see that the client sent both, and a client
//! that does is probing for request smuggling: the gateway refuses it with 400. This reader
//! follows the framing of each request on a connection (heads, fixed bodies, chunks) and
//! queues a verdict per head, which the hygiene layer takes in order.
//!
//! The same wrapper ends a connection whose client stops reading what is written to it.

use std::collections::VecDeque;
use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

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

/// The end of a request head in `buf` (just past its empty line), looking from `from`: a line
/// feed followed by an empty line, whether lines end in CRLF or, as parsers also accept, LF.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    loop {
        let at = i + buf.get(i..)?.iter().position(|b| *b == b'\n')?;
        if buf.get(at + 1) == Some(&b'\n') {
            return Some(at + 2);
        }
        if buf.get(at + 1..at + 3) == Some(b"\r\n") {
            return Some(at + 3);
        }
        i = at + 1;
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

/// An IO that watches the request heads read through it, and gives up on a client that
/// reads nothing of what is written to it for `stall` (so a client that never reads its
/// response cannot hold the instance's connection and concurrency slot).
pub struct Watched<T> {
    inner: T,
    state: State,
    verdicts: Verdicts,
    max_head: usize,
    stall: Duration,
    stalled_since: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> Watched<T> {
    /// Watches `inner`; heads longer than `max_head` stop the watch (hyper answers 431).
    pub fn new(inner: T, max_head: usize, verdicts: Verdicts, stall: Duration) -> Watched<T> {
        Watched { inner, state: State::Head(Vec::new()), verdicts, max_head, stall, stalled_since: None }
    }

    /// Only the write stall limit (an HTTP/2 connection: no heads to watch).
    pub fn writes_only(inner: T, stall: Duration) -> Watched<T> {
        Watched { inner, state: State::Off, verdicts: Verdicts::default(), max_head: 0, stall, stalled_since: None }
    }

    /// Passes a write's outcome on, ending the connection once writes have waited `stall`.
    fn stall_check<R>(&mut self, cx: &mut Context<'_>, result: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if result.is_ready() {
            self.stalled_since = None;
            return result;
        }
        let stall = self.stall;
        let timer = self.stalled_since.get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client read nothing for {stall:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
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
                    let from = head.len().saturating_sub(2);
                    head.extend_from_slice(data);
                    let end = head_end(head, from);
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
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                has_length = true;
                length = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse().ok());
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                has_te = true;
                chunked = h.value.trim_ascii().to_ascii_lowercase().ends_with(b"chunked");
            }
        }
        self.verdicts.push((has_length && has_te).then_some("both Content-Length and Transfer-Encoding"));
        // An upgrade may be refused, and the connection go on in HTTP/1.1, so the watch goes on;
        // after a 101 the upgraded bytes are never a complete head for long (the watch stops
        // at a head over the limit), and nobody takes their verdicts.
        if has_te {
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
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.stall_check(cx, result)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_flush(cx);
        this.stall_check(cx, result)
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
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.stall_check(cx, result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts(stream: &[&[u8]]) -> Vec<Option<&'static str>> {
        let v = Verdicts::default();
        let mut w = Watched::new(tokio::io::empty(), 8192, v.clone(), Duration::from_secs(1));
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
    fn http2_stops_the_watch_and_refused_upgrades_and_bare_line_feeds_do_not() {
        assert_eq!(verdicts(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n"]), vec![]);
        // After a 101 the upgraded bytes are no head: a verdict nobody takes, and the watch stops.
        let upgraded: &[&[u8]] = &[
            b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"\x81\x85junk\r\n\r\n",
        ];
        assert_eq!(verdicts(upgraded), vec![None, None]);
        // A refused upgrade goes on in HTTP/1.1: the next head is still judged.
        let refused: &[&[u8]] = &[
            b"GET /up HTTP/1.1\r\nHost: a\r\nUpgrade: foo\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ];
        assert_eq!(verdicts(refused), vec![None, Some("both Content-Length and Transfer-Encoding")]);
        // Heads with bare line feeds end at their empty line too.
        let bare: &[&[u8]] = &[
            b"GET /lf HTTP/1.1\nHost: a\n\n",
            b"POST / HTTP/1.1\nHost: a\nContent-Length: 4\nTransfer-Encoding: chunked\n\n0\r\n\r\n",
        ];
        assert_eq!(verdicts(bare), vec![None, Some("both Content-Length and Transfer-Encoding")]);
    }
}
