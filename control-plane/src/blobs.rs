//! Content-addressed module storage: `PUT /v1/blobs/{blake3}` before a deploy, fetched by agents.
//! Only the hash goes on chain; the bytes live here, one file per hash.

use std::path::{Path, PathBuf};

use model::blob::ContentError;
pub use model::blob::{BlobKind, check_component, check_image_archive};

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
    /// The bytes are not a WebAssembly component (the reason never quotes them).
    #[error("not a WebAssembly component: {0}")]
    NotAComponent(String),
    /// The bytes are a tar file but not an image archive (the reason never quotes them).
    #[error("not an image archive: {0}")]
    NotAnArchive(String),
    /// Disk error.
    #[error("blob store: {0}")]
    Io(#[from] std::io::Error),
}

/// Checks an upload's content: a WebAssembly component, or a container image archive (see
/// [`model::blob`], which `fluxctl` also checks with before it pays).
pub fn check_blob(bytes: &[u8]) -> Result<BlobKind, BlobError> {
    model::blob::check(bytes).map_err(|e| match e {
        ContentError::NotAComponent(why) => BlobError::NotAComponent(why),
        ContentError::NotAnArchive(why) => BlobError::NotAnArchive(why),
    })
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
        check_blob(bytes)?;
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

    /// What the blob stored under `hash` is, if it is stored.
    pub fn kind(&self, hash: &str) -> Option<BlobKind> {
        use std::io::Read;
        let mut head = Vec::with_capacity(512);
        std::fs::File::open(self.path(hash).ok()?).ok()?.take(512).read_to_end(&mut head).ok()?;
        BlobKind::of(&head)
    }

    /// Whether `hash` is stored.
    pub fn contains(&self, hash: &str) -> bool {
        self.path(hash).is_ok_and(|p| p.exists())
    }

    /// Removes every stored blob whose hash `keep` refuses, and uploads left half-written for
    /// over an hour; returns how many blobs went.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) -> std::io::Result<usize> {
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().to_string();
            if name.contains(".partial-") {
                let old = entry.metadata()?.modified()?.elapsed().is_ok_and(|age| age.as_secs() > 3600);
                if old {
                    std::fs::remove_file(entry.path())?;
                }
                continue;
            }
            if name.len() == 64 && !keep(&name) {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hello component, padded with a custom section of `size` bytes.
    fn component(size: usize) -> Vec<u8> {
        let hello = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/hello/hello.wasm");
        let mut bytes = std::fs::read(hello).expect("examples/hello/hello.wasm");
        let payload = vec![7u8; size];
        let mut section = vec![1u8, b'x'];
        section.extend_from_slice(&payload);
        bytes.push(0);
        let mut len = section.len();
        loop {
            let byte = (len & 0x7f) as u8;
            len >>= 7;
            bytes.push(if len == 0 { byte } else { byte | 0x80 });
            if len == 0 {
                break;
            }
        }
        bytes.extend_from_slice(&section);
        bytes
    }

    #[test]
    fn only_components_are_stored_and_the_refusal_never_quotes_the_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::open(dir.path()).expect("store");
        let put = |bytes: &[u8]| store.put(&blake3::hash(bytes).to_hex(), bytes);
        assert!(put(&component(10)).is_ok());
        let passwd = b"root:x:0:0:root:/root:/bin/bash\n";
        let core = b"\0asm\x01\x00\x00\x00";
        let broken = b"\0asm\x0d\x00\x01\x00\x07\xff";
        let empty = b"\0asm\x0d\x00\x01\x00";
        for (bytes, says) in [
            (&passwd[..], "header"),
            (&core[..], "core WebAssembly module"),
            (&broken[..], "invalid at byte"),
            (&empty[..], "does not export `wasi:http/incoming-handler`"),
        ] {
            let refused = put(bytes).expect_err("refused").to_string();
            assert!(refused.contains(says), "{refused}");
            assert!(!refused.contains("root"), "{refused}");
            assert!(!store.contains(&blake3::hash(bytes).to_hex()));
        }
    }

    #[test]
    fn concurrent_uploads_of_one_module_all_succeed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::open(dir.path()).expect("store");
        let bytes = component(1 << 20);
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
