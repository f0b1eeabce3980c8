//! Image archives checked as `docker load` reads them, so that only an archive a node can load
//! is stored. `manifest.json` (what `docker load` reads) names each image's config and layers;
//! every one must be a file in the tar, a config must be an image config with one `diff_id` per
//! layer, and a layer must be a tar (or compressed). Where the format gives a digest, the bytes
//! must match it: a `blobs/sha256/<hex>` path, the `diff_id` of an uncompressed layer, and every
//! descriptor of an OCI layout (`index.json`, which Docker 25+ writes beside `manifest.json`).
//!
//! Links: `docker save` before 25 stores a layer two images share once and makes the second
//! `<id>/layer.tar` a symbolic link to `../<other id>/layer.tar`, and `docker load` follows it
//! within the archive. So a named file may be a symbolic or hard link to another entry of the
//! tar (at most [`MAX_LINK_HOPS`] deep); a link that leaves the archive is refused. Links are
//! followed only for the named file itself, not for the directories on its path.
//!
//! Each entry is hashed at most once and each OCI blob parsed at most once, so the work is
//! bounded by the archive's size (at most [`crate::chain::MAX_BLOB_BYTES`]). Errors name entries and
//! positions, never the contents of a file: an upload of a private file must not come back in
//! an error.

use std::collections::{HashMap, HashSet};

use crate::tar::TarEntry;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Links followed from one named path before giving up (a loop, or a chain no save writes).
pub const MAX_LINK_HOPS: usize = 16;
/// Image indexes nested in `index.json`, at most.
pub const MAX_INDEX_DEPTH: usize = 4;

/// Why `bytes` are not an image archive a Docker engine loads, if they are not.
pub fn check_image_archive(bytes: &[u8]) -> Result<(), String> {
    let mut archive = Archive::read(bytes)?;
    let Some(manifest) = archive.file("manifest.json")? else {
        if archive.file("index.json")?.is_some() {
            return Err("an OCI layout without manifest.json: nodes load images with `docker load`, which reads the \
                        manifest.json that `docker save` writes; save the image with `docker save IMAGE -o FILE.tar`"
                .into());
        }
        return Err("a tar file without manifest.json at its top: make it with `docker save IMAGE -o FILE.tar`".into());
    };
    check_docker_manifest(&mut archive, manifest)?;
    if let Some(repositories) = archive.file("repositories")? {
        if !parse_json("repositories", archive.body(repositories))?.is_object() {
            return Err("repositories is not an object of repositories and their tags".into());
        }
    }
    if archive.file("index.json")?.is_some() || archive.file("oci-layout")?.is_some() {
        check_oci_layout(&mut archive)?;
    }
    Ok(())
}

/// The entries of a tar, by path.
struct Archive<'a> {
    bytes: &'a [u8],
    entries: Vec<TarEntry>,
    /// Each cleaned path to its last entry (a later entry of the same path replaces an earlier
    /// one when the tar is unpacked). Extension headers are left out.
    by_path: HashMap<String, usize>,
    /// The sha256 of each entry hashed so far, in hex.
    sha256: HashMap<usize, String>,
}

impl<'a> Archive<'a> {
    fn read(bytes: &'a [u8]) -> Result<Self, String> {
        let entries = crate::tar::entries(bytes)?;
        let mut by_path = HashMap::new();
        for (i, entry) in entries.iter().enumerate() {
            if matches!(entry.kind, b'x' | b'g' | b'L' | b'K') {
                continue;
            }
            if let Some(path) = clean(&entry.name) {
                by_path.insert(path, i);
            }
        }
        Ok(Self { bytes, entries, by_path, sha256: HashMap::new() })
    }

