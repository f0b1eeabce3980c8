//! The sending side: one [`PeerClient`] per peer, created by openraft through [`Network`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use client::paths;
use model::keys::Keypair;
use openraft::error::{InstallSnapshotError, NetworkError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::auth::{self, AdminToken, SignedCall};
use crate::typ::{NodeId, RpcError};
use crate::{Replica, TypeConfig};

/// When each peer last answered a Raft call from this replica.
#[derive(Clone, Default)]
pub struct Contacts(Arc<Mutex<HashMap<NodeId, Instant>>>);

impl Contacts {
    fn touch(&self, peer: NodeId) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(peer, Instant::now());
    }

    /// Time since `peer` last answered.
    pub fn since(&self, peer: NodeId) -> Option<Duration> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).get(&peer).map(Instant::elapsed)
    }
}

/// Creates signed clients to the peers of one region's group.
#[derive(Clone)]
pub struct Network {
    region: String,
    id: NodeId,
    key: Arc<Keypair>,
    admin: AdminToken,
    http: reqwest::Client,
    contacts: Contacts,
    /// The next call's sequence number, shared by every peer client of this replica.
    sequence: Arc<std::sync::atomic::AtomicU64>,
}

impl Network {
    /// The network of replica `id` of `region`, signing with `key`.
    pub fn new(region: &str, id: NodeId, key: Arc<Keypair>, admin: AdminToken, contacts: Contacts) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        // Start at the clock in µs, so a restarted replica's calls are ahead of its last ones
        // (a peer refuses a number it has taken; see `auth::ReplayWindow`).
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or_default();
        let sequence = Arc::new(std::sync::atomic::AtomicU64::new(start));
        Self { region: region.to_string(), id, key, admin, http, contacts, sequence }
    }

    /// A client to `target` at `node`.
    pub fn peer(&self, target: NodeId, node: &Replica) -> PeerClient {
        PeerClient { target, base: node.api.clone(), net: self.clone() }
    }
}

/// A client to one peer.
pub struct PeerClient {
    target: NodeId,
    base: String,
    net: Network,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Replica) -> PeerClient {
        self.peer(target, node)
    }
}

impl PeerClient {
    /// Sends one signed call and decodes the peer's `Result<Resp, E>`.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned, E: std::error::Error + DeserializeOwned>(
        &self,
        rpc: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RpcError<E>> {
        let net = &self.net;
        let body = serde_json::to_vec(req).map_err(|e| RpcError::Network(NetworkError::new(&e)))?;
        let sequence = net.sequence.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let signed = SignedCall::sign(&net.region, rpc, net.id, self.target, sequence, &body, &net.key, &net.admin);
        let url = format!("{}{}", self.base, paths::raft(&net.region, rpc));
        let resp = net
            .http
            .post(url)
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(auth::REPLICA_ID, signed.from.to_string())
            .header(auth::REPLICA_KEY, signed.key.0.as_str())
            .header(auth::TIMESTAMP, signed.timestamp_ms.to_string())
            .header(auth::SIGNATURE, signed.signature.as_str())
            .header(auth::SEQUENCE, signed.sequence.to_string())
            .header(auth::BODY_DIGEST, signed.body_digest.as_str())
            .header(auth::VOUCH, signed.vouch.as_str())
            .body(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    RpcError::Unreachable(Unreachable::new(&e))
                } else {
                    RpcError::Network(NetworkError::new(&e))
                }
            })?;
        let status = resp.status();
        if !status.is_success() {
            // A refusal (not a member, bad signature) or a peer that is not serving this region:
            // the peer is unreachable for Raft's purposes.
            let text = resp.text().await.unwrap_or_default();
            let e = std::io::Error::other(format!("peer {} answered {status}: {text}", self.target));
            return Err(RpcError::Unreachable(Unreachable::new(&e)));
        }
        let result: Result<Resp, E> = resp.json().await.map_err(|e| RpcError::Network(NetworkError::new(&e)))?;
        net.contacts.touch(self.target);
        result.map_err(|e| RpcError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcError> {
        self.call("append", &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcError<RaftError<NodeId, InstallSnapshotError>>> {
        self.call("snapshot", &rpc, option.hard_ttl()).await
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> Result<VoteResponse<NodeId>, RpcError> {
        self.call("vote", &rpc, option.hard_ttl()).await
    }
}
