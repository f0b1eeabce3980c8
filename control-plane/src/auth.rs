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

/// Calls signed longer ago than this (or this far in the future) are refused; within it, a
/// replay is refused by its sequence number ([`ReplayWindow`]). The window only needs to cover
/// clock skew between replicas.
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

/// Header: blake3 of the call's body, hex. The signature covers it, so a receiver
/// authenticates a call from its headers alone, before it reads the body.
pub const BODY_DIGEST: &str = "x-fluxplane-body-digest";
/// Header: the sender's call sequence, which rises with every call it sends (see
/// [`ReplayWindow`]).
pub const SEQUENCE: &str = "x-fluxplane-sequence";

/// The blake3 digest of a call body, hex, as [`BODY_DIGEST`] carries it.
pub fn body_digest(body: &[u8]) -> String {
    blake3::hash(body).to_hex().to_string()
}

/// What a replica call is, as its headers say and its signature covers.
#[derive(Debug, Clone, Copy)]
pub struct CallHead<'a> {
    /// Region of the shard.
    pub region: &'a str,
    /// The Raft call (`append`, `vote`, ...).
    pub rpc: &'a str,
    /// Sender id.
    pub from: u64,
    /// Receiver id.
    pub to: u64,
    /// When it was signed, ms since the epoch.
    pub timestamp_ms: u64,
    /// The sender's sequence number.
    pub sequence: u64,
    /// [`body_digest`] of the body.
    pub body_digest: &'a str,
}

/// The bytes a replica call signs: a domain tag, what it is for, when, its sequence and the
/// digest of its body.
pub fn call_bytes(head: &CallHead<'_>) -> Vec<u8> {
    let CallHead { region, rpc, from, to, timestamp_ms, sequence, body_digest } = head;
    format!("fluxplane-raft-v2\n{region}\n{rpc}\n{from}\n{to}\n{timestamp_ms}\n{sequence}\n{body_digest}").into_bytes()
}

/// The headers of a signed replica call.
#[derive(Debug, Clone)]
pub struct SignedCall {
    /// Sender id.
    pub from: u64,
    /// Sender key.
    pub key: PublicKeyHex,
    /// When.
    pub timestamp_ms: u64,
    /// The sender's sequence number.
    pub sequence: u64,
    /// [`body_digest`] of the body.
    pub body_digest: String,
    /// Signature of [`call_bytes`].
    pub signature: String,
    /// Admin-token MAC of [`call_bytes`] and the key.
    pub vouch: String,
}

impl SignedCall {
    /// Signs call number `sequence` from `from` with `key`, vouched with `admin`.
    #[allow(clippy::too_many_arguments)]
    pub fn sign(
        region: &str,
        rpc: &str,
        from: u64,
        to: u64,
        sequence: u64,
        body: &[u8],
        key: &Keypair,
        admin: &AdminToken,
    ) -> Self {
        let timestamp_ms = chain::now_ms();
        let body_digest = body_digest(body);
        let bytes = call_bytes(&CallHead { region, rpc, from, to, timestamp_ms, sequence, body_digest: &body_digest });
        let mut vouched = bytes.clone();
        vouched.extend_from_slice(key.public().0.as_bytes());
        SignedCall {
            from,
            key: key.public(),
            timestamp_ms,
            sequence,
            body_digest,
            signature: key.sign_hex(&bytes),
            vouch: admin.vouch(&vouched),
        }
    }

