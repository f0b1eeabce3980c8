//! Address proofs: before a node gets work, the leader dials the API address the node reports
//! (which must be on its registered address) and the node answers a fresh challenge with its
//! node key. A node that registered someone else's address cannot answer there, so it never gets
//! an instance whose endpoint would be that other machine's listener.
//!
//! A node not yet proven to this leader takes no new instances but keeps the ones it has (a new
//! leader proves every node again, and must not move instances meanwhile); a node whose proof
//! failed is treated as unable to run anything, so its instances move.

use std::sync::Arc;
use std::time::{Duration, Instant};

use model::api::AddressProof;

use super::Shard;

/// How long a challenge may take.
const CHALLENGE_TIMEOUT: Duration = Duration::from_secs(3);
/// The largest answer read from a challenged address.
const MAX_PROOF_BYTES: usize = 4096;
/// The least time between two challenges of one node.
const RETRY_AFTER: Duration = Duration::from_secs(3);

/// Where a node stands with this leader.
#[derive(Debug, Clone, Default)]
pub(super) enum AddressCheck {
    /// Not challenged yet.
    #[default]
    Unchecked,
    /// A challenge is on its way.
    Pending { since: Instant },
    /// It answered at `api`.
    Proven { api: String },
    /// It did not answer at `api`, for `why`.
    Failed { api: String, why: String, at: Instant },
}

impl Shard {
    /// The address to challenge `node` at, if it needs a challenge now; marks it pending.
    pub fn address_to_prove(&self, node: &str) -> Option<String> {
        if !self.require_address_proof {
            return None;
        }
        let mut stripe = self.beats.stripe(node);
        let soft = stripe.get_mut(node)?;
        let api = soft.api.clone()?;
        let due = match &soft.address {
            AddressCheck::Unchecked => true,
            AddressCheck::Pending { since } => since.elapsed() > CHALLENGE_TIMEOUT * 2,
            AddressCheck::Proven { api: proven } => *proven != api,
            AddressCheck::Failed { at, .. } => at.elapsed() > RETRY_AFTER,
        };
        if due {
            soft.address = AddressCheck::Pending { since: Instant::now() };
        }
        due.then_some(api)
    }

    /// Records the outcome of `node`'s challenge at `api`.
    fn record_address_check(&self, node: &str, api: &str, result: Result<(), String>) {
        let mut stripe = self.beats.stripe(node);
        let Some(soft) = stripe.get_mut(node) else { return };
        let was_proven = matches!(soft.address, AddressCheck::Proven { .. });
        soft.address = match result {
            Ok(()) => AddressCheck::Proven { api: api.to_string() },
            Err(why) => {
                tracing::warn!(region = %self.region, node, api, "address not proven: {why}");
                AddressCheck::Failed { api: api.to_string(), why, at: Instant::now() }
            }
        };
        let now_proven = matches!(soft.address, AddressCheck::Proven { .. });
        drop(stripe);
        if was_proven != now_proven {
            // Judged again, like a node that came back: it may take (or must give up) work now.
            self.touched().fresh_node(node);
        }
    }

    /// Why `node` may not take new instances yet: it has not proven its address to this leader.
    pub fn unproven(&self, node: &str) -> Option<String> {
        if !self.require_address_proof {
            return None;
        }
        let stripe = self.beats.stripe(node);
        match &stripe.get(node)?.address {
            AddressCheck::Proven { api } if stripe.get(node)?.api.as_ref() == Some(api) => None,
            AddressCheck::Failed { api, why, .. } => Some(format!("address not proven at {api}: {why}")),
            _ if stripe.get(node)?.api.is_none() => Some("address not proven: its beats name no API address".into()),
            _ => Some("address not proven yet".into()),
        }
    }

    /// Why `node` cannot run anything: its challenge failed.
    pub(super) fn address_failed(&self, node: &str) -> Option<String> {
        let stripe = self.beats.stripe(node);
        match &stripe.get(node)?.address {
            AddressCheck::Failed { api, why, .. } if self.require_address_proof => {
                Some(format!("address not proven at {api}: {why}"))
            }
            _ => None,
        }
    }
}

/// Challenges `node` at `api` and records whether the node key answered there.
pub async fn prove_address(shard: Arc<Shard>, node: String, api: String) {
    let Some(key) = shard.read(|s| s.chain.nodes.get(&node).map(|n| n.start.node_key.clone())) else { return };
    let nonce = hex::encode(rand::random::<[u8; 16]>());
    let result = challenge(&node, &api, &nonce).await.and_then(|proof| {
        if proof.node != node {
            return Err(format!("node {} answered there", proof.node));
        }
        proof.verify(&api, &nonce, &key).map_err(|e| format!("the answer is not signed by {node}'s key: {e}"))
    });
    shard.record_address_check(&node, &api, result);
}

async fn challenge(node: &str, api: &str, nonce: &str) -> Result<AddressProof, String> {
    static HTTP: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    let http = HTTP.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(CHALLENGE_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .unwrap_or_default()
    });
    let url = format!("http://{api}{}", client::paths::NODE_ADDRESS_PROOF);
    let resp = http
        .get(url)
        .query(&[("node", node), ("nonce", nonce)])
        .send()
        .await
        .map_err(|e| format!("no answer at {api}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("{api} answered {}", resp.status()));
    }
    // A proof is small; anything larger is not one, and is not read on (the address is the
    // node's to choose, so whatever answers there may be hostile).
    let mut resp = resp;
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| format!("reading the answer: {e}"))? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_PROOF_BYTES {
            return Err("the answer is too large to be a proof".into());
        }
    }
    serde_json::from_slice(&body).map_err(|e| format!("the answer is not a proof: {e}"))
}
