//! The runtime contract's conformance suite (`runtime::conformance`), run against each runtime
//! directly: the same checks of start, serve, health, logs, stop, a memory limit and a crash.

use std::net::Ipv4Addr;
use std::time::Duration;

use model::chain::PortRange;
use model::spec::{ComponentSpec, Workload};
use runtime::HostPorts;
use runtime::conformance::{self, Fixture};

use crate::util::repo;

fn component(name: &str, workload: Workload, ram_mb: u32) -> ComponentSpec {
    ComponentSpec {
        name: name.into(),
        workload,
        cpu_tenths: 5,
        ram_mb,
        hdd_gb: 1,
        env: Default::default(),
        traffic: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wasm_runtime_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = runtime_wasm::WasmEngine::new(&runtime_wasm::EngineConfig::default()).expect("engine");
    let cache = runtime_wasm::ComponentCache::new(engine.clone(), dir.path().join("cache")).expect("cache");
    let wasm = runtime_wasm::WasmRuntime::new(cache);
    // One guest plays every part: it logs each request, `/alloc` allocates without bound and
    // `/crash` panics.
    let module =
        bytes::Bytes::from(std::fs::read(repo().join("tests/guests/misbehave/misbehave.wasm")).expect("guest"));
    let hash = blake3::hash(&module).to_hex();
    let workload = |name: &str, ram_mb| conformance::Workload {
        component: component(name, Workload::Wasm(format!("blake3:{hash}")), ram_mb),
        artifact: Some(module.clone()),
    };
    let fixture = Fixture {
        node: "conformance-node".into(),
        bind_ip: Ipv4Addr::LOCALHOST.into(),
        ports: HostPorts::new(PortRange { first: 42_000, last: 42_127 }),
        server: workload("server", 64),
        memory_hog: workload("hog", 32),
        crasher: workload("crasher", 64),
        start_timeout: Duration::from_secs(120),
    };
    let result = conformance::run(&wasm, &fixture).await;
    engine.shutdown();
    result.expect("conformance");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oci_runtime_passes_the_conformance_suite() {
    let image = crate::oci::BusyboxImage::import();
    let node = format!("conformance-{}", std::process::id());
    let _cleanup = crate::oci::LabelledCleanup { label: runtime_oci::LABEL_NODE, value: node.clone() };
    let oci = runtime_oci::OciRuntime::new(runtime_oci::DEFAULT_SOCKET);
    let container = |name: &str, commands: &[&str], ports: Vec<u16>, ram_mb| conformance::Workload {
        component: component(
            name,
            Workload::Oci(model::spec::OciWorkload {
                image: image.tag.clone(),
                archive: None,
                ports: ports
                    .into_iter()
                    .map(|p| model::spec::OciPort { container: p, public: p, domain: None })
                    .collect(),
                commands: commands.iter().map(|c| c.to_string()).collect(),
                volumes: vec![],
                health_path: Some("/".into()),
            }),
            ram_mb,
        ),
        artifact: None,
    };
    let fixture = Fixture {
        node,
        bind_ip: Ipv4Addr::LOCALHOST.into(),
        ports: HostPorts::new(PortRange { first: 42_200, last: 42_327 }),
        // httpd -vv logs each request's path to stderr.
        server: container("server", &["httpd", "-f", "-vv", "-p", "8080", "-h", "/www"], vec![8080], 64),
        // Doubles a string until the kernel stops it.
        memory_hog: container("hog", &["sh", "-c", "x=0123456789; while true; do x=$x$x; done"], vec![], 32),
        crasher: container("crasher", &["sh", "-c", "echo crashing; exit 3"], vec![], 32),
        start_timeout: Duration::from_secs(60),
    };
    conformance::run(&oci, &fixture).await.expect("conformance");
}
