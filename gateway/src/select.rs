//! Instance selection: nearest first, then least loaded.
//!
//! Regions are taken nearest first (by the distance to each region's nearest instance; with
//! `spread_km`, regions that much further than the nearest are pooled with it). Within the
//! pool, two random choices: of two available instances, the one with the lower EWMA latency
//! × (requests in flight + 1). An instance is available when it is not ejected, not already
//! tried for this request, and below its `max_concurrency`. The next region is used only when
//! none in the pool is available; when every instance everywhere is full, the answer is 503.

use std::sync::Arc;
use std::task::{Context, Poll};

use model::geo::GeoPoint;
use rand::Rng;
use tower::Service;

use crate::endpoint::{Endpoint, Slot, now_ms};
use crate::forward::Failure;
use crate::host::Target;
use crate::locate::ClientGeo;
use crate::stack::{Req, Resp};
use crate::table::AppRoutes;

/// The instances already tried for this request, set by the retry layer.
#[derive(Debug, Clone, Default)]
pub struct Tried(pub Vec<Arc<Endpoint>>);

/// The chosen instance and the request's slot on it, set by this layer for the forward layer.
#[derive(Debug, Clone)]
pub struct Chosen(pub Arc<Slot>);

/// Why nothing could be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoneAvailable {
    /// Every instance not tried or ejected is at its concurrency limit.
    AllFull,
    /// Every instance was tried or is ejected.
    Exhausted,
}

/// Most regions pooled in one pass (a bitmask of regions done).
const MAX_REGIONS: usize = 64;

/// Chooses an instance of `routes` for a client at `client`.
pub fn choose(
    routes: &AppRoutes,
    client: &GeoPoint,
    tried: &[Arc<Endpoint>],
    spread_km: f64,
) -> Result<Slot, NoneAvailable> {
    let now = now_ms();
    let regions = routes.regions.len().min(MAX_REGIONS);
    let mut distance = [f64::INFINITY; MAX_REGIONS];
    for (d, r) in distance.iter_mut().zip(routes.region_distances(client)) {
        *d = r;
    }
    let mut done = 0u64;
    let mut saw_full = false;
    let usable = |e: &Arc<Endpoint>| !e.ejected(now) && !tried.iter().any(|t| Arc::ptr_eq(t, e));
    loop {
        if (0..regions).all(|r| done & (1 << r) != 0) {
            break;
        }
        let nearest = (0..regions).filter(|r| done & (1 << r) == 0).map(|r| distance[r]).fold(f64::INFINITY, f64::min);
        let pool: u64 = (0..regions)
            .filter(|r| done & (1 << r) == 0 && distance[*r] <= nearest + spread_km)
            .fold(0, |m, r| m | (1 << r));
        if pool == 0 {
            break;
        }
        done |= pool;
        let members = || {
            (0..regions)
                .filter(move |r| pool & (1 << r) != 0)
                .flat_map(|r| routes.regions[r].iter().map(|&i| &routes.endpoints[i]))
        };
        let mut available = 0usize;
        for e in members() {
            if usable(e) {
                if e.has_room() {
                    available += 1;
                } else {
                    saw_full = true;
                }
            }
        }
        while available > 0 {
            let nth = |n: usize| members().filter(|e| usable(e) && e.has_room()).nth(n);
            let pick = if available == 1 {
                nth(0)
            } else {
                let mut rng = rand::thread_rng();
                let a = rng.gen_range(0..available);
                let b = (a + rng.gen_range(1..available)) % available;
                match (nth(a), nth(b)) {
                    (Some(x), Some(y)) => Some(if y.load_score() < x.load_score() { y } else { x }),
                    (x, y) => x.or(y),
                }
            };
            match pick.and_then(|e| e.try_acquire()) {
                Some(slot) => return Ok(slot),
                // Filled up between the count and the take: count again.
                None => {
                    available = members().filter(|e| usable(e) && e.has_room()).count();
                    if available == 0 {
                        saw_full = true;
                    }
                }
            }
        }
    }
    Err(if saw_full { NoneAvailable::AllFull } else { NoneAvailable::Exhausted })
}

crate::stack::layer_service! {
    /// Chooses the instance for each attempt.
    Select
}

