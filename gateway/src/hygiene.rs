//! Header hygiene: what the client sent is made safe to pass on, and what the instance sends
//! back likewise.
//!
//! - Ambiguous framing is refused with 400 (request smuggling): `Content-Length` together
//!   with `Transfer-Encoding`, several different `Content-Length`s, or a transfer coding other
//!   than `chunked`.
//! - Hop-by-hop headers (RFC 9110 §7.6.1, and every header `Connection` names) are removed
//!   both ways; a WebSocket upgrade keeps its `Upgrade` and `Connection: upgrade`.
//! - `x-forwarded-for`, `-proto` and `-host` are set. A trusted peer's copies are kept and
//!   appended to; anyone else's are replaced, so a client cannot forge its address.
//! - `traceparent` is passed on when valid, else a new trace is started.

use std::convert::Infallible;
use std::task::{Context, Poll};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Version};
use tower::Service;

use crate::body::text;
use crate::metrics::inc;
use crate::stack::{BoxFuture, Peer, Req, Resp};

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The hop-by-hop headers every message loses.
const HOP_BY_HOP: [HeaderName; 10] = [
    HeaderName::from_static("http2-settings"),
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Whether the request asks for a WebSocket (HTTP/1.1 `Upgrade: websocket`).
pub fn is_websocket(headers: &HeaderMap, version: Version) -> bool {
    version == Version::HTTP_11
        && headers
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
        && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Why the framing of a request is refused, if it is.
pub fn smuggling(headers: &HeaderMap) -> Option<&'static str> {
    let te = headers.get_all(header::TRANSFER_ENCODING).iter().count() > 0;
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    let first = lengths.next();
    if te && first.is_some() {
        return Some("both Content-Length and Transfer-Encoding");
    }
    if let Some(first) = first {
        // `Content-Length: 5, 5` and repeated equal headers are legal; differing ones are not.
        let values = std::iter::once(first).chain(lengths).flat_map(|v| v.as_bytes().split(|b| *b == b','));
        let mut seen: Option<&[u8]> = None;
        for v in values {
            let v = v.trim_ascii();
            if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
                return Some("a Content-Length that is not a number");
            }
            match seen {
                Some(s) if s != v => return Some("conflicting Content-Length values"),
                _ => seen = Some(v),
            }
        }
    }
    if te {
        // Only `chunked`, once and last: anything else is parsed differently by someone.
        let codings: Vec<&[u8]> = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(|v| v.trim_ascii())
            .collect();
        if codings.len() != 1 || !codings[0].eq_ignore_ascii_case(b"chunked") {
            return Some("a Transfer-Encoding other than `chunked`");
        }
    }
    None
}

/// Removes the hop-by-hop headers, and those `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages have none: one pass over the names, no hashing, before any removal.
    if !headers.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
    let named: Vec<HeaderName> =
        connection_tokens(headers).filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok()).collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Whether a client may not set this header: it claims where the client comes from.
fn claims_origin(name: &HeaderName) -> bool {
    let n = name.as_str();
    *name == header::FORWARDED || n == "x-real-ip" || n == crate::locate::CLIENT_GEO || n.starts_with("x-forwarded-")
}

/// A valid W3C `traceparent` (version 00): `00-<32 hex>-<16 hex>-<2 hex>`, ids not all zero.
fn valid_traceparent(v: &[u8]) -> bool {
    let hex = |s: &[u8]| s.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
    let nonzero = |s: &[u8]| s.iter().any(|b| *b != b'0');
    v.len() == 55
        && &v[..3] == b"00-"
        && v[35] == b'-'
        && v[52] == b'-'
        && hex(&v[3..35])
        && nonzero(&v[3..35])
        && hex(&v[36..52])
        && nonzero(&v[36..52])
        && hex(&v[53..])
}

