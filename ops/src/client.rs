//! A small client of the `/v1/` API that turns error bodies into readable errors.

use model::api::ErrorBody;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// An API client.
#[derive(Clone)]
pub struct ApiClient {
    base: String,
    http: reqwest::Client,
}

impl ApiClient {
    /// A client of the API at `base`.
    pub fn new(base: &str) -> Self {
        Self { base: base.trim_end_matches('/').to_string(), http: reqwest::Client::new() }
    }

    async fn finish<T: DeserializeOwned>(&self, resp: Result<reqwest::Response, reqwest::Error>) -> anyhow::Result<T> {
        let resp = resp.map_err(|e| anyhow::anyhow!("cannot reach the control plane at {}: {e}", self.base))?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        if status.is_success() {
            return Ok(serde_json::from_slice(&bytes)?);
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => anyhow::bail!("{} ({status})", body.error.message),
            Err(_) => anyhow::bail!("{status}: {}", String::from_utf8_lossy(&bytes)),
        }
    }

    /// GET a JSON document.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let resp = self.http.get(format!("{}{path}", self.base)).send().await;
        self.finish(resp).await
    }

    /// POST JSON.
    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> anyhow::Result<T> {
        let resp = self.http.post(format!("{}{path}", self.base)).json(body).send().await;
        self.finish(resp).await
    }

    /// Uploads a module; idempotent.
    pub async fn put_blob(&self, hash: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
        let resp = self.http.put(format!("{}/v1/blobs/{hash}", self.base)).body(bytes).send().await;
        let resp = resp.map_err(|e| anyhow::anyhow!("cannot reach the control plane at {}: {e}", self.base))?;
        if !resp.status().is_success() {
            let status = resp.status();
            anyhow::bail!("uploading module {hash}: {status}: {}", resp.text().await.unwrap_or_default());
        }
        Ok(())
    }
}
