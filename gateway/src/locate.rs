//! Client location, tried in order:
//! 1. the GeoIP database (`--geoip-db`), on the client's address: the peer's, or for a trusted
//!    peer (a load balancer in front) the last address in `x-forwarded-for` that is not trusted;
//! 2. the `x-fluxplane-client-geo: <lat>,<lon>` header, only from a trusted peer;
//! 3. the gateway's own location.

use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};

use model::geo::GeoPoint;
use tower::Service;

use crate::Shared;
use crate::stack::{Peer, Req, Resp};

/// The trusted client-location header.
pub const CLIENT_GEO: &str = "x-fluxplane-client-geo";

/// Where the client is taken to be, set on the request by this layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClientGeo(pub GeoPoint);

crate::stack::layer_service! {
    /// Finds the client's location.
    Locate
}

impl Shared {
    /// The client's location as [`Locate`] finds it.
    pub(crate) fn locate(&self, req: &Req) -> GeoPoint {
        let Some(peer) = req.extensions().get::<Peer>() else { return self.config.geo };
        let trusted = self.trusts(peer.addr.ip());
        if let Some(db) = &self.geoip {
            let client = self.client_ip(req, peer.addr.ip());
            if let Some(found) = db.locate(client) {
                return found.point;
            }
        }
        if trusted
            && let Some(point) = req.headers().get(CLIENT_GEO).and_then(|v| v.to_str().ok()).and_then(GeoPoint::parse)
        {
            return point;
        }
        self.config.geo
    }

    /// The client's address: the peer's, or for a trusted peer (a proxy in front) the last
    /// `x-forwarded-for` address that is not trusted, as the proxies saw the client.
    pub(crate) fn client_ip(&self, req: &Req, peer: IpAddr) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let Some(header) = req.headers().get(crate::hygiene::X_FORWARDED_FOR).and_then(|h| h.to_str().ok()) else {
            return peer;
        };
        header.rsplit(',').filter_map(|a| a.trim().parse::<IpAddr>().ok()).find(|ip| !self.trusts(*ip)).unwrap_or(peer)
    }
}

impl<S> Service<Req> for Locate<S>
where
    S: Service<Req, Response = Resp, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Resp;
    type Error = Infallible;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        let geo = self.shared.locate(&req);
        req.extensions_mut().insert(ClientGeo(geo));
        req.headers_mut().remove(CLIENT_GEO);
        self.inner.call(req)
    }
}
