//! The gateway library on its own, for `benches/gateway/run.sh`: one app, `bench`, whose one
//! instance is the fixed upstream given, so that the proxy is measured and nothing else. The
//! request path is the production one (`gateway::Gateway::spawn`); only the route table comes
//! from the command line instead of a control plane's feed.
//!
//!   bench-gateway UPSTREAM_ADDR LISTEN_ADDR WORKER_THREADS

use std::net::SocketAddr;
use std::time::Duration;

/// As in the `fluxplane` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, upstream, listen, workers] = args.as_slice() else {
        anyhow::bail!("usage: bench-gateway UPSTREAM_ADDR LISTEN_ADDR WORKER_THREADS");
    };
    let upstream: SocketAddr = upstream.parse()?;
    let listen: SocketAddr = listen.parse()?;
    let workers: usize = workers.parse()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build()?;
    runtime.block_on(async move {
        let config = gateway::GatewayConfig {
            id: "bench".into(),
            listen,
            domain: "bench.local".into(),
            // No control plane: the one route below is the table.
            control: client::Client::from_list("http://127.0.0.1:1")?,
            geo: model::geo::GeoPoint { lat: 50.1, lon: 8.7 },
            trusted: vec![],
            geoip_db: None,
            spread_km: 0.0,
            response_header_timeout: Duration::from_secs(10),
            tls: None,
            admin_listen: None,
            workers,
            limits: gateway::Limits { max_in_flight_per_client: 100_000, ..gateway::Limits::default() },
        };
        let gw = gateway::Gateway::spawn(config).await?;
        gw.shared().set_routes(&[model::api::Route {
            app: "bench".into(),
            component: "web".into(),
            primary: true,
            node: "upstream".into(),
            region: "eu".into(),
            geo: model::geo::GeoPoint { lat: 50.1, lon: 8.7 },
            addr: upstream.to_string(),
            port: None,
            domain: None,
            traffic: model::spec::Traffic { max_concurrency: Some(10_000), max_body_mb: None },
        }]);
        println!("listening on {}", gw.local_addr());
        tokio::signal::ctrl_c().await?;
        gw.drain(Duration::from_secs(1)).await;
        anyhow::Ok(())
    })
}