    /// Checks the signature over the headers and the clock window; `admin` also checks the
    /// admin MAC. The body is checked apart, once read ([`SignedCall::check_body`]).
    pub fn verify(&self, region: &str, rpc: &str, to: u64, admin: Option<&AdminToken>) -> Result<(), String> {
        let skew = chain::now_ms().abs_diff(self.timestamp_ms);
        if skew > MAX_SKEW.as_millis() as u64 {
            return Err(format!("call signed {skew} ms away from this replica's clock (at most {MAX_SKEW:?})"));
        }
        let bytes = call_bytes(&CallHead {
            region,
            rpc,
            from: self.from,
            to,
            timestamp_ms: self.timestamp_ms,
            sequence: self.sequence,
            body_digest: &self.body_digest,
        });
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

    /// Whether `body` is the body the signature covers.
    pub fn check_body(&self, body: &[u8]) -> Result<(), String> {
        if body_digest(body).eq_ignore_ascii_case(&self.body_digest) {
            Ok(())
        } else {
            Err(format!("the body does not hash to its {BODY_DIGEST} header"))
        }
    }
}

/// The sequence numbers a receiver has seen from each sender, so that a call replayed within
/// [`MAX_SKEW`] is refused. A sender's numbers rise with each call, but calls travel on
/// several connections and may arrive out of order, so each sender has a window of the last
/// [`ReplayWindow::SPAN`] numbers below its highest, and a number is taken once. Senders start
/// their sequence at their clock in microseconds, so a restarted sender is ahead of what it
/// sent before.
#[derive(Debug, Default)]
pub struct ReplayWindow {
    senders: std::sync::Mutex<std::collections::HashMap<u64, std::collections::BTreeSet<u64>>>,
}

impl ReplayWindow {
    /// How far below a sender's highest number a late call is still taken.
    pub const SPAN: u64 = 4096;

    /// Takes `sequence` from `sender`; refuses a number already taken or too far behind.
    /// Call this only for an authenticated sender, so that strangers cannot fill it.
    pub fn take(&self, sender: u64, sequence: u64) -> Result<(), String> {
        // A panic while holding this lock leaves a set of numbers, still consistent.
        let mut senders = self.senders.lock().unwrap_or_else(|e| e.into_inner());
        let seen = senders.entry(sender).or_default();
        let highest = seen.last().copied().unwrap_or(0);
        let floor = highest.saturating_sub(Self::SPAN);
        if sequence <= floor && highest > 0 {
            return Err(format!("call {sequence} from replica {sender} is older than the last {} it sent", Self::SPAN));
        }
        if !seen.insert(sequence) {
            return Err(format!("call {sequence} from replica {sender} was already received (a replay)"));
        }
        let floor = seen.last().copied().unwrap_or(0).saturating_sub(Self::SPAN);
        while seen.first().is_some_and(|&s| s <= floor) {
            seen.pop_first();
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
        let call = SignedCall::sign("eu", "append", 1, 2, 7, b"{}", &key, &admin);
        call.verify("eu", "append", 2, Some(&admin)).expect("valid");
        call.check_body(b"{}").expect("the signed body");
        assert!(call.check_body(b"{ }").is_err(), "body changed");
        let other_body = SignedCall { body_digest: body_digest(b"{ }"), ..call.clone() };
        assert!(other_body.verify("eu", "append", 2, None).is_err(), "digest header changed");
        let other_sequence = SignedCall { sequence: 8, ..call.clone() };
        assert!(other_sequence.verify("eu", "append", 2, None).is_err(), "sequence changed");
        assert!(call.verify("eu", "vote", 2, None).is_err(), "rpc changed");
        assert!(call.verify("na", "append", 2, None).is_err(), "region changed");
        assert!(call.verify("eu", "append", 3, None).is_err(), "receiver changed");
        let other = AdminToken::new("another-token-of-16+").expect("token");
        assert!(call.verify("eu", "append", 2, Some(&other)).is_err(), "vouched by another token");
        let stale = SignedCall { timestamp_ms: call.timestamp_ms - 60_000, ..call };
        assert!(stale.verify("eu", "append", 2, None).is_err(), "outside the window");
    }

    #[test]
    fn a_sequence_number_is_taken_once_and_late_ones_only_within_the_span() {
        let window = ReplayWindow::default();
        window.take(1, 1000).expect("first");
        assert!(window.take(1, 1000).is_err(), "replayed");
        window.take(2, 1000).expect("another sender has its own numbers");
        window.take(1, 998).expect("late but within the span");
        assert!(window.take(1, 998).is_err(), "a late one replayed");
        window.take(1, 1000 + ReplayWindow::SPAN + 10).expect("far ahead");
        assert!(window.take(1, 1001).is_err(), "now too far behind");
        window.take(1, 1000 + ReplayWindow::SPAN + 9).expect("out of order within the span");
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
