//! Transaction fees: chain parameters every replica applies alike.
//!
//! Flux inherits Bitcoin's and Zcash's fee rule: a transaction pays per started kilobyte of its
//! size, and fluxd's default fee, 0.0001 FLUX, is also the least it relays. We charge the same:
//! 0.0001 FLUX per started 1,000 bytes of the signed transaction, at least 0.0001 FLUX. The fee is
//! taken from the signer's balance when the transaction applies, so an unfunded key cannot send
//! anything, and a large transaction costs more than a small one. Fees are burned: the devnet has
//! no miner to pay.

/// The least any transaction pays, in the smallest unit (0.0001 FLUX).
pub const MIN_TX_FEE: u64 = 10_000;
/// The fee per started 1,000 bytes of a signed transaction, in the smallest unit (0.0001 FLUX).
pub const FEE_PER_KB: u64 = 10_000;

/// The fee per started megabyte (1,000,000 bytes) of a stored blob, in the smallest unit
/// (0.001 FLUX): a 64 MB image archive costs 0.064 FLUX, and 300 MB of junk 0.3 FLUX.
pub const FEE_PER_BLOB_MB: u64 = 100_000;

/// The fee for storing a blob of `size` bytes, burned like transaction fees.
pub fn blob_fee(size: u64) -> u64 {
    size.div_ceil(1_000_000).saturating_mul(FEE_PER_BLOB_MB)
}

/// The fee for a signed transaction of `size` bytes (see `SignedTx::size`).
pub fn tx_fee(size: usize) -> u64 {
    let kilobytes = (size as u64).div_ceil(1000);
    kilobytes.saturating_mul(FEE_PER_KB).max(MIN_TX_FEE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fee_is_per_started_kilobyte_with_a_minimum() {
        assert_eq!(tx_fee(0), MIN_TX_FEE);
        assert_eq!(tx_fee(1), MIN_TX_FEE);
        assert_eq!(tx_fee(1000), FEE_PER_KB);
        assert_eq!(tx_fee(1001), 2 * FEE_PER_KB);
        assert_eq!(tx_fee(10_240), 11 * FEE_PER_KB);
    }
}
