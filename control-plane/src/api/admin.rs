//! Admin calls: shard membership and node cordons. Each needs the admin token.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use futures::future::join_all;
use model::api::*;
use model::command::{Command, CommandResult};

use super::ledger::parse_json;
use super::{Api, ApiError};
use crate::Replica;
use crate::auth::{self, identity_bytes};

type Json<T> = Result<axum::Json<T>, ApiError>;

/// How long a shard view waits for each member's own report.
const MEMBER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a leader transfer may take.
const TRANSFER_WITHIN: Duration = Duration::from_secs(10);

fn check_admin(api: &Api, headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers.get(auth::ADMIN_TOKEN).and_then(|v| v.to_str().ok());
    match given {
        None => Err(ApiError::new(
            "unauthorized",
            "this call needs the admin token (fluxctl: set FLUXCTL_ADMIN_TOKEN; header x-fluxplane-admin-token)",
        )),
        Some(t) if api.shard.admin().matches(t) => Ok(()),
        Some(_) => Err(ApiError::new("forbidden", "the admin token is wrong")),
    }
}

pub(super) fn check_region(api: &Api, region: &str) -> Result<(), ApiError> {
    if region == api.shard.region {
        return Ok(());
    }
    Err(ApiError::new(
        "wrong_region",
        format!("this replica serves region {}, not {region}; find its replicas in /v1/regions", api.shard.region),
    ))
}

fn admin_client(api: &Api, url: &str) -> Result<client::Client, ApiError> {
    let c = api.client.sibling(vec![url.to_string()])?;
    Ok(c.with_admin_token(Some(api.shard.admin().secret().to_string())).with_timeout(MEMBER_TIMEOUT))
}

/// Every member with its own report; lag is measured against the leader's log.
async fn shard_view_of(api: &Api) -> ShardView {
    let shard = &api.shard;
    let (leader, term) = shard.leader_and_term();
    let members = shard.members();
    let reports = join_all(members.iter().map(|m| async move {
        if m.id == shard.id() {
            return shard.replica_status();
        }
        let result = match admin_client(api, &m.api) {
            Ok(c) => c.replica_status(&shard.region).await.map_err(|e| e.to_string()),
            Err(e) => Err(format!("{e:?}")),
        };
        result.unwrap_or_else(|e| ReplicaStatus {
            id: m.id,
            api: m.api.clone(),
            role: "unreachable".into(),
            error: Some(e),
            ..Default::default()
        })
    }))
    .await;
    let leader_log = reports.iter().find(|r| r.role == "leader").and_then(|r| r.last_log_index);
    let replicas = reports
        .into_iter()
        .map(|mut r| {
            if r.error.is_none() {
                r.lag = leader_log.map(|l| l.saturating_sub(r.last_log_index.unwrap_or(0)));
            }
            r
        })
        .collect();
    ShardView { region: shard.region.clone(), leader, term, members, replicas }
}

pub(super) async fn shard_view(
    State(api): State<Arc<Api>>,
    Path(region): Path<String>,
    headers: HeaderMap,
) -> Json<ShardView> {
    check_admin(&api, &headers)?;
    check_region(&api, &region)?;
    // Only the leader's membership is sure to be current: a replica that was removed may never
    // hear of it. (Each replica's own state stays readable at /replica.)
    leader_only(&api).await?;
    Ok(axum::Json(shard_view_of(&api).await))
}

pub(super) async fn replica(
    State(api): State<Arc<Api>>,
    Path(region): Path<String>,
    headers: HeaderMap,
) -> Json<ReplicaStatus> {
    check_admin(&api, &headers)?;
    check_region(&api, &region)?;
    Ok(axum::Json(api.shard.replica_status()))
}

/// Who this replica is, vouched for with the admin token; public, because only a holder of the
/// token can check (or forge) the vouch.
pub(super) async fn identity(State(api): State<Arc<Api>>, Path(region): Path<String>) -> Json<ReplicaIdentity> {
    check_region(&api, &region)?;
    let shard = &api.shard;
    let me = shard.replica();
    let mac = shard.admin().vouch(&identity_bytes(&shard.region, shard.id(), &me.api, &me.key));
    Ok(axum::Json(ReplicaIdentity { region: shard.region.clone(), id: shard.id(), api: me.api, key: me.key, mac }))
}

