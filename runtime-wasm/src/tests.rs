//! A guest that loops or allocates without bound gets a 5xx for that request only.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::{ComponentCache, EngineConfig, InstanceLimits, InstanceServer, WasmEngine};

const MISBEHAVE: &[u8] = include_bytes!("../../tests/guests/misbehave/misbehave.wasm");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_guests_get_a_5xx_and_the_instance_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = WasmEngine::new(&EngineConfig { max_instances: 8, max_memory_bytes: 128 << 20, guest_threads: 1 })
        .expect("engine");
    let cache = ComponentCache::new(engine.clone(), dir.path().to_path_buf()).expect("cache");
    let pre = cache.get(MISBEHAVE).await.expect("compiles");
    let limits = InstanceLimits { memory_bytes: 32 << 20, deadline: Duration::from_millis(300), cpu_share: 1.0 };
    let server = InstanceServer::start(
        &engine,
        pre,
        BTreeMap::new(),
        limits,
        "127.0.0.1:0".parse().expect("addr"),
        runtime::LogBuffer::new(),
    )
    .await
    .expect("start");
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

/// 20 requests looping at once in one instance get only that instance's CPU share, so another
/// instance on the same guest thread keeps answering at its usual speed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_guest_is_held_to_its_cpu_share() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = WasmEngine::new(&EngineConfig { max_instances: 64, max_memory_bytes: 64 << 20, guest_threads: 1 })
        .expect("engine");
    let cache = ComponentCache::new(engine.clone(), dir.path().to_path_buf()).expect("cache");
    let pre = cache.get(MISBEHAVE).await.expect("compiles");
    let start = |cpu_share: f64, deadline: Duration| {
        let limits = InstanceLimits { memory_bytes: 32 << 20, deadline, cpu_share };
        InstanceServer::start(
            &engine,
            pre.clone(),
            BTreeMap::new(),
            limits,
            "127.0.0.1:0".parse().expect("addr"),
            runtime::LogBuffer::new(),
        )
    };
    let hog = start(0.1, Duration::from_secs(3)).await.expect("start");
    let calm = start(1.0, Duration::from_secs(3)).await.expect("start");
    let http = reqwest::Client::new();
    let calm_url = format!("http://{}/", calm.addr());
    let time_calm = || async {
        let mut worst = Duration::ZERO;
        for _ in 0..20 {
            let t = std::time::Instant::now();
            let resp = http.get(&calm_url).send().await.expect("answered");
            assert_eq!(resp.status(), 200);
            worst = worst.max(t.elapsed());
        }
        worst
    };
    let usual = time_calm().await;
    let loops: Vec<_> = (0..20)
        .map(|_| {
            let (http, url) = (http.clone(), format!("http://{}/loop", hog.addr()));
            tokio::spawn(async move { http.get(url).send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let loaded = time_calm().await;
    for l in loops {
        assert_eq!(l.await.expect("task").expect("answered"), 504, "a looping request ends at its deadline");
    }
    eprintln!("the calm instance's slowest request: {usual:?} alone, {loaded:?} beside 20 looping requests");
    // One tick (10 ms) of the hog may run ahead of a calm request; twenty hogs at full speed
    // would hold it for about 200 ms.
    assert!(loaded < usual + Duration::from_millis(60), "{loaded:?} beside the hog vs {usual:?} alone");
    hog.stop();
    calm.stop();
    engine.shutdown();
}
