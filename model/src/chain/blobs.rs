//! Paid blob storage: modules and image archives are stored on every control replica only
//! when a [`Tx::BlobUpload`](super::Tx::BlobUpload) paid for them, per started megabyte, and
//! only while an app refers to them or for a grace period after the payment. Each key holds a
//! bounded number of bytes that no app refers to. These are chain rules, so every replica
//! knows which blobs to keep and drops the others alike.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{ChainState, TxError};
use crate::keys::PublicKeyHex;

/// Largest blob (a module or an image archive), in bytes.
pub const MAX_BLOB_BYTES: u64 = 64 * 1024 * 1024;
/// Most blobs one transaction pays for.
pub const MAX_BLOBS_PER_TX: usize = 16;

/// One blob a [`Tx::BlobUpload`](super::Tx::BlobUpload) pays for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobPayment {
    /// blake3 of the bytes, 64 lower-case hex digits.
    pub hash: String,
    /// Its size in bytes; the upload must be exactly this long.
    pub size: u64,
}

/// A paid blob, as the chain records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaidBlob {
    /// Who paid, and so who may upload it and whose quota it counts against.
    pub payer: PublicKeyHex,
    /// Its size in bytes.
    pub size: u64,
    /// The time of the block that took the payment (ms since the epoch).
    pub paid_ms: u64,
}

/// The chain's blob parameters, set in genesis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRules {
    /// How long a paid blob that no app refers to is kept, in ms (default one hour).
    pub grace_ms: u64,
    /// Most bytes one key may hold that no app refers to (default 256 MB).
    pub quota_bytes: u64,
}

impl Default for BlobRules {
    fn default() -> Self {
        BlobRules { grace_ms: 3_600_000, quota_bytes: 256 * 1024 * 1024 }
    }
}

/// Whether `hash` names a blob: 64 lower-case hex digits.
pub fn is_blob_hash(hash: &str) -> bool {
    hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl ChainState {
    /// The blobs (bare hashes) that registered apps refer to.
    pub fn referenced_blobs(&self) -> BTreeSet<&str> {
        self.apps
            .values()
            .flat_map(|a| a.spec.components.iter())
            .flat_map(|c| c.blobs().into_iter().map(|(_, blob)| blob))
            .map(|blob| blob.strip_prefix(crate::spec::BLAKE3_PREFIX).unwrap_or(blob))
            .collect()
    }

    /// Bytes `payer` holds that no app refers to, leaving out `except`.
    pub fn unreferenced_bytes(&self, payer: &PublicKeyHex, except: &BTreeSet<&str>) -> u64 {
        let referenced = self.referenced_blobs();
        self.blobs
            .iter()
            .filter(|(hash, b)| {
                &b.payer == payer && !referenced.contains(hash.as_str()) && !except.contains(hash.as_str())
            })
            .map(|(_, b)| b.size)
            .sum()
    }

    /// Checks a blob payment and returns the fee for the bytes (the transaction fee apart).
    pub(super) fn check_blob_upload(&self, signer: &PublicKeyHex, blobs: &[BlobPayment]) -> Result<u64, TxError> {
        if blobs.is_empty() || blobs.len() > MAX_BLOBS_PER_TX {
            return Err(TxError::InvalidBlob(format!(
                "a payment names 1 to {MAX_BLOBS_PER_TX} blobs, not {}",
                blobs.len()
            )));
        }
        let mut named = BTreeSet::new();
        for b in blobs {
            if !is_blob_hash(&b.hash) {
                return Err(TxError::InvalidBlob(format!(
                    "`{}` is not a blake3 hash (64 lower-case hex digits)",
                    b.hash
                )));
            }
            if b.size == 0 || b.size > MAX_BLOB_BYTES {
                return Err(TxError::InvalidBlob(format!(
                    "blob {} is {} bytes: a blob is 1 to {MAX_BLOB_BYTES} bytes",
                    b.hash, b.size
                )));
            }
            if !named.insert(b.hash.as_str()) {
                return Err(TxError::InvalidBlob(format!("blob {} is named twice", b.hash)));
            }
        }
        let held = self.unreferenced_bytes(signer, &named);
        let asked: u64 = blobs.iter().map(|b| b.size).sum();
        let quota = self.blob_rules.quota_bytes;
        if held.saturating_add(asked) > quota {
            return Err(TxError::BlobQuota { held, asked, quota });
        }
        Ok(blobs.iter().map(|b| crate::fee::blob_fee(b.size)).sum())
    }

    /// Records paid blobs, as of the block being applied.
    pub(super) fn record_blobs(&mut self, payer: &PublicKeyHex, blobs: &[BlobPayment]) {
        for b in blobs {
            let paid = PaidBlob { payer: payer.clone(), size: b.size, paid_ms: self.time_ms };
            self.blobs.insert(b.hash.clone(), paid);
        }
    }

    /// Drops the payments of blobs no app refers to whose grace ran out by `now_ms`.
    pub(super) fn expire_blobs(&mut self, now_ms: u64) {
        if self.blobs.is_empty() {
            return;
        }
        let grace = self.blob_rules.grace_ms;
        let referenced: BTreeSet<String> = self.referenced_blobs().into_iter().map(str::to_string).collect();
        let kept: BTreeMap<String, PaidBlob> = std::mem::take(&mut self.blobs)
            .into_iter()
            .filter(|(hash, b)| referenced.contains(hash) || now_ms.saturating_sub(b.paid_ms) < grace)
            .collect();
        self.blobs = kept;
    }
}
