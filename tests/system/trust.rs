//! Trust boundaries: what a hostile node operator cannot make the cloud do.

use std::time::{Duration, Instant};

use model::api::{Assignments, Heartbeat, InstanceReport, SignedHeartbeat};
use model::chain::{Capability, NodeStart, PortRange, Tx};
use model::keys::Keypair;
use model::tier::Tier;

use crate::cloud::Cloud;
use crate::cluster::*;
use crate::util::repo;

/// One signed beat of `node`, reporting `instances`; the status and body of the answer.
fn beat(url: &str, node: &str, key: &Keypair, instances: Vec<InstanceReport>) -> (u16, String) {
    let beat = Heartbeat { node: node.into(), at_ms: chain::now_ms(), instances };
    let signed = SignedHeartbeat::sign(beat, key);
    let resp = reqwest::blocking::Client::new()
        .post(format!("{url}/v1/agent/heartbeat"))
        .json(&signed)
        .timeout(Duration::from_secs(5))
        .send()
        .expect("the control plane answers");
    (resp.status().as_u16(), resp.text().unwrap_or_default())
}

/// A node process that reports the control API's address as its instance's endpoint is
/// refused, the endpoint is never routed, and no public request reaches the control plane
/// through the gateway.
#[test]
fn a_rogue_node_cannot_point_the_gateway_at_the_control_plane() {
    let cloud = Cloud::with_regions(&[(REGION, 0)]);
    let c = &cloud.cluster;
    let control = c.replicas[&1].url.clone();
    let control_addr = c.replicas[&1].addr.clone();

    // The rogue registers honestly on chain: loopback, the default instance ports.
    let key = Keypair::generate();
    let start = NodeStart {
        node_id: "eu-rogue".into(),
        collateral: Tier::Cumulus.collateral(),
        region: REGION.into(),
        continent: "EU".into(),
        country: "DE".into(),
        geo: model::GeoPoint { lat: 50.0, lon: 8.0 },
        capabilities: vec![Capability::Wasm],
        node_key: key.public(),
        address: std::net::Ipv4Addr::LOCALHOST.into(),
        instance_ports: PortRange::DEFAULT,
    };
    c.submit_applied(&[1], &c.wallet(), Tx::NodeStart(start)).expect("the rogue node on chain");

    // An app, which only the rogue node can take.
    let dir = c.dir.path().join("rogue-target");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::copy(repo().join("examples/hello/hello.wasm"), dir.join("hello.wasm")).expect("wasm");
    let manifest = "name = \"hello\"\ninstances = 1\n[[component]]\nname = \"web\"\nwasm = \"hello.wasm\"\n";
    std::fs::write(dir.join("fluxapp.toml"), manifest).expect("manifest");

    // It beats until the instance is assigned to it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut deployed = false;
    let assignment = loop {
        assert!(Instant::now() < deadline, "never assigned an instance\n{}", c.logs());
        let (status, body) = beat(&control, "eu-rogue", &key, Vec::new());
        if status == 200
            && let Ok(a) = serde_json::from_str::<Assignments>(&body)
            && let Some(first) = a.instances.into_iter().next()
        {
            break first;
        }
        if !deployed && status == 200 {
            let out = c.fluxctl(&["app", "deploy", &path_str(&dir.join("fluxapp.toml"))]);
            assert!(out.status.success(), "deploy: {}", text(&out.stderr));
            deployed = true;
        }
        std::thread::sleep(Duration::from_millis(300));
    };

    // Then it reports its instance healthy on the control API's address: refused, saying why.
    let lie = InstanceReport {
        id: assignment.id.clone(),
        spec_height: assignment.spec_height,
        endpoints: [("web".to_string(), control_addr.clone())].into(),
        healthy: true,
        message: None,
    };
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let (status, body) = beat(&control, "eu-rogue", &key, vec![lie.clone()]);
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("\"bad_endpoint\"") && body.contains(&control_addr), "{body}");
        assert!(body.contains("127.0.0.1, ports 20000-20999"), "{body}");
        // Through the gateway the app has no instance, and the control plane never answers.
        let resp = cloud.get_app("hello", "/v1/status", Duration::from_secs(5)).expect("the gateway answers");
        let (status, body) = (resp.status().as_u16(), resp.text().unwrap_or_default());
        assert!(status == 404 || status == 503, "{status}: {body}");
        assert!(!body.contains("regions") && !body.contains("chain_height"), "control-plane data leaked: {body}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let feed: serde_json::Value = c.get(1, &format!("/v1/routes/{REGION}")).expect("feed");
    assert_eq!(feed["routes"], serde_json::json!([]), "the lie was routed: {feed}");
    assert!(std::fs::read_to_string(c.dir.path().join("c1.log")).unwrap_or_default().contains("heartbeat refused"));
}
