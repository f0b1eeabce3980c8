//! Containers through the whole cloud: Flux v8 specs deployed as they are, served through the
//! gateway, removed without a trace; crash loops and OOM kills shown in `app status`; a node
//! without Docker that gets no container and says why; a node killed and started again that
//! adopts its containers.

use std::time::{Duration, Instant};

use runtime_oci::LABEL_APP;

use crate::cloud::{Cloud, NodeSpot};
use crate::cluster::*;
use crate::oci::{BusyboxImage, LabelledCleanup, containers_labelled, running_labelled};

/// A Flux v8 spec of busybox's httpd on public port 31000, two instances.
fn flux_spec(name: &str, image: &str, instances: u32) -> String {
    serde_json::json!({
        "version": 8,
        "name": name,
        "description": "busybox httpd",
        "owner": "1CbErtneaX2QVyUfwU7JGB7VzvPgrgc3uC",
        "compose": [{
            "name": "web",
            "description": "httpd",
            "repotag": image,
            "ports": [31000],
            "containerPorts": [80],
            "domains": [format!("{name}.example.com")],
            "environmentParameters": ["GREETING=hi"],
            "commands": [],
            "containerData": "",
            "repoauth": "",
            "cpu": 0.5,
            "ram": 200,
            "hdd": 1
        }],
        "instances": instances,
        "contacts": [],
        "geolocation": [],
        "expire": 22000,
        "nodes": [],
        "staticip": false,
        "datacenter": false,
        "enterprise": ""
    })
    .to_string()
}

/// Writes `body` as `file` in a new directory of the cloud's; its path.
fn manifest(cloud: &Cloud, file: &str, body: &str) -> std::path::PathBuf {
    let dir = cloud.cluster.dir.path().join(format!("manifest-{}", chain::now_ms()));
    std::fs::create_dir_all(&dir).expect("manifest dir");
    std::fs::write(dir.join(file), body).expect("manifest");
    dir.join(file)
}

/// `GET /` with `host` through the gateway.
fn get(cloud: &Cloud, host: &str) -> Option<(u16, String)> {
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(5)).build().ok()?;
    let resp = client.get(format!("http://{}/", cloud.gateway_addr())).header("host", host).send().ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.text().unwrap_or_default()))
}

fn app_view(cloud: &Cloud, app: &str) -> model::api::AppView {
    let out = cloud.cluster.fluxctl(&["--output", "json", "app", "status", app]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("app status {app}: {e}: {}", text(&out.stderr)))
}

/// The app's view once its registration is on chain.
fn app_view_soon(cloud: &Cloud, app: &str) -> Option<model::api::AppView> {
    serde_json::from_slice(&cloud.cluster.fluxctl(&["--output", "json", "app", "status", app]).stdout).ok()
}