    /// The file at `path` (following links within the archive), if there is one.
    fn file(&self, path: &str) -> Result<Option<usize>, String> {
        let mut current = clean(path).ok_or_else(|| format!("{} is not a path inside the archive", show(path)))?;
        for _ in 0..=MAX_LINK_HOPS {
            let Some(&i) = self.by_path.get(&current) else {
                return Ok(None);
            };
            let entry = &self.entries[i];
            current = match entry.kind {
                0 | b'0' | b'7' => return Ok(Some(i)),
                // A hard link names its target from the archive's top.
                b'1' => clean(&entry.link),
                // A symbolic link, from the directory it is in.
                b'2' if !entry.link.starts_with('/') => {
                    let dir = current.rsplit_once('/').map_or("", |(dir, _)| dir);
                    clean(&format!("{dir}/{}", entry.link))
                }
                b'2' => None,
                _ => return Err(format!("{} is not a file", show(&entry.name))),
            }
            .ok_or_else(|| format!("{} is a link that leaves the archive", show(&entry.name)))?;
        }
        Err(format!("{} is a link followed by more than {MAX_LINK_HOPS} links", show(path)))
    }

    /// The file `what` names at `path`, which must be there.
    fn require(&self, what: &str, path: &str) -> Result<usize, String> {
        self.file(path)?.ok_or_else(|| format!("{what} names {}, which is not a file in the archive", show(path)))
    }

    fn body(&self, i: usize) -> &'a [u8] {
        let entry = &self.entries[i];
        // `crate::tar::entries` checked that every body lies inside the archive.
        &self.bytes[entry.header_at + 512..entry.header_at + 512 + entry.size]
    }

    /// The sha256 of entry `i` in hex, hashed once.
    fn sha256(&mut self, i: usize) -> String {
        let bytes = self.bytes;
        let entries = &self.entries;
        self.sha256
            .entry(i)
            .or_insert_with(|| {
                let entry = &entries[i];
                hex::encode(Sha256::digest(&bytes[entry.header_at + 512..entry.header_at + 512 + entry.size]))
            })
            .clone()
    }

    /// Checks that the file `what` names at `path` hashes to the digest its path gives, when the
    /// path is a `blobs/sha256/<hex>` one.
    fn check_named_digest(&mut self, what: &str, path: &str, i: usize) -> Result<(), String> {
        if let Some(hex) = clean(path).and_then(|p| p.strip_prefix("blobs/sha256/").map(str::to_string))
            && is_sha256_hex(&hex)
        {
            let actual = self.sha256(i);
            if actual != hex {
                return Err(format!("{what}: {} hashes to sha256:{actual}", show(path)));
            }
        }
        Ok(())
    }
}

/// `path` with `.` and empty components dropped and `..` applied, or `None` when it climbs
/// out of the archive's top (or names the top itself).
fn clean(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            part => parts.push(part),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// A path for an error: quoted when it looks like a path (as every tool writes them), else
/// only its length, so that no error repeats an arbitrary string from the upload.
fn show(path: &str) -> String {
    if !path.is_empty() && path.len() <= 200 && path.bytes().all(|b| b.is_ascii_graphic()) {
        format!("`{path}`")
    } else {
        format!("a path of {} bytes", path.len())
    }
}

fn is_sha256_hex(hex: &str) -> bool {
    hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `body` as JSON; the error says where it breaks, not what is there.
fn parse_json(what: &str, body: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Eof => format!("{what} is not JSON: it ends early"),
        _ => format!("{what} is not JSON: invalid at line {}, column {}", e.line(), e.column()),
    })
}

/// Whether a layer is compressed (`docker load` decompresses gzip, bzip2, xz and zstd).
fn is_compressed(layer: &[u8]) -> bool {
    [&b"\x1f\x8b"[..], b"BZh", b"\xfd7zXZ\0", b"\x28\xb5\x2f\xfd"].iter().any(|magic| layer.starts_with(magic))
}

/// Whether `body` reads as a tar to its end: its headers walk, and it stops at a block of zeros
/// or at the end of a block (a tail shorter than a header is what a tar reader fails on).
fn check_tar(body: &[u8]) -> Result<(), String> {
    let end = crate::tar::entries(body)?.last().map_or(0, |e| e.next_at);
    match body.get(end..end + 512) {
        Some(block) if block.iter().all(|b| *b == 0) => Ok(()),
        None if end == body.len() => Ok(()),
        _ => Err(format!("it ends inside a tar header at byte {end}")),
    }
}

