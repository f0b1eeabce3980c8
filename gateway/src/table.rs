//! The route table, indexed once per feed change so that a request only looks things up.
//!
//! Each host key (`app`, `component.app`, `app_port`, `domain:<host>`) maps to one
//! [`AppRoutes`]: its endpoints grouped by region. A request measures its distance to each
//! region's nearest endpoint (a handful of regions) and walks them nearest first; nothing is
//! sorted or cloned per request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use model::api::Route;
use model::domains::DomainWinner;
use model::geo::GeoPoint;

use crate::endpoint::Endpoint;
use crate::forbidden::Forbidden;

/// The endpoints behind one host key.
#[derive(Debug)]
pub struct AppRoutes {
    /// The app, for metrics and logs.
    pub app: String,
    /// Every endpoint; ejection counts are taken over these.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Indexes into `endpoints`, one list per region.
    pub regions: Vec<Vec<usize>>,
    /// Largest request body, bytes (the largest any of its components allows).
    pub max_body: u64,
}

impl AppRoutes {
    /// Distance from `client` to each region's nearest endpoint, in `regions` order.
    pub fn region_distances<'a>(&'a self, client: &'a GeoPoint) -> impl Iterator<Item = f64> + 'a {
        self.regions.iter().map(move |members| {
            members.iter().map(|&i| self.endpoints[i].geo.distance_km(client)).fold(f64::INFINITY, f64::min)
        })
    }
}

/// Routes by host key.
#[derive(Debug, Default)]
pub struct RouteTable {
    by_key: HashMap<String, Arc<AppRoutes>>,
}

/// The endpoints of the current table by instance and address, so that a rebuilt table keeps
/// each endpoint's state and connections.
#[derive(Debug, Default)]
pub struct Endpoints {
    known: Mutex<HashMap<(String, SocketAddr), Arc<Endpoint>>>,
}

impl Endpoints {
    /// The endpoint of `route` (the same one as in the last table, if it was there).
    fn get(
        &self,
        route: &Route,
        addr: SocketAddr,
        next: &mut HashMap<(String, SocketAddr), Arc<Endpoint>>,
    ) -> Arc<Endpoint> {
        let key = (route.instance(), addr);
        if let Some(e) = next.get(&key) {
            return e.clone();
        }
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let endpoint = match known.get(&key) {
            Some(e) => {
                e.set_max_concurrency(route.traffic.concurrency());
                e.clone()
            }
            None => Arc::new(Endpoint::new(route, addr)),
        };
        next.insert(key, endpoint.clone());
        endpoint
    }

    fn replace(&self, next: HashMap<(String, SocketAddr), Arc<Endpoint>>) {
        *self.known.lock().unwrap_or_else(|e| e.into_inner()) = next;
    }

    /// Every endpoint of the current table.
    pub fn all(&self) -> Vec<Arc<Endpoint>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }
}

