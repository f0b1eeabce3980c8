//! The whole cloud as separate processes: one chain, three control replicas, three nodes and a
//! gateway. A deploy through fluxctl, then a control-plane outage the workloads ride out.

use std::time::{Duration, Instant};

use crate::cluster::*;
use crate::util::repo;

/// A cluster with nodes and a gateway.
pub(crate) struct Cloud {
    pub(crate) cluster: Cluster,
    pub(crate) nodes: Vec<Proc>,
    _gateway: Proc,
    gateway: String,
}

impl Cloud {
    pub(crate) fn start() -> Cloud {
        Cloud::with_nodes(3)
    }

    /// A cloud with `n` nodes in region eu, named `eu-n1` ... `eu-n<n>`.
    pub(crate) fn with_nodes(n: usize) -> Cloud {
        let cluster = Cluster::start(&Loopback, &[1, 2, 3], &[1, 2, 3], TEST_CONFIG);
        let dir = cluster.dir.path();
        let urls = cluster.urls();
        let nodes = (1..=n).map(|i| spawn_node(&cluster, i, &urls)).collect();
        let gateway = format!("127.0.0.1:{}", free_port("127.0.0.1"));
        let gw = Proc::spawn(
            "gateway",
            fluxplane(),
            &strings(&["gateway", "--geo", "50.11,8.68", "--control", &urls, "--listen", &gateway]),
            dir.join("gateway.log"),
        );
        let cloud = Cloud { cluster, nodes, _gateway: gw, gateway };
        eventually(Duration::from_secs(60), "every node registered and up", || cloud.nodes_up() == n);
        cloud
    }

    /// Starts node `i` again, with its data dir (so it is the same node).
    pub(crate) fn restart_node(&mut self, i: usize) {
        let urls = self.cluster.urls();
        self.nodes[i - 1] = spawn_node(&self.cluster, i, &urls);
    }

    pub(crate) fn nodes_up(&self) -> usize {
        let out = self.cluster.fluxctl(&["--output", "json", "node", "list"]);
        serde_json::from_slice::<Vec<model::api::NodeView>>(&out.stdout)
            .map_or(0, |n| n.iter().filter(|n| n.up).count())
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
        for (i, n) in self.nodes.iter().enumerate() {
            out.push_str(&format!("--- node {}\n{}", i + 1, tail(&n.output())));
        }
        out.push_str(&format!("--- gateway\n{}", tail(&self._gateway.output())));
        out
    }

    pub(crate) fn deploy(&self) {
        let manifest = repo().join("examples/hello/fluxapp.toml");
        let out = self.cluster.fluxctl(&["app", "deploy", &path_str(&manifest), "--wait", "--timeout", "60"]);
        assert!(out.status.success(), "deploy: {}\n{}", text(&out.stderr), self.logs());
        eventually(Duration::from_secs(20), "the gateway serves hello", || self.serves());
    }
}

/// Node `i` of `cluster`: id `eu-n<i>`, data in `n<i>`, log in `n<i>.log` (a restart starts
/// the log anew).
fn spawn_node(cluster: &Cluster, i: usize, urls: &str) -> Proc {
    let dir = cluster.dir.path();
    Proc::spawn(
        &format!("node {i}"),
        fluxplane(),
        &strings(&[
            "node",
            "--region",
            REGION,
            "--geo",
            "50.1,8.6",
            "--control",
            urls,
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &path_str(&dir.join(format!("n{i}"))),
            "--wallet",
            &path_str(&cluster.genesis_key),
            "--tier",
            "cumulus",
            "--id",
            &format!("eu-n{i}"),
        ]),
        dir.join(format!("n{i}.log")),
    )
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
