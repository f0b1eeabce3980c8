//! The whole cloud as separate processes: one chain, three control replicas, three nodes and a
//! gateway. A deploy through fluxctl, then a control-plane outage the workloads ride out.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::cluster::*;
use crate::util::repo;

/// A cluster with nodes and a gateway.
pub(crate) struct Cloud {
    pub(crate) cluster: Cluster,
    /// Node processes, in the order of `node_ids`.
    pub(crate) nodes: Vec<Proc>,
    /// Where each node runs, in the order of `nodes`.
    spots: Vec<NodeSpot>,
    _gateway: Proc,
    gateway: String,
}

impl Cloud {
    pub(crate) fn start() -> Cloud {
        Cloud::with_nodes(3)
    }

    /// A cloud with three replicas and `n` nodes in region eu, named `eu-n1` ... `eu-n<n>`.
    pub(crate) fn with_nodes(n: usize) -> Cloud {
        let cluster = Cluster::start(&Loopback, &[1, 2, 3], &[1, 2, 3], TEST_CONFIG);
        Cloud::around(cluster, &[(REGION, n)])
    }

    /// A cloud over several regions, each with one control replica (eu's is replica 1, the
    /// next region's 11, then 21 ...) and the given number of nodes.
    pub(crate) fn with_regions(regions: &[(&str, usize)]) -> Cloud {
        assert_eq!(regions.first().map(|r| r.0), Some(REGION), "the first region is eu");
        let mut cluster = Cluster::start(&Loopback, &[1], &[1], TEST_CONFIG);
        for (k, (region, _)) in regions.iter().enumerate().skip(1) {
            cluster.add_region(region, 1 + 10 * k as u64);
        }
        Cloud::around(cluster, regions)
    }

    /// Starts the nodes (on loopback) and a gateway (in Frankfurt) around `cluster`.
    pub(crate) fn around(cluster: Cluster, regions: &[(&str, usize)]) -> Cloud {
        let spots = regions.iter().flat_map(|(r, n)| (1..=*n).map(|i| NodeSpot::loopback(r, i))).collect();
        Cloud::with_spots(cluster, spots)
    }

    /// Starts nodes where `spots` say, and a gateway (in Frankfurt), around `cluster`.
    pub(crate) fn with_spots(cluster: Cluster, spots: Vec<NodeSpot>) -> Cloud {
        let dir = cluster.dir.path();
        let urls = cluster.urls();
        let nodes = spots.iter().map(|spot| spawn_node(&cluster, spot, &urls)).collect();
        let n = spots.len();
        let gateway = format!("127.0.0.1:{}", free_port("127.0.0.1"));
        let gw = Proc::spawn(
            "gateway",
            fluxplane(),
            &strings(&[
                "gateway",
                "--id",
                "gw-frankfurt",
                "--geo",
                "50.11,8.68",
                "--control",
                &urls,
                "--listen",
                &gateway,
            ]),
            dir.join("gateway.log"),
        );
        let cloud = Cloud { cluster, nodes, spots, _gateway: gw, gateway };
        eventually(Duration::from_secs(60), "every node registered and up", || cloud.nodes_up() == n);
        cloud
    }

    /// Starts node `eu-n<i>` again, with its data dir (so it is the same node).
    pub(crate) fn restart_node(&mut self, i: usize) {
        self.restart(REGION, i);
    }

    /// The index in `nodes` of node `<region>-n<i>`.
    pub(crate) fn node_index(&self, region: &str, i: usize) -> usize {
        self.spots.iter().position(|s| s.region == region && s.i == i).expect("a node of this cloud")
    }

    /// Starts node `<region>-n<i>` again, with its data dir (so it is the same node).
    pub(crate) fn restart(&mut self, region: &str, i: usize) {
        let urls = self.cluster.urls();
        let index = self.node_index(region, i);
        self.nodes[index] = spawn_node(&self.cluster, &self.spots[index], &urls);
    }

    pub(crate) fn nodes_up(&self) -> usize {
        let out = self.cluster.fluxctl(&["--output", "json", "node", "list"]);
        serde_json::from_slice::<Vec<model::api::NodeView>>(&out.stdout)
            .map_or(0, |n| n.iter().filter(|n| n.up).count())
    }

    /// The gateway's `host:port`.
    pub(crate) fn gateway_addr(&self) -> String {
        self.gateway.clone()
    }

