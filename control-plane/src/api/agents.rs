//! What node agents and gateways call: heartbeats and the routing feed. Both are soft state on
//! the shard's leader; followers name the leader.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use model::api::{Assignment, Assignments, SignedHeartbeat, StopOrder};
use serde::Deserialize;

use super::ledger::parse_json;
use super::{Api, ApiError};
use crate::signatures::CheckError;

type Json<T> = Result<axum::Json<T>, ApiError>;

/// Beats older or newer than this are refused, so a captured beat cannot be replayed later.
const HEARTBEAT_SKEW_MS: u64 = 30_000;

pub(super) async fn heartbeat(State(api): State<Arc<Api>>, body: Bytes) -> Json<Assignments> {
    let signed: SignedHeartbeat = parse_json(&body)?;
    let shard = &api.shard;
    let node_id = signed.beat.node.clone();
    let record = shard
        .read(|s| s.chain.nodes.get(&node_id).cloned())
        .ok_or_else(|| ApiError::not_found(format!("node `{node_id}` is not started on chain")))?;
    let check = model::keys::SignatureCheck {
        key: record.start.node_key.clone(),
        message: SignedHeartbeat::signing_bytes(&signed.beat),
        signature: signed.signature.clone(),
    };
    shard.check_signature(check).await.map_err(|e| match e {
        CheckError::Invalid(e) => ApiError::new("bad_signature", format!("heartbeat of `{node_id}`: {e}")),
        CheckError::Busy => ApiError::new("busy", format!("heartbeat of `{node_id}` not checked: {e}; beat again")),
    })?;
    if chain::now_ms().abs_diff(signed.beat.at_ms) > HEARTBEAT_SKEW_MS {
        return Err(ApiError::bad_request("heartbeat timestamp is more than 30 s off; check the node's clock"));
    }
    if record.start.region != shard.region {
        return Err(ApiError::new(
            "wrong_region",
            format!(
                "node `{node_id}` is in region {}; this replica serves {} (find its replicas in /v1/regions)",
                record.start.region, shard.region
            ),
        ));
    }
    // A node serves only on the address and ports it registered: an endpoint anywhere else
    // (the control API, another node, a host inside the network) would have the gateways send
    // public traffic there. The whole beat is refused, so the node's agent hears why.
    // Nor on a control replica's listener, even one on the node's own address and ports.
    let replicas: Vec<std::net::SocketAddr> = if signed.beat.instances.iter().any(|r| !r.endpoints.is_empty()) {
        shard.read(|s| {
            s.chain.directory.values().flat_map(|d| d.values()).filter_map(|u| client::listener_of(u)).collect()
        })
    } else {
        Vec::new()
    };
    for report in &signed.beat.instances {
        for (component, endpoint) in &report.endpoints {
            let checked = record.start.check_endpoint(endpoint).and_then(|addr| {
                let addr = std::net::SocketAddr::new(addr.ip().to_canonical(), addr.port());
                match replicas.contains(&addr) {
                    true => Err(format!("endpoint `{endpoint}` is a control replica's listener")),
                    false => Ok(addr),
                }
            });
            if let Err(why) = checked {
                tracing::warn!(region = %shard.region, node = %node_id, instance = %report.id, "heartbeat refused: {why}");
                return Err(ApiError::new(
                    "bad_endpoint",
                    format!("heartbeat of `{node_id}` refused: instance {} component {component}: {why}", report.id),
                ));
            }
        }
    }
    let reported: Vec<String> = signed.beat.instances.iter().map(|r| r.id.clone()).collect();
    // What secrets each reported instance runs with: values are sent only to one that lacks them.
    let running_secrets: std::collections::HashMap<String, u64> =
        signed.beat.instances.iter().map(|r| (r.id.clone(), r.secrets_version)).collect();
    // The node's own API is on its registered address, or it is not listed.
    let api_addr = signed.beat.api.filter(|a| {
        a.parse::<std::net::SocketAddr>()
            .is_ok_and(|addr| addr.ip().to_canonical() == record.start.address.to_canonical())
    });
    shard.record_heartbeat(&node_id, signed.beat.instances, signed.beat.unavailable, api_addr)?;
    // Work only for a node that answers on its own address (see `shard::prove_address`).
    if let Some(api) = shard.address_to_prove(&node_id) {
        tokio::spawn(crate::shard::prove_address(shard.clone(), node_id.clone(), api));
    }
    // Secrets go to the node sealed again, to its own key.
    // Secrets are copied out under the lock and sealed again after it: the X25519 work of a
    // node with many secrets must not hold up the shard's writers.
    let mut sealed_here: Vec<(usize, crate::state::AppSecrets)> = Vec::new();
    let (mut answer, region_key) = shard.read(|s| {
        let instances: Vec<Assignment> = s
            .placements_on(&node_id)
            .filter_map(|p| {
                let app = s.chain.apps.get(&p.app)?;
                Some(Assignment {
                    id: p.instance_id(),
                    app: p.app.clone(),
                    spec_height: app.updated_height,
                    components: app.spec.components.clone(),
                    secrets: Default::default(),
                    secrets_version: s.secrets.get(&p.app).map_or(0, |stored| stored.version),
                    owner: Some(app.owner.clone()),
                    network_with: shared_networks(s, app),
                })
            })
            .collect();
        for (i, a) in instances.iter().enumerate() {
            if let Some(stored) = s.secrets.get(&a.app)
                && running_secrets.get(&a.id) != Some(&stored.version)
            {
                sealed_here.push((i, stored.clone()));
            }
        }
        let stop = reported
            .into_iter()
            .filter(|id| !instances.iter().any(|a| &a.id == id))
            .map(|id| {
                let reason = stop_reason(s, &id, &node_id);
                StopOrder { id, reason }
            })
            .collect();
        (Assignments { instances, stop }, s.secrets_key.clone())
    });
    if !sealed_here.is_empty() {
        let node_box = record.start.node_key.box_public();
        for (i, stored) in sealed_here {
            if let Some(a) = answer.instances.get_mut(i) {
                a.secrets = reseal(region_key.as_ref(), &shard.region, &a.app, &stored, &node_id, &node_box);
            }
        }
    }
    for order in &answer.stop {
        // Debug: a node that keeps reporting instances it should not run would flood the log.
        tracing::debug!(region = %shard.region, node = %node_id, instance = %order.id, "told to stop: {}", order.reason);
    }
    Ok(axum::Json(answer))
}