#[test]
fn a_flux_v8_container_app_is_served_and_removed_without_a_trace() {
    let image = BusyboxImage::import();
    let _cleanup = [
        LabelledCleanup { label: LABEL_APP, value: "bbweb".into() },
        LabelledCleanup { label: LABEL_APP, value: "bbarchive".into() },
    ];
    let cloud = Cloud::start();

    // The image is on the node already: deployed from the Flux spec as it is.
    let spec = manifest(&cloud, "bbweb.json", &flux_spec("BBWeb", &image.tag, 2));
    let began = Instant::now();
    cloud.deploy_manifest(&spec);
    let (status, body) = get(&cloud, "bbweb.app.localhost").expect("answer");
    eprintln!("OCI app, image on the node: deploy --wait to first 200 in {} ms", began.elapsed().as_millis());
    assert_eq!((status, body.trim()), (200, "hello from busybox"));
    // FluxOS's port convention reaches the same server; the component's custom domain waits
    // for its owner to prove it (tests/system/domains.rs), so it is not served.
    assert_eq!(get(&cloud, "bbweb_31000.app.localhost").map(|r| r.0), Some(200));
    assert_eq!(get(&cloud, "bbweb.example.com").map(|r| r.0), Some(404));
    let view = app_view(&cloud, "bbweb");
    let running = view.placements.iter().filter(|p| p.state == model::api::InstanceState::Running).count();
    assert_eq!(running, 2, "{view:?}");
    assert_eq!(running_labelled(LABEL_APP, "bbweb").len(), 2);
    // Locked down as documented: limits from the spec, no privilege, no host mounts.
    for id in running_labelled(LABEL_APP, "bbweb") {
        let out = std::process::Command::new("docker")
            .args([
                "inspect",
                "--format",
                "{{.HostConfig.Privileged}} {{.HostConfig.CapDrop}} {{.HostConfig.CapAdd}} {{.HostConfig.SecurityOpt}} \
                 {{.HostConfig.Memory}} {{.HostConfig.MemorySwap}} {{.HostConfig.NanoCpus}} {{.HostConfig.PidsLimit}} \
                 mounts={{len .Mounts}}",
                &id,
            ])
            .output()
            .expect("docker inspect");
        let shown = text(&out.stdout);
        assert_eq!(
            shown.split_whitespace().collect::<Vec<_>>(),
            [
                "false",
                "[ALL]",
                "[NET_BIND_SERVICE]",
                "[no-new-privileges]",
                "209715200",
                "209715200",
                "500000000",
                "256",
                "mounts=0"
            ],
            "{shown}"
        );
    }

    // The request lines, through the agents, from both instances.
    let logged = eventually_value(Duration::from_secs(15), "request lines in the logs", || {
        let out = cloud.cluster.fluxctl(&["app", "logs", "bbweb", "--tail", "100"]);
        let shown = text(&out.stdout);
        (out.status.success() && shown.lines().any(|l| l.contains("url:/"))).then_some(shown)
    });
    assert!(logged.lines().all(|l| l.starts_with("bbweb@eu-n")), "{logged}");
    // Nobody but the owner reads them: unsigned, or signed by another key, the node refuses.
    let node_api = eventually_value(Duration::from_secs(5), "a node API", || {
        let out = cloud.cluster.fluxctl(&["--output", "json", "node", "list"]);
        let nodes: Vec<model::api::NodeView> = serde_json::from_slice(&out.stdout).ok()?;
        let instance = &view.placements[0];
        nodes.into_iter().find(|n| n.id == instance.node)?.api.map(|a| (a, instance.id.clone()))
    });
    let path = client::paths::node_logs(&node_api.1);
    let url = format!("http://{}{path}", node_api.0);
    let http = reqwest::blocking::Client::new();
    assert_eq!(http.get(&url).send().expect("answer").status().as_u16(), 401);
    let stranger = model::api::LogsRequest::sign(&path, chain::now_ms(), &model::keys::Keypair::generate());
    let resp = http
        .get(&url)
        .header(model::api::LogsRequest::OWNER_HEADER, stranger.owner.0.as_str())
        .header(model::api::LogsRequest::AT_HEADER, stranger.at_ms.to_string())
        .header(model::api::LogsRequest::NONCE_HEADER, stranger.nonce.as_str())
        .header(model::api::LogsRequest::SIGNATURE_HEADER, stranger.signature.as_str())
        .send()
        .expect("answer");
    assert_eq!(resp.status().as_u16(), 403);

    // From an archive: the image is not on the node until the agent loads it.
    let other = BusyboxImage::import();
    let dir = cloud.cluster.dir.path().join("archive");
    std::fs::create_dir_all(&dir).expect("dir");
    other.save(&dir.join("image.tar"));
    other.remove_from_engine();
    let toml = format!(
        "name = \"bbarchive\"\ninstances = 1\n[[component]]\nname = \"web\"\nimage = \"{}\"\nimage_archive = \
         \"image.tar\"\nports = [80]\nhealth = \"/\"\nram = 64\n",
        other.tag
    );
    std::fs::write(dir.join("fluxapp.toml"), toml).expect("manifest");
    let began = Instant::now();
    cloud.deploy_manifest(&dir.join("fluxapp.toml"));
    assert_eq!(get(&cloud, "bbarchive.app.localhost").map(|r| r.0), Some(200));
    eprintln!("OCI app, image from an archive: deploy --wait to first 200 in {} ms", began.elapsed().as_millis());

    // Removed: no container is left, in any state.
    for app in ["bbweb", "bbarchive"] {
        let out = cloud.cluster.fluxctl(&["app", "rm", app]);
        assert!(out.status.success(), "rm {app}: {}", text(&out.stderr));
        eventually(Duration::from_secs(30), "no container left", || containers_labelled(LABEL_APP, app).is_empty());
    }
}