    pub(crate) fn get(&self) -> Option<reqwest::blocking::Response> {
        let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(5)).build().ok()?;
        client.get(format!("http://{}/", self.gateway)).header("host", "hello.app.localhost").send().ok()
    }

    pub(crate) fn serves(&self) -> bool {
        self.get().is_some_and(|r| r.status() == 200)
    }

    pub(crate) fn logs(&self) -> String {
        let mut out = self.cluster.logs();
        for (spot, n) in self.spots.iter().zip(&self.nodes) {
            out.push_str(&format!("--- node {}\n{}", spot.id(), tail(&n.output())));
        }
        out.push_str(&format!("--- gateway\n{}", tail(&self._gateway.output())));
        out
    }

    pub(crate) fn deploy(&self) {
        self.deploy_manifest(&repo().join("examples/hello/fluxapp.toml"));
        assert!(self.serves(), "not served right after deploy --wait:\n{}", self.logs());
    }

    /// Deploys the hello module under the manifest text `toml` (its `wasm` is `hello.wasm`).
    pub(crate) fn deploy_hello_as(&self, toml: &str) {
        self.deploy_module_as(&repo().join("examples/hello/hello.wasm"), toml);
        assert!(self.serves(), "not served right after deploy --wait:\n{}", self.logs());
    }

    /// Deploys `module` under the manifest text `toml` (its `wasm` is the module's file name).
    pub(crate) fn deploy_module_as(&self, module: &Path, toml: &str) {
        let dir = self.cluster.dir.path().join(format!("manifest-{}", chain::now_ms()));
        std::fs::create_dir_all(&dir).expect("manifest dir");
        let name = module.file_name().expect("a file");
        std::fs::copy(module, dir.join(name)).expect("module");
        std::fs::write(dir.join("fluxapp.toml"), toml).expect("manifest");
        self.deploy_manifest(&dir.join("fluxapp.toml"));
    }

    pub(crate) fn deploy_manifest(&self, manifest: &Path) {
        let out = self.cluster.fluxctl(&["app", "deploy", &path_str(manifest), "--wait", "--timeout", "60"]);
        assert!(out.status.success(), "deploy: {}\n{}", text(&out.stderr), self.logs());
        // --wait returned only once the gateway routes the app.
        assert!(text(&out.stderr).contains("routed by 1 gateway(s)"), "{}", text(&out.stderr));
    }

    /// `GET path` on app `app` through the gateway.
    pub(crate) fn get_app(&self, app: &str, path: &str, timeout: Duration) -> Option<reqwest::blocking::Response> {
        let client = reqwest::blocking::Client::builder().timeout(timeout).build().ok()?;
        let url = format!("http://{}{path}", self.gateway);
        client.get(url).header("host", format!("{app}.app.localhost")).send().ok()
    }
}

/// Where a node runs: node `i` of `region` (id `<region>-n<i>`), listening on `ip`, started
/// behind `prefix` (a network namespace, say).
pub(crate) struct NodeSpot {
    pub(crate) region: String,
    pub(crate) i: usize,
    pub(crate) ip: String,
    pub(crate) prefix: Vec<String>,
    /// More flags for `fluxplane node`.
    pub(crate) args: Vec<String>,
}

impl NodeSpot {
    pub(crate) fn loopback(region: &str, i: usize) -> NodeSpot {
        NodeSpot { region: region.into(), i, ip: "127.0.0.1".into(), prefix: Vec::new(), args: Vec::new() }
    }

    fn id(&self) -> String {
        format!("{}-n{}", self.region, self.i)
    }
}

/// A node of `cluster` where `spot` says: data in `<id>`, log in `<id>.log` (a restart starts
/// the log anew).
fn spawn_node(cluster: &Cluster, spot: &NodeSpot, urls: &str) -> Proc {
    let dir = cluster.dir.path();
    let (region, name) = (spot.region.as_str(), spot.id());
    let geo = match region {
        "na" => "39.0,-77.4",
        "as" => "1.3,103.8",
        _ => "50.1,8.6",
    };
    let (program, prefix) = match spot.prefix.split_first() {
        Some((program, rest)) => (program.as_str(), [rest, &[fluxplane().to_string()]].concat()),
        None => (fluxplane(), Vec::new()),
    };
    let listen = format!("{}:0", spot.ip);
    let args: Vec<String> = prefix
        .into_iter()
        .chain(strings(&[
            "node",
            "--region",
            region,
            "--geo",
            geo,
            "--control",
            urls,
            "--listen",
            &listen,
            "--data-dir",
            &path_str(&dir.join(&name)),
            "--wallet",
            &path_str(&cluster.genesis_key),
            "--tier",
            "cumulus",
            "--id",
            &name,
        ]))
        .chain(spot.args.iter().cloned())
        .collect();
    // Each node its own instance ports: nodes on one address may not share them.
    let mut args = args;
    if !spot.args.iter().any(|a| a == "--instance-ports") {
        let region_index = ["eu", "na", "as"].iter().position(|r| *r == region).unwrap_or(3);
        let first = 20_000 + 1000 * (region_index * 8 + spot.i.saturating_sub(1) % 8);
        args.push("--instance-ports".into());
        args.push(format!("{first}-{}", first + 999));
    }
    Proc::spawn(&format!("node {name}"), program, &args, dir.join(format!("{name}.log")))
}