/// Asks the replica at `url` who it is, and checks that it is replica `id` of this region and
/// that the admin token vouches for it.
async fn verified_identity(api: &Api, id: u64, url: &str) -> Result<Replica, ApiError> {
    let shard = &api.shard;
    if id == shard.id() && url == shard.api_url() {
        return Ok(shard.replica());
    }
    // The identity is public and vouched for by its MAC: the admin token is never sent to a URL
    // that is not yet known to be one of ours.
    let who = api
        .client
        .sibling(vec![url.to_string()])?
        .with_timeout(MEMBER_TIMEOUT)
        .replica_identity(&shard.region)
        .await
        .map_err(|e| ApiError::new("unavailable", format!("asking {url} who it is: {e}")))?;
    let vouched = shard.admin().check_vouch(&identity_bytes(&who.region, who.id, &who.api, &who.key), &who.mac);
    if !vouched {
        return Err(ApiError::new(
            "forbidden",
            format!("{url} did not prove it holds this shard's admin token; refusing to trust its key"),
        ));
    }
    if who.id != id || who.region != shard.region {
        return Err(ApiError::bad_request(format!(
            "{url} is replica {} of region {}, not replica {id} of {}",
            who.id, who.region, shard.region
        )));
    }
    Ok(Replica { api: url.to_string(), key: who.key })
}

pub(super) async fn init(
    State(api): State<Arc<Api>>,
    Path(region): Path<String>,
    headers: HeaderMap,
) -> Json<ShardView> {
    check_admin(&api, &headers)?;
    check_region(&api, &region)?;
    let _one_at_a_time = api.shard.membership_lock().await;
    if api.shard.is_initialized().await {
        return Err(ApiError::new(
            "conflict",
            format!("shard {region} is initialized already; see `fluxctl shard status`"),
        ));
    }
    let mut members = BTreeMap::new();
    members.insert(api.shard.id(), api.shard.replica());
    for (id, url) in &api.peers {
        if *id == api.shard.id() {
            continue;
        }
        let replica = verified_identity(&api, *id, url).await?;
        // A peer that is in a shard already must not be pulled into a second one.
        let status = admin_client(&api, url)?.replica_status(&region).await?;
        if status.role != "not_member" {
            return Err(ApiError::new(
                "conflict",
                format!(
                    "replica {id} at {url} already belongs to shard {region} (as {}, term {}); add this replica to \
                     it with `fluxctl shard add-learner` instead",
                    status.role, status.term
                ),
            ));
        }
        members.insert(*id, replica);
    }
    api.shard.initialize(members).await?;
    // Answer once a leader is elected, so the view shows it.
    let mut metrics = api.shard.raft.metrics();
    let _ = tokio::time::timeout(Duration::from_secs(10), metrics.wait_for(|m| m.current_leader.is_some())).await;
    Ok(axum::Json(shard_view_of(&api).await))
}

/// Entries a learner may trail the leader by and still count as caught up.
const CAUGHT_UP_LAG: u64 = 100;

