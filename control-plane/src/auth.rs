//! Who may do what to a control replica.
//!
//! - **Replica calls** (Raft, read index) are signed by the sender's replica key; a receiver
//!   accepts them only from a member of its shard whose recorded key matches. A replica that is
//!   not (yet) a member of its own shard accepts a call that is also *vouched* for with the admin
//!   token, so that a new replica can be initialized or added without a key exchange by hand.
//! - **Admin calls** (membership, cordon) carry the admin token.
//! - **Identities** a replica publishes are vouched for with the admin token too.

use std::time::Duration;

use model::keys::{Keypair, PublicKeyHex, verify_hex};

/// Header: the sender's Raft id.
pub const REPLICA_ID: &str = "x-fluxplane-replica-id";
/// Header: the sender's public key.
pub const REPLICA_KEY: &str = "x-fluxplane-replica-key";
/// Header: milliseconds since the Unix epoch when the call was signed.
pub const TIMESTAMP: &str = "x-fluxplane-timestamp";
/// Header: ed25519 signature of the call, hex.
pub const SIGNATURE: &str = "x-fluxplane-signature";
/// Header: admin-token MAC of the call, hex.
pub const VOUCH: &str = "x-fluxplane-vouch";
/// Header: the admin token, on admin calls.
pub const ADMIN_TOKEN: &str = "x-fluxplane-admin-token";

/// Calls signed longer ago than this (or this far in the future) are refused, which bounds
/// replays. Raft itself tolerates a replayed message, so the window only needs to cover clock
/// skew between replicas.
pub const MAX_SKEW: Duration = Duration::from_secs(30);

/// The secret shared by a shard's operators and replicas.
#[derive(Clone)]
pub struct AdminToken {
    token: String,
    mac_key: [u8; 32],
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// A token; refuses one too short to resist guessing.
    pub fn new(token: &str) -> Result<Self, String> {
        let token = token.trim();
        if token.len() < 16 {
            return Err("the admin token must be at least 16 characters".into());
        }
        Ok(Self::accepted(token.to_string()))
    }

    fn accepted(token: String) -> Self {
        let mac_key = blake3::derive_key("fluxplane admin vouch v1", token.as_bytes());
        Self { token, mac_key }
    }

    /// Reads a token file.
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading admin token file {}: {e}", path.display()))?;
        Self::new(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// A random token, for `fluxplane dev`.
    pub fn generate() -> Self {
        Self::accepted(hex::encode(rand::random::<[u8; 24]>()))
    }

    /// The token itself, to send or write to a file.
    pub fn secret(&self) -> &str {
        &self.token
    }

    /// Whether `given` is the token, compared in constant time.
    pub fn matches(&self, given: &str) -> bool {
        let a = blake3::hash(given.as_bytes());
        let b = blake3::hash(self.token.as_bytes());
        // blake3::Hash compares in constant time.
        a == b
    }

    /// The token's MAC of `message`, hex.
    pub fn vouch(&self, message: &[u8]) -> String {
        blake3::keyed_hash(&self.mac_key, message).to_hex().to_string()
    }

    /// Whether `mac` is the token's MAC of `message`.
    pub fn check_vouch(&self, message: &[u8], mac: &str) -> bool {
        let Ok(bytes) = hex::decode(mac) else { return false };
        let Ok(bytes): Result<[u8; 32], _> = bytes.try_into() else { return false };
        blake3::keyed_hash(&self.mac_key, message) == blake3::Hash::from_bytes(bytes)
    }
}

/// The bytes a replica call signs: a domain tag, what it is for, when, and the body.
pub fn call_bytes(region: &str, rpc: &str, from: u64, to: u64, timestamp_ms: u64, body: &[u8]) -> Vec<u8> {
    let mut bytes = format!("fluxplane-raft-v1\n{region}\n{rpc}\n{from}\n{to}\n{timestamp_ms}\n").into_bytes();
    bytes.extend_from_slice(blake3::hash(body).as_bytes());
    bytes
}

/// The headers of a signed replica call.
pub struct SignedCall {
    /// Sender id.
    pub from: u64,
    /// Sender key.
    pub key: PublicKeyHex,
    /// When.
    pub timestamp_ms: u64,
    /// Signature of [`call_bytes`].
    pub signature: String,
    /// Admin-token MAC of [`call_bytes`] and the key.
    pub vouch: String,
}

impl SignedCall {
    /// Signs a call from `from` with `key`, vouched with `admin`.
    pub fn sign(region: &str, rpc: &str, from: u64, to: u64, body: &[u8], key: &Keypair, admin: &AdminToken) -> Self {
        let timestamp_ms = chain::now_ms();
        let bytes = call_bytes(region, rpc, from, to, timestamp_ms, body);
        let mut vouched = bytes.clone();
        vouched.extend_from_slice(key.public().0.as_bytes());
        SignedCall {
            from,
            key: key.public(),
            timestamp_ms,
            signature: key.sign_hex(&bytes),
            vouch: admin.vouch(&vouched),
        }
    }

