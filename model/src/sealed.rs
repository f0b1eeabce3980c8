//! Sealing secret values to a public key, for app secrets (see "Secrets" in
//! `docs/architecture.md`): only the holder of the matching secret key can open them.
//!
//! The scheme is a sealed box. A fresh X25519 key is made for each value, and its agreement with
//! the recipient's key goes through blake3's key derivation, bound to both public keys. The value
//! is then encrypted with ChaCha20-Poly1305, with a `context` (app, key name, region) as associated
//! data, so a sealed value cannot be moved to another app or key. Each value has its own key,
//! so the AEAD nonce can be fixed.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};

/// Domain of the key derivation: a new scheme gets a new string.
const KDF_CONTEXT: &str = "fluxplane sealed value v1";

/// A secret value in memory. It prints as `<secret>` in `Debug` and `Display`, so that no log line
/// can hold one.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps `bytes`.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The bytes, for the one place that must use them (the guest's environment).
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

/// An X25519 key pair that sealed values are opened with. It is stored (serialized) as its
/// secret in hex; `Debug` shows only the public half.
#[derive(Clone)]
pub struct BoxKeypair {
    secret: StaticSecret,
}

impl PartialEq for BoxKeypair {
    fn eq(&self, other: &Self) -> bool {
        self.secret.to_bytes() == other.secret.to_bytes()
    }
}

impl Serialize for BoxKeypair {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(self.secret.to_bytes()))
    }
}

impl<'de> Deserialize<'de> for BoxKeypair {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let bytes: [u8; 32] = hex::decode(&text)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| serde::de::Error::custom("a box key is 64 hex digits"))?;
        Ok(Self::from_secret_bytes(bytes))
    }
}

impl std::fmt::Debug for BoxKeypair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BoxKeypair({})", self.public_hex())
    }
}

impl BoxKeypair {
    /// A new random key pair.
    pub fn generate() -> Self {
        Self { secret: StaticSecret::random_from_rng(rand::rngs::OsRng) }
    }

    /// The key pair with this 32-byte secret.
    pub fn from_secret_bytes(bytes: [u8; 32]) -> Self {
        Self { secret: StaticSecret::from(bytes) }
    }

    /// The secret half, to store.
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.secret.to_bytes()
    }

    /// The public half, hex, as values are sealed to it.
    pub fn public_hex(&self) -> String {
        hex::encode(PublicKey::from(&self.secret).as_bytes())
    }

    /// Opens `sealed`, which must have been sealed to this key with the same `context`.
    pub fn open(&self, context: &[u8], sealed: &SealedValue) -> Result<Secret, String> {
        let ephemeral = parse_public(&sealed.ephemeral).map_err(|e| format!("ephemeral key: {e}"))?;
        let ciphertext = hex::decode(&sealed.ciphertext).map_err(|_| "the ciphertext is not hex".to_string())?;
        let recipient = PublicKey::from(&self.secret);
        let shared = self.secret.diffie_hellman(&ephemeral);
        if !shared.was_contributory() {
            return Err("the ephemeral key is a low-order point".into());
        }
        let cipher = cipher(shared.as_bytes(), &ephemeral, &recipient);
        cipher
            .decrypt(Nonce::from_slice(&[0; 12]), Payload { msg: &ciphertext, aad: context })
            .map(Secret)
            .map_err(|_| "the value does not open with this key and context (another key, app or name?)".into())
    }
}

/// A value sealed to one public key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedValue {
    /// The sender's one-time X25519 public key, hex.
    pub ephemeral: String,
    /// ChaCha20-Poly1305 ciphertext and tag, hex.
    pub ciphertext: String,
}

impl std::fmt::Debug for SealedValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealedValue({} bytes)", self.ciphertext.len() / 2)
    }
}

