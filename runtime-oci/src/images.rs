//! Where a container's image comes from: an uploaded archive (`docker load`), the node's own
//! images, or a registry. Either way the container runs the image by its id, resolved here:
//! a tag can be moved by anyone who loads an archive, an id cannot.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bollard::Docker;
use futures::StreamExt;

/// The longest a pull may take before the start fails (a registry that drips bytes must not
/// hold the node's image lock for ever).
const PULL_TIMEOUT: Duration = Duration::from_secs(300);

/// Image ids of the archives this process loaded, by the archive's content hash.
#[derive(Default)]
pub(crate) struct Images {
    loaded: Mutex<HashMap<String, String>>,
    /// One load or pull at a time: two would fight over one disk.
    busy: tokio::sync::Mutex<()>,
}

impl Images {
    /// The id of the image to run: loaded from `archive` when there is one, else `image` as
    /// the engine has it, else pulled.
    pub(crate) async fn resolve(
        &self,
        docker: &Docker,
        image: &str,
        archive: Option<&bytes::Bytes>,
    ) -> Result<String, String> {
        let _one = self.busy.lock().await;
        if let Some(archive) = archive {
            let hash = blake3::hash(archive).to_hex().to_string();
            let known = self.loaded.lock().unwrap_or_else(|e| e.into_inner()).get(&hash).cloned();
            if let Some(id) = known
                && docker.inspect_image(&id).await.is_ok()
            {
                return Ok(id);
            }
            let untagged = untag_archive(archive, image)?;
            let id = load(docker, untagged).await?;
            self.loaded.lock().unwrap_or_else(|e| e.into_inner()).insert(hash, id.clone());
            return Ok(id);
        }
        if let Some(id) = image_id(docker, image).await {
            return Ok(id);
        }
        match tokio::time::timeout(PULL_TIMEOUT, pull(docker, image)).await {
            Ok(pulled) => pulled?,
            Err(_) => return Err(format!("pulling image `{image}` took over {} s", PULL_TIMEOUT.as_secs())),
        }
        image_id(docker, image).await.ok_or_else(|| format!("image `{image}` is not on this node after a pull"))
    }
}

async fn image_id(docker: &Docker, image: &str) -> Option<String> {
    docker.inspect_image(image).await.ok()?.id
}

/// `docker load` of an archive; the id of the image it held.
async fn load(docker: &Docker, archive: Vec<u8>) -> Result<String, String> {
    let options = bollard::query_parameters::ImportImageOptions { quiet: true, platform: None };
    let mut progress = docker.import_image(options, bollard::body_full(archive.into()), None);
    let mut id = None;
    while let Some(step) = progress.next().await {
        match step {
            Ok(info) => {
                if let Some(detail) = info.error_detail {
                    return Err(format!("loading the image archive: {}", detail.message.unwrap_or_default()));
                }
                // "Loaded image ID: sha256:..." (the archive's tags were taken out).
                if let Some(found) = info.stream.as_deref().and_then(|s| s.trim().strip_prefix("Loaded image ID: ")) {
                    id = Some(found.to_string());
                }
            }
            Err(e) => return Err(format!("loading the image archive: {e}")),
        }
    }
    id.ok_or_else(|| "loading the image archive: the engine did not say which image it loaded".to_string())
}

/// The archive with its tags taken out of `manifest.json` (and its legacy `repositories`
/// file dropped), so that loading it tags nothing: an app's archive must not move a tag
/// another app runs. It must be a `docker save` archive whose tags include `image`.
fn untag_archive(archive: &[u8], image: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(archive.len());
    let mut found = false;
    for entry in model::tar::entries(archive).map_err(|e| format!("the image archive: {e}"))? {
        let body = &archive[entry.header_at + 512..entry.header_at + 512 + entry.size];
        match entry.name.as_str() {
            "repositories" => {}
            "manifest.json" => {
                let mut manifest: Vec<serde_json::Value> = serde_json::from_slice(body)
                    .map_err(|e| format!("the image archive's manifest.json is not a docker save manifest: {e}"))?;
                let tags: Vec<String> = manifest
                    .iter()
                    .flat_map(|m| m["RepoTags"].as_array().cloned().unwrap_or_default())
                    .filter_map(|t| t.as_str().map(str::to_string))
                    .collect();
                if !tags.iter().any(|t| t == image) {
                    return Err(format!(
                        "the image archive holds {}, not `{image}`: save the very image the manifest names",
                        if tags.is_empty() { "no tagged image".to_string() } else { tags.join(", ") }
                    ));
                }
                for m in &mut manifest {
                    m["RepoTags"] = serde_json::Value::Null;
                }
                let body = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
                out.extend_from_slice(&model::tar::header("manifest.json", body.len()));
                out.extend_from_slice(&body);
                out.resize(out.len().div_ceil(512) * 512, 0);
                found = true;
            }
            _ => out.extend_from_slice(&archive[entry.header_at..entry.next_at]),
        }
    }
    if !found {
        return Err("the image archive has no manifest.json: make it with `docker save IMAGE -o FILE.tar`".into());
    }
    out.extend_from_slice(&[0u8; 1024]);
    Ok(out)
}

/// Pulls `image` from its registry. Needs network access to the registry; public images only
/// (`repoauth` is refused when a spec is read).
async fn pull(docker: &Docker, image: &str) -> Result<(), String> {
    let (name, tag) = split_tag(image);
    let options = bollard::query_parameters::CreateImageOptions {
        from_image: Some(name.to_string()),
        tag: Some(tag.to_string()),
        ..Default::default()
    };
    let mut progress = docker.create_image(Some(options), None, None);
    while let Some(step) = progress.next().await {
        if let Err(e) = step {
            return Err(format!(
                "image `{image}` is not on this node and pulling it failed ({e}); pulls need the registry to be \
                 reachable, or upload the image with `image_archive`"
            ));
        }
    }
    Ok(())
}

/// `name:tag` split at the tag's colon (a registry's port colon comes before the last `/`);
/// `latest` when there is no tag. A digest reference is pulled whole.
fn split_tag(image: &str) -> (&str, &str) {
    if image.contains('@') {
        return (image, "");
    }
    match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, tag),
        _ => (image, "latest"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_split_after_the_registry_port() {
        assert_eq!(split_tag("busybox:1.36"), ("busybox", "1.36"));
        assert_eq!(split_tag("busybox"), ("busybox", "latest"));
        assert_eq!(split_tag("registry.local:5000/team/app"), ("registry.local:5000/team/app", "latest"));
        assert_eq!(split_tag("registry.local:5000/app:v2"), ("registry.local:5000/app", "v2"));
    }

    use model::tar::build as tar;

    #[test]
    fn an_archive_loads_untagged_and_only_for_the_image_it_holds() {
        let manifest = br#"[{"Config":"c.json","RepoTags":["shop:v1"],"Layers":["l/layer.tar"]}]"#;
        let archive = tar(&[("c.json", b"{}"), ("manifest.json", manifest), ("repositories", b"{}")]);
        let untagged = untag_archive(&archive, "shop:v1").expect("the image it names");
        let text = String::from_utf8_lossy(&untagged);
        assert!(text.contains(r#""RepoTags":null"#) && !text.contains("shop:v1"), "{text}");
        assert!(!text.contains("repositories"));
        let err = untag_archive(&archive, "nginx:latest").expect_err("another image");
        assert!(err.contains("holds shop:v1, not `nginx:latest`"), "{err}");
        assert!(untag_archive(&tar(&[("notes", b"x")]), "shop:v1").is_err());
    }
}
