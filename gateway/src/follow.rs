//! The feed followers: they keep every region's routing feed in the gateway's table, and tell
//! each region which of its instances this gateway has ejected.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::Shared;

/// How often the region directory is read again, to learn new regions and replicas; sooner
/// while some region has no replica listed yet (a cloud that is starting).
const DIRECTORY_EVERY: Duration = Duration::from_secs(5);
const DIRECTORY_EVERY_INCOMPLETE: Duration = Duration::from_millis(500);
/// How long one long poll of a feed waits.
const FEED_WAIT: Duration = Duration::from_secs(20);

/// Follows every region's feed into the table until `shutdown` fires. The directory comes from
/// any of the control URLs; each region's feed from that region's replicas (its leader, by
/// redirect). When a region cannot be reached its last routes stay in the table.
pub(crate) async fn follow(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let control = shared.config.control.clone();
    let mut followers: std::collections::HashMap<String, (Vec<String>, tokio::task::JoinHandle<()>)> =
        Default::default();
    loop {
        let mut complete = false;
        match control.regions().await {
            Ok(regions) => {
                complete = !regions.is_empty() && regions.iter().all(|r| !r.replicas.is_empty());
                // Every replica's listener (the control API and Raft share it) is never dialed.
                let known = shared.forbidden.load();
                let mut more = (**known).clone();
                for url in regions.iter().flat_map(|r| r.urls()) {
                    more.add_url(&url);
                }
                if more != **known {
                    shared.forbidden.store(Arc::new(more));
                    shared.rebuild();
                }
                for region in regions {
                    let urls = region.urls();
                    if urls.is_empty() || followers.get(&region.name).is_some_and(|(u, _)| *u == urls) {
                        continue;
                    }
                    let Ok(region_client) = control.sibling(urls.clone()) else { continue };
                    let task = tokio::spawn(follow_region(shared.clone(), region.name.clone(), region_client));
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
/// tells the region's leader that the gateway routes it, and the instances it has ejected; a
/// new ejection ends the poll early so that it is reported at once.
async fn follow_region(shared: Arc<Shared>, region: String, control: client::Client) {
    let mut version: Option<u64> = None;
    let id = shared.config.id.clone();
    loop {
        let changed = shared.ejections_changed.notified();
        tokio::pin!(changed);
        // Registered before the list is read, so no ejection falls between the two.
        changed.as_mut().enable();
        let ejected = shared.ejected().remove(&region).unwrap_or_default();
        let poll = control.routes(&region, Some(&id), version, FEED_WAIT, &ejected);
        let result = tokio::select! {
            r = poll => r,
            _ = changed => continue,
            // An ejection ends by itself: report its end within a few seconds.
            _ = tokio::time::sleep(Duration::from_secs(5)), if !ejected.is_empty() => continue,
        };
        match result {
            Ok(feed) => {
                version = Some(feed.version);
                shared.feeds.lock().unwrap_or_else(|e| e.into_inner()).insert(region.clone(), feed);
                shared.rebuild();
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
