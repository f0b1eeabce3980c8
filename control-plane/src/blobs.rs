//! Content-addressed module storage: `PUT /v1/blobs/{blake3}` before a deploy, fetched by agents.
//! Only the hash goes on chain; the bytes live here, one file per hash.

use std::path::{Path, PathBuf};

mod archive;

pub use archive::check_image_archive;

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

/// Why `bytes` are not a valid WebAssembly component, if they are not. Only components run
/// here, so nothing else is stored (or served back). The reason says what is wrong and where,
/// never what the bytes are: an upload of a private file must not come back in an error.
pub fn check_component(bytes: &[u8]) -> Result<(), String> {
    if !bytes.starts_with(b"\0asm") {
        return Err("not a WebAssembly binary (it does not start with the `\\0asm` header)".into());
    }
    if wasmparser::Parser::is_core_wasm(bytes) {
        return Err("a core WebAssembly module, not a component: build for wasm32-wasip2, or wrap it with \
                    `wasm-tools component new`"
            .into());
    }
    if !wasmparser::Parser::is_component(bytes) {
        return Err("an unknown WebAssembly version or layer".into());
    }
    // The standard features only, as the nodes' wasmtime engine enables by default: a module
    // that needs a proposal they do not run would be paid for and never start.
    let mut validator = wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::default());
    let invalid = |e: wasmparser::BinaryReaderError| format!("invalid at byte {}: {}", e.offset(), e.message());
    validator.validate_all(bytes).map_err(invalid)?;
    // Nodes run it as a wasi:http proxy: it must export the incoming handler (at the top level,
    // not inside a nested component).
    let mut depth = 0i32;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload.map_err(invalid)? {
            wasmparser::Payload::ModuleSection { .. } | wasmparser::Payload::ComponentSection { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth -= 1,
            wasmparser::Payload::ComponentExportSection(exports) if depth == 0 => {
                for export in exports {
                    if export.map_err(invalid)?.name.name.starts_with(HTTP_HANDLER) {
                        return Ok(());
                    }
                }
            }
            _ => {}
        }
    }
    Err(format!(
        "it does not export `{HTTP_HANDLER}`: build it as a wasi:http component (the wasm32-wasip2 target and an \
         http proxy export)"
    ))
}

/// What a stored blob is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobKind {
    /// A WebAssembly component (a `wasm` module).
    Component,
    /// A container image archive (an `image_archive`).
    ImageArchive,
}

impl BlobKind {
    /// The kind of blob whose first bytes are `head` (at least 512 of them for an archive).
    pub fn of(head: &[u8]) -> Option<BlobKind> {
        if head.starts_with(b"\0asm") {
            Some(BlobKind::Component)
        } else if is_tar(head) {
            Some(BlobKind::ImageArchive)
        } else {
            None
        }
    }
}

/// Whether `bytes` begin with a POSIX tar header (`ustar` at offset 257).
fn is_tar(bytes: &[u8]) -> bool {
    bytes.get(257..262) == Some(b"ustar".as_slice())
}

/// Checks an upload: a WebAssembly component, or a container image archive.
pub fn check_blob(bytes: &[u8]) -> Result<BlobKind, BlobError> {
    if is_tar(bytes) {
        check_image_archive(bytes).map_err(BlobError::NotAnArchive)?;
        return Ok(BlobKind::ImageArchive);
    }
    match check_component(bytes) {
        Ok(()) => Ok(BlobKind::Component),
        Err(why) if !bytes.starts_with(b"\0asm") => {
            Err(BlobError::NotAComponent(format!("{why}, nor an image archive (a `docker save` tar)")))
        }
        Err(why) => Err(BlobError::NotAComponent(why)),
    }
}

/// The interface a node calls to serve requests.
const HTTP_HANDLER: &str = "wasi:http/incoming-handler";

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

    use model::tar::build as tar;

    #[test]
    fn image_archives_are_told_from_other_tars() {
        let saved = archive::tests::old_docker_save();
        assert_eq!(check_blob(&saved).expect("an archive"), BlobKind::ImageArchive);
        assert_eq!(BlobKind::of(&saved[..512]), Some(BlobKind::ImageArchive));
        let other = tar(&[("notes.txt", b"private words")]);
        let err = check_blob(&other).expect_err("not an image").to_string();
        assert!(err.contains("without manifest.json") && !err.contains("private"), "{err}");
        let junk = tar(&[("manifest.json", b"private words")]);
        let err = check_blob(&junk).expect_err("not an image").to_string();
        assert!(
            err.starts_with("not an image archive: manifest.json is not JSON") && !err.contains("private"),
            "{err}"
        );
        let mut broken = saved.clone();
        broken[124..135].copy_from_slice(b"99999999999");
        assert!(check_blob(&broken).is_err());
        let text = check_blob(b"root:x:0:0").expect_err("text").to_string();
        assert!(text.contains("not a WebAssembly component") && text.contains("nor an image archive"), "{text}");
    }

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
