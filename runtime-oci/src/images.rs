//! Where a container's image comes from: an uploaded archive (`docker load`), the node's own
//! images, or a registry.

use std::collections::HashSet;
use std::sync::Mutex;

use bollard::Docker;
use futures::StreamExt;

/// The archives this process loaded, by content hash: loading one again is skipped.
#[derive(Default)]
pub(crate) struct Images {
    loaded: Mutex<HashSet<String>>,
    /// One load or pull at a time: two would fight over one disk.
    busy: tokio::sync::Mutex<()>,
}

impl Images {
    /// Makes `image` present on the engine: from `archive` when there is one, else as it is
    /// there, else pulled.
    pub(crate) async fn ensure(
        &self,
        docker: &Docker,
        image: &str,
        archive: Option<&bytes::Bytes>,
    ) -> Result<(), String> {
        let _one = self.busy.lock().await;
        if let Some(archive) = archive {
            let hash = blake3::hash(archive).to_hex().to_string();
            let seen = self.loaded.lock().unwrap_or_else(|e| e.into_inner()).contains(&hash);
            if !seen || !present(docker, image).await {
                load(docker, archive).await?;
                self.loaded.lock().unwrap_or_else(|e| e.into_inner()).insert(hash);
            }
            if !present(docker, image).await {
                return Err(format!(
                    "the image archive does not hold `{image}`: it must be a `docker save` (or OCI layout) archive of \
                     that very name and tag"
                ));
            }
            return Ok(());
        }
        if present(docker, image).await {
            return Ok(());
        }
        pull(docker, image).await
    }
}

async fn present(docker: &Docker, image: &str) -> bool {
    docker.inspect_image(image).await.is_ok()
}

/// `docker load` of an archive.
async fn load(docker: &Docker, archive: &bytes::Bytes) -> Result<(), String> {
    let options = bollard::query_parameters::ImportImageOptions { quiet: true, platform: None };
    let mut progress = docker.import_image(options, bollard::body_full(archive.clone()), None);
    while let Some(step) = progress.next().await {
        match step {
            Ok(info) => {
                if let Some(detail) = info.error_detail {
                    return Err(format!("loading the image archive: {}", detail.message.unwrap_or_default()));
                }
            }
            Err(e) => return Err(format!("loading the image archive: {e}")),
        }
    }
    Ok(())
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
    if present(docker, image).await { Ok(()) } else { Err(format!("image `{image}` is not on this node after a pull")) }
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
    #[test]
    fn tags_split_after_the_registry_port() {
        assert_eq!(super::split_tag("busybox:1.36"), ("busybox", "1.36"));
        assert_eq!(super::split_tag("busybox"), ("busybox", "latest"));
        assert_eq!(super::split_tag("registry.local:5000/team/app"), ("registry.local:5000/team/app", "latest"));
        assert_eq!(super::split_tag("registry.local:5000/app:v2"), ("registry.local:5000/app", "v2"));
    }
}