#[test]
fn a_crash_loop_shows_its_backoff_and_an_oom_kill_is_named() {
    let image = BusyboxImage::import();
    let _cleanup = [
        LabelledCleanup { label: LABEL_APP, value: "bbcrash".into() },
        LabelledCleanup { label: LABEL_APP, value: "bbhog".into() },
    ];
    let cloud = Cloud::with_nodes(1);
    let deploy = |name: &str, command: &str, ram: u32| {
        let toml = format!(
            "name = \"{name}\"\ninstances = 1\n[[component]]\nname = \"main\"\nimage = \"{}\"\ncommands = [\"sh\", \
             \"-c\", \"{command}\"]\nram = {ram}\n",
            image.tag
        );
        let path = manifest(&cloud, "fluxapp.toml", &toml);
        // Not --wait: these never get healthy.
        let out = cloud.cluster.fluxctl(&["app", "deploy", &path_str(&path)]);
        assert!(out.status.success(), "deploy {name}: {}", text(&out.stderr));
    };
    deploy("bbcrash", "echo crashing; exit 3", 64);
    deploy("bbhog", "x=0123456789; while true; do x=$x$x; done", 32);

    // The crash loop backs off longer each time, and says so with the exit code.
    let mut backoffs = Vec::new();
    eventually(Duration::from_secs(40), "a backoff of 4 s", || {
        let Some(view) = app_view_soon(&cloud, "bbcrash") else { return false };
        if let Some(run) = view.placements.iter().find_map(|p| p.runs.get("main")) {
            assert_eq!(run.last_exit_code, Some(3), "{run:?}");
            if let Some(ms) = run.backoff_ms
                && backoffs.last() != Some(&ms)
            {
                backoffs.push(ms);
            }
        }
        backoffs.contains(&4000)
    });
    assert_eq!(&backoffs[..3], &[1000, 2000, 4000], "{backoffs:?}");
    let out = cloud.cluster.fluxctl(&["app", "status", "bbcrash"]);
    let shown = text(&out.stdout);
    assert!(shown.contains("last exit 3") && shown.contains("backing off"), "{shown}");

    // Over its memory limit: killed by the kernel, and reported as such.
    eventually(Duration::from_secs(30), "the hog reported OOM-killed", || {
        app_view_soon(&cloud, "bbhog")
            .is_some_and(|v| v.placements.iter().any(|p| p.runs.get("main").is_some_and(|r| r.oom_killed)))
    });
    let shown = text(&cloud.cluster.fluxctl(&["app", "status", "bbhog"]).stdout);
    assert!(shown.contains("(OOM-killed)"), "{shown}");

    // An image the node does not have is pulled; here no registry can be reached, and the
    // failure names the image.
    let _pull = LabelledCleanup { label: LABEL_APP, value: "bbpull".into() };
    let path = manifest(
        &cloud,
        "fluxapp.toml",
        "name = \"bbpull\"\n[[component]]\nname = \"main\"\nimage = \"fluxplane-test/never-built:1\"\nports = [80]\n",
    );
    let out = cloud.cluster.fluxctl(&["app", "deploy", &path_str(&path)]);
    assert!(out.status.success(), "deploy: {}", text(&out.stderr));
    let why = eventually_value(Duration::from_secs(60), "the pull's failure", || {
        let out = cloud.cluster.fluxctl(&["--output", "json", "events", "--region", REGION]);
        text(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|e| e["event"] == "instance_failed" && e["instance"] == "bbpull@eu-n1")
            .and_then(|e| e["reason"].as_str().map(str::to_string))
    });
    assert!(why.contains("image `fluxplane-test/never-built:1` is not on this node and pulling it failed"), "{why}");
}

