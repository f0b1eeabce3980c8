//! ed25519 keys and signatures, written as lowercase hex.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

/// A public key in hex; also the address of a wallet and the identity of a node agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PublicKeyHex(pub String);

impl PublicKeyHex {
    /// Checks that this is 64 hex digits of a valid ed25519 point, so funds and roles are never
    /// given to an address nobody can sign for.
    pub fn check(&self) -> Result<(), String> {
        let bytes: [u8; 32] = hex::decode(&self.0)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| format!("`{self}` is not a 32-byte hex public key"))?;
        if self.0.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(format!("`{self}` must be lowercase hex"));
        }
        VerifyingKey::from_bytes(&bytes).map_err(|_| format!("`{self}` is not a valid ed25519 public key"))?;
        Ok(())
    }
}

impl std::fmt::Display for PublicKeyHex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A signing key with helpers for the hex forms used on the wire and on disk.
#[derive(Clone)]
pub struct Keypair(SigningKey);

impl Keypair {
    /// A new random key.
    pub fn generate() -> Self {
        Self(SigningKey::generate(&mut rand::rngs::OsRng))
    }

    /// A key from a 32-byte seed; for deterministic test and genesis keys.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(SigningKey::from_bytes(&seed))
    }

    /// Parses the 64-hex-digit secret, as stored in a key file.
    pub fn from_secret_hex(text: &str) -> Result<Self, String> {
        let bytes = hex::decode(text.trim()).map_err(|e| format!("key is not hex: {e}"))?;
        let seed: [u8; 32] = bytes.try_into().map_err(|_| "key must be 32 bytes (64 hex digits)".to_string())?;
        Ok(Self::from_seed(seed))
    }

    /// The secret as hex, for a key file.
    pub fn secret_hex(&self) -> String {
        hex::encode(self.0.to_bytes())
    }

    /// The public half.
    pub fn public(&self) -> PublicKeyHex {
        PublicKeyHex(hex::encode(self.0.verifying_key().to_bytes()))
    }

    /// Signs `message` and returns the signature as hex.
    pub fn sign_hex(&self, message: &[u8]) -> String {
        hex::encode(self.0.sign(message).to_bytes())
    }
}

impl std::fmt::Debug for Keypair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keypair({})", self.public())
    }
}

/// Checks a hex signature over `message` by `key`.
pub fn verify_hex(key: &PublicKeyHex, message: &[u8], signature: &str) -> Result<(), String> {
    let key_bytes: [u8; 32] = hex::decode(&key.0)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("`{key}` is not a 32-byte hex public key"))?;
    let key =
        VerifyingKey::from_bytes(&key_bytes).map_err(|_| "public key is not a valid ed25519 point".to_string())?;
    let sig_bytes: [u8; 64] = hex::decode(signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| "signature must be 64 bytes of hex".to_string())?;
    key.verify(message, &Signature::from_bytes(&sig_bytes)).map_err(|_| "signature does not match".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify() {
        let k = Keypair::generate();
        let sig = k.sign_hex(b"hello");
        verify_hex(&k.public(), b"hello", &sig).expect("valid");
        assert!(verify_hex(&k.public(), b"hellO", &sig).is_err());
        assert!(verify_hex(&Keypair::generate().public(), b"hello", &sig).is_err());
        assert!(verify_hex(&k.public(), b"hello", "zz").is_err());
        let again = Keypair::from_secret_hex(&k.secret_hex()).expect("round trip");
        assert_eq!(again.public(), k.public());
    }
}
