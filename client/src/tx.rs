//! Signing and submitting transactions.

/// How many times a transaction is signed again after another client took its nonce.
const STALE_NONCE_RETRIES: u64 = 10;

/// Signs `tx` with the signer's next nonce and submits it; with `applied`, answers once the
/// answering shard applied it.
///
/// The next nonce is asked of the server, which counts transactions waiting for a block. Two
/// clients signing with one wallet at once can both be given the same nonce; the one that loses
/// is refused with `stale_nonce` (changing nothing), so it asks again and signs again, a few
/// times, after a short random pause.
pub async fn sign_and_submit(
    api: &crate::Client,
    key: &model::keys::Keypair,
    tx: model::chain::Tx,
    applied: bool,
) -> Result<model::api::SubmitTxResponse, crate::ClientError> {
    let address = key.public();
    let mut attempt = 0u64;
    loop {
        let nonce = api.wallet(&address.0).await?.next_nonce;
        let stx = model::chain::SignedTx::sign(tx.clone(), nonce, key);
        let result = if applied { api.submit_tx_applied(&stx).await } else { api.submit_tx(&stx).await };
        match result {
            Err(e) if e.code() == Some("stale_nonce") && attempt < STALE_NONCE_RETRIES => {
                attempt += 1;
                // Spread the retries of the clients that collided.
                tokio::time::sleep(std::time::Duration::from_millis(10 * attempt + jitter_ms(50))).await;
            }
            other => return other,
        }
    }
}

/// 0 to `bound - 1` milliseconds, different between processes and calls: spreads the retries
/// of clients that collided.
pub fn jitter_ms(bound: u64) -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    u64::from(nanos ^ std::process::id().rotate_left(16)) % bound.max(1)
}