    /// Checks the signature and the clock window; `vouched` also checks the admin MAC.
    pub fn verify(
        &self,
        region: &str,
        rpc: &str,
        to: u64,
        body: &[u8],
        admin: Option<&AdminToken>,
    ) -> Result<(), String> {
        let skew = chain::now_ms().abs_diff(self.timestamp_ms);
        if skew > MAX_SKEW.as_millis() as u64 {
            return Err(format!("call signed {skew} ms away from this replica's clock (at most {MAX_SKEW:?})"));
        }
        let bytes = call_bytes(region, rpc, self.from, to, self.timestamp_ms, body);
        verify_hex(&self.key, &bytes, &self.signature)?;
        if let Some(admin) = admin {
            let mut vouched = bytes;
            vouched.extend_from_slice(self.key.0.as_bytes());
            if !admin.check_vouch(&vouched, &self.vouch) {
                return Err("the call is not vouched for with this shard's admin token".into());
            }
        }
        Ok(())
    }
}

/// The bytes of a replica identity that the admin token vouches for.
pub fn identity_bytes(region: &str, id: u64, api: &str, key: &PublicKeyHex) -> Vec<u8> {
    format!("fluxplane-identity-v1\n{region}\n{id}\n{api}\n{key}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_verifies_only_unchanged_and_from_its_key() {
        let admin = AdminToken::new("0123456789abcdef-token").expect("token");
        let key = Keypair::generate();
        let call = SignedCall::sign("eu", "append", 1, 2, b"{}", &key, &admin);
        call.verify("eu", "append", 2, b"{}", Some(&admin)).expect("valid");
        assert!(call.verify("eu", "append", 2, b"{ }", None).is_err(), "body changed");
        assert!(call.verify("eu", "vote", 2, b"{}", None).is_err(), "rpc changed");
        assert!(call.verify("na", "append", 2, b"{}", None).is_err(), "region changed");
        assert!(call.verify("eu", "append", 3, b"{}", None).is_err(), "receiver changed");
        let other = AdminToken::new("another-token-of-16+").expect("token");
        assert!(call.verify("eu", "append", 2, b"{}", Some(&other)).is_err(), "vouched by another token");
        let stale = SignedCall { timestamp_ms: call.timestamp_ms - 60_000, ..call };
        assert!(stale.verify("eu", "append", 2, b"{}", None).is_err(), "outside the window");
    }

    #[test]
    fn tokens() {
        assert!(AdminToken::new("short").is_err());
        let t = AdminToken::generate();
        assert!(t.matches(t.secret()));
        assert!(!t.matches("nope"));
        assert!(t.check_vouch(b"m", &t.vouch(b"m")));
        assert!(!t.check_vouch(b"m", "zz"));
    }
}