/// The apps whose networks `app`'s containers join too: those its spec names that exist and
/// have the same owner. Checked here, each time, because only the chain state knows who owns
/// what now: a name registered later by another key shares nothing.
fn shared_networks(s: &crate::state::ShardState, app: &model::chain::AppRecord) -> Vec<String> {
    app.spec
        .network
        .with
        .iter()
        .filter(|name| s.chain.apps.get(*name).is_some_and(|other| other.owner == app.owner))
        .cloned()
        .collect()
}

/// `app`'s secrets, opened with the region's key and sealed to `node`'s box key. A value that
/// does not open or seal is left out and logged by name (never by value).
fn reseal(
    region_key: Option<&model::sealed::BoxKeypair>,
    region: &str,
    app: &str,
    stored: &crate::state::AppSecrets,
    node: &str,
    node_box: &Result<String, String>,
) -> std::collections::BTreeMap<String, model::sealed::SealedValue> {
    let mut sealed = std::collections::BTreeMap::new();
    let (Some(key), Ok(to)) = (region_key, node_box) else {
        tracing::warn!(app, node, "secrets not sent: no region key, or the node key does not convert");
        return sealed;
    };
    for (name, value) in &stored.values {
        let resealed = key
            .open(&model::api::secret_context(app, name, region), value)
            .and_then(|opened| model::sealed::seal(to, &model::api::secret_context(app, name, node), opened.expose()));
        match resealed {
            Ok(v) => {
                sealed.insert(name.clone(), v);
            }
            Err(e) => tracing::warn!(app, node, secret = %name, "secret not sent: {e}"),
        }
    }
    sealed
}

