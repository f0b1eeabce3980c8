//! Apps apart on one node: from inside an app's container, another app's container, a listener
//! of the host's, a private address of the host and a private address behind it are all out of
//! reach, while the app's own second component and a sibling app of the same owner that opted
//! in are reachable. Every target is shown reachable from a plain container on Docker's default
//! bridge first, so that "out of reach" is the rules' doing. Also: the rules come and go with the
//! app networks, and a node that cannot install them takes no container and says why.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use runtime_oci::{LABEL_APP, LABEL_COMPONENT, LABEL_NODE};

use crate::cloud::{Cloud, NodeSpot};
use crate::cluster::*;
use crate::oci::{BusyboxImage, LabelledCleanup, networks_labelled};

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker").args(args).output().expect("the docker CLI runs")
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(out.status.success(), "ip {}: {} (needs root, as in CI)", args.join(" "), text(&out.stderr));
}

/// A TCP listener answering every connection with an HTTP response holding `token`.
struct Listener {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl Listener {
    fn start(addr: &str, token: &'static str) -> Listener {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("binding {addr}: {e}"));
        let port = listener.local_addr().expect("address").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
                        let _ = conn.read(&mut [0u8; 512]);
                        let _ = conn.write_all(format!("HTTP/1.0 200 OK\r\n\r\n{token}\n").as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Listener { port, stop }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Private addresses: 10.214.<k>.2, the host's end of a veth pair (the INPUT path), and
/// 10.214.<k>.1, its other end in a network namespace (the FORWARD path), served by busybox
/// httpd there. Removed on drop.
struct PrivateTargets {
    k: u32,
    httpd: Option<std::process::Child>,
    _www: tempfile::TempDir,
}

impl PrivateTargets {
    fn create() -> PrivateTargets {
        let k = std::process::id() % 250;
        let www = tempfile::tempdir().expect("tempdir");
        std::fs::write(www.path().join("index.html"), "fptest-behind\n").expect("index");
        let mut targets = PrivateTargets { k, httpd: None, _www: www };
        let (veth, peer, ns) = targets.names();
        ip(&["netns", "add", &ns]);
        ip(&["link", "add", &veth, "type", "veth", "peer", "name", &peer]);
        ip(&["link", "set", &peer, "netns", &ns]);
        ip(&["addr", "add", &format!("{}/30", targets.on_host()), "dev", &veth]);
        ip(&["link", "set", &veth, "up"]);
        ip(&["netns", "exec", &ns, "ip", "addr", "add", &format!("{}/30", targets.behind()), "dev", &peer]);
        ip(&["netns", "exec", &ns, "ip", "link", "set", &peer, "up"]);
        let httpd = Command::new("ip")
            .args(["netns", "exec", &ns, "/bin/busybox", "httpd", "-f", "-p", &format!("{}:8080", targets.behind())])
            .arg("-h")
            .arg(targets._www.path())
            .spawn()
            .expect("httpd in the namespace");
        targets.httpd = Some(httpd);
        targets
    }

    fn names(&self) -> (String, String, String) {
        let k = self.k;
        (format!("fpt{k}v"), format!("fpt{k}p"), format!("fpt{k}ns"))
    }

    /// The private address the host holds.
    fn on_host(&self) -> String {
        format!("10.214.{}.2", self.k)
    }

    /// The private address behind the host, served on port 8080.
    fn behind(&self) -> String {
        format!("10.214.{}.1", self.k)
    }
}

impl Drop for PrivateTargets {
    fn drop(&mut self) {
        if let Some(mut httpd) = self.httpd.take() {
            let _ = httpd.kill();
            let _ = httpd.wait();
        }
        let (veth, _, ns) = self.names();
        for args in [vec!["link", "del", &veth], vec!["netns", "del", &ns]] {
            let _ = Command::new("ip").args(&args).output();
        }
    }
}

/// Whether container `from` connects to `ip:port` and hears `token` back.
fn reaches(from: &str, ip: &str, port: u16, token: &str) -> bool {
    let probe = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {ip} {port}");
    let out = docker(&["exec", from, "sh", "-c", &probe]);
    out.status.success() && text(&out.stdout).contains(token)
}

/// Whether the host connects to `ip:port` and hears `token` back.
fn host_reaches(ip: &str, port: u16, token: &str) -> bool {
    let Ok(addr) = format!("{ip}:{port}").parse::<std::net::SocketAddr>() else { return false };
    let Ok(mut conn) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else { return false };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = conn.write_all(b"GET / HTTP/1.0\r\n\r\n");
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    answer.contains(token)
}

/// The one running container of `app`'s `component`.
fn container(app: &str, component: &str) -> String {
    let out = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label={LABEL_APP}={app}"),
        "--filter",
        &format!("label={LABEL_COMPONENT}={component}"),
    ]);
    let ids: Vec<String> = text(&out.stdout).split_whitespace().map(str::to_string).collect();
    assert_eq!(ids.len(), 1, "{app}/{component}: {ids:?}");
    ids[0].clone()
}

/// `{{.Field}}` of container `id`'s endpoint on `network`.
fn on_network(id: &str, network: &str, field: &str) -> String {
    let format = format!("{{{{(index .NetworkSettings.Networks \"{network}\").{field}}}}}");
    text(&docker(&["inspect", "--format", &format, id]).stdout).trim().to_string()
}

/// The one network of `app` on this engine.
fn network_of(app: &str) -> String {
    let networks = networks_labelled(LABEL_APP, app);
    assert_eq!(networks.len(), 1, "{app}: {networks:?}");
    networks[0].clone()
}

fn manifest(cloud: &Cloud, name: &str, body: &str) -> std::path::PathBuf {
    let dir = cloud.cluster.dir.path().join(format!("manifest-{name}"));
    std::fs::create_dir_all(&dir).expect("manifest dir");
    std::fs::write(dir.join("fluxapp.toml"), body).expect("manifest");
    dir.join("fluxapp.toml")
}

/// A busybox httpd component serving port 80, published as `public`.
fn web(image: &str, name: &str, public: u16) -> String {
    format!(
        "[[component]]\nname = \"{name}\"\nimage = \"{image}\"\nports = [{{ container = 80, public = {public} }}]\n\
         health = \"/\"\nram = 32\n"
    )
}

#[test]
fn an_apps_containers_reach_only_their_own_and_opted_in_siblings() {
    let image = BusyboxImage::import();
    let _cleanup = ["isoa", "isob", "isoc", "isoctl"].map(|a| LabelledCleanup { label: LABEL_APP, value: a.into() });
    let private = PrivateTargets::create();
    let host = Listener::start("0.0.0.0:0", "fptest-host");
    let on_host = Listener::start(&format!("{}:0", private.on_host()), "fptest-private");
    let cloud = Cloud::with_nodes(1);
    let tag = &image.tag;
    let a = format!("name = \"isoa\"\n{}{}", web(tag, "web", 80), web(tag, "side", 8080));
    cloud.deploy_manifest(&manifest(&cloud, "isoa", &a));
    cloud.deploy_manifest(&manifest(&cloud, "isob", &format!("name = \"isob\"\n{}", web(tag, "web", 80))));
    let c = format!("name = \"isoc\"\n[network]\nwith = [\"isoa\"]\n{}", web(tag, "web", 80));
    cloud.deploy_manifest(&manifest(&cloud, "isoc", &c));

    // Each app on a network of its own, named for its node and labelled; the sibling on both.
    let (net_a, net_b) = (network_of("isoa"), network_of("isob"));
    assert!(net_a.starts_with("fluxplane.eu-n1-") && net_a.ends_with(".isoa"), "{net_a}");
    let bridge = text(
        &docker(&["network", "inspect", "--format", "{{index .Options \"com.docker.network.bridge.name\"}}", &net_a])
            .stdout,
    );
    assert!(bridge.trim().starts_with("fp-") && bridge.trim().len() == 15, "{bridge}");
    let (a_web, a_side, b_web, c_web) =
        (container("isoa", "web"), container("isoa", "side"), container("isob", "web"), container("isoc", "web"));
    let a_side_ip = on_network(&a_side, &net_a, "IPAddress");
    let b_ip = on_network(&b_web, &net_b, "IPAddress");
    let c_ip = on_network(&c_web, &net_a, "IPAddress");
    let gateway = on_network(&a_web, &net_a, "Gateway");
    assert!(!a_side_ip.is_empty() && !b_ip.is_empty() && !c_ip.is_empty() && !gateway.is_empty());
    assert_eq!(on_network(&a_web, "bridge", "IPAddress"), "", "not on Docker's shared bridge");

    // The rules, first in DOCKER-USER and INPUT.
    let first_rule = |chain: &str| {
        let out = Command::new("iptables").args(["-S", chain]).output().expect("iptables");
        text(&out.stdout).lines().find(|l| l.starts_with("-A ")).unwrap_or_default().to_string()
    };
    assert_eq!(first_rule("DOCKER-USER"), "-A DOCKER-USER -i fp-+ -j FLUXPLANE-ISOLATION");
    assert_eq!(first_rule("INPUT"), "-A INPUT -i fp-+ -j FLUXPLANE-INPUT");

    // Every target answers a plain container on Docker's default bridge (the host's listener at
    // docker0's address), or the host itself for the other app's container.
    let out = docker(&["run", "-d", "--label", &format!("{LABEL_APP}=isoctl"), tag, "sleep", "600"]);
    assert!(out.status.success(), "control container: {}", text(&out.stderr));
    let control = text(&out.stdout).trim().to_string();
    let docker0 = on_network(&control, "bridge", "Gateway");
    let behind = private.behind();
    assert!(reaches(&control, &docker0, host.port, "fptest-host"), "control: host listener");
    assert!(reaches(&control, &private.on_host(), on_host.port, "fptest-private"), "control: host's private address");
    assert!(reaches(&control, &behind, 8080, "fptest-behind"), "control: private address behind the host");
    assert!(host_reaches(&b_ip, 80, "hello from busybox"), "control: app B serves");

    // From app A: its own second component and the opted-in sibling, and nothing else.
    assert!(reaches(&a_web, &a_side_ip, 80, "hello from busybox"), "A's own second component");
    assert!(reaches(&a_web, &c_ip, 80, "hello from busybox"), "the sibling that opted in");
    assert!(reaches(&c_web, &on_network(&a_web, &net_a, "IPAddress"), 80, "hello from busybox"), "and back");
    assert!(!reaches(&a_web, &b_ip, 80, "hello"), "app B's container");
    assert!(!reaches(&a_web, &gateway, host.port, "fptest-host"), "the host on A's gateway address");
    assert!(!reaches(&a_web, &docker0, host.port, "fptest-host"), "the host on docker0's address");
    assert!(!reaches(&a_web, &private.on_host(), on_host.port, "fptest-private"), "the host's private address");
    assert!(!reaches(&a_web, &behind, 8080, "fptest-behind"), "a private address behind the host");
    assert!(!reaches(&b_web, &a_side_ip, 80, "hello"), "B to A");
    assert!(!reaches(&b_web, &c_ip, 80, "hello"), "B to the sibling");

    // Another owner cannot join A's network: the deploy is refused.
    let stranger = cloud.cluster.dir.path().join("stranger.key");
    std::fs::write(&stranger, model::keys::Keypair::generate().secret_hex()).expect("key");
    let d = format!("name = \"isod\"\n[network]\nwith = [\"isoa\"]\n{}", web(tag, "web", 80));
    let out = Command::new(env!("CARGO_BIN_EXE_fluxctl"))
        .args(["--api", &cloud.cluster.urls(), "--key", &path_str(&stranger), "app", "deploy"])
        .arg(manifest(&cloud, "isod", &d))
        .env("FLUXCTL_CONFIG_DIR", cloud.cluster.dir.path().join("stranger"))
        .output()
        .expect("fluxctl");
    let err = text(&out.stderr);
    assert!(!out.status.success() && err.contains("`isoa`, owned by another key"), "{err}");

    // An app removed takes its network with it.
    let out = cloud.cluster.fluxctl(&["app", "rm", "isob"]);
    assert!(out.status.success(), "rm: {}", text(&out.stderr));
    eventually(Duration::from_secs(30), "B's network removed", || networks_labelled(LABEL_APP, "isob").is_empty());
}

#[test]
fn a_node_that_cannot_install_the_rules_takes_no_container_and_says_why() {
    let cluster = Cluster::start(&Loopback, &[1], &[1], TEST_CONFIG);
    let mut spot = NodeSpot::loopback(REGION, 1);
    spot.args = strings(&["--iptables", "/nonexistent/iptables"]);
    let cloud = Cloud::with_spots(cluster, vec![spot]);
    eventually(Duration::from_secs(20), "oci shown unavailable, naming iptables", || {
        let shown = text(&cloud.cluster.fluxctl(&["node", "list"]).stdout);
        shown.contains("oci: NO") && shown.contains("/nonexistent/iptables-save")
    });
    let out = cloud.cluster.fluxctl(&["--output", "json", "node", "list"]);
    let nodes: Vec<model::api::NodeView> = serde_json::from_slice(&out.stdout).expect("nodes");
    let why = format!("{:?}", nodes[0]);
    assert!(why.contains("containers would reach their neighbours"), "{why}");
}

/// Removes a test's chains and the jumps to them, however it ended.
struct Chains {
    prefix: String,
    bridges: &'static str,
}

impl Drop for Chains {
    fn drop(&mut self) {
        for tool in ["iptables", "ip6tables"] {
            let run = |args: &[&str]| Command::new(tool).args(args).status().is_ok_and(|s| s.success());
            for (chain, ours) in [("DOCKER-USER", "ISOLATION"), ("INPUT", "INPUT")] {
                let jump = format!("{}-{ours}", self.prefix);
                while run(&["-D", chain, "-i", &format!("{}+", self.bridges), "-j", &jump]) {}
                run(&["-F", &jump]);
                run(&["-X", &jump]);
            }
        }
    }
}

/// The runtime on its own, with chain and bridge names of this test's: its network comes with
/// the first container and goes with the last, and its rules go at shutdown once no network
/// with its bridge prefix is left on the engine.
#[tokio::test]
async fn the_rules_go_with_the_last_app_network_at_shutdown() {
    use runtime::Runtime;
    let image = BusyboxImage::import();
    let node = format!("isort-{}", std::process::id());
    let _cleanup = LabelledCleanup { label: LABEL_NODE, value: node.clone() };
    let prefix = format!("FPR{}", std::process::id() % 100_000);
    let _chains = Chains { prefix: prefix.clone(), bridges: "fr-" };
    let oci = runtime_oci::OciRuntime::new(runtime_oci::DEFAULT_SOCKET).with_firewall(runtime_oci::FirewallConfig {
        chain_prefix: prefix.clone(),
        bridge_prefix: "fr-".into(),
        ..Default::default()
    });
    let rules = || text(&Command::new("iptables").arg("-S").output().expect("iptables").stdout);
    assert_eq!(oci.unavailable().await, None);
    assert!(rules().contains(&format!("-A INPUT -i fr-+ -j {prefix}-INPUT")), "installed at the first check");

    let component = model::spec::ComponentSpec {
        name: "web".into(),
        workload: model::spec::Workload::Oci(model::spec::OciWorkload {
            image: image.tag.clone(),
            archive: None,
            ports: vec![model::spec::OciPort { container: 80, public: 80, domain: None }],
            commands: vec![],
            volumes: vec![],
            health_path: Some("/".into()),
        }),
        cpu_tenths: 1,
        ram_mb: 32,
        hdd_gb: 1,
        env: Default::default(),
        traffic: Default::default(),
    };
    let spec = runtime::StartSpec {
        node: node.clone(),
        app: "one".into(),
        instance: format!("one@{node}"),
        run: "1.0".into(),
        limits: runtime::Limits::of(&component, Duration::from_secs(5), Duration::from_secs(1)),
        component,
        artifact: None,
        env: Default::default(),
        bind_ip: Ipv4Addr::LOCALHOST.into(),
        ports: runtime::HostPorts::new(model::chain::PortRange { first: 42_400, last: 42_463 }),
        logs: runtime::LogBuffer::new(),
        network_with: vec![],
    };
    let instance = oci.start(spec).await.expect("started");
    let network = format!("fluxplane.{node}.one");
    assert_eq!(networks_labelled(LABEL_NODE, &node), std::slice::from_ref(&network));
    let bridge = text(
        &docker(&["network", "inspect", "--format", "{{index .Options \"com.docker.network.bridge.name\"}}", &network])
            .stdout,
    );
    assert!(bridge.trim().starts_with("fr-"), "{bridge}");
    instance.stop().await;
    assert!(networks_labelled(LABEL_NODE, &node).is_empty(), "the last container took its network");

    oci.shutdown(&node).await;
    assert!(!rules().contains(&prefix), "removed with the last network:\n{}", rules());
}
