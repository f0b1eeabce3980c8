//! Publishing blobs (modules, image archives): pay for the ones the control plane lacks, in one
//! `blob_upload` transaction, then upload each, signed by the key that paid.

use model::api::SignedUpload;
use model::chain::{BlobPayment, Tx};
use model::keys::Keypair;

use crate::{Client, ClientError};

/// What [`publish`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Published {
    /// Blobs the control plane held already.
    pub stored_already: usize,
    /// Blobs paid for now.
    pub paid: usize,
    /// The storage fee paid (the transaction fee apart), in the smallest unit.
    pub fee: u64,
    /// Blobs uploaded.
    pub uploaded: usize,
}

/// Makes sure the control plane holds each `(hash, bytes)`: pays for the missing ones that this
/// key has not paid for yet, waits for the payment to apply, and uploads them.
pub async fn publish(api: &Client, key: &Keypair, blobs: &[(String, Vec<u8>)]) -> Result<Published, ClientError> {
    let mut done = Published::default();
    let mut missing = Vec::new();
    let mut to_pay = Vec::new();
    for (hash, bytes) in blobs {
        let status = api.blob_status(hash).await?;
        if status.stored {
            done.stored_already += 1;
            continue;
        }
        let size = bytes.len() as u64;
        let paid_by_us = status.paid_by.as_ref() == Some(&key.public()) && status.size == Some(size);
        if !paid_by_us && !to_pay.iter().any(|p: &BlobPayment| &p.hash == hash) {
            to_pay.push(BlobPayment { hash: hash.clone(), size });
        }
        missing.push((hash, bytes));
    }
    if !to_pay.is_empty() {
        done.paid = to_pay.len();
        done.fee = to_pay.iter().map(|p| model::fee::blob_fee(p.size)).sum();
        crate::sign_and_submit(api, key, Tx::BlobUpload { blobs: to_pay }, true).await?;
    }
    for (hash, bytes) in missing {
        let upload = SignedUpload::sign(hash, bytes.len() as u64, now_ms(), key);
        api.put_blob(&upload, bytes.clone()).await?;
        done.uploaded += 1;
    }
    Ok(done)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