/// Why `node` must stop instance `id`, which it reports but is not placed there.
fn stop_reason(s: &crate::state::ShardState, id: &str, node: &str) -> String {
    let app = id.split_once('@').map_or(id, |(app, _)| app);
    if !s.chain.apps.contains_key(app) {
        return format!("app `{app}` is no longer on chain");
    }
    let elsewhere: Vec<&String> =
        s.placements.get(app).map(|p| p.keys().filter(|n| n.as_str() != node).collect()).unwrap_or_default();
    if elsewhere.is_empty() {
        format!("app `{app}` is no longer placed on {node}")
    } else {
        let list: Vec<&str> = elsewhere.iter().map(|n| n.as_str()).collect();
        format!("replaced: app `{app}` now runs on {}", list.join(", "))
    }
}

#[derive(Deserialize)]
pub(super) struct FeedQuery {
    after: Option<u64>,
    wait_ms: Option<u64>,
    /// The asking gateway's id: it holds version `after` (none without it).
    gateway: Option<String>,
    /// The instances the asking gateway has ejected, comma-separated.
    ejected: Option<String>,
}

/// The routing feed. With `after=V`, waits up to `wait_ms` (at most 30 s) for a version other
/// than V, so gateways learn of changes at once without polling hard.
pub(super) async fn routes(
    State(api): State<Arc<Api>>,
    Path(region): Path<String>,
    Query(q): Query<FeedQuery>,
) -> Result<axum::response::Response, ApiError> {
    let shard = &api.shard;
    if region != shard.region {
        return Err(ApiError::new(
            "wrong_region",
            format!("this replica serves region {}, not {region}; find its replicas in /v1/regions", shard.region),
        ));
    }
    if let Some(id) = q.gateway.as_deref() {
        // Known from its first ask on, so that `deploy --wait` waits for it too.
        check_gateway_id(id)?;
        // Gateway ids are not authenticated: only instances this region places are kept, so a
        // client posing as many gateways stores nothing but real instance ids.
        let ejected: Vec<String> = q
            .ejected
            .as_deref()
            .unwrap_or("")
            .split(',')
            .filter(|i| i.len() <= 200 && shard.is_placed(i))
            .take(1000)
            .map(str::to_string)
            .collect();
        match shard.record_gateway(id, q.after.unwrap_or(0), ejected) {
            // The feed is served all the same: only `deploy --wait` does not know this one.
            Err(crate::SoftError::Busy { .. }) => {
                tracing::debug!(region = %shard.region, "gateway {id} not tracked: list full")
            }
            other => other?,
        }
    }
    if let Some(after) = q.after {
        // Fails fast on a follower or a warming leader.
        shard.feed_ready()?;
        let mut changes = shard.subscribe();
        let wait = Duration::from_millis(q.wait_ms.unwrap_or(0).min(30_000));
        let _ = tokio::time::timeout(wait, async {
            while shard.version() == after {
                if changes.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }
    let feed = shard.feed()?;
    // Serialized from the shared feed: cloning tens of thousands of routes per gateway is waste.
    let body = serde_json::to_vec(&*feed).map_err(|e| ApiError::internal(format_args!("routing feed: {e}")))?;
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// A gateway id is short and plain, so that it can be shown as it is.
fn check_gateway_id(id: &str) -> Result<(), ApiError> {
    if !model::api::valid_gateway_id(id) {
        return Err(ApiError::bad_request("`gateway` is 1 to 64 letters, digits, `-`, `_`, `.` or `:`"));
    }
    Ok(())
}
