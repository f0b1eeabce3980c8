//! Read-side views: status, regions, apps, nodes, wallets.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use futures::future::join_all;
use model::api::*;

use super::{Api, ApiError, ReadOpts};
use crate::scheduler::spill_quota;

type Json<T> = Result<axum::Json<T>, ApiError>;

pub(super) async fn openapi() -> axum::Json<serde_json::Value> {
    axum::Json(crate::openapi::document())
}

/// This region's shard, as its leader (or, stale, this replica) sees it.
fn local_status(api: &Api) -> RegionStatus {
    let shard = &api.shard;
    let (leader, term) = shard.leader_and_term();
    let members = shard.members();
    let healthy = shard.feed().map(|f| f.routes.iter().filter(|r| r.primary).count()).unwrap_or(0);
    shard.read(|s| {
        let nodes: Vec<&String> = s.region_nodes().map(|n| &n.start.node_id).collect();
        RegionStatus {
            name: shard.region.clone(),
            leader,
            leader_api: shard.leader_api(),
            voters: members.iter().filter(|m| m.voter).count(),
            unreachable: None,
            term,
            applied_height: s.chain.height,
            nodes: nodes.len(),
            nodes_up: nodes.iter().filter(|n| !s.down.contains(n.as_str()) && shard.is_fresh(n)).count(),
            instances_placed: s.placements.values().map(|p| p.len()).sum(),
            instances_healthy: healthy,
            feed_version: shard.version(),
        }
    })
}

pub(super) async fn status(State(api): State<Arc<Api>>, Query(opts): Query<ReadOpts>) -> Json<StatusView> {
    api.leader_view(&opts).await?;
    let mut regions = vec![local_status(&api)];
    if opts.region_only() {
        return Ok(axum::Json(StatusView { chain_height: 0, chain_tip: String::new(), regions }));
    }
    for (name, result) in ask_other_regions(&api, &opts, |c| async move { c.status().await }).await {
        match result {
            Ok(view) => regions.extend(view.regions.into_iter().filter(|r| r.name == name)),
            Err(e) => regions.push(unreachable_region(&name, e.to_string())),
        }
    }
    regions.sort_by_key(|r| api.shard.read(|s| s.chain.regions.iter().position(|x| x.name == r.name)));
    // The tip from the chain source; when it is down, the height this shard applied.
    let (chain_height, chain_tip) = match api.chain.tip().await {
        Ok(t) => (t.height, t.hash),
        Err(e) => {
            tracing::debug!("status without the chain source: {e}");
            api.shard.read(|s| (s.chain.height.unwrap_or(0), s.chain.tip_hash.clone()))
        }
    };
    Ok(axum::Json(StatusView { chain_height, chain_tip, regions }))
}