#[test]
fn the_multi_process_cloud_deploys_and_serves_end_to_end() {
    let cloud = Cloud::start();
    cloud.deploy();
    let resp = cloud.get().expect("answer");
    assert_eq!(resp.headers().get("x-fluxplane-region").and_then(|v| v.to_str().ok()), Some("eu"));
    let node = resp.headers().get("x-fluxplane-node").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    assert_eq!(resp.text().expect("body").trim(), format!("hello from {node}"));

    let out = cloud.cluster.fluxctl(&["status"]);
    let status = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (leader, _) = cloud.cluster.wait_leader(Duration::from_secs(5));
    let leader_url = &cloud.cluster.replicas[&leader].url;
    let eu_row = status.lines().find(|l| l.contains("| eu ")).unwrap_or_default();
    assert!(eu_row.contains(leader_url.as_str()) && eu_row.contains("| 3 "), "status:\n{status}");
    assert!(eu_row.contains("3/3"), "every node up in:\n{status}");
    let out = cloud.cluster.fluxctl(&["--output", "json", "status"]);
    let view: model::api::StatusView = serde_json::from_slice(&out.stdout).expect("status json");
    let eu = view.regions.iter().find(|r| r.name == REGION).expect("eu");
    assert_eq!((eu.leader, eu.voters, eu.instances_healthy), (Some(leader), 3, 3), "{eu:?}");

    // The event log tells the story: a leader, then each instance placed and then started.
    let events: Vec<serde_json::Value> = eventually_value(Duration::from_secs(10), "three instances started", || {
        let out = cloud.cluster.fluxctl(&["--output", "json", "events", "--region", REGION]);
        let events: Vec<serde_json::Value> =
            text(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let started = events.iter().filter(|e| e["event"] == "instance_started").count();
        (started == 3).then_some(events)
    });
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert!(kinds.contains(&"leader_changed"), "{kinds:?}");
    for e in events.iter().filter(|e| e["event"] == "instance_started") {
        let placed = events
            .iter()
            .find(|p| p["event"] == "instance_placed" && p["instance"] == e["instance"])
            .unwrap_or_else(|| panic!("{} started but was never placed: {kinds:?}", e["instance"]));
        assert!(placed["seq"].as_u64() < e["seq"].as_u64() && placed["at_ms"].as_u64() <= e["at_ms"].as_u64());
        assert_eq!(e["region"], REGION);
    }
    let out = cloud.cluster.fluxctl(&["events", "--region", "nowhere"]);
    assert!(!out.status.success() && text(&out.stderr).contains("no region `nowhere`"), "{}", text(&out.stderr));

    // A gateway that does not pick up the new routes holds `deploy --wait` back, by name.
    cloud._gateway.freeze();
    let dir = cloud.cluster.dir.path().join("second");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::copy(crate::util::repo().join("examples/hello/hello.wasm"), dir.join("hello.wasm")).expect("wasm");
    let manifest = "name = \"second\"\ninstances = 1\n[[component]]\nname = \"web\"\nwasm = \"hello.wasm\"\n";
    std::fs::write(dir.join("fluxapp.toml"), manifest).expect("manifest");
    let out =
        cloud.cluster.fluxctl(&["app", "deploy", &path_str(&dir.join("fluxapp.toml")), "--wait", "--timeout", "5"]);
    cloud._gateway.thaw();
    let err = text(&out.stderr);
    assert!(!out.status.success(), "deploy --wait returned with the gateway frozen: {err}");
    assert!(err.contains("every instance runs, but gw-frankfurt (eu) do not route it yet"), "{err}");
}

#[test]
fn the_cloud_rides_out_a_control_plane_outage() {
    let cloud = Cloud::start();
    cloud.deploy();
    for id in [1u64, 2, 3] {
        cloud.cluster.kill(id);
    }
    // Static stability: the gateway answers from its last routes, and the instances keep
    // running, for as long as the control plane is gone.
    let outage = Instant::now();
    let mut answered = 0;
    while outage.elapsed() < Duration::from_secs(6) {
        let status = cloud.get().map(|r| r.status().as_u16());
        assert_eq!(status, Some(200), "request {answered} during the outage\n{}", cloud.logs());
        answered += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("{answered} requests answered with every control replica down");
    for id in [1u64, 2, 3] {
        cloud.cluster.start_replica(id);
    }
    // The cluster resumes: a leader, every node beating again, and new work placed and served.
    cloud.cluster.wait_leader(Duration::from_secs(30));
    eventually(Duration::from_secs(30), "every node up again", || {
        let out = cloud.cluster.fluxctl(&["--output", "json", "node", "list"]);
        serde_json::from_slice::<Vec<model::api::NodeView>>(&out.stdout)
            .is_ok_and(|nodes| nodes.iter().filter(|n| n.up).count() == 3)
    });
    let out = cloud.cluster.fluxctl(&["app", "scale", "hello", "2"]);
    assert!(out.status.success(), "scale after the outage: {}\n{}", text(&out.stderr), cloud.logs());
    eventually(Duration::from_secs(20), "two instances after scaling down", || {
        let out = cloud.cluster.fluxctl(&["--output", "json", "app", "status", "hello"]);
        serde_json::from_slice::<model::api::AppView>(&out.stdout).is_ok_and(|a| a.placements.len() == 2)
    });
    assert!(cloud.serves(), "{}", cloud.logs());
}
