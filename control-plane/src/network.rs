//! Raft RPCs over HTTP/JSON. Each request names its region, so one listener serves every shard
//! of a process: `POST /raft/{region}/{append|vote|snapshot}`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use openraft::BasicNode;
use openraft::error::{InstallSnapshotError, NetworkError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::TypeConfig;
use crate::typ::{NodeId, Raft, RpcError};

/// Creates clients to the peers of one region's group.
#[derive(Clone)]
pub struct Network {
    region: String,
    http: reqwest::Client,
}

impl Network {
    /// A network for `region`'s group.
    pub fn new(region: &str) -> Self {
        Self { region: region.to_string(), http: reqwest::Client::new() }
    }
}

/// A client to one peer.
pub struct PeerClient {
    target: NodeId,
    base: String,
    region: String,
    http: reqwest::Client,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            target,
            base: format!("http://{}", node.addr),
            region: self.region.clone(),
            http: self.http.clone(),
        }
    }
}

impl PeerClient {
    async fn call<Req: Serialize, Resp: DeserializeOwned, E: std::error::Error + DeserializeOwned>(
        &self,
        rpc: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RpcError<E>> {
        let url = format!("{}/raft/{}/{rpc}", self.base, self.region);
        let resp = self.http.post(url).timeout(option.hard_ttl()).json(req).send().await.map_err(|e| {
            if e.is_connect() {
                RpcError::Unreachable(Unreachable::new(&e))
            } else {
                RpcError::Network(NetworkError::new(&e))
            }
        })?;
        let result: Result<Resp, E> = resp.json().await.map_err(|e| RpcError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RpcError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcError> {
        self.call("append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcError<RaftError<NodeId, InstallSnapshotError>>> {
        self.call("snapshot", &rpc, &option).await
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> Result<VoteResponse<NodeId>, RpcError> {
        self.call("vote", &rpc, &option).await
    }
}

/// The Raft handles a process serves, by region.
pub type Groups = Arc<BTreeMap<String, Raft>>;

/// The router for incoming Raft RPCs.
pub fn router(groups: Groups) -> Router {
    Router::new()
        .route("/raft/{region}/append", post(append))
        .route("/raft/{region}/vote", post(vote))
        .route("/raft/{region}/snapshot", post(snapshot))
        .with_state(groups)
}

fn group(groups: &Groups, region: &str) -> Result<Raft, Response> {
    groups
        .get(region)
        .cloned()
        .ok_or_else(|| (StatusCode::NOT_FOUND, format!("no shard for region `{region}` here")).into_response())
}

async fn append(
    State(groups): State<Groups>,
    Path(region): Path<String>,
    axum::Json(req): axum::Json<AppendEntriesRequest<TypeConfig>>,
) -> Response {
    match group(&groups, &region) {
        Ok(raft) => axum::Json(raft.append_entries(req).await).into_response(),
        Err(r) => r,
    }
}

async fn vote(
    State(groups): State<Groups>,
    Path(region): Path<String>,
    axum::Json(req): axum::Json<VoteRequest<NodeId>>,
) -> Response {
    match group(&groups, &region) {
        Ok(raft) => axum::Json(raft.vote(req).await).into_response(),
        Err(r) => r,
    }
}

async fn snapshot(
    State(groups): State<Groups>,
    Path(region): Path<String>,
    axum::Json(req): axum::Json<InstallSnapshotRequest<TypeConfig>>,
) -> Response {
    match group(&groups, &region) {
        Ok(raft) => axum::Json(raft.install_snapshot(req).await).into_response(),
        Err(r) => r,
    }
}
