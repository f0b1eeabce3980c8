//! What a blob (a module or an image archive) must be: a WebAssembly component that exports the
//! wasi:http handler, or an image archive `docker load` reads ([`archive`]). The control plane
//! stores nothing else, and `fluxctl` checks with the same rules before it pays for an upload.
//! The reasons say what is wrong and where, never what the bytes are: an upload of a private
//! file must not come back in an error.

pub mod archive;

pub use archive::check_image_archive;

/// Why a blob's content is refused (the reason never quotes it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentError {
    /// Not a WebAssembly component.
    #[error("not a WebAssembly component: {0}")]
    NotAComponent(String),
    /// A tar file, but not an image archive.
    #[error("not an image archive: {0}")]
    NotAnArchive(String),
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

/// Checks a blob's content: a WebAssembly component, or a container image archive.
pub fn check(bytes: &[u8]) -> Result<BlobKind, ContentError> {
    if is_tar(bytes) {
        check_image_archive(bytes).map_err(ContentError::NotAnArchive)?;
        return Ok(BlobKind::ImageArchive);
    }
    match check_component(bytes) {
        Ok(()) => Ok(BlobKind::Component),
        Err(why) if !bytes.starts_with(b"\0asm") => {
            Err(ContentError::NotAComponent(format!("{why}, nor an image archive (a `docker save` tar)")))
        }
        Err(why) => Err(ContentError::NotAComponent(why)),
    }
}

/// The interface a node calls to serve requests.
const HTTP_HANDLER: &str = "wasi:http/incoming-handler";

#[cfg(test)]
mod tests {
    use super::*;

    use crate::tar::build as tar;

    #[test]
    fn image_archives_are_told_from_other_tars() {
        let saved = archive::tests::old_docker_save();
        assert_eq!(check(&saved).expect("an archive"), BlobKind::ImageArchive);
        assert_eq!(BlobKind::of(&saved[..512]), Some(BlobKind::ImageArchive));
        let other = tar(&[("notes.txt", b"private words")]);
        let err = check(&other).expect_err("not an image").to_string();
        assert!(err.contains("without manifest.json") && !err.contains("private"), "{err}");
        let junk = tar(&[("manifest.json", b"private words")]);
        let err = check(&junk).expect_err("not an image").to_string();
        assert!(
            err.starts_with("not an image archive: manifest.json is not JSON") && !err.contains("private"),
            "{err}"
        );
        let mut broken = saved.clone();
        broken[124..135].copy_from_slice(b"99999999999");
        assert!(check(&broken).is_err());
        let text = check(b"root:x:0:0").expect_err("text").to_string();
        assert!(text.contains("not a WebAssembly component") && text.contains("nor an image archive"), "{text}");
    }
}
