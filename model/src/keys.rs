//! ed25519 keys and signatures, written as lowercase hex.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

/// A public key in hex; also the address of a wallet and the identity of a node agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PublicKeyHex(pub String);

impl PublicKeyHex {
    /// The X25519 public key that values are sealed to for the holder of this key, hex.
    pub fn box_public(&self) -> Result<String, String> {
        let bytes: [u8; 32] = hex::decode(&self.0)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| "a key is 64 hex digits".to_string())?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|e| format!("not an ed25519 key: {e}"))?;
        Ok(hex::encode(key.to_montgomery().to_bytes()))
    }

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

    /// The X25519 secret of this key, for opening values sealed to [`PublicKeyHex::box_public`]
    /// (the standard Ed25519-to-X25519 conversion, as age does for ssh-ed25519 recipients).
    pub fn box_keypair(&self) -> crate::sealed::BoxKeypair {
        crate::sealed::BoxKeypair::from_secret_bytes(self.0.to_scalar_bytes())
    }
}

impl std::fmt::Debug for Keypair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keypair({})", self.public())
    }
}

/// Checks a hex signature over `message` by `key`.
pub fn verify_hex(key: &PublicKeyHex, message: &[u8], signature: &str) -> Result<(), String> {
    let (key, signature) = parse(key, signature)?;
    key.verify(message, &signature).map_err(|_| "signature does not match".to_string())
}

fn parse(key: &PublicKeyHex, signature: &str) -> Result<(VerifyingKey, Signature), String> {
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
    Ok((key, Signature::from_bytes(&sig_bytes)))
}

/// One signature to check.
#[derive(Debug, Clone)]
pub struct SignatureCheck {
    /// The signer's public key.
    pub key: PublicKeyHex,
    /// What was signed.
    pub message: Vec<u8>,
    /// The signature, hex.
    pub signature: String,
}

/// Checks many signatures at once with ed25519 batch verification (one multi-scalar
/// multiplication for the lot, about half the cost per signature of one by one); if the batch
/// fails, each is checked alone, so every result is what [`verify_hex`] gives. A batch
/// accepts a few non-canonical signatures that a lone check refuses, never a forgery.
pub fn verify_batch_hex(checks: &[SignatureCheck]) -> Vec<Result<(), String>> {
    let parsed: Vec<Result<(VerifyingKey, Signature), String>> =
        checks.iter().map(|c| parse(&c.key, &c.signature)).collect();
    let good: Vec<(usize, &(VerifyingKey, Signature))> =
        parsed.iter().enumerate().filter_map(|(i, p)| p.as_ref().ok().map(|p| (i, p))).collect();
    if good.len() >= 2 {
        let messages: Vec<&[u8]> = good.iter().map(|(i, _)| checks[*i].message.as_slice()).collect();
        let signatures: Vec<Signature> = good.iter().map(|(_, (_, s))| *s).collect();
        let keys: Vec<VerifyingKey> = good.iter().map(|(_, (k, _))| *k).collect();
        if ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok() {
            return parsed.into_iter().map(|p| p.map(|_| ())).collect();
        }
    }
    checks
        .iter()
        .zip(parsed)
        .map(|(c, p)| p.and_then(|(k, s)| k.verify(&c.message, &s).map_err(|_| "signature does not match".to_string())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_gives_what_one_by_one_gives() {
        let keys: Vec<Keypair> = (0..8).map(|i| Keypair::from_seed([i; 32])).collect();
        let mut checks: Vec<SignatureCheck> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let message = format!("beat {i}").into_bytes();
                SignatureCheck { key: k.public(), signature: k.sign_hex(&message), message }
            })
            .collect();
        assert!(verify_batch_hex(&checks).iter().all(Result::is_ok));
        // One forged (signed by another key), one not hex: only those two fail.
        checks[3].signature = keys[4].sign_hex(&checks[3].message);
        checks[5].signature = "zz".into();
        let results = verify_batch_hex(&checks);
        let failed: Vec<usize> = results.iter().enumerate().filter(|(_, r)| r.is_err()).map(|(i, _)| i).collect();
        assert_eq!(failed, vec![3, 5]);
        for (c, r) in checks.iter().zip(&results) {
            assert_eq!(r, &verify_hex(&c.key, &c.message, &c.signature));
        }
    }

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
