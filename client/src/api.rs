//! One typed method per endpoint.

use std::time::Duration;

use bytes::Bytes;
use model::api::*;
use model::chain::{Block, SignedTx};
use reqwest::Method;

use crate::transport::{Call, Retry};
use crate::{Client, ClientError, paths};

/// How long `submit_tx_applied` waits for the block and the shard, at most.
const APPLIED_WAIT_MS: u64 = 30_000;

impl Client {
    // === cloud ===

    /// Chain tip and every region's shard (regions that do not answer are marked).
    pub async fn status(&self) -> Result<StatusView, ClientError> {
        self.json(Call::get(paths::STATUS)).await
    }

    /// The region directory.
    pub async fn regions(&self) -> Result<Vec<RegionView>, ClientError> {
        self.json(Call::get(paths::REGIONS)).await
    }

    /// A client of `region`'s replicas, found through the directory.
    pub async fn region(&self, region: &str) -> Result<Client, ClientError> {
        let regions = self.regions().await?;
        let view = regions
            .iter()
            .find(|r| r.name == region)
            .ok_or_else(|| ClientError::NotFound { message: format!("no region `{region}` on this chain") })?;
        if view.replicas.is_empty() {
            return Err(ClientError::NotFound {
                message: format!("region `{region}` has no control replica in the directory yet"),
            });
        }
        self.sibling(view.urls())
    }

    // === apps, nodes, wallets ===

    /// Every app.
    pub async fn apps(&self) -> Result<Vec<AppView>, ClientError> {
        self.json(Call::get(paths::APPS)).await
    }

    /// One app; [`ClientError::NotFound`] when it is not registered.
    pub async fn app(&self, name: &str) -> Result<AppView, ClientError> {
        self.json(Call::get(paths::app(name))).await
    }

    /// What deploying `spec` (chain form) would do: its price, quotas and feasibility.
    pub async fn check_app(&self, spec: &model::AppSpec) -> Result<model::api::AppCheck, ClientError> {
        self.json(Call::post_json(paths::APP_CHECKS, spec)?.retry(Retry::Always)).await
    }

    /// Every node.
    pub async fn nodes(&self) -> Result<Vec<NodeView>, ClientError> {
        self.json(Call::get(paths::NODES)).await
    }

    /// The key the answering region's secrets are sealed to.
    pub async fn secrets_key(&self) -> Result<model::api::SecretsKeyView, ClientError> {
        self.json(Call::get(paths::SECRETS_KEY)).await
    }

    /// Stores sealed secrets in the answering region. Not retried: an update is applied once
    /// (a second copy is refused as not newer).
    pub async fn put_secrets(
        &self,
        update: &model::api::SecretsUpdate,
    ) -> Result<model::api::SecretsView, ClientError> {
        self.json(Call::post_json(paths::app_secrets(&update.app), update)?).await
    }

    /// A wallet's balance, last nonce and next nonce.
    pub async fn wallet(&self, address: &str) -> Result<WalletView, ClientError> {
        self.json(Call::get(paths::wallet(address))).await
    }

    /// Cordons a node (admin): nothing new is placed on it.
    pub async fn cordon(&self, node: &str, cordoned: bool) -> Result<(), ClientError> {
        let route = if cordoned { paths::NODE_CORDON_ROUTE } else { paths::NODE_UNCORDON_ROUTE };
        // Setting a flag twice is harmless, so a lost answer may be retried.
        let call = Call::post_json(paths::node(route, node), &serde_json::json!({}))?.retry(Retry::Always);
        self.send(call).await.map(|_| ())
    }

    // === chain ===

    /// Submits a signed transaction; the answer means it is in the mempool.
    pub async fn submit_tx(&self, tx: &SignedTx) -> Result<SubmitTxResponse, ClientError> {
        self.json(Call::post_json(paths::TRANSACTIONS, tx)?).await
    }

    /// Submits a signed transaction and returns once it is in a block *and* the answering
    /// replica's shard has applied that block, linearizably.
    pub async fn submit_tx_applied(&self, tx: &SignedTx) -> Result<SubmitTxResponse, ClientError> {
        let call = Call::post_json(paths::TRANSACTIONS, tx)?
            .query("wait", "applied")
            .timeout(Duration::from_millis(APPLIED_WAIT_MS + 5_000));
        self.json(call).await
    }