/// Waits (up to 10 s) until replica `id` has matched the leader's log to within
/// [`CAUGHT_UP_LAG`] entries.
async fn wait_caught_up(api: &Api, id: u64) -> Result<(), ApiError> {
    if !api.shard.members().iter().any(|m| m.id == id) {
        return Err(ApiError::not_found(format!("replica {id} is not a member of shard {}", api.shard.region)));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (lag, _) = api.shard.peer_progress(id);
        if lag.is_some_and(|l| l <= CAUGHT_UP_LAG) {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(ApiError::new(
                "not_caught_up",
                format!(
                    "replica {id} is a learner but has not caught up with the leader ({} entries behind); check \
                     that it runs, is reachable at its URL and holds the same admin token",
                    lag.map_or("all".to_string(), |l| l.to_string())
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn leader_only(api: &Api) -> Result<(), ApiError> {
    api.member()?;
    if api.shard.is_leader() { Ok(()) } else { Err(ApiError::not_leader(&api.shard.region, api.shard.leader_api())) }
}

pub(super) async fn add_learner(
    State(api): State<Arc<Api>>,
    Path(region): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Json<ShardView> {
    let req: AddLearnerRequest = leader_admin_call(&api, &headers, &region, &body).await?;
    let api_url = client::parse_urls(&req.api).into_iter().next().ok_or_else(|| ApiError::bad_request("no api URL"))?;
    model::chain::check_api_url(&api_url).map_err(ApiError::bad_request)?;
    let _one_at_a_time = api.shard.membership_lock().await;
    if api.shard.members().iter().any(|m| m.id == req.id) {
        return Err(ApiError::new("conflict", format!("replica {} is a member already", req.id)));
    }
    let replica = verified_identity(&api, req.id, &api_url).await?;
    api.shard.add_learner(req.id, replica).await?;
    wait_caught_up(&api, req.id).await?;
    Ok(axum::Json(shard_view_of(&api).await))
}

/// The checks every leader-only membership call makes, in order: the token, the region, the
/// body (an empty one reads as `{}`), and that this replica leads.
async fn leader_admin_call<T: serde::de::DeserializeOwned>(
    api: &Api,
    headers: &HeaderMap,
    region: &str,
    body: &[u8],
) -> Result<T, ApiError> {
    check_admin(api, headers)?;
    check_region(api, region)?;
    let req = parse_json(if body.is_empty() { b"{}" } else { body })?;
    leader_only(api).await?;
    Ok(req)
}

pub(super) async fn promote(
    State(api): State<Arc<Api>>,
    Path(region): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Json<ShardView> {
    let req: MemberRequest = leader_admin_call(&api, &headers, &region, &body).await?;
    let _one_at_a_time = api.shard.membership_lock().await;
    // A voter that cannot take appends weakens the quorum it joins: only a learner that has
    // caught up is promoted.
    wait_caught_up(&api, req.id).await?;
    api.shard.promote(req.id).await?;
    Ok(axum::Json(shard_view_of(&api).await))
}

pub(super) async fn remove(
    State(api): State<Arc<Api>>,
    Path(region): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Json<ShardView> {
    let req: MemberRequest = leader_admin_call(&api, &headers, &region, &body).await?;
    let _one_at_a_time = api.shard.membership_lock().await;
    if !api.shard.members().iter().any(|m| m.id == req.id) {
        return Err(ApiError::not_found(format!("replica {} is not a member of shard {region}", req.id)));
    }
    api.shard.remove(req.id).await?;
    Ok(axum::Json(shard_view_of(&api).await))
}

pub(super) async fn transfer_leader(
    State(api): State<Arc<Api>>,
    Path(region): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Json<ShardView> {
    let req: TransferLeaderRequest = leader_admin_call(&api, &headers, &region, &body).await?;
    api.shard.transfer_leadership(req.to, TRANSFER_WITHIN).await?;
    Ok(axum::Json(shard_view_of(&api).await))
}

async fn set_cordon(api: &Api, headers: &HeaderMap, node: &str, cordoned: bool) -> Json<CommandResult> {
    check_admin(api, headers)?;
    let known = api.shard.read(|s| s.chain.nodes.get(node).map(|n| n.start.region.clone()));
    match known {
        None => return Err(ApiError::not_found(format!("node `{node}` is not started on chain"))),
        Some(r) if r != api.shard.region => {
            return Err(ApiError::new(
                "wrong_region",
                format!("node `{node}` is in region {r}; this replica serves {}", api.shard.region),
            ));
        }
        Some(_) => {}
    }
    let result = api.shard.propose(Command::SetCordon { node: node.to_string(), cordoned }).await?;
    Ok(axum::Json(result))
}

pub(super) async fn cordon(
    State(api): State<Arc<Api>>,
    Path(node): Path<String>,
    headers: HeaderMap,
) -> Json<CommandResult> {
    set_cordon(&api, &headers, &node, true).await
}

pub(super) async fn uncordon(
    State(api): State<Arc<Api>>,
    Path(node): Path<String>,
    headers: HeaderMap,
) -> Json<CommandResult> {
    set_cordon(&api, &headers, &node, false).await
}