#[test]
fn a_node_whose_docker_does_not_answer_gets_no_container_and_the_app_says_why() {
    let image = BusyboxImage::import();
    let _cleanup = LabelledCleanup { label: LABEL_APP, value: "bbnodocker".into() };
    let cluster = Cluster::start(&Loopback, &[1], &[1], TEST_CONFIG);
    let mut spot = NodeSpot::loopback(REGION, 1);
    spot.args = strings(&["--docker-socket", "/nonexistent/docker.sock"]);
    let cloud = Cloud::with_spots(cluster, vec![spot]);

    // The node says which capability it lacks, and why.
    eventually(Duration::from_secs(20), "oci shown unavailable", || {
        let shown = text(&cloud.cluster.fluxctl(&["node", "list"]).stdout);
        shown.contains("oci: NO") && shown.contains("/nonexistent/docker.sock")
    });
    let path = manifest(&cloud, "spec.json", &flux_spec("bbnodocker", &image.tag, 1));
    let out = cloud.cluster.fluxctl(&["app", "deploy", &path_str(&path)]);
    assert!(out.status.success(), "deploy: {}", text(&out.stderr));
    let why = eventually_value(Duration::from_secs(20), "a shortfall naming oci", || {
        let view = app_view_soon(&cloud, "bbnodocker")?;
        view.shortfall.values().find(|why| why.contains("oci")).cloned()
    });
    assert!(why.contains("eu-n1: oci: the Docker engine at /nonexistent/docker.sock"), "{why}");
    assert!(app_view(&cloud, "bbnodocker").placements.is_empty());
    assert!(containers_labelled(LABEL_APP, "bbnodocker").is_empty());
    // WASM still runs there.
    cloud.deploy_hello_as("name = \"hello\"\ninstances = 1\n[[component]]\nname = \"web\"\nwasm = \"hello.wasm\"\n");
}

#[test]
fn a_node_killed_and_started_again_adopts_its_containers_and_leaks_none() {
    let image = BusyboxImage::import();
    let _cleanup = [
        LabelledCleanup { label: LABEL_APP, value: "bbkeep".into() },
        LabelledCleanup { label: LABEL_APP, value: "bbgone".into() },
    ];
    let mut cloud = Cloud::with_nodes(1);
    for app in ["bbkeep", "bbgone"] {
        cloud.deploy_manifest(&manifest(&cloud, "spec.json", &flux_spec(app, &image.tag, 1)));
    }
    let kept = running_labelled(LABEL_APP, "bbkeep");
    assert_eq!(kept.len(), 1);

    // kill -9: the containers run on without their node. One app is removed meanwhile.
    cloud.nodes[0].kill();
    assert_eq!(running_labelled(LABEL_APP, "bbkeep"), kept, "the container outlives its node");
    let out = cloud.cluster.fluxctl(&["app", "rm", "bbgone"]);
    assert!(out.status.success(), "rm: {}", text(&out.stderr));

    cloud.restart_node(1);
    eventually(Duration::from_secs(30), "served again", || {
        get(&cloud, "bbkeep.app.localhost").is_some_and(|(status, _)| status == 200)
    });
    // The same container, adopted: not a second one, and not a new one.
    assert_eq!(containers_labelled(LABEL_APP, "bbkeep"), kept);
    eventually(Duration::from_secs(30), "the removed app's container swept", || {
        containers_labelled(LABEL_APP, "bbgone").is_empty()
    });

    // A new spec: the old container stops while the new one, of the same name, starts; the
    // old one's stop must not take the new one with it.
    let updated = flux_spec("bbkeep", &image.tag, 1).replace("GREETING=hi", "GREETING=again");
    cloud.deploy_manifest(&manifest(&cloud, "spec.json", &updated));
    std::thread::sleep(Duration::from_secs(7));
    let now = containers_labelled(LABEL_APP, "bbkeep");
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(now, kept, "the new spec runs in a new container");
    assert_eq!(get(&cloud, "bbkeep.app.localhost").map(|r| r.0), Some(200));
}