impl<S> Service<Req> for Select<S>
where
    S: Service<Req, Response = Resp, Error = Failure> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Resp;
    type Error = Failure;
    type Future = crate::stack::BoxFuture<Result<Resp, Failure>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Failure>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        let Some(target) = req.extensions().get::<Target>() else {
            return Box::pin(async { Err(Failure::NoInstance(NoneAvailable::Exhausted)) });
        };
        let client = req.extensions().get::<ClientGeo>().map_or(self.shared.config.geo, |g| g.0);
        let tried = req.extensions().get::<Tried>().map(|t| t.0.as_slice()).unwrap_or(&[]);
        match choose(&target.routes, &client, tried, self.shared.config.spread_km) {
            Ok(slot) => {
                req.extensions_mut().insert(Chosen(Arc::new(slot)));
                Box::pin(self.inner.call(req))
            }
            Err(none) => Box::pin(async move { Err(Failure::NoInstance(none)) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forbidden::Forbidden;
    use crate::table::{Endpoints, RouteTable};

    fn route(node: &str, region: &str, lon: f64, port: u16, max: u32) -> model::api::Route {
        model::api::Route {
            app: "a".into(),
            component: "web".into(),
            primary: true,
            node: node.into(),
            region: region.into(),
            geo: GeoPoint { lat: 0.0, lon },
            addr: format!("127.0.0.1:{port}"),
            port: None,
            domain: None,
            traffic: model::spec::Traffic { max_concurrency: Some(max), max_body_mb: None },
        }
    }

    fn table(routes: &[model::api::Route]) -> Arc<AppRoutes> {
        let t = RouteTable::build(
            routes.iter(),
            std::iter::empty(),
            std::iter::empty(),
            &Forbidden::default(),
            &Endpoints::default(),
        );
        t.get("a").expect("a").clone()
    }

    const HERE: GeoPoint = GeoPoint { lat: 0.0, lon: 0.0 };

    #[test]
    fn the_nearest_region_first_and_the_next_only_when_it_is_full() {
        let a =
            table(&[route("near1", "eu", 1.0, 1, 1), route("near2", "eu", 2.0, 2, 1), route("far", "as", 100.0, 3, 5)]);
        let s1 = choose(&a, &HERE, &[], 0.0).expect("one");
        let s2 = choose(&a, &HERE, &[], 0.0).expect("two");
        let mut local = [s1.endpoint().node.clone(), s2.endpoint().node.clone()];
        local.sort();
        assert_eq!(local, ["near1", "near2"], "both local instances before the far one");
        let s3 = choose(&a, &HERE, &[], 0.0).expect("three");
        assert_eq!(s3.endpoint().node, "far", "local ones are full");
        drop(s1);
        assert_eq!(choose(&a, &HERE, &[], 0.0).expect("four").endpoint().region, "eu", "room again locally");
    }

    #[test]
    fn all_full_and_all_tried_are_told_apart() {
        let a = table(&[route("n1", "eu", 1.0, 1, 1)]);
        let slot = choose(&a, &HERE, &[], 0.0).expect("slot");
        assert_eq!(choose(&a, &HERE, &[], 0.0).err(), Some(NoneAvailable::AllFull));
        let tried = vec![slot.endpoint().clone()];
        drop(slot);
        assert_eq!(choose(&a, &HERE, &tried, 0.0).err(), Some(NoneAvailable::Exhausted));
    }

    #[test]
    fn ejected_instances_are_skipped_and_the_radius_pools_regions() {
        let a = table(&[route("n1", "eu", 1.0, 1, 10), route("n2", "eu", 1.0, 2, 10), route("n3", "as", 3.0, 3, 10)]);
        for _ in 0..5 {
            a.endpoints[0].record_failure(&a.endpoints);
        }
        for _ in 0..20 {
            let s = choose(&a, &HERE, &[], 0.0).expect("slot");
            assert_eq!(s.endpoint().node, "n2");
        }
        // 3° of longitude is ~334 km further: within a 500 km spread, `as` shares the load.
        let mut nodes = std::collections::BTreeSet::new();
        for _ in 0..50 {
            nodes.insert(choose(&a, &HERE, &[], 500.0).expect("slot").endpoint().node.clone());
        }
        assert_eq!(nodes.into_iter().collect::<Vec<_>>(), vec!["n2", "n3"]);
    }

    #[test]
    fn two_choices_favour_the_faster_instance() {
        let a = table(&[route("fast", "eu", 1.0, 1, 100), route("slow", "eu", 1.0, 2, 100)]);
        for _ in 0..20 {
            a.endpoints[0].observe_latency(std::time::Duration::from_millis(1));
            a.endpoints[1].observe_latency(std::time::Duration::from_millis(50));
        }
        // With two instances P2C compares both each time: the fast one wins while idle.
        for _ in 0..10 {
            assert_eq!(choose(&a, &HERE, &[], 0.0).expect("slot").endpoint().node, "fast");
        }
    }
}
