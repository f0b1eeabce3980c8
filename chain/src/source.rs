//! [`ChainSource`]: where a shard gets its blocks and where transactions go. Control replicas
//! follow the chain only through this trait and never name a concrete producer.

use std::sync::Arc;
use std::time::Duration;

use model::api::{ChainTip, TxStatus};
use model::chain::{Block, SignedTx};
use model::keys::PublicKeyHex;

use crate::{Devnet, SubmitError};

/// Why a chain source call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ChainError {
    /// The transaction breaks a chain rule; `code` is the rule's stable code.
    #[error("{message}")]
    Rejected {
        /// Stable code, e.g. `stale_nonce`, `underpaid`, `forbidden`.
        code: String,
        /// What rule, with the ids involved.
        message: String,
    },
    /// The source is overloaded (mempool full); try after the next block.
    #[error("{0}")]
    Busy(String),
    /// The source could not be asked.
    #[error("chain source {source_name} is unavailable: {reason}")]
    Unavailable {
        /// Which source.
        source_name: String,
        /// Why.
        reason: String,
    },
}

/// A source of blocks: the devnet in this process, the devnet over HTTP, later fluxd.
#[async_trait::async_trait]
pub trait ChainSource: Send + Sync + 'static {
    /// Names the source in logs and errors, e.g. `devnet at http://10.0.0.1:7000`.
    fn describe(&self) -> String;

    /// The tip and the genesis hash.
    async fn tip(&self) -> Result<ChainTip, ChainError>;

    /// The block at `height`, or `None` when it is not produced yet.
    async fn block(&self, height: u64) -> Result<Option<Block>, ChainError>;

    /// Waits up to `within` for the tip to pass `after`, then returns the tip (which may still be
    /// `after` when nothing was produced).
    async fn wait_for_tip(&self, after: u64, within: Duration) -> Result<ChainTip, ChainError>;

    /// Submits a signed transaction to the mempool; returns its id.
    async fn submit(&self, tx: SignedTx) -> Result<String, ChainError>;

    /// What became of a transaction.
    async fn tx_status(&self, id: &str) -> Result<TxStatus, ChainError>;

    /// The nonce `signer`'s next transaction must carry, counting its transactions that wait for
    /// a block.
    async fn next_nonce(&self, signer: &PublicKeyHex) -> Result<u64, ChainError>;
}

/// A shared chain source.
pub type SharedChainSource = Arc<dyn ChainSource>;

// === impl Devnet ===

#[async_trait::async_trait]
impl ChainSource for Devnet {
    fn describe(&self) -> String {
        "devnet in this process".into()
    }

    async fn tip(&self) -> Result<ChainTip, ChainError> {
        Ok(Devnet::tip(self))
    }

    async fn block(&self, height: u64) -> Result<Option<Block>, ChainError> {
        Devnet::block(self, height)
            .map_err(|e| ChainError::Unavailable { source_name: ChainSource::describe(self), reason: format!("{e:#}") })
    }

    async fn wait_for_tip(&self, after: u64, within: Duration) -> Result<ChainTip, ChainError> {
        let mut rx = self.subscribe();
        let _ = tokio::time::timeout(within, rx.wait_for(|h| *h > after)).await;
        Ok(Devnet::tip(self))
    }

    async fn submit(&self, tx: SignedTx) -> Result<String, ChainError> {
        Devnet::submit(self, tx).map_err(|e| match e {
            SubmitError::Invalid(e) => ChainError::Rejected { code: e.code().into(), message: e.to_string() },
            SubmitError::Busy | SubmitError::SenderBusy | SubmitError::Storage(_) => ChainError::Busy(e.to_string()),
        })
    }

    async fn tx_status(&self, id: &str) -> Result<TxStatus, ChainError> {
        Ok(Devnet::tx_status(self, id))
    }

    async fn next_nonce(&self, signer: &PublicKeyHex) -> Result<u64, ChainError> {
        Ok(Devnet::next_nonce(self, signer))
    }
}

// === the devnet over HTTP ===

/// A devnet served by `fluxplane chain`, reached over HTTP (several URLs fail over).
#[derive(Clone)]
pub struct HttpChain {
    client: client::Client,
}

impl HttpChain {
    /// A source at `client`'s URLs.
    pub fn new(client: client::Client) -> Self {
        Self { client }
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> ChainError {
        ChainError::Unavailable { source_name: self.describe(), reason: e.to_string() }
    }

    fn map(&self, e: client::ClientError) -> ChainError {
        match e {
            client::ClientError::Api { code, message, .. } if code == "busy" => ChainError::Busy(message),
            client::ClientError::Api { code, message, status, .. } if status < 500 => {
                ChainError::Rejected { code, message }
            }
            other => self.unavailable(other),
        }
    }
}

#[async_trait::async_trait]
impl ChainSource for HttpChain {
    fn describe(&self) -> String {
        format!("devnet at {}", self.client.urls().join(","))
    }

    async fn tip(&self) -> Result<ChainTip, ChainError> {
        self.client.chain_tip().await.map_err(|e| self.map(e))
    }

    async fn block(&self, height: u64) -> Result<Option<Block>, ChainError> {
        match self.client.block(height).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(self.map(e)),
        }
    }

    async fn wait_for_tip(&self, after: u64, within: Duration) -> Result<ChainTip, ChainError> {
        self.client.wait_chain_tip(after, within).await.map_err(|e| self.map(e))
    }

    async fn submit(&self, tx: SignedTx) -> Result<String, ChainError> {
        self.client.submit_tx(&tx).await.map(|r| r.tx_id).map_err(|e| self.map(e))
    }

    async fn tx_status(&self, id: &str) -> Result<TxStatus, ChainError> {
        self.client.tx_status(id).await.map_err(|e| self.map(e))
    }

    async fn next_nonce(&self, signer: &PublicKeyHex) -> Result<u64, ChainError> {
        self.client.wallet(&signer.0).await.map(|w| w.next_nonce).map_err(|e| self.map(e))
    }
}
