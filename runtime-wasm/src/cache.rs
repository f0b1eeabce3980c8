//! Compiled components, keyed by the blake3 hash of their bytes: in memory, and on disk as
//! precompiled artifacts so a restart does not recompile.

use std::path::PathBuf;
use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::Mutex;
use wasmtime::component::{Component, Linker};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::engine::WasmEngine;
use crate::serve::GuestState;

/// Compiled, pre-linked components.
#[derive(Clone)]
pub struct ComponentCache {
    engine: WasmEngine,
    dir: PathBuf,
    ready: Arc<DashMap<String, ProxyPre<GuestState>>>,
    /// One compile at a time per process: two cores are better spent on one compile than two.
    compiling: Arc<Mutex<()>>,
}

impl ComponentCache {
    /// A cache that keeps artifacts in `dir`.
    pub fn new(engine: WasmEngine, dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Self { engine, dir, ready: Arc::default(), compiling: Arc::default() })
    }

    /// The engine.
    pub fn engine(&self) -> &WasmEngine {
        &self.engine
    }

    /// The pre-instantiated component for `bytes`, compiling it on first use.
    pub(crate) async fn get(&self, bytes: &[u8]) -> anyhow::Result<ProxyPre<GuestState>> {
        let hash = blake3::hash(bytes).to_hex().to_string();
        if let Some(pre) = self.ready.get(&hash) {
            return Ok(pre.clone());
        }
        let _one = self.compiling.lock().await;
        if let Some(pre) = self.ready.get(&hash) {
            return Ok(pre.clone());
        }
        let engine = self.engine.engine().clone();
        let path = self.dir.join(format!("{hash}.cwasm"));
        let bytes = bytes.to_vec();
        let pre = tokio::task::spawn_blocking(move || -> anyhow::Result<ProxyPre<GuestState>> {
            let component = match std::fs::read(&path) {
                // SAFETY: the artifact was written by `precompile_component` of this same engine
                // configuration, under a name that is the hash of its source; wasmtime checks the
                // engine's compatibility header before using it.
                #[allow(unsafe_code)]
                Ok(artifact) => match unsafe { Component::deserialize(&engine, &artifact) } {
                    Ok(c) => c,
                    Err(_) => compile_and_store(&engine, &bytes, &path)?,
                },
                Err(_) => compile_and_store(&engine, &bytes, &path)?,
            };
            let mut linker = Linker::new(&engine);
            wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
            wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
            Ok(ProxyPre::new(linker.instantiate_pre(&component)?)?)
        })
        .await??;
        self.ready.insert(hash, pre.clone());
        Ok(pre)
    }
}

fn compile_and_store(engine: &wasmtime::Engine, bytes: &[u8], path: &std::path::Path) -> anyhow::Result<Component> {
    let artifact = engine.precompile_component(bytes)?;
    let tmp = path.with_extension("partial");
    if std::fs::write(&tmp, &artifact).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
    // SAFETY: the artifact was produced just above by this engine.
    #[allow(unsafe_code)]
    let component = unsafe { Component::deserialize(engine, &artifact)? };
    Ok(component)
}