    /// What became of a transaction.
    pub async fn tx_status(&self, id: &str) -> Result<TxStatus, ClientError> {
        self.json(Call::get(paths::transaction(id))).await
    }

    /// The chain tip.
    pub async fn chain_tip(&self) -> Result<ChainTip, ClientError> {
        self.json(Call::get(paths::CHAIN_TIP)).await
    }

    /// Waits up to `wait` for a tip above `after`, then returns the tip.
    pub async fn wait_chain_tip(&self, after: u64, wait: Duration) -> Result<ChainTip, ClientError> {
        let call = Call::get(paths::CHAIN_TIP)
            .query("after", after)
            .query("wait_ms", wait.as_millis())
            .timeout(wait + Duration::from_secs(5));
        self.json(call).await
    }

    /// A block; [`ClientError::NotFound`] when it is not produced yet.
    pub async fn block(&self, height: u64) -> Result<Block, ClientError> {
        self.json(Call::get(paths::block(height))).await
    }

    // === modules ===

    /// Uploads a blob (a module or an image archive) whose payment the chain records, signed
    /// by its payer; idempotent. The replica answers once a majority of its region's replicas
    /// hold it.
    pub async fn put_blob(&self, upload: &model::api::SignedUpload, bytes: Vec<u8>) -> Result<(), ClientError> {
        self.put_blob_with(upload, bytes, false).await
    }

    /// Stores a blob on the answering replica only: how a replica hands an upload to its peers,
    /// with the uploader's signed headers.
    pub async fn put_blob_local(&self, upload: &model::api::SignedUpload, bytes: Vec<u8>) -> Result<(), ClientError> {
        self.put_blob_with(upload, bytes, true).await
    }

    async fn put_blob_with(
        &self,
        upload: &model::api::SignedUpload,
        bytes: Vec<u8>,
        local: bool,
    ) -> Result<(), ClientError> {
        use model::api::SignedUpload as U;
        let call = Call {
            method: Method::PUT,
            path: paths::blob(&upload.hash),
            query: if local { vec![("local", "true".into())] } else { Vec::new() },
            body: Some((Bytes::from(bytes), "application/octet-stream")),
            timeout: Some(Duration::from_secs(120)),
            // Content-addressed: storing the same bytes twice is harmless.
            retry: Retry::Always,
            headers: vec![
                (U::UPLOADER_HEADER, upload.uploader.0.clone()),
                (U::AT_HEADER, upload.at_ms.to_string()),
                (U::SIGNATURE_HEADER, upload.signature.clone()),
            ],
        };
        self.send(call).await.map(|_| ())
    }

    /// Whether a blob is stored, and whose payment the chain records for it.
    pub async fn blob_status(&self, hash: &str) -> Result<model::api::BlobStatus, ClientError> {
        self.json(Call::get(paths::blob_status(hash))).await
    }

    /// Downloads a module.
    pub async fn get_blob(&self, hash: &str) -> Result<Bytes, ClientError> {
        self.bytes(Call::get(paths::blob(hash)).timeout(Duration::from_secs(120))).await
    }

    /// Downloads a module only if the answering replica holds it (replicas ask each other this
    /// way, so that a miss never cascades).
    pub async fn get_blob_local(&self, hash: &str) -> Result<Bytes, ClientError> {
        self.bytes(Call::get(paths::blob(hash)).query("local", "true").timeout(Duration::from_secs(120))).await
    }

    // === agents and gateways ===

    /// A node agent's beat; the answer is what the node should run.
    pub async fn heartbeat(&self, beat: &SignedHeartbeat, timeout: Duration) -> Result<Assignments, ClientError> {
        // A beat carries a timestamp and only refreshes soft state: resending one is harmless.
        self.json(Call::post_json(paths::HEARTBEAT, beat)?.retry(Retry::Always).timeout(timeout)).await
    }

