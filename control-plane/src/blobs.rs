//! Content-addressed module storage: `PUT /v1/blobs/{blake3}` before a deploy, fetched by agents.
//! Only the hash goes on chain; the bytes live here, one file per hash.

use std::path::{Path, PathBuf};

/// Largest module accepted.
pub const MAX_BLOB_BYTES: usize = 64 * 1024 * 1024;

/// A directory of blobs named by their blake3 hash.
#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
}

/// Why a blob was refused.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The name is not a blake3 hex hash.
    #[error("`{0}` is not a blake3 hash (64 hex digits)")]
    BadHash(String),
    /// The bytes do not hash to the name.
    #[error("content hashes to {actual}, not {expected}")]
    Mismatch {
        /// Claimed.
        expected: String,
        /// Computed.
        actual: String,
    },
    /// Disk error.
    #[error("blob store: {0}")]
    Io(#[from] std::io::Error),
}

impl BlobStore {
    /// A store in `dir`, created if needed.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self { dir: dir.to_path_buf() })
    }

    fn path(&self, hash: &str) -> Result<PathBuf, BlobError> {
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BlobError::BadHash(hash.to_string()));
        }
        Ok(self.dir.join(hash.to_ascii_lowercase()))
    }

    /// Stores `bytes` under `hash` after checking that they hash to it. Idempotent.
    pub fn put(&self, hash: &str, bytes: &[u8]) -> Result<(), BlobError> {
        let path = self.path(hash)?;
        let actual = blake3::hash(bytes).to_hex().to_string();
        if !actual.eq_ignore_ascii_case(hash) {
            return Err(BlobError::Mismatch { expected: hash.to_string(), actual });
        }
        if path.exists() {
            return Ok(());
        }
        // Write then rename, so a reader never sees half a module; each writer has its own temp
        // file, so concurrent uploads of the same module do not trip over each other.
        let tmp = path.with_extension(format!("partial-{:016x}", rand::random::<u64>()));
        std::fs::write(&tmp, bytes)?;
        if let Err(e) = std::fs::rename(&tmp, &path) {
            let _ = std::fs::remove_file(&tmp);
            if !path.exists() {
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// The bytes stored under `hash`, if any.
    pub fn get(&self, hash: &str) -> Result<Option<Vec<u8>>, BlobError> {
        match std::fs::read(self.path(hash)?) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether `hash` is stored.
    pub fn contains(&self, hash: &str) -> bool {
        self.path(hash).is_ok_and(|p| p.exists())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_uploads_of_one_module_all_succeed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::open(dir.path()).expect("store");
        let bytes = vec![7u8; 1 << 20];
        let hash = blake3::hash(&bytes).to_hex().to_string();
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..8).map(|_| s.spawn(|| store.put(&hash, &bytes))).collect();
            for h in handles {
                h.join().expect("thread").expect("every upload succeeds");
            }
        });
        assert_eq!(store.get(&hash).expect("read"), Some(bytes));
        let leftovers = std::fs::read_dir(dir.path()).expect("dir").count();
        assert_eq!(leftovers, 1, "temp files left behind");
        assert!(matches!(store.put(&hash, b"other"), Err(BlobError::Mismatch { .. })));
    }
}
