//! Region spill, the leader's side: this region's capacity report, and the task that asks the
//! other regions for theirs and commits each change through Raft, so that quotas
//! ([`crate::scheduler::spill_quota`]) follow capacity across regions.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use model::capacity::{RegionReport, Shortage};
use model::command::Command;
use tokio::sync::watch;

use crate::shard::Shard;

/// How often the leader asks the other regions.
const ASK_EVERY: Duration = Duration::from_millis(500);
/// How long one ask may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// This region's capacity as its leader sees it: the nodes that take new instances, and the
/// apps it runs fewer instances of than its base quota. Asked only of a leader past its grace
/// (the API answers `warming_up` before), so that it has heard every live node.
pub fn report(shard: &Shard) -> RegionReport {
    use crate::reconcile::Liveness;
    shard.read(|s| {
        let up = |node: &str| !s.down.contains(node) && shard.is_fresh(node);
        // Open: where a new instance could go here (see `Liveness::is_steady`).
        let open = s
            .region_nodes()
            .map(|n| &n.start.node_id)
            .filter(|n| !s.down.contains(*n) && shard.is_steady(n) && !s.cordoned.contains(*n))
            .cloned()
            .collect();
        let mut short = BTreeMap::new();
        for (name, app) in &s.chain.apps {
            let base = s.quotas(&app.spec).get(&s.region).copied().unwrap_or(0);
            if base == 0 {
                continue;
            }
            let placed: Vec<_> =
                s.placements.get(name).into_iter().flat_map(|p| p.values()).filter(|p| up(&p.node)).collect();
            let started = placed.iter().filter(|p| p.started_at_ms.is_some()).count();
            let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
            let unstarted = base.saturating_sub(count(started));
            if unstarted == 0 {
                continue;
            }
            // Only what the AppActor tried and could not place: an app it has not reached yet
            // (just registered) is not short.
            let unplaced = if s.shortfall.contains_key(name) { base.saturating_sub(count(placed.len())) } else { 0 };
            short.insert(name.clone(), Shortage { unplaced, unstarted });
        }
        RegionReport { reachable: true, open, short, error: None }
    })
}

/// While this replica leads, asks every other region for its report every [`ASK_EVERY`] and
/// commits what changed; a region that has not answered for three node timeouts is committed
/// as unreachable (lost). Returns when `stop` turns true.
pub async fn follow_other_regions(shard: Arc<Shard>, client: client::Client, mut stop: watch::Receiver<bool>) {
    let unreachable_after = shard.node_timeout() * 3;
    let mut silent_since: HashMap<String, Instant> = HashMap::new();
    let mut clients: HashMap<String, client::Client> = HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(ASK_EVERY) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        if !shard.is_leader() {
            silent_since.clear();
            continue;
        }
        let others = shard.read(|s| s.other_regions());
        let asks = others.into_iter().filter(|(_, urls)| !urls.is_empty()).filter_map(|(region, urls)| {
            let c = match clients.get(&region) {
                Some(c) if c.urls() == urls.as_slice() => c.clone(),
                _ => {
                    let c = client.sibling(urls).ok()?.with_timeout(ASK_TIMEOUT).region_scoped();
                    clients.insert(region.clone(), c.clone());
                    c
                }
            };
            Some(async move {
                let answer = c.region_capacity(&region).await;
                (region, answer)
            })
        });
        for (region, answer) in join_all(asks.collect::<Vec<_>>()).await {
            let report = match answer {
                Ok(report) => {
                    silent_since.remove(&region);
                    report
                }
                Err(e) => {
                    let since = *silent_since.entry(region.clone()).or_insert_with(Instant::now);
                    tracing::debug!(region = %shard.region, other = %region, "capacity of another region: {e}");
                    if since.elapsed() < unreachable_after {
                        continue;
                    }
                    RegionReport::unreachable(format!("no answer for {} s: {e}", since.elapsed().as_secs()))
                }
            };
            if shard.read(|s| s.region_reports.get(&region).is_some_and(|r| r.same(&report))) {
                continue;
            }
            tracing::info!(
                region = %shard.region,
                other = %region,
                reachable = report.reachable,
                open = report.open.len(),
                short = report.short.len(),
                "another region's capacity changed"
            );
            let cmd = Command::SetRegionReport { region, report, at_ms: chain::now_ms() };
            if let Err(e) = shard.propose(cmd).await {
                tracing::warn!(region = %shard.region, "another region's capacity not committed: {e}");
            }
        }
    }
}