fn new_traceparent() -> HeaderValue {
    // Written by hand: this runs on most requests, and `format!` showed in the profile.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let trace: u128 = rand::random::<u128>() | 1;
    let span: u64 = rand::random::<u64>() | 1;
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-01";
    for i in 0..32 {
        out[3 + i] = HEX[((trace >> (124 - 4 * i)) & 0xf) as usize];
    }
    for i in 0..16 {
        out[36 + i] = HEX[((span >> (60 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&out)
        .unwrap_or(HeaderValue::from_static("00-00000000000000000000000000000001-0000000000000001-01"))
}

crate::stack::layer_service! {
    /// Cleans the request's headers and the response's.
    Hygiene
}

impl<S> Service<Req> for Hygiene<S>
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

    fn call(&mut self, mut req: Req) -> Self::Future {
        let peer = req.extensions().get::<Peer>().map(|p| (p.addr, p.tls, p.framing.as_ref().and_then(|f| f.next())));
        let refused = peer.and_then(|(_, _, head)| head).or_else(|| smuggling(req.headers()));
        if let Some(why) = refused {
            inc(&self.shared.metrics.refused_smuggling);
            return Box::pin(async move {
                let mut resp = text(StatusCode::BAD_REQUEST, format!("refused: {why}"));
                resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                Ok(resp)
            });
        }
        let peer = peer.map(|(addr, tls, _)| (addr, tls));
        let trusted = peer.is_some_and(|(addr, _)| self.shared.trusts(addr.ip()));
        let websocket = is_websocket(req.headers(), req.version());
        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        if websocket {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        }
        // Names with `_` are dropped, as nginx does: servers that fold `_` into `-` (CGI,
        // WSGI) would read `X_Forwarded_For` as the real thing. And from anyone but a trusted
        // peer, whatever it says about where it comes from, in any of the usual forms.
        let dropped = |k: &HeaderName| k.as_str().contains('_') || (!trusted && claims_origin(k));
        if headers.keys().any(dropped) {
            let names: Vec<HeaderName> = headers.keys().filter(|k| dropped(k)).cloned().collect();
            for name in names {
                headers.remove(name);
            }
        }
        if let Some((addr, tls)) = peer {
            let ip = addr.ip().to_canonical().to_string();
            let forwarded = match headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
                Some(earlier) if trusted => format!("{earlier}, {ip}"),
                _ => ip,
            };
            // Appending a second header line would let a client's copy stand first.
            headers.remove(X_FORWARDED_FOR);
            if let Ok(v) = HeaderValue::from_str(&forwarded) {
                headers.insert(X_FORWARDED_FOR, v);
            }
            if !headers.contains_key(X_FORWARDED_PROTO) {
                headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(if tls { "https" } else { "http" }));
            }
        }
        if !headers.contains_key(X_FORWARDED_HOST)
            && let Some(host) = headers
                .get(header::HOST)
                .cloned()
                .or_else(|| req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()))
        {
            req.headers_mut().insert(X_FORWARDED_HOST, host);
        }
        let headers = req.headers_mut();
        if !headers.get(TRACEPARENT).is_some_and(|v| valid_traceparent(v.as_bytes())) {
            headers.insert(TRACEPARENT, new_traceparent());
        }
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                strip_hop_by_hop(resp.headers_mut());
            }
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).expect("name"), HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    #[test]
    fn ambiguous_framing_is_named() {
        assert_eq!(smuggling(&headers(&[("content-length", "5")])), None);
        assert_eq!(smuggling(&headers(&[("content-length", "5"), ("content-length", "5")])), None);
        assert_eq!(smuggling(&headers(&[("transfer-encoding", "chunked")])), None);
        for bad in [
            vec![("content-length", "5"), ("transfer-encoding", "chunked")],
            vec![("content-length", "5"), ("content-length", "6")],
            vec![("content-length", "5, 6")],
            vec![("content-length", "-1")],
            vec![("transfer-encoding", "gzip, chunked")],
            vec![("transfer-encoding", "chunked"), ("transfer-encoding", "chunked")],
            vec![("transfer-encoding", "xchunked")],
        ] {
            assert!(smuggling(&headers(&bad)).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_go() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic Zm9v"),
            ("keep-alive", "timeout=5"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), vec!["accept"]);
    }

    #[test]
    fn traceparents_are_checked() {
        assert!(valid_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        assert!(!valid_traceparent(b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"));
        assert!(!valid_traceparent(b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"));
        assert!(!valid_traceparent(b"garbage"));
        assert!(valid_traceparent(new_traceparent().as_bytes()));
    }
}
