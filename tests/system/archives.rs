//! Image archives as a real engine writes them: `docker save` of an image `docker build` made
//! passes the control plane's archive check, and the same archive with a layer changed or
//! taken out is refused by the check and by `docker load` alike.

use crate::oci::BusyboxImage;

/// The archive without the entry at `index` (its header and body).
fn without_entry(archive: &[u8], entries: &[model::tar::TarEntry], index: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(archive.len());
    for (i, entry) in entries.iter().enumerate() {
        if i != index {
            out.extend_from_slice(&archive[entry.header_at..entry.next_at]);
        }
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

#[test]
fn a_real_docker_save_passes_the_archive_check_and_a_tampered_one_does_not() {
    let image = BusyboxImage::build();
    let dir = tempfile::tempdir().expect("tempdir");
    let saved = dir.path().join("image.tar");
    image.save(&saved);
    let archive = std::fs::read(&saved).expect("the saved archive");
    control_plane::blobs::check_image_archive(&archive).expect("docker save's archive passes the check");

    let entries = model::tar::entries(&archive).expect("a tar");
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    if names.iter().any(|n| n.ends_with("/layer.tar")) {
        // Before Docker 25: `<id>/layer.tar`, the repeated layer a link to the first.
        assert!(
            entries.iter().any(|e| e.kind == b'2' && e.name.ends_with("/layer.tar")),
            "no layer is a link: {names:?}"
        );
    } else {
        // Docker 25+: blobs by digest, an OCI layout beside manifest.json.
        assert!(names.contains(&"index.json") && names.iter().any(|n| n.starts_with("blobs/sha256/")), "{names:?}");
    }

    // The engine skips a layer it already holds, so it loads the tampered archives without
    // the image.
    image.remove_from_engine();

    // A layer of this image's own (the one holding `built.txt`, which names its tag; the
    // busybox layer may be held by other tests' images, and the engine would not read it) with
    // one byte changed: its digest no longer holds.
    let marker = format!("built as {}", image.tag);
    let at = archive.windows(marker.len()).position(|w| w == marker.as_bytes()).expect("built.txt in a layer");
    let (layer, _) = entries
        .iter()
        .enumerate()
        .find(|(_, e)| e.header_at + 512 <= at && at < e.header_at + 512 + e.size)
        .expect("the layer holding built.txt");
    let mut changed = archive.clone();
    changed[at] ^= 0xff;
    let err = control_plane::blobs::check_image_archive(&changed).expect_err("a changed layer");
    assert!(err.contains("hashes to sha256:"), "{err}");
    let changed_path = dir.path().join("changed.tar");
    std::fs::write(&changed_path, &changed).expect("write");
    let engine = BusyboxImage::load(&changed_path).expect_err("the engine refuses a changed layer too");
    eprintln!("the check: {err}\nthe engine: {}", engine.trim());

    // The layer taken out: the manifest names a file the archive lacks.
    let missing = without_entry(&archive, &entries, layer);
    let err = control_plane::blobs::check_image_archive(&missing).expect_err("a missing layer");
    assert!(err.contains("which is not a file in the archive"), "{err}");
    let missing_path = dir.path().join("missing.tar");
    std::fs::write(&missing_path, &missing).expect("write");
    BusyboxImage::load(&missing_path).expect_err("the engine refuses a missing layer too");
}
