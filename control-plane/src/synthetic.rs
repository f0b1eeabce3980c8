//! A synthetic cloud for benchmarks and scale tests: many nodes spread over the default regions,
//! and many small apps allowed anywhere. Nothing here is used by a running control plane.

use model::chain::{AppRecord, Capability, ChainState, NodeRecord, NodeStart};
use model::geo::{GeoPoint, default_regions};
use model::keys::Keypair;
use model::spec::{AppSpec, ComponentSpec};
use model::tier::Tier;

/// A chain state with `nodes` Cumulus nodes dealt round robin over the default regions (ids
/// `<region>-<i>`, at each region's centre) and `apps` apps `app<i>` of 4 instances of 0.1 cpu
/// and 64 MB, with no geolocation rule.
pub fn cloud(nodes: usize, apps: usize) -> ChainState {
    let regions = default_regions();
    let mut chain = ChainState { regions: regions.clone(), height: Some(0), ..Default::default() };
    let key = Keypair::from_seed([1; 32]).public();
    for i in 0..nodes {
        let r = &regions[i % regions.len()];
        let start = NodeStart {
            node_id: format!("{}-{i}", r.name),
            collateral: Tier::Cumulus.collateral(),
            region: r.name.clone(),
            continent: r.continent.clone(),
            country: "XX".into(),
            geo: GeoPoint { lat: r.center.lat, lon: r.center.lon },
            capabilities: vec![Capability::Wasm],
            node_key: key.clone(),
            address: std::net::Ipv4Addr::LOCALHOST.into(),
            instance_ports: model::chain::PortRange::DEFAULT,
        };
        let record = NodeRecord { start, operator: key.clone(), tier: Tier::Cumulus, started_height: 0 };
        chain.nodes.insert(record.start.node_id.clone(), record);
    }
    for a in 0..apps {
        let spec = AppSpec {
            network: Default::default(),
            name: format!("app{a}"),
            description: String::new(),
            instances: 4,
            geolocation: vec![],
            expire: 100_000,
            components: vec![ComponentSpec {
                name: "web".into(),
                workload: model::spec::Workload::Wasm("blake3:00".into()),
                cpu_tenths: 1,
                ram_mb: 64,
                hdd_gb: 1,
                env: Default::default(),
                traffic: Default::default(),
            }],
        };
        let record = AppRecord {
            spec,
            owner: key.clone(),
            registered_height: 0,
            updated_height: 0,
            expires_height: 100_000,
            domains: Default::default(),
        };
        chain.apps.insert(record.spec.name.clone(), record);
    }
    chain
}
