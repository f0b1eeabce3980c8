//! A guest that loops or allocates without bound gets a 5xx for that request only.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::{ComponentCache, EngineConfig, InstanceLimits, InstanceServer, WasmEngine};

const MISBEHAVE: &[u8] = include_bytes!("../../tests/guests/misbehave/misbehave.wasm");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_guests_get_a_5xx_and_the_instance_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = WasmEngine::new(&EngineConfig { max_instances: 8, max_memory_bytes: 128 << 20 }).expect("engine");
    let cache = ComponentCache::new(engine.clone(), dir.path().to_path_buf()).expect("cache");
    let pre = cache.get(MISBEHAVE).await.expect("compiles");
    let limits = InstanceLimits { memory_bytes: 32 << 20, deadline: Duration::from_millis(300) };
    let server =
        InstanceServer::start(pre, BTreeMap::new(), limits, "127.0.0.1:0".parse().expect("addr")).await.expect("start");
    let base = format!("http://{}", server.addr());
    let http = reqwest::Client::new();

    let looped = http.get(format!("{base}/loop")).send().await.expect("answered, not dropped");
    assert_eq!(looped.status(), 504);
    assert!(looped.text().await.expect("body").contains("deadline"));

    let hog = http.get(format!("{base}/alloc")).send().await.expect("answered, not dropped");
    assert_eq!(hog.status(), 502);
    assert!(hog.text().await.expect("body").contains("memory limit 32 MB"));

    let ok = http.get(format!("{base}/")).send().await.expect("answered");
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.expect("body"), "ok\n");

    // A second compile of the same bytes comes from the cache (and its artifact is on disk).
    assert!(
        std::fs::read_dir(dir.path())
            .expect("dir")
            .any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "cwasm")))
    );
    server.stop();
    engine.shutdown();
}