    /// A region's routing feed, asked for by `gateway` (its id, if a gateway asks); with
    /// `after` (the version it holds), waits up to `wait` for a version other than it. A
    /// gateway also reports the instances of the region it has `ejected`.
    pub async fn routes(
        &self,
        region: &str,
        gateway: Option<&str>,
        after: Option<u64>,
        wait: Duration,
        ejected: &[String],
    ) -> Result<RouteFeed, ClientError> {
        let mut call = Call::get(paths::routes(region)).timeout(wait + Duration::from_secs(5));
        if let Some(id) = gateway {
            call = call.query("gateway", id);
            // The instances this gateway has ejected (passive health), shown by `app status`.
            call = call.query("ejected", ejected.join(","));
        }
        if let Some(v) = after {
            call = call.query("after", v).query("wait_ms", wait.as_millis());
        }
        self.json(call).await
    }

    /// A region's events after `after` (oldest first, a page at a time); with `wait`, waits
    /// up to that long for one when there is none yet.
    pub async fn events(
        &self,
        region: &str,
        after: u64,
        wait: Duration,
    ) -> Result<model::event::EventPage, ClientError> {
        let call = Call::get(paths::events(region))
            .query("after", after)
            .query("wait_ms", wait.as_millis())
            .timeout(wait + Duration::from_secs(5));
        self.json(call).await
    }

    /// A region's capacity, from its leader: other regions' shards spill to it or from it.
    pub async fn region_capacity(&self, region: &str) -> Result<model::capacity::RegionReport, ClientError> {
        self.json(Call::get(paths::shard(paths::SHARD_CAPACITY_ROUTE, region))).await
    }

    // === shards (admin) ===

    /// Membership and every replica's state.
    pub async fn shard(&self, region: &str) -> Result<ShardView, ClientError> {
        self.json(Call::get(paths::shard(paths::SHARD_ROUTE, region))).await
    }

    /// The answering replica's own Raft state.
    pub async fn replica_status(&self, region: &str) -> Result<ReplicaStatus, ClientError> {
        self.json(Call::get(paths::shard(paths::SHARD_REPLICA_ROUTE, region))).await
    }

    /// The answering replica's identity, vouched for with the admin token.
    pub async fn replica_identity(&self, region: &str) -> Result<ReplicaIdentity, ClientError> {
        self.json(Call::get(paths::shard(paths::SHARD_IDENTITY_ROUTE, region))).await
    }

    /// Initializes the shard with the answering replica's peers as voters.
    pub async fn shard_init(&self, region: &str) -> Result<ShardView, ClientError> {
        let call = Call::post_json(paths::shard(paths::SHARD_INIT_ROUTE, region), &serde_json::json!({}))?;
        self.json(call.timeout(Duration::from_secs(30))).await
    }

    /// Adds a learner.
    pub async fn shard_add_learner(&self, region: &str, id: u64, api: &str) -> Result<ShardView, ClientError> {
        let body = AddLearnerRequest { id, api: api.to_string() };
        let call = Call::post_json(paths::shard(paths::SHARD_LEARNERS_ROUTE, region), &body)?;
        self.json(call.timeout(Duration::from_secs(60))).await
    }

    /// Promotes a learner to voter.
    pub async fn shard_promote(&self, region: &str, id: u64) -> Result<ShardView, ClientError> {
        let call = Call::post_json(paths::shard(paths::SHARD_PROMOTE_ROUTE, region), &MemberRequest { id })?;
        self.json(call.timeout(Duration::from_secs(60))).await
    }

    /// Removes a voter or learner.
    pub async fn shard_remove(&self, region: &str, id: u64) -> Result<ShardView, ClientError> {
        let call = Call::post_json(paths::shard(paths::SHARD_REMOVE_ROUTE, region), &MemberRequest { id })?;
        self.json(call.timeout(Duration::from_secs(60))).await
    }

    /// Hands leadership to another voter (`to`, or any).
    pub async fn shard_transfer_leader(&self, region: &str, to: Option<u64>) -> Result<ShardView, ClientError> {
        let call = Call::post_json(paths::shard(paths::SHARD_TRANSFER_ROUTE, region), &TransferLeaderRequest { to })?;
        self.json(call.timeout(Duration::from_secs(30))).await
    }
}