/// `manifest.json`: a list of images, each with a `Config` and its `Layers`, as `docker load`
/// reads it.
fn check_docker_manifest(archive: &mut Archive, manifest: usize) -> Result<(), String> {
    let manifest = parse_json("manifest.json", archive.body(manifest))?;
    let images =
        manifest.as_array().ok_or("manifest.json is not a list of images (the format `docker save` writes)")?;
    if images.is_empty() {
        return Err("manifest.json names no image".into());
    }
    for (n, image) in images.iter().enumerate() {
        let at = format!("manifest.json's image {}", n + 1);
        let image = image.as_object().ok_or_else(|| format!("{at} is not an object"))?;
        let config_path =
            image.get("Config").and_then(Value::as_str).ok_or_else(|| format!("{at} has no `Config` path"))?;
        let layer_paths = match image.get("Layers") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(layers)) => layers
                .iter()
                .map(|l| l.as_str().ok_or_else(|| format!("{at} has a layer that is not a path")))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(format!("{at}'s `Layers` is not a list of paths")),
        };
        match image.get("RepoTags") {
            None | Some(Value::Null) => {}
            Some(Value::Array(tags)) if tags.iter().all(Value::is_string) => {}
            Some(_) => return Err(format!("{at}'s `RepoTags` is not a list of tags")),
        }

        let config_what = format!("{at}'s config");
        let config = archive.require(&config_what, config_path)?;
        archive.check_named_digest(&config_what, config_path, config)?;
        let diff_ids = check_image_config(&config_what, archive.body(config))?;
        if diff_ids.len() != layer_paths.len() {
            return Err(format!(
                "{at} names {} layers but its config lists {} (rootfs.diff_ids)",
                layer_paths.len(),
                diff_ids.len()
            ));
        }
        for (k, (path, diff_id)) in layer_paths.iter().zip(&diff_ids).enumerate() {
            let what = format!("{at}'s layer {}", k + 1);
            let layer = archive.require(&what, path)?;
            archive.check_named_digest(&what, path, layer)?;
            let body = archive.body(layer);
            if is_compressed(body) {
                continue;
            }
            check_tar(body).map_err(|e| format!("{what}, {}, is neither a tar nor compressed ({e})", show(path)))?;
            let actual = archive.sha256(layer);
            if diff_id.strip_prefix("sha256:") != Some(actual.as_str()) {
                return Err(format!(
                    "{what}, {}, hashes to sha256:{actual}, not to the diff_id its config lists for it",
                    show(path)
                ));
            }
        }
    }
    Ok(())
}

/// An image config: a JSON object for Linux with a `rootfs` of layers; its `diff_ids`.
fn check_image_config(what: &str, body: &[u8]) -> Result<Vec<String>, String> {
    let config = parse_json(what, body)?;
    let config = config.as_object().ok_or_else(|| format!("{what} is not an image config (a JSON object)"))?;
    match config.get("os").and_then(Value::as_str) {
        None | Some("" | "linux") => {}
        Some(_) => return Err(format!("{what} is for another OS than linux, which nodes do not run")),
    }
    let diff_ids = config
        .get("rootfs")
        .and_then(|r| r.get("diff_ids"))
        .and_then(Value::as_array)
        .ok_or_else(|| format!("{what} has no rootfs.diff_ids (it is not an image config)"))?;
    diff_ids
        .iter()
        .map(|d| d.as_str().map(str::to_string).ok_or_else(|| format!("{what} has a diff_id that is not a digest")))
        .collect()
}

const INDEX_TYPES: [&str; 2] =
    ["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"];
const MANIFEST_TYPES: [&str; 2] =
    ["application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"];

