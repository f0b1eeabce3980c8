//! Signing and submitting transactions.

/// A nonce for a new transaction: the time in microseconds (kept increasing within the
/// process), which keeps one client's transactions in order.
pub fn nonce() -> u64 {
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(1);
    let prev = LAST.fetch_max(now, std::sync::atomic::Ordering::Relaxed);
    if prev >= now { LAST.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1 } else { now }
}

/// Signs `tx` and submits it; with `applied`, answers once the answering shard applied it.
///
/// Nonces are times, so two processes signing with one wallet at once can collide; a
/// `stale_nonce` refusal is retried with a fresh nonce a few times (the refused transaction
/// changed nothing).
pub async fn sign_and_submit(
    api: &crate::Client,
    key: &model::keys::Keypair,
    tx: model::chain::Tx,
    applied: bool,
) -> Result<model::api::SubmitTxResponse, crate::ClientError> {
    let mut attempt = 0u64;
    loop {
        let stx = model::chain::SignedTx::sign(tx.clone(), nonce(), key);
        let result = if applied { api.submit_tx_applied(&stx).await } else { api.submit_tx(&stx).await };
        match result {
            Err(e) if e.code() == Some("stale_nonce") && attempt < 5 => {
                attempt += 1;
                // Spread the retries of processes that collided.
                let jitter = u64::from(key.public().0.as_bytes()[0]) % 20 + nonce() % 30;
                tokio::time::sleep(std::time::Duration::from_millis(20 * attempt + jitter)).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn nonces_only_increase_even_when_taken_at_once() {
        let taken: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> =
                (0..4).map(|_| s.spawn(|| (0..1000).map(|_| super::nonce()).collect::<Vec<_>>())).collect();
            handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
        });
        let mut unique = taken.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), taken.len(), "a nonce was handed out twice");
    }
}