/// Asks every other region's shard at once (its part only), and gives each region's answer.
async fn ask_other_regions<T, F, Fut>(
    api: &Api,
    opts: &ReadOpts,
    ask: F,
) -> Vec<(String, Result<T, client::ClientError>)>
where
    F: Fn(client::Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, client::ClientError>>,
{
    join_all(api.other_regions().into_iter().map(|(name, urls)| {
        let asked = api.region_client(urls, opts).map(&ask);
        async move {
            let result = match asked {
                Ok(fut) => fut.await,
                Err(e) => Err(e),
            };
            (name, result)
        }
    }))
    .await
}

fn unreachable_region(name: &str, why: String) -> RegionStatus {
    RegionStatus {
        name: name.to_string(),
        leader: None,
        leader_api: None,
        voters: 0,
        unreachable: Some(why),
        term: 0,
        applied_height: None,
        nodes: 0,
        nodes_up: 0,
        instances_placed: 0,
        instances_healthy: 0,
        feed_version: 0,
    }
}

/// This region's capacity, from its leader (other regions' leaders ask for it to spill).
pub(super) async fn capacity(
    State(api): State<Arc<Api>>,
    Path(region): Path<String>,
) -> Json<model::capacity::RegionReport> {
    super::admin::check_region(&api, &region)?;
    api.leader_view(&ReadOpts::default()).await?;
    // A new leader has not heard its nodes yet: asked now, it would report every node open and
    // nothing short, and other regions would drop the stand-ins they run for it.
    if !api.shard.past_leader_grace() {
        return Err(ApiError::new(
            "warming_up",
            format!("region {}'s leader is new and has not heard from every node yet", api.shard.region),
        ));
    }
    Ok(axum::Json(crate::capacity::report(&api.shard)))
}

/// The region directory from the cached chain state. Always served from this replica's state,
/// even without a leader, so that gateways and agents can find the regions while a shard is
/// electing (it changes only when a block announces a replica).
pub(super) async fn regions(State(api): State<Arc<Api>>) -> Json<Vec<RegionView>> {
    if api.shard.read(|s| s.chain.height.is_none()) {
        // A replica that never followed the chain knows no region; let the client ask another.
        api.member()?;
        return Err(ApiError::new("no_leader", "this replica has not followed the chain yet"));
    }
    let views = api.shard.read(|s| {
        s.chain
            .regions
            .iter()
            .map(|r| RegionView {
                name: r.name.clone(),
                continent: r.continent.clone(),
                center: r.center,
                replicas: s.chain.directory.get(&r.name).cloned().unwrap_or_default(),
            })
            .collect()
    });
    Ok(axum::Json(views))
}

/// One app as this region's shard sees it: the chain record and quotas, and its placements here.
fn local_app_view(api: &Api, name: &str) -> Result<AppView, ApiError> {
    let shard = &api.shard;
    let leads = shard.is_leader();
    let (record, quotas, placed, short, down) = shard.read(|s| {
        let record = s.chain.apps.get(name).cloned();
        let quotas = record.as_ref().map(|r| s.quotas(&r.spec)).unwrap_or_default();
        // This region's own entry counts what it takes over from regions that are short.
        let here = record.as_ref().map_or(0, |r| spill_quota(&r.spec, &s.capacity()).place);
        (
            record,
            (quotas, here),
            s.placements.get(name).cloned().unwrap_or_default(),
            s.shortfall.get(name).cloned(),
            s.down.clone(),
        )
    });
    let record = record.ok_or_else(|| ApiError::not_found(format!("app `{name}` is not registered")))?;
    let (mut quotas, here) = quotas;
    let quota_total: u32 = quotas.values().sum();
    if here > 0 {
        quotas.insert(shard.region.clone(), here);
    } else {
        quotas.remove(&shard.region);
    }
    let mut shortfall = BTreeMap::new();
    if let Some(why) = short {
        // The leader explains it with today's counts; the log holds those of when it began.
        let now = leads
            .then(|| {
                let j = shard.judgement();
                shard.read(|s| crate::reconcile::shortfall_now(s, name, shard.as_ref(), j))
            })
            .flatten();
        shortfall.insert(shard.region.clone(), now.unwrap_or(why));
    }
    let mut placements = Vec::new();
    for p in placed.values() {
        let id = p.instance_id();
        let report = shard.reports(&p.node).into_iter().find(|r| r.id == id);
        let state = if down.contains(&p.node) {
            InstanceState::NodeDown
        } else if !leads {
            InstanceState::Unknown
        } else if !shard.is_fresh(&p.node) {
            InstanceState::NodeDown
        } else {
            match &report {
                Some(r) if r.healthy && r.spec_height == record.updated_height => InstanceState::Running,
                Some(r) if r.spec_height == record.updated_height => InstanceState::Unhealthy,
                _ => InstanceState::Starting,
            }
        };
        let ejected_by = if leads { shard.ejected_by(&id) } else { Vec::new() };
        placements.push(InstanceView {
            ejected_by,
            id,
            node: p.node.clone(),
            region: p.region.clone(),
            state,
            endpoints: report.as_ref().map(|r| r.endpoints.clone()).unwrap_or_default(),
            runs: report.as_ref().map(|r| r.runs.clone()).unwrap_or_default(),
            message: report.and_then(|r| r.message),
        });
    }
    if quota_total < record.spec.instances {
        // Not a region's shortfall: no region has enough eligible nodes at all.
        shortfall.insert(
            "all".into(),
            format!(
                "only {quota_total} of {} instances can be placed: too few nodes match the geolocation rules ({})",
                record.spec.instances,
                if record.spec.geolocation.is_empty() {
                    "anywhere".to_string()
                } else {
                    record.spec.geolocation.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(", ")
                }
            ),
        );
    }
    // Read after the instance states, so that a gateway holding this version routes them.
    let routing = if leads {
        let gateways = shard.gateways().into_iter().map(|(id, version)| GatewayFeed { id, version }).collect();
        let complete = shard.gateways_known();
        BTreeMap::from([(shard.region.clone(), Routing { feed_version: shard.version(), gateways, complete })])
    } else {
        BTreeMap::new()
    };
    Ok(AppView {
        name: record.spec.name.clone(),
        owner: record.owner,
        description: record.spec.description.clone(),
        instances: record.spec.instances,
        geolocation: record.spec.geolocation.iter().map(|g| g.to_string()).collect(),
        registered_height: record.registered_height,
        updated_height: record.updated_height,
        expires_height: record.expires_height,
        quotas,
        placements,
        shortfall,
        components: record.spec.components,
        network: record.spec.network,
        unreachable: BTreeMap::new(),
        routing,
        secrets: shard.read(|s| s.secrets.get(name).map(|v| v.values.keys().cloned().collect()).unwrap_or_default()),
        domains: shard.read(|s| s.domain_views(name)),
    })
}

/// Adds other regions' placements and shortfalls of the apps in `views`.
async fn merge_regions(api: &Arc<Api>, opts: &ReadOpts, views: &mut [AppView]) {
    for (region, result) in ask_other_regions(api, opts, |c| async move { c.apps().await }).await {
        match result {
            Ok(theirs) => {
                let theirs: BTreeMap<String, AppView> = theirs.into_iter().map(|a| (a.name.clone(), a)).collect();
                for view in views.iter_mut() {
                    if let Some(t) = theirs.get(&view.name) {
                        view.placements.extend(t.placements.iter().filter(|p| p.region == region).cloned());
                        if let Some(routing) = t.routing.get(&region) {
                            view.routing.insert(region.clone(), routing.clone());
                        }
                        match t.quotas.get(&region) {
                            Some(q) => view.quotas.insert(region.clone(), *q),
                            None => view.quotas.remove(&region),
                        };
                        if let Some(why) = t.shortfall.get(&region) {
                            view.shortfall.insert(region.clone(), why.clone());
                        }
                    }
                }
            }
            Err(e) => {
                for view in views.iter_mut() {
                    view.unreachable.insert(region.clone(), e.to_string());
                }
            }
        }
    }
}

pub(super) async fn list_apps(State(api): State<Arc<Api>>, Query(opts): Query<ReadOpts>) -> Json<Vec<AppView>> {
    api.leader_view(&opts).await?;
    let names: Vec<String> = api.shard.read(|s| s.chain.apps.keys().cloned().collect());
    let mut views: Vec<AppView> = names.iter().filter_map(|n| local_app_view(&api, n).ok()).collect();
    if !opts.region_only() {
        merge_regions(&api, &opts, &mut views).await;
    }
    Ok(axum::Json(views))
}

pub(super) async fn get_app(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    Query(opts): Query<ReadOpts>,
) -> Json<AppView> {
    api.leader_view(&opts).await?;
    let mut views = [local_app_view(&api, &name)?];
    if !opts.region_only() {
        merge_regions(&api, &opts, &mut views).await;
    }
    let [view] = views;
    Ok(axum::Json(view))
}

fn local_nodes(api: &Api) -> Vec<NodeView> {
    let shard = &api.shard;
    let leads = shard.is_leader();
    shard.read(|s| {
        s.region_nodes()
            .map(|n| {
                let id = &n.start.node_id;
                let up = !s.down.contains(id) && (!leads || shard.is_fresh(id));
                NodeView {
                    id: id.clone(),
                    region: n.start.region.clone(),
                    tier: n.tier,
                    geo: n.start.geo,
                    continent: n.start.continent.clone(),
                    country: n.start.country.clone(),
                    capabilities: n.start.capabilities.clone(),
                    unavailable: shard.unavailable(id),
                    api: shard.node_api(id),
                    address: n.start.address,
                    instance_ports: n.start.instance_ports,
                    up,
                    cordoned: s.cordoned.contains(id),
                    last_heartbeat_ms_ago: shard.since_heartbeat(id).map(|d| d.as_millis() as u64),
                    instances: s.placements_on(id).count(),
                    free: n.resources().saturating_sub(&s.used_on(id)),
                }
            })
            .collect()
    })
}

pub(super) async fn list_nodes(State(api): State<Arc<Api>>, Query(opts): Query<ReadOpts>) -> Json<Vec<NodeView>> {
    api.leader_view(&opts).await?;
    let mut nodes = local_nodes(&api);
    if opts.region_only() {
        return Ok(axum::Json(nodes));
    }
    for (region, result) in ask_other_regions(&api, &opts, |c| async move { c.nodes().await }).await {
        match result {
            Ok(theirs) => nodes.extend(theirs.into_iter().filter(|n| n.region == region)),
            Err(e) => tracing::debug!(region, "node list without region {region}: {e}"),
        }
    }
    Ok(axum::Json(nodes))
}

pub(super) async fn wallet(
    State(api): State<Arc<Api>>,
    Path(address): Path<String>,
    Query(opts): Query<ReadOpts>,
) -> Json<WalletView> {
    api.consistent(&opts).await?;
    let address = model::keys::PublicKeyHex(address);
    let mut view = api.shard.read(|s| {
        let nonce = s.chain.nonces.get(&address).copied().unwrap_or(0);
        WalletView {
            balance: s.chain.balances.get(&address).copied().unwrap_or(0),
            nonce,
            next_nonce: nonce + 1,
            address: address.clone(),
        }
    });
    // The chain also counts transactions waiting for a block. Without it, the shard's view is a
    // fair guess: a client that loses the race is told `stale_nonce` and asks again.
    match api.chain.next_nonce(&address).await {
        Ok(next) => view.next_nonce = next,
        Err(e) => tracing::debug!("next nonce of {address} from the shard alone: {e}"),
    }
    Ok(axum::Json(view))
}

#[derive(serde::Deserialize)]
pub(super) struct EventsQuery {
    #[serde(default)]
    after: u64,
    #[serde(default)]
    wait_ms: u64,
    #[serde(default)]
    stale: bool,
}

/// A region's event log after `after`, oldest first; with `wait_ms`, waits (at most 30 s) for
/// an event when there is none yet. Linearizable unless `stale=true`.
pub(super) async fn events(
    State(api): State<Arc<Api>>,
    Path(region): Path<String>,
    Query(q): Query<EventsQuery>,
) -> Json<model::event::EventPage> {
    let shard = &api.shard;
    if region != shard.region {
        return Err(ApiError::new(
            "wrong_region",
            format!("this replica serves region {}, not {region}; find its replicas in /v1/regions", shard.region),
        ));
    }
    api.consistent(&ReadOpts { stale: q.stale, scope: None }).await?;
    let newer = |api: &Api| api.shard.read(|s| s.next_event > q.after.saturating_add(1));
    if !newer(&api) && q.wait_ms > 0 {
        let mut changes = shard.subscribe();
        let wait = std::time::Duration::from_millis(q.wait_ms.min(30_000));
        let _ = tokio::time::timeout(wait, async {
            while !newer(&api) {
                if changes.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }
    Ok(axum::Json(shard.read(|s| model::event::EventPage {
        region: s.region.clone(),
        events: s.events.iter().filter(|e| e.seq > q.after).take(model::event::EVENTS_PAGE).cloned().collect(),
        first_kept: s.events.front().map_or(s.next_event, |e| e.seq),
    })))
}