/// `oci-layout` and `index.json`, which Docker 25+ writes beside `manifest.json`: every blob
/// a descriptor names is in `blobs/sha256/` with that size and digest. The one exception is a
/// manifest reached through a nested image index, and what it names: `docker save` from a
/// containerd image store leaves out the platforms the engine does not hold (`docker load`
/// reads manifest.json, whose images were checked whole).
fn check_oci_layout(archive: &mut Archive) -> Result<(), String> {
    if let Some(layout) = archive.file("oci-layout")? {
        let layout = parse_json("oci-layout", archive.body(layout))?;
        if !layout.get("imageLayoutVersion").is_some_and(Value::is_string) {
            return Err("oci-layout has no imageLayoutVersion".into());
        }
    }
    let index = archive.file("index.json")?.ok_or("an oci-layout file without index.json")?;
    let index = parse_json("index.json", archive.body(index))?;
    check_index(archive, "index.json", &index, 0, &mut HashSet::new())
}

/// An image index's manifests, `depth` indexes down; `checked` holds the blobs already parsed.
fn check_index(
    archive: &mut Archive,
    at: &str,
    index: &Value,
    depth: usize,
    checked: &mut HashSet<String>,
) -> Result<(), String> {
    let manifests = match index.get("manifests") {
        // Docker 25+ writes `null` when no image it saved has a tag.
        None | Some(Value::Null) if index.is_object() => return Ok(()),
        Some(Value::Array(manifests)) => manifests,
        _ => return Err(format!("{at} is not an image index (it has no list of manifests)")),
    };
    for (n, descriptor) in manifests.iter().enumerate() {
        let what = format!("{at}'s manifest {}", n + 1);
        let Some((hex, blob)) = blob(archive, &what, descriptor, depth > 0)? else {
            continue;
        };
        if !checked.insert(hex.clone()) {
            continue;
        }
        let name = format!("blobs/sha256/{hex}");
        let parsed = parse_json(&name, archive.body(blob))?;
        let media_type =
            descriptor.get("mediaType").or_else(|| parsed.get("mediaType")).and_then(Value::as_str).unwrap_or_default();
        if INDEX_TYPES.contains(&media_type) || (media_type.is_empty() && parsed.get("manifests").is_some()) {
            if depth + 1 >= MAX_INDEX_DEPTH {
                return Err(format!("{what} nests image indexes more than {MAX_INDEX_DEPTH} deep"));
            }
            check_index(archive, &name, &parsed, depth + 1, checked)?;
        } else if MANIFEST_TYPES.contains(&media_type) || (media_type.is_empty() && parsed.get("config").is_some()) {
            check_image_manifest(archive, &name, &parsed, depth > 0)?;
        } else if depth == 0 {
            return Err(format!("{what} is neither an image manifest nor an image index"));
        }
        // Deeper down, other artifacts (attestations, signatures) are only checked as blobs.
    }
    Ok(())
}

/// An image manifest's config and layers.
fn check_image_manifest(archive: &mut Archive, at: &str, manifest: &Value, may_lack: bool) -> Result<(), String> {
    let config = manifest.get("config").ok_or_else(|| format!("{at} is not an image manifest (it has no config)"))?;
    blob(archive, &format!("{at}'s config"), config, may_lack)?;
    let layers = match manifest.get("layers") {
        None | Some(Value::Null) => &Vec::new(),
        Some(Value::Array(layers)) => layers,
        Some(_) => return Err(format!("{at}'s layers are not a list")),
    };
    for (k, layer) in layers.iter().enumerate() {
        blob(archive, &format!("{at}'s layer {}", k + 1), layer, may_lack)?;
    }
    Ok(())
}