/// Seals `value` to the X25519 public key `to` (hex), bound to `context`.
pub fn seal(to: &str, context: &[u8], value: &[u8]) -> Result<SealedValue, String> {
    let recipient = parse_public(to)?;
    let ephemeral_secret = StaticSecret::random_from_rng(rand::rngs::OsRng);
    let ephemeral = PublicKey::from(&ephemeral_secret);
    let shared = ephemeral_secret.diffie_hellman(&recipient);
    if !shared.was_contributory() {
        return Err("the recipient key is a low-order point".into());
    }
    let cipher = cipher(shared.as_bytes(), &ephemeral, &recipient);
    let ciphertext = cipher
        .encrypt(Nonce::from_slice(&[0; 12]), Payload { msg: value, aad: context })
        .map_err(|_| "the value is too large to seal".to_string())?;
    Ok(SealedValue { ephemeral: hex::encode(ephemeral.as_bytes()), ciphertext: hex::encode(ciphertext) })
}

fn parse_public(text: &str) -> Result<PublicKey, String> {
    let bytes: [u8; 32] = hex::decode(text)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| "an X25519 public key is 64 hex digits".to_string())?;
    Ok(PublicKey::from(bytes))
}

/// The AEAD for one sealed value: its key is derived from the agreement and both public keys.
fn cipher(shared: &[u8; 32], ephemeral: &PublicKey, recipient: &PublicKey) -> ChaCha20Poly1305 {
    let mut material = Vec::with_capacity(96);
    material.extend_from_slice(shared);
    material.extend_from_slice(ephemeral.as_bytes());
    material.extend_from_slice(recipient.as_bytes());
    let key = blake3::derive_key(KDF_CONTEXT, &material);
    ChaCha20Poly1305::new(Key::from_slice(&key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_with_its_key_and_context() {
        let node = BoxKeypair::generate();
        let sealed = seal(&node.public_hex(), b"app=shop key=DB_PASSWORD", b"s3cret").expect("seal");
        assert!(!sealed.ciphertext.contains(&hex::encode("s3cret")), "the value is not in the clear");
        let opened = node.open(b"app=shop key=DB_PASSWORD", &sealed).expect("open");
        assert_eq!(opened.expose(), b"s3cret");

        // Another key, another context, a flipped bit: refused.
        assert!(BoxKeypair::generate().open(b"app=shop key=DB_PASSWORD", &sealed).is_err());
        assert!(node.open(b"app=other key=DB_PASSWORD", &sealed).is_err());
        let mut flipped = sealed.clone();
        flipped.ciphertext.replace_range(0..2, if &flipped.ciphertext[0..2] == "00" { "01" } else { "00" });
        assert!(node.open(b"app=shop key=DB_PASSWORD", &flipped).is_err());

        // Two seals of one value differ: nothing links them.
        let again = seal(&node.public_hex(), b"app=shop key=DB_PASSWORD", b"s3cret").expect("seal");
        assert_ne!(again, sealed);
    }

    #[test]
    fn keys_round_trip_and_nothing_prints_a_secret() {
        let node = BoxKeypair::generate();
        let same = BoxKeypair::from_secret_bytes(node.secret_bytes());
        assert_eq!(same.public_hex(), node.public_hex());
        let secret = Secret::new(b"s3cret".to_vec());
        assert_eq!(format!("{secret} {secret:?}"), "<secret> <secret>");
        let sealed = seal(&node.public_hex(), b"", b"s3cret").expect("seal");
        assert!(!format!("{sealed:?} {node:?}").contains(&hex::encode(node.secret_bytes())));
    }

    /// A value sealed to a node's signing key (converted) opens with that node's key alone.
    #[test]
    fn a_node_key_opens_what_is_sealed_to_its_public_key() {
        let node = crate::keys::Keypair::generate();
        let to = node.public().box_public().expect("an ed25519 key converts");
        assert_eq!(to, node.box_keypair().public_hex());
        let sealed = seal(&to, b"ctx", b"s3cret").expect("seal");
        assert_eq!(node.box_keypair().open(b"ctx", &sealed).expect("open").expose(), b"s3cret");
        assert!(crate::keys::Keypair::generate().box_keypair().open(b"ctx", &sealed).is_err());
    }

    #[test]
    fn junk_keys_and_low_order_points_are_refused() {
        assert!(seal("nope", b"", b"x").is_err());
        assert!(seal(&"00".repeat(32), b"", b"x").is_err(), "the all-zero key is a low-order point");
        let node = BoxKeypair::generate();
        let junk = SealedValue { ephemeral: "00".repeat(32), ciphertext: "00".repeat(20) };
        assert!(node.open(b"", &junk).is_err());
    }
}
