//! The route table and the feed followers that fill it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use model::api::{RegionView, Route, RouteFeed};
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
        let mut by_key: HashMap<String, Vec<Route>> = HashMap::new();
        for r in routes {
            if r.primary {
                by_key.entry(r.app.clone()).or_default().push(r.clone());
            }
            by_key.entry(format!("{}.{}", r.component, r.app)).or_default().push(r.clone());
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

/// Follows all regions' feeds into `table` until `shutdown` fires.
pub(crate) async fn follow(api: String, table: Arc<ArcSwap<RouteTable>>, mut shutdown: watch::Receiver<bool>) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(40)).build().unwrap_or_default();
    let regions: Vec<RegionView> = loop {
        match http.get(format!("{api}/v1/regions")).send().await {
            Ok(resp) if resp.status().is_success() => match resp.json().await {
                Ok(r) => break r,
                Err(e) => tracing::warn!("gateway: bad region directory: {e}"),
            },
            Ok(resp) => tracing::warn!("gateway: region directory answered {}", resp.status()),
            Err(e) => tracing::debug!("gateway: control plane unreachable: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.changed() => return,
        }
    };
    let feeds: Arc<Mutex<HashMap<String, Vec<Route>>>> = Arc::default();
    let mut tasks = Vec::new();
    for region in regions {
        let (http, feeds, table) = (http.clone(), feeds.clone(), table.clone());
        tasks.push(tokio::spawn(async move {
            let mut version: Option<u64> = None;
            loop {
                let url = match version {
                    Some(v) => format!("{}/v1/routes/{}?after={v}&wait_ms=20000", region.api, region.name),
                    None => format!("{}/v1/routes/{}", region.api, region.name),
                };
                let feed: Result<RouteFeed, _> = match http.get(url).send().await {
                    Ok(resp) if resp.status().is_success() => resp.json().await.map_err(|e| e.to_string()),
                    Ok(resp) => Err(format!("feed answered {}", resp.status())),
                    Err(e) => Err(e.to_string()),
                };
                match feed {
                    Ok(feed) => {
                        version = Some(feed.version);
                        let mut all = feeds.lock().unwrap_or_else(|e| e.into_inner());
                        all.insert(region.name.clone(), feed.routes);
                        table.store(Arc::new(RouteTable::build(all.values().flatten())));
                    }
                    Err(e) => {
                        // Static stability: keep serving the last routes and retry.
                        tracing::debug!(region = %region.name, "feed unavailable, keeping last routes: {e}");
                        version = None;
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        }));
    }
    let _ = shutdown.changed().await;
    for t in tasks {
        t.abort();
    }
}
