//! The route table and the feed followers that fill it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use model::api::Route;
use model::geo::GeoPoint;
use tokio::sync::watch;

/// Routes by host key: `app` for an app's first component, `component.app` for each component.
#[derive(Debug, Default)]
pub struct RouteTable {
    by_key: HashMap<String, Vec<Route>>,
}

impl RouteTable {
    /// Builds the table from every region's routes.
    pub fn build<'a>(routes: impl Iterator<Item = &'a Route>) -> Self {
        Self::with_unrouted(routes, std::iter::empty())
    }

    /// Builds the table from every region's routes, and the apps (with their components)
    /// registered but without a healthy instance: their hosts are known, with no route.
    pub fn with_unrouted<'a>(
        routes: impl Iterator<Item = &'a Route>,
        unrouted: impl Iterator<Item = (&'a String, &'a Vec<String>)>,
    ) -> Self {
        let mut by_key: HashMap<String, Vec<Route>> = HashMap::new();
        for (app, components) in unrouted {
            by_key.entry(app.clone()).or_default();
            for c in components {
                by_key.entry(format!("{c}.{app}")).or_default();
            }
        }
        // A custom domain routes only while one app claims it (domains are not verified yet).
        let mut claimed: HashMap<String, Option<String>> = HashMap::new();
        for r in routes {
            if let Some(port) = r.port {
                // FluxOS's convention: `<app>_<port>` is the component that publishes the port.
                by_key.entry(format!("{}_{port}", r.app)).or_default().push(r.clone());
                if let Some(domain) = &r.domain {
                    let owner = claimed.entry(domain.clone()).or_insert_with(|| Some(r.app.clone()));
                    if owner.as_deref() != Some(r.app.as_str()) {
                        *owner = None;
                    }
                    by_key.entry(domain_key(domain)).or_default().push(r.clone());
                }
                continue;
            }
            if r.primary {
                by_key.entry(r.app.clone()).or_default().push(r.clone());
            }
            by_key.entry(format!("{}.{}", r.component, r.app)).or_default().push(r.clone());
        }
        for (domain, owner) in claimed {
            if owner.is_none() {
                tracing::warn!(%domain, "custom domain claimed by more than one app: not routed");
                by_key.remove(&domain_key(&domain));
            }
        }
        Self { by_key }
    }

    /// The routes for a host key, nearest to `client` first. `None` when the key is unknown.
    pub fn nearest(&self, key: &str, client: &GeoPoint) -> Option<Vec<Route>> {
        let mut routes = self.by_key.get(key)?.clone();
        routes.sort_by(|a, b| {
            a.geo.distance_km(client).total_cmp(&b.geo.distance_km(client)).then_with(|| a.node.cmp(&b.node))
        });
        Some(routes)
    }
}

/// The table key of a custom domain (apart from every `<app>` and `<component>.<app>` key).
pub fn domain_key(domain: &str) -> String {
    format!("domain:{domain}")
}

/// How often the region directory is read again, to learn new regions and replicas; sooner
/// while some region has no replica listed yet (a cloud that is starting).
const DIRECTORY_EVERY: Duration = Duration::from_secs(5);
const DIRECTORY_EVERY_INCOMPLETE: Duration = Duration::from_millis(500);
/// How long one long poll of a feed waits.
const FEED_WAIT: Duration = Duration::from_secs(20);