impl RouteTable {
    /// Builds the table from every region's routes, and the apps (with their components)
    /// registered but without a healthy instance: their hosts are known, with no endpoint.
    /// A route to a listener in `forbidden` (a control replica, the gateway itself) or to no
    /// address at all is left out.
    ///
    /// A custom domain routes only to the claim `domains` serves it for (the regions' entries
    /// for one domain can differ for a moment; the oldest claim wins, as in each shard): an
    /// unproven claim, or a later one, gets nothing.
    pub fn build<'a>(
        routes: impl Iterator<Item = &'a Route>,
        unrouted: impl Iterator<Item = (&'a String, &'a Vec<String>)>,
        domains: impl Iterator<Item = (&'a String, &'a DomainWinner)>,
        forbidden: &Forbidden,
        endpoints: &Endpoints,
    ) -> RouteTable {
        // Per host key: the app, and its routes with their parsed addresses.
        type Keyed<'r> = HashMap<String, (String, Vec<(&'r Route, SocketAddr)>)>;
        let mut keys: Keyed<'a> = HashMap::new();
        for (app, components) in unrouted {
            keys.entry(app.clone()).or_insert_with(|| (app.clone(), Vec::new()));
            for c in components {
                keys.entry(format!("{c}.{app}")).or_insert_with(|| (app.clone(), Vec::new()));
            }
        }
        let mut served: HashMap<&str, &DomainWinner> = HashMap::new();
        for (domain, winner) in domains {
            let best = served.entry(domain.as_str()).or_insert(winner);
            if winner.beats(best) {
                *best = winner;
            }
        }
        for (domain, winner) in &served {
            // Known, so that its host is a 503 while the app has no instance, not a 404.
            keys.entry(domain_key(domain)).or_insert_with(|| (winner.app.clone(), Vec::new()));
        }
        for r in routes {
            let Ok(addr) = r.addr.parse::<SocketAddr>() else {
                tracing::warn!(node = %r.node, addr = %r.addr, "route without an address:port: left out");
                continue;
            };
            if forbidden.contains(&addr) {
                tracing::warn!(node = %r.node, addr = %r.addr, "route to a control-plane or gateway listener: left out");
                // The app is still known: its host is a 503 (no instance now), not a 404.
                keys.entry(r.app.clone()).or_insert_with(|| (r.app.clone(), Vec::new()));
                continue;
            }
            let mut add =
                |key: String| keys.entry(key).or_insert_with(|| (r.app.clone(), Vec::new())).1.push((r, addr));
            if let Some(port) = r.port {
                // FluxOS's convention: `<app>_<port>` is the component that publishes the port.
                add(format!("{}_{port}", r.app));
                if let Some(domain) = &r.domain
                    && served.get(domain.as_str()).is_some_and(|w| w.app == r.app)
                {
                    add(domain_key(domain));
                }
                continue;
            }
            if r.primary {
                add(r.app.clone());
            }
            add(format!("{}.{}", r.component, r.app));
        }
        let mut next = HashMap::new();
        let by_key = keys
            .into_iter()
            .map(|(key, (app, routes))| {
                let mut region_names: Vec<&str> = Vec::new();
                let mut regions: Vec<Vec<usize>> = Vec::new();
                let mut list = Vec::with_capacity(routes.len());
                let mut max_body = 0;
                for (route, addr) in routes {
                    let region = match region_names.iter().position(|r| *r == route.region) {
                        Some(i) => i,
                        None => {
                            region_names.push(&route.region);
                            regions.push(Vec::new());
                            regions.len() - 1
                        }
                    };
                    regions[region].push(list.len());
                    list.push(endpoints.get(route, addr, &mut next));
                    max_body = max_body.max(route.traffic.body_bytes());
                }
                if list.is_empty() {
                    max_body = model::spec::Traffic::default().body_bytes();
                }
                (key, Arc::new(AppRoutes { app, endpoints: list, regions, max_body }))
            })
            .collect();
        endpoints.replace(next);
        RouteTable { by_key }
    }

    /// The routes of a host key; `None` when no app has it.
    pub fn get(&self, key: &str) -> Option<&Arc<AppRoutes>> {
        self.by_key.get(key)
    }

    /// Every host key and its routes.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Arc<AppRoutes>)> {
        self.by_key.iter()
    }
}