/// The blob a descriptor names, checked against its size and digest: its hex digest and entry.
/// `None` when it is absent and `may_lack`.
fn blob(
    archive: &mut Archive,
    what: &str,
    descriptor: &Value,
    may_lack: bool,
) -> Result<Option<(String, usize)>, String> {
    let digest = descriptor
        .get("digest")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{what} is not a descriptor (it has no digest)"))?;
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|hex| is_sha256_hex(hex))
        .ok_or_else(|| format!("{what}'s digest is not sha256:<64 lower-case hex digits>"))?;
    let size = descriptor
        .get("size")
        .and_then(Value::as_u64)
        .ok_or_else(|| format!("{what} is not a descriptor (it has no size)"))?;
    let name = format!("blobs/sha256/{hex}");
    let Some(blob) = archive.file(&name)? else {
        if may_lack {
            return Ok(None);
        }
        return Err(format!("{what} names {name}, which is not a file in the archive"));
    };
    let actual_size = archive.body(blob).len();
    if u64::try_from(actual_size).ok() != Some(size) {
        return Err(format!("{what}: {name} holds {actual_size} bytes, not the {size} its descriptor gives"));
    }
    let actual = archive.sha256(blob);
    if actual != hex {
        return Err(format!("{what}: {name} hashes to sha256:{actual}"));
    }
    Ok(Some((hex.to_string(), blob)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    use crate::tar::build as tar;

    fn sha256(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    /// A layer: a tar holding one file.
    fn layer(text: &[u8]) -> Vec<u8> {
        tar(&[("hello.txt", text)])
    }

    fn config(layers: &[&[u8]]) -> Vec<u8> {
        let diff_ids: Vec<String> = layers.iter().map(|l| format!("sha256:{}", sha256(l))).collect();
        serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux", "config": {"Cmd": ["/hello"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .expect("json")
    }

    /// What `docker save` before 25 writes: `<id>.json`, `<id>/layer.tar`, `repositories`.
    pub(crate) fn old_docker_save() -> Vec<u8> {
        let (one, two) = (layer(b"one"), layer(b"two"));
        let config = config(&[&one, &two]);
        let id = sha256(&config);
        let manifest =
            format!(r#"[{{"Config":"{id}.json","RepoTags":["shop:v1"],"Layers":["aa/layer.tar","./bb/layer.tar"]}}]"#);
        tar(&[
            ("aa/", b""),
            ("aa/layer.tar", &one),
            ("bb/layer.tar", &two),
            (&format!("{id}.json"), &config),
            ("manifest.json", manifest.as_bytes()),
            ("repositories", br#"{"shop":{"v1":"bb"}}"#),
        ])
    }

    /// What `docker save` 25+ writes: blobs by digest, manifest.json, and an OCI layout whose
    /// image manifest (as Docker writes it) lists no layers.
    fn new_docker_save() -> Vec<u8> {
        let (one, two) = (layer(b"one"), layer(b"two"));
        let config = config(&[&one, &two]);
        let (c, l1, l2) = (sha256(&config), sha256(&one), sha256(&two));
        let manifest = format!(
            r#"[{{"Config":"blobs/sha256/{c}","RepoTags":["shop:v1"],"Layers":["blobs/sha256/{l1}","blobs/sha256/{l2}"]}}]"#
        );
        let oci_manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{c}","size":{}}},"layers":[]}}"#,
            config.len()
        );
        let m = sha256(oci_manifest.as_bytes());
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{m}","size":{}}}]}}"#,
            oci_manifest.len()
        );
        tar(&[
            (&format!("blobs/sha256/{c}"), &config),
            (&format!("blobs/sha256/{l1}"), &one),
            (&format!("blobs/sha256/{l2}"), &two),
            (&format!("blobs/sha256/{m}"), oci_manifest.as_bytes()),
            ("index.json", index.as_bytes()),
            ("manifest.json", manifest.as_bytes()),
            ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
            ("repositories", br#"{"shop":{"v1":"x"}}"#),
        ])
    }

    /// `archive` with the body of `name` replaced.
    fn replaced(archive: &[u8], name: &str, body: &[u8]) -> Vec<u8> {
        let entries = crate::tar::entries(archive).expect("walks");
        let kept: Vec<(String, Vec<u8>)> = entries
            .iter()
            .map(|e| {
                let old = archive[e.header_at + 512..e.header_at + 512 + e.size].to_vec();
                (e.name.clone(), if e.name == name { body.to_vec() } else { old })
            })
            .collect();
        let refs: Vec<(&str, &[u8])> = kept.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
        tar(&refs)
    }

    /// `archive` without the entry `name`.
    fn without(archive: &[u8], name: &str) -> Vec<u8> {
        let entries = crate::tar::entries(archive).expect("walks");
        let kept: Vec<(&str, &[u8])> = entries
            .iter()
            .filter(|e| e.name != name)
            .map(|e| (e.name.as_str(), &archive[e.header_at + 512..e.header_at + 512 + e.size]))
            .collect();
        tar(&kept)
    }

    fn refused(archive: &[u8], says: &str) {
        let err = check_image_archive(archive).expect_err("refused");
        assert!(err.contains(says), "{err:?} does not say {says:?}");
    }

    #[test]
    fn docker_save_archives_of_both_layouts_pass() {
        check_image_archive(&old_docker_save()).expect("an old docker save");
        check_image_archive(&new_docker_save()).expect("a docker 25+ save");
    }

    #[test]
    fn a_shared_layer_may_be_a_link_within_the_archive_but_not_out_of_it() {
        let one = layer(b"one");
        let config = config(&[&one, &one]);
        let manifest = br#"[{"Config":"c.json","Layers":["aa/layer.tar","bb/layer.tar"]}]"#;
        let with_link = |kind: u8, target: &str| {
            let mut link = crate::tar::header("bb/layer.tar", 0);
            link[156] = kind;
            link[157..157 + target.len()].copy_from_slice(target.as_bytes());
            crate::tar::set_checksum(&mut link);
            let mut archive = tar(&[("aa/layer.tar", &one), ("c.json", &config), ("manifest.json", manifest)]);
            archive.truncate(archive.len() - 1024);
            archive.extend_from_slice(&link);
            archive.extend_from_slice(&[0u8; 1024]);
            archive
        };
        check_image_archive(&with_link(b'2', "../aa/layer.tar")).expect("a symbolic link, as docker save makes");
        check_image_archive(&with_link(b'1', "aa/layer.tar")).expect("a hard link");
        refused(&with_link(b'2', "/etc/passwd"), "a link that leaves the archive");
        refused(&with_link(b'2', "../../etc/passwd"), "a link that leaves the archive");
        refused(&with_link(b'2', "../cc/layer.tar"), "`bb/layer.tar`, which is not a file in the archive");
        refused(&with_link(b'2', "layer.tar"), "more than 16 links");
        refused(&with_link(b'5', ""), "`bb/layer.tar` is not a file");
    }

    /// The config both saves hold, and its sha256.
    fn saved_config() -> (Vec<u8>, String) {
        let config = config(&[&layer(b"one"), &layer(b"two")]);
        let digest = sha256(&config);
        (config, digest)
    }

    /// The text of `name` in `archive`.
    fn text_of(archive: &[u8], name: &str) -> String {
        let entries = crate::tar::entries(archive).expect("walks");
        let e = entries.iter().find(|e| e.name == name).expect("the entry");
        String::from_utf8(archive[e.header_at + 512..e.header_at + 512 + e.size].to_vec()).expect("utf8")
    }

    #[test]
    fn a_missing_config_or_layer_is_refused() {
        let old = old_docker_save();
        refused(&without(&old, "bb/layer.tar"), "image 1's layer 2 names `./bb/layer.tar`, which is not a file");
        let (_, config) = saved_config();
        refused(&without(&old, &format!("{config}.json")), "image 1's config names");
        let new = new_docker_save();
        refused(&without(&new, &format!("blobs/sha256/{config}")), "image 1's config names `blobs/sha256/");
        let one_layer = format!(r#"[{{"Config":"{config}.json","Layers":["aa/layer.tar"]}}]"#);
        refused(&replaced(&old, "manifest.json", one_layer.as_bytes()), "names 1 layers but its config lists 2");
    }

    #[test]
    fn digests_and_sizes_must_match() {
        // A layer whose bytes are not those its blobs/sha256 path names.
        let new = new_docker_save();
        let layer_name = format!("blobs/sha256/{}", sha256(&layer(b"one")));
        refused(&replaced(&new, &layer_name, &layer(b"other")), "image 1's layer 1: `blobs/sha256/");
        // An old layout's layer that is not the one its config's diff_id names.
        let old = old_docker_save();
        refused(&replaced(&old, "aa/layer.tar", &layer(b"other")), "not to the diff_id its config lists");
        refused(&replaced(&old, "aa/layer.tar", b"plain words, not a tar"), "neither a tar nor compressed");
        // A compressed layer is taken as it is (its diff_id is that of its contents).
        check_image_archive(&replaced(&old, "aa/layer.tar", b"\x1f\x8b\x08 gzip")).expect("compressed");
        // An OCI descriptor whose size or digest is off.
        let index = text_of(&new, "index.json");
        let size_at = index.find(r#""size":"#).expect("size") + 7;
        let size_end = size_at + index[size_at..].find('}').expect("end");
        let size: u64 = index[size_at..size_end].parse().expect("a size");
        let bigger = format!("{}{}{}", &index[..size_at], size + 1, &index[size_end..]);
        let says = format!("bytes, not the {} its descriptor gives", size + 1);
        refused(&replaced(&new, "index.json", bigger.as_bytes()), &says);
        let digest_at = index.find("sha256:").expect("digest") + 7;
        let flipped = if &index[digest_at..digest_at + 1] == "0" { "1" } else { "0" };
        let other = format!("{}{flipped}{}", &index[..digest_at], &index[digest_at + 1..]);
        refused(&replaced(&new, "index.json", other.as_bytes()), "which is not a file in the archive");
        // A blob of the right size under a name that is not its digest.
        let m = &index[digest_at..digest_at + 64];
        let manifest = text_of(&new, &format!("blobs/sha256/{m}"));
        let changed = manifest.replacen("\"schemaVersion\":2", "\"schemaVersion\":3", 1);
        assert_eq!((changed.len(), changed != manifest), (manifest.len(), true));
        refused(&replaced(&new, &format!("blobs/sha256/{m}"), changed.as_bytes()), "hashes to sha256:");
    }

    #[test]
    fn unparsable_or_empty_manifests_and_junk_are_refused() {
        let old = old_docker_save();
        refused(&replaced(&old, "manifest.json", b"[{\"Config\": "), "manifest.json is not JSON: it ends early");
        refused(&replaced(&old, "manifest.json", b"[]"), "manifest.json names no image");
        refused(&replaced(&old, "manifest.json", br#"{"secret":"hunter2"}"#), "not a list of images");
        refused(&replaced(&old, "repositories", b"{"), "repositories is not JSON");
        let random: Vec<u8> = (0..4096).map(|_| rand::random::<u8>()).collect();
        let junk = tar(&[("manifest.json", &random), ("blob", &random)]);
        refused(&junk, "manifest.json is not JSON");
        refused(&tar(&[("notes.txt", b"private words")]), "without manifest.json");
        let new = new_docker_save();
        refused(&without(&new, "manifest.json"), "an OCI layout without manifest.json");
        refused(&replaced(&new, "index.json", b"{\"manifests\": 7}"), "index.json is not an image index");
        refused(&replaced(&new, "oci-layout", b"{}"), "oci-layout has no imageLayoutVersion");
    }

    #[test]
    fn errors_never_quote_the_files() {
        let secret = "root:x:0:0:root:/root:/bin/bash";
        let old = old_docker_save();
        for body in [
            secret.to_string(),
            format!(r#"["{secret}"]"#),
            format!(r#"[{{"Config":"{secret} {secret}","Layers":[]}}]"#),
            format!(r#"[{{"Config":{{"{secret}":1}},"Layers":[]}}]"#),
        ] {
            let err = check_image_archive(&replaced(&old, "manifest.json", body.as_bytes())).expect_err("refused");
            assert!(!err.contains("root"), "{err}");
        }
    }

    #[test]
    fn nested_indexes_are_followed_and_may_lack_other_platforms() {
        // A containerd image store's save: index.json names an image index, which names this
        // platform's manifest (present) and another's (left out).
        let one = layer(b"one");
        let config = config(&[&one]);
        let (c, l) = (sha256(&config), sha256(&one));
        let manifest = format!(
            r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"digest":"sha256:{c}","size":{}}},"layers":[{{"digest":"sha256:{l}","size":{}}}]}}"#,
            config.len(),
            one.len()
        );
        let m = sha256(manifest.as_bytes());
        let absent = "e".repeat(64);
        let platforms = format!(
            r#"{{"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"digest":"sha256:{m}","size":{}}},{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{absent}","size":10}}]}}"#,
            manifest.len()
        );
        let p = sha256(platforms.as_bytes());
        let index = format!(r#"{{"manifests":[{{"digest":"sha256:{p}","size":{}}}]}}"#, platforms.len());
        let saved = format!(r#"[{{"Config":"blobs/sha256/{c}","Layers":["blobs/sha256/{l}"]}}]"#);
        let archive = |index: &str, with_layer: bool| {
            let mut entries: Vec<(String, Vec<u8>)> = vec![
                (format!("blobs/sha256/{c}"), config.clone()),
                (format!("blobs/sha256/{m}"), manifest.clone().into_bytes()),
                (format!("blobs/sha256/{p}"), platforms.clone().into_bytes()),
                ("index.json".into(), index.as_bytes().to_vec()),
                ("manifest.json".into(), saved.clone().into_bytes()),
            ];
            if with_layer {
                entries.push((format!("blobs/sha256/{l}"), one.clone()));
            }
            let refs: Vec<(&str, &[u8])> = entries.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
            tar(&refs)
        };
        check_image_archive(&archive(&index, true)).expect("a containerd store's save");
        refused(&archive(&index, false), "which is not a file in the archive");
        // index.json itself must name blobs that are there.
        let top = format!(r#"{{"manifests":[{{"digest":"sha256:{absent}","size":10}}]}}"#);
        refused(&archive(&top, true), "index.json's manifest 1 names blobs/sha256/eeee");
    }

    #[test]
    fn indexes_nest_only_so_deep() {
        let one = layer(b"one");
        let config = config(&[&one]);
        let (c, l) = (sha256(&config), sha256(&one));
        let saved = format!(r#"[{{"Config":"blobs/sha256/{c}","Layers":["blobs/sha256/{l}"]}}]"#);
        let mut entries: Vec<(String, Vec<u8>)> = vec![
            (format!("blobs/sha256/{c}"), config.clone()),
            (format!("blobs/sha256/{l}"), one.clone()),
            ("manifest.json".into(), saved.into_bytes()),
        ];
        // Each index names the one before it; the first names nothing.
        let mut inner = r#"{"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#.to_string();
        for _ in 0..MAX_INDEX_DEPTH {
            let digest = sha256(inner.as_bytes());
            entries.push((format!("blobs/sha256/{digest}"), inner.clone().into_bytes()));
            inner = format!(
                r#"{{"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"sha256:{digest}","size":{}}}]}}"#,
                inner.len()
            );
        }
        let build = |index: &str| {
            let mut all = entries.clone();
            all.push(("index.json".into(), index.as_bytes().to_vec()));
            let refs: Vec<(&str, &[u8])> = all.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
            tar(&refs)
        };
        refused(&build(&inner), "more than 4 deep");
        // One level less is fine: index.json's own list holds the blob index.json would be.
        let shallower: Value = serde_json::from_str(&inner).expect("json");
        let digest = shallower["manifests"][0]["digest"].as_str().expect("digest").trim_start_matches("sha256:");
        let body = entries.iter().find(|(n, _)| n.ends_with(digest)).expect("blob").1.clone();
        check_image_archive(&build(&String::from_utf8(body).expect("utf8"))).expect("4 deep");
    }
}