/// Follows every region's feed into `table` until `shutdown` fires. The directory comes from any
/// of `control`'s URLs; each region's feed from that region's replicas (its leader, by
/// redirect). When a region cannot be reached its last routes stay in the table.
pub(crate) async fn follow(
    id: String,
    control: client::Client,
    table: Arc<ArcSwap<RouteTable>>,
    forbidden: Arc<ArcSwap<crate::Forbidden>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let feeds: Arc<Mutex<HashMap<String, model::api::RouteFeed>>> = Arc::default();
    let mut followers: HashMap<String, (Vec<String>, tokio::task::JoinHandle<()>)> = HashMap::new();
    loop {
        let mut complete = false;
        match control.regions().await {
            Ok(regions) => {
                complete = !regions.is_empty() && regions.iter().all(|r| !r.replicas.is_empty());
                // Every replica's listener (the control API and Raft share it) is never dialed.
                let known = forbidden.load();
                let mut more = (**known).clone();
                for url in regions.iter().flat_map(|r| r.urls()) {
                    more.add_url(&url);
                }
                forbidden.store(Arc::new(more));
                for region in regions {
                    let urls = region.urls();
                    if urls.is_empty() || followers.get(&region.name).is_some_and(|(u, _)| *u == urls) {
                        continue;
                    }
                    let Ok(region_client) = control.sibling(urls.clone()) else { continue };
                    let task = tokio::spawn(follow_region(
                        id.clone(),
                        region.name.clone(),
                        region_client,
                        feeds.clone(),
                        table.clone(),
                    ));
                    if let Some((_, old)) = followers.insert(region.name.clone(), (urls, task)) {
                        old.abort();
                    }
                }
            }
            // Static stability: keep following the regions known, with their last routes.
            Err(e) => tracing::debug!("gateway: region directory unavailable: {e}"),
        }
        let every = if complete { DIRECTORY_EVERY } else { DIRECTORY_EVERY_INCOMPLETE };
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => break,
        }
    }
    for (_, (_, task)) in followers {
        task.abort();
    }
}

/// Follows one region's feed. Each long poll names the version this gateway holds, which
/// tells the region's leader that the gateway routes it.
async fn follow_region(
    id: String,
    region: String,
    control: client::Client,
    feeds: Arc<Mutex<HashMap<String, model::api::RouteFeed>>>,
    table: Arc<ArcSwap<RouteTable>>,
) {
    let mut version: Option<u64> = None;
    loop {
        match control.routes(&region, Some(&id), version, FEED_WAIT).await {
            Ok(feed) => {
                version = Some(feed.version);
                let mut all = feeds.lock().unwrap_or_else(|e| e.into_inner());
                all.insert(region.clone(), feed);
                let routes = all.values().flat_map(|f| f.routes.iter());
                let unrouted = all.values().flat_map(|f| f.unrouted.iter());
                table.store(Arc::new(RouteTable::with_unrouted(routes, unrouted)));
            }
            Err(e) => {
                // Static stability: keep serving the last routes and retry.
                tracing::debug!(region = %region, "feed unavailable, keeping last routes: {e}");
                version = None;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(app: &str, component: &str, primary: bool, port: Option<u16>, domain: Option<&str>) -> Route {
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
        }
    }

    #[test]
    fn published_ports_and_custom_domains_have_their_own_keys() {
        let routes = [
            route("shop", "web", true, None, None),
            route("shop", "web", false, Some(31000), Some("shop.example.com")),
            route("shop", "api", false, Some(31001), None),
            // Two apps claim one domain: neither gets it.
            route("a", "web", false, Some(32000), Some("taken.example.com")),
            route("b", "web", false, Some(33000), Some("taken.example.com")),
        ];
        let table = RouteTable::build(routes.iter());
        let here = GeoPoint { lat: 0.0, lon: 0.0 };
        let comps =
            |key: &str| table.nearest(key, &here).map(|r| r.iter().map(|r| r.component.clone()).collect::<Vec<_>>());
        assert_eq!(comps("shop"), Some(vec!["web".to_string()]));
        assert_eq!(comps("shop_31000"), Some(vec!["web".to_string()]));
        assert_eq!(comps("shop_31001"), Some(vec!["api".to_string()]));
        assert_eq!(comps(&domain_key("shop.example.com")), Some(vec!["web".to_string()]));
        assert_eq!(comps(&domain_key("taken.example.com")), None);
        // A port route is not the app's primary route, nor a component route.
        assert_eq!(comps("api.shop"), None);
    }
}