/// The table key of a custom domain (apart from every `<app>` and `<component>.<app>` key).
pub fn domain_key(domain: &str) -> String {
    format!("domain:{domain}")
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn route(app: &str, component: &str, primary: bool, port: Option<u16>, domain: Option<&str>) -> Route {
        Route {
            app: app.into(),
            component: component.into(),
            primary,
            node: "n1".into(),
            region: "eu".into(),
            geo: GeoPoint { lat: 0.0, lon: 0.0 },
            addr: "127.0.0.1:20000".into(),
            port,
            domain: domain.map(Into::into),
            traffic: Default::default(),
        }
    }

    fn served(entries: &[(&str, &str, u64)]) -> Vec<(String, DomainWinner)> {
        entries
            .iter()
            .map(|(d, app, since)| (d.to_string(), DomainWinner { app: app.to_string(), since: *since }))
            .collect()
    }

    #[test]
    fn published_ports_and_proven_custom_domains_have_their_own_keys() {
        let routes = [
            route("shop", "web", true, None, None),
            route("shop", "web", false, Some(31000), Some("shop.example.com")),
            route("shop", "api", false, Some(31001), None),
            // Two apps claim one domain: the one it is served for gets it.
            route("a", "web", false, Some(32000), Some("taken.example.com")),
            route("b", "web", false, Some(33000), Some("taken.example.com")),
            // Claimed, never proven.
            route("c", "web", false, Some(34000), Some("unproven.example.com")),
        ];
        // Two regions name different claims for a moment: the older one wins.
        let domains = served(&[
            ("shop.example.com", "shop", 3),
            ("taken.example.com", "b", 9),
            ("taken.example.com", "a", 4),
            ("idle.example.com", "gone", 1),
        ]);
        let table = RouteTable::build(
            routes.iter(),
            std::iter::empty(),
            domains.iter().map(|(d, w)| (d, w)),
            &Forbidden::default(),
            &Endpoints::default(),
        );
        let count = |key: &str| table.get(key).map(|r| r.endpoints.len());
        assert_eq!(count("shop"), Some(1));
        assert_eq!(count("shop_31000"), Some(1));
        assert_eq!(count("shop_31001"), Some(1));
        assert_eq!(count(&domain_key("shop.example.com")), Some(1));
        let taken = table.get(&domain_key("taken.example.com")).expect("served");
        assert_eq!((taken.app.as_str(), taken.endpoints.len()), ("a", 1));
        assert_eq!(count(&domain_key("unproven.example.com")), None);
        // Served for an app with no instance now: known (a 503), with no endpoint.
        assert_eq!(count(&domain_key("idle.example.com")), Some(0));
        // A port route is not the app's primary route, nor a component route.
        assert_eq!(count("api.shop"), None);
    }

    #[test]
    fn a_rebuild_keeps_endpoint_state_and_groups_by_region() {
        let endpoints = Endpoints::default();
        let mut a = route("shop", "web", true, None, None);
        let mut b = a.clone();
        b.node = "n2".into();
        b.region = "as".into();
        b.geo = GeoPoint { lat: 1.35, lon: 103.8 };
        b.addr = "127.0.0.1:20001".into();
        let mut c = a.clone();
        c.node = "n3".into();
        c.addr = "127.0.0.1:20002".into();
        let forbidden = Forbidden::default();
        let first =
            RouteTable::build([&a, &b, &c].into_iter(), std::iter::empty(), std::iter::empty(), &forbidden, &endpoints);
        let shop = first.get("shop").expect("shop");
        assert_eq!(shop.regions, vec![vec![0, 2], vec![1]]);
        let far: Vec<f64> = shop.region_distances(&GeoPoint { lat: 1.0, lon: 103.0 }).collect();
        assert!(far[1] < far[0]);
        let slot = shop.endpoints[0].try_acquire().expect("slot");
        a.traffic.max_concurrency = Some(7);
        let second =
            RouteTable::build([&a, &b].into_iter(), std::iter::empty(), std::iter::empty(), &forbidden, &endpoints);
        let kept = &second.get("shop").expect("shop").endpoints[0];
        assert!(Arc::ptr_eq(kept, slot.endpoint()), "same instance, same endpoint");
        assert_eq!(kept.in_flight(), 1);
        assert_eq!(kept.max_concurrency(), 7);
        assert_eq!(endpoints.all().len(), 2, "the dropped instance is forgotten");
    }

    #[test]
    fn routes_to_forbidden_listeners_are_left_out() {
        let mut forbidden = Forbidden::default();
        forbidden.add("127.0.0.1:20000".parse().expect("addr"));
        let r = route("shop", "web", true, None, None);
        let table = RouteTable::build(
            [&r].into_iter(),
            std::iter::empty(),
            std::iter::empty(),
            &forbidden,
            &Endpoints::default(),
        );
        assert!(table.get("shop").expect("known").endpoints.is_empty());
    }
}
