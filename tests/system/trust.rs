//! Trust boundaries: what a hostile node operator cannot make the cloud do.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use model::api::{Assignments, Heartbeat, InstanceReport, SignedHeartbeat};
use model::chain::{Capability, NodeStart, PortRange, Tx};
use model::keys::Keypair;
use model::tier::Tier;

use crate::cloud::Cloud;

/// A stand-in for a node's API that answers the leader's address challenges with `key`, on a
/// thread; stops (and frees its port) when dropped.
struct AddressProver {
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl AddressProver {
    fn start(ip: &str, node: &str, key: &Keypair) -> AddressProver {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind(format!("{ip}:0")).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (node, key, stopping) = (node.to_string(), key.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((mut socket, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = socket.set_nonblocking(false);
                let mut head = [0u8; 2048];
                let n = socket.read(&mut head).unwrap_or(0);
                let text = String::from_utf8_lossy(&head[..n]).to_string();
                let nonce = text
                    .split_whitespace()
                    .nth(1)
                    .and_then(|t| t.split("nonce=").nth(1))
                    .map(|n| n.split('&').next().unwrap_or_default().to_string())
                    .unwrap_or_default();
                let proof = model::api::AddressProof::sign(&node, &addr.to_string(), &nonce, &key);
                let body = serde_json::to_string(&proof).expect("json");
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes());
            }
        });
        AddressProver { addr, stop }
    }
}

impl Drop for AddressProver {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
use crate::cluster::*;
use crate::util::repo;

/// The registration of node `eu-rogue` in Frankfurt, with `key`, on `address` and `ports`.
fn rogue_start(key: &Keypair, address: std::net::IpAddr, instance_ports: PortRange) -> NodeStart {
    NodeStart {
        node_id: "eu-rogue".into(),
        collateral: Tier::Cumulus.collateral(),
        region: REGION.into(),
        continent: "EU".into(),
        country: "DE".into(),
        geo: model::GeoPoint { lat: 50.0, lon: 8.0 },
        capabilities: vec![Capability::Wasm],
        node_key: key.public(),
        address,
        instance_ports,
    }
}

/// One signed beat of `node`, reporting `instances`; the status and body of the answer.
fn beat(url: &str, node: &str, key: &Keypair, instances: Vec<InstanceReport>) -> (u16, String) {
    beat_with_api(url, node, key, instances, None)
}

/// [`beat`], naming the node's API address (where the leader challenges it).
fn beat_with_api(
    url: &str,
    node: &str,
    key: &Keypair,
    instances: Vec<InstanceReport>,
    api: Option<String>,
) -> (u16, String) {
    let beat = Heartbeat { node: node.into(), at_ms: chain::now_ms(), instances, unavailable: Default::default(), api };
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
    let start = rogue_start(&key, std::net::Ipv4Addr::LOCALHOST.into(), PortRange::DEFAULT);
    c.submit_applied(&[1], &c.wallet(), Tx::NodeStart(start)).expect("the rogue node on chain");

    // An app, which only the rogue node can take.
    let dir = c.dir.path().join("rogue-target");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::copy(repo().join("examples/hello/hello.wasm"), dir.join("hello.wasm")).expect("wasm");
    let manifest = "name = \"hello\"\ninstances = 1\n[[component]]\nname = \"web\"\nwasm = \"hello.wasm\"\n";
    std::fs::write(dir.join("fluxapp.toml"), manifest).expect("manifest");

    // It beats until the instance is assigned to it, answering the leader's address challenge
    // (it registered its own address honestly).
    let prover = AddressProver::start("127.0.0.1", "eu-rogue", &key);
    let api = Some(prover.addr.to_string());
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut deployed = false;
    let assignment = loop {
        assert!(Instant::now() < deadline, "never assigned an instance\n{}", c.logs());
        let (status, body) = beat_with_api(&control, "eu-rogue", &key, Vec::new(), api.clone());
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
        secrets_version: assignment.secrets_version,
        endpoints: [("web".to_string(), control_addr.clone())].into(),
        healthy: true,
        message: None,
        runs: Default::default(),
    };
    eventually(Duration::from_secs(20), "the gateway knows the app", || {
        cloud.get_app("hello", "/", Duration::from_secs(2)).is_some_and(|r| r.status().as_u16() == 503)
    });
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let (status, body) = beat(&control, "eu-rogue", &key, vec![lie.clone()]);
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("\"bad_endpoint\"") && body.contains(&control_addr), "{body}");
        assert!(body.contains("127.0.0.1, ports 20000-20999"), "{body}");
        // Through the gateway the app has no instance, and the control plane never answers.
        let resp = cloud.get_app("hello", "/v1/status", Duration::from_secs(5)).expect("the gateway answers");
        let (status, body) = (resp.status().as_u16(), resp.text().unwrap_or_default());
        assert_eq!(status, 503, "{body}");
        assert!(!body.contains("regions") && !body.contains("chain_height"), "control-plane data leaked: {body}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let feed: serde_json::Value = c.get(1, &format!("/v1/routes/{REGION}")).expect("feed");
    assert_eq!(feed["routes"], serde_json::json!([]), "the lie was routed: {feed}");
    assert!(std::fs::read_to_string(c.dir.path().join("c1.log")).unwrap_or_default().contains("heartbeat refused"));
}

/// `wasm = "/etc/passwd"` (or any file beside the manifest's directory) is refused by fluxctl;
/// sent anyway (`--allow-outside`) fluxctl refuses it as not a component before paying, and
/// straight to the API it is refused unpaid, then as not a component. No refusal quotes the
/// file, and nothing is stored.
#[test]
fn a_manifest_cannot_publish_a_file_that_is_not_its_module() {
    let c = Cluster::start(&Loopback, &[1], &[1], TEST_CONFIG);
    c.wait_leader(Duration::from_secs(10));
    c.wait_announced();
    let secret = c.dir.path().join("secret.txt");
    std::fs::write(&secret, "root:x:0:0:the-secret-line\n").expect("secret");
    let dir = c.dir.path().join("leaky");
    std::fs::create_dir_all(&dir).expect("dir");
    let balance = || -> serde_json::Value {
        c.get::<serde_json::Value>(1, &format!("/v1/wallets/{}", c.wallet().public().0)).expect("wallet")["balance"]
            .clone()
    };
    let before = balance();
    for module in ["/etc/passwd", "../secret.txt"] {
        let manifest = dir.join("fluxapp.toml");
        std::fs::write(&manifest, format!("name = \"leaky\"\n[[component]]\nname = \"web\"\nwasm = \"{module}\"\n"))
            .expect("manifest");
        let out = c.fluxctl(&["app", "deploy", &path_str(&manifest)]);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains("outside the manifest's directory") && err.contains("--allow-outside"), "{err}");
        let out = c.fluxctl(&["app", "deploy", &path_str(&manifest), "--allow-outside"]);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains("not a WebAssembly component"), "{err}");
        assert!(!err.contains("root:") && !err.contains("the-secret-line"), "the refusal quotes the file: {err}");
    }
    assert_eq!(balance(), before, "something was paid for");
    // Straight to the API: unsigned, refused before it is read; paid for and signed, a core
    // module is refused as not a component, and none of it is stored.
    let http = reqwest::blocking::Client::new();
    let core = b"\0asm\x01\x00\x00\x00".to_vec();
    let hash = blake3::hash(&core).to_hex().to_string();
    let url = format!("{}/v1/blobs/{hash}", c.replicas[&1].url);
    assert_eq!(http.put(&url).body(core.clone()).send().expect("upload").status().as_u16(), 401);
    let payment = model::chain::BlobPayment { hash: hash.clone(), size: core.len() as u64 };
    c.submit_applied(&[1], &c.wallet(), Tx::BlobUpload { blobs: vec![payment] }).expect("paid");
    let resp = signed_upload(&http, &c.replicas[&1].url, &c.wallet(), &core).send().expect("upload");
    let (status, body) = (resp.status().as_u16(), resp.text().unwrap_or_default());
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"invalid_module\"") && body.contains("core WebAssembly module"), "{body}");
    assert_eq!(http.get(&url).send().expect("get").status().as_u16(), 404);
    let passwd = std::fs::read("/etc/passwd").unwrap_or_default();
    let url = format!("{}/v1/blobs/{}", c.replicas[&1].url, blake3::hash(&passwd).to_hex());
    assert_eq!(http.get(&url).send().expect("get").status().as_u16(), 404, "the file was stored");
}

/// An app the nodes on chain could never run (too many instances, or too large for any tier)
/// is refused before anything is paid; `deploy --dry-run` says so, and shows the price of one
/// that fits, sending nothing.
#[test]
fn an_app_no_node_can_run_is_refused_before_payment_and_a_dry_run_sends_nothing() {
    let c = Cluster::start(&Loopback, &[1], &[1], TEST_CONFIG);
    c.wait_leader(Duration::from_secs(10));
    c.wait_announced();
    c.node_on_chain("eu-only");
    let balance = || c.get::<serde_json::Value>(1, &format!("/v1/wallets/{}", c.wallet().public().0)).expect("wallet");
    let before = balance()["balance"].clone();
    let dir = c.dir.path().join("apps");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::copy(repo().join("examples/hello/hello.wasm"), dir.join("hello.wasm")).expect("wasm");
    // A module no deploy below uploads, for the dry run to find missing.
    std::fs::copy(repo().join("tests/guests/misbehave/misbehave.wasm"), dir.join("other.wasm")).expect("wasm");
    let manifest = |name: &str, instances: u32, ram: u32| {
        let path = dir.join(format!("{name}.toml"));
        let module = if name == "fits" { "other.wasm" } else { "hello.wasm" };
        let toml = format!(
            "name = \"{name}\"\ninstances = {instances}\n[[component]]\nname = \"web\"\nwasm = \"{module}\"\nram = {ram}\n"
        );
        std::fs::write(&path, toml).expect("manifest");
        path_str(&path)
    };
    for (name, instances, ram, says) in
        [("two", 2, 64, "1 node(s) on chain match"), ("huge", 1, 9000, "0 of them have room")]
    {
        let file = manifest(name, instances, ram);
        let out = c.fluxctl(&["app", "deploy", &file, "--dry-run"]);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(!out.status.success(), "{stdout}{stderr}");
        assert!(
            stdout.contains("feasible: no") && stdout.contains(says) && stdout.contains("nothing was sent"),
            "{stdout}"
        );
        let out = c.fluxctl(&["app", "deploy", &file]);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains("infeasible") && stderr.contains(says), "{stderr}");
        assert!(c.get::<serde_json::Value>(1, &format!("/v1/apps/{name}")).is_err(), "`{name}` was registered");
    }
    assert_eq!(balance()["balance"], before, "an infeasible app was paid for");

    // One that fits: the dry run shows its price and quotas, and sends nothing.
    let out = c.fluxctl(&["app", "deploy", &manifest("fits", 1, 64), "--dry-run"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("would be registered, paying") && stdout.contains("eu 1"), "{stdout}");
    assert!(stdout.contains("and a 0.0001 FLUX fee"), "the dry run shows the fee: {stdout}");
    assert!(stdout.contains("feasible: yes") && stdout.contains("modules to upload"), "{stdout}");
    assert!(c.get::<serde_json::Value>(1, "/v1/apps/fits").is_err(), "a dry run registered the app");
    let wasm = std::fs::read(dir.join("other.wasm")).expect("wasm");
    let blob = format!("{}/v1/blobs/{}", c.replicas[&1].url, blake3::hash(&wasm).to_hex());
    assert_eq!(reqwest::blocking::get(blob).expect("get").status().as_u16(), 404, "a dry run uploaded the module");
    assert_eq!(balance()["balance"], before);
}

/// Deploys run at once from one wallet each get their own nonce: the losers of a race sign
/// again by themselves, and every app lands. A dry run by another key says the name is taken.
#[test]
fn parallel_deploys_from_one_wallet_all_land() {
    let c = Cluster::start(&Loopback, &[1], &[1], TEST_CONFIG);
    c.wait_leader(Duration::from_secs(10));
    c.node_on_chain("eu-busy");
    let dir = c.dir.path().join("parallel");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::copy(repo().join("examples/hello/hello.wasm"), dir.join("hello.wasm")).expect("wasm");
    let manifest = |name: &str| {
        let path = dir.join(format!("{name}.toml"));
        let toml = format!("name = \"{name}\"\ninstances = 1\n[[component]]\nname = \"web\"\nwasm = \"hello.wasm\"\n");
        std::fs::write(&path, toml).expect("manifest");
        path_str(&path)
    };
    let names: Vec<String> = (0..4).map(|i| format!("par{i}")).collect();
    let outputs: Vec<std::process::Output> = std::thread::scope(|s| {
        let runs: Vec<_> = names
            .iter()
            .map(|name| {
                let (file, c) = (manifest(name), &c);
                s.spawn(move || c.fluxctl(&["app", "deploy", &file]))
            })
            .collect();
        runs.into_iter().map(|r| r.join().expect("fluxctl thread")).collect()
    });
    for (name, out) in names.iter().zip(&outputs) {
        assert!(out.status.success(), "deploy of {name}: {}{}", text(&out.stdout), text(&out.stderr));
    }
    eventually(Duration::from_secs(20), "every app registered", || {
        names.iter().all(|name| c.get::<serde_json::Value>(1, &format!("/v1/apps/{name}")).is_ok())
    });

    let stranger = c.dir.path().join("stranger.key");
    std::fs::write(&stranger, Keypair::generate().secret_hex()).expect("key");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fluxctl"))
        .args(["--api", &c.replicas[&1].url, "--key", &path_str(&stranger), "app", "deploy", &manifest("par0")])
        .arg("--dry-run")
        .env("FLUXCTL_CONFIG_DIR", c.dir.path().join("stranger"))
        .output()
        .expect("fluxctl");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("refused: the name is taken by") && stderr.contains("another key"), "{stdout}{stderr}");
}

/// Every error of the API is the documented JSON with the code that goes with its status; the
/// gateway answers a registered app with no healthy instance 503 with `retry-after`, and
/// `OPTIONS *` itself; fluxctl ends quietly when its reader goes away.
#[test]
fn errors_are_the_documented_json_and_statuses() {
    let cloud = Cloud::with_regions(&[(REGION, 0)]);
    let c = &cloud.cluster;
    let base = c.replicas[&1].url.clone();
    // No pooled connections: the server closes one after refusing a body it did not read (413),
    // and a request sent on it then would fail before any answer.
    let http = reqwest::blocking::Client::builder().pool_max_idle_per_host(0).build().expect("client");
    let check = |resp: reqwest::blocking::Response, status: u16, code: &str| {
        let got = resp.status().as_u16();
        let json = resp.headers().get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        let body: serde_json::Value = resp.json().unwrap_or_default();
        assert_eq!((got, body["error"]["code"].as_str()), (status, Some(code)), "{body}");
        assert!(json && body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
        assert_eq!(model::api::status_of(code), status, "the code table disagrees for {code}");
    };
    check(http.delete(format!("{base}/v1/status")).send().expect("405"), 405, "method_not_allowed");
    check(
        http.post(format!("{base}/v1/transactions")).body(vec![b'x'; 3 << 20]).send().expect("413"),
        413,
        "payload_too_large",
    );
    check(http.get(format!("{base}/v1/events/{REGION}?after=abc")).send().expect("query"), 400, "bad_request");
    check(http.get(format!("{base}/v1/chain/blocks/twelve")).send().expect("path"), 400, "bad_request");
    check(http.get(format!("{base}/v1/nothing-here")).send().expect("404"), 404, "not_found");

    // A registered app with no healthy instance is 503 with retry-after, not 404.
    c.node_on_chain("eu-quiet");
    let dir = c.dir.path().join("quiet");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::copy(repo().join("examples/hello/hello.wasm"), dir.join("hello.wasm")).expect("wasm");
    let manifest = dir.join("fluxapp.toml");
    std::fs::write(&manifest, "name = \"quiet\"\n[[component]]\nname = \"web\"\nwasm = \"hello.wasm\"\n")
        .expect("manifest");
    let out = c.fluxctl(&["app", "deploy", &path_str(&manifest)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    eventually(Duration::from_secs(20), "the gateway knows the app", || {
        cloud.get_app("quiet", "/", Duration::from_secs(2)).is_some_and(|r| r.status().as_u16() == 503)
    });
    let resp = cloud.get_app("quiet", "/", Duration::from_secs(2)).expect("the gateway answers");
    assert_eq!(resp.status().as_u16(), 503);
    assert!(resp.headers().get("retry-after").is_some(), "{:?}", resp.headers());
    let unknown = cloud.get_app("nobody", "/", Duration::from_secs(2)).expect("the gateway answers");
    assert_eq!(unknown.status().as_u16(), 404);

    // OPTIONS * is about the gateway itself: answered, never a 502.
    let mut stream = std::net::TcpStream::connect(cloud.gateway_addr()).expect("connect");
    std::io::Write::write_all(
        &mut stream,
        b"OPTIONS * HTTP/1.1\r\nhost: quiet.app.localhost\r\nconnection: close\r\n\r\n",
    )
    .expect("send");
    let mut answer = String::new();
    let _ = std::io::Read::read_to_string(&mut stream, &mut answer);
    assert!(answer.starts_with("HTTP/1.1 204"), "{answer}");

    // fluxctl whose reader went away ends quietly, not with a panic.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fluxctl"))
        .args(["--api", &c.urls(), "app", "list"])
        .env("FLUXCTL_CONFIG_DIR", c.dir.path().join("fluxctl"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("fluxctl");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("fluxctl ends");
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{stderr}");
}

/// A `fluxplane chain` process on a free loopback port, with its data in `data_dir`.
struct ChainProc {
    proc: Proc,
    url: String,
    http: reqwest::blocking::Client,
}

impl ChainProc {
    fn start(data_dir: &std::path::Path, block_time: &str, log: std::path::PathBuf) -> ChainProc {
        let listen = format!("127.0.0.1:{}", free_port("127.0.0.1"));
        let mut args = strings(&["chain", "--listen", &listen, "--block-time", block_time, "--data-dir"]);
        args.push(path_str(data_dir));
        let proc = Proc::spawn("chain", fluxplane(), &args, log);
        let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().expect("http");
        let chain = ChainProc { proc, url: format!("http://{listen}"), http };
        eventually(Duration::from_secs(30), "the chain answers", || {
            chain.http.get(format!("{}/v1/chain/tip", chain.url)).send().is_ok_and(|r| r.status().is_success())
        });
        chain
    }

    fn wallet(&self, key: &Keypair) -> model::api::WalletView {
        let url = format!("{}/v1/wallets/{}", self.url, key.public().0);
        self.http.get(url).send().and_then(|r| r.json()).expect("wallet")
    }

    /// Submits `tx` signed with `nonce`: the status, the error code (if any) and the body.
    fn submit(&self, key: &Keypair, nonce: u64, tx: Tx) -> (u16, String, serde_json::Value) {
        let stx = model::chain::SignedTx::sign(tx, nonce, key);
        let resp = self.http.post(format!("{}/v1/transactions", self.url)).json(&stx).send().expect("submit");
        let status = resp.status().as_u16();
        let body: serde_json::Value = resp.json().unwrap_or_default();
        let code = body["error"]["code"].as_str().unwrap_or_default().to_string();
        (status, code, body)
    }

    fn tip(&self) -> u64 {
        let tip: model::api::ChainTip =
            self.http.get(format!("{}/v1/chain/tip", self.url)).send().and_then(|r| r.json()).expect("tip");
        tip.height
    }

    fn tx_status(&self, id: &str) -> model::api::TxStatus {
        self.http.get(format!("{}/v1/transactions/{id}", self.url)).send().and_then(|r| r.json()).expect("status")
    }

    fn genesis_wallet(data_dir: &std::path::Path) -> Keypair {
        let text = std::fs::read_to_string(data_dir.join("genesis.key")).expect("genesis key");
        Keypair::from_secret_hex(&text).expect("key")
    }
}

/// Junk destinations, nonce jumps and transactions from keys that cannot pay the fee are all
/// refused with their code, and none of them takes a nonce or a byte of the mempool.
#[test]
fn the_chain_refuses_junk_addresses_nonce_jumps_and_fee_free_spam() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("chain");
    let chain = ChainProc::start(&data, "200ms", dir.path().join("chain.log"));
    let wallet = ChainProc::genesis_wallet(&data);
    let friend = Keypair::generate();
    assert_eq!(chain.wallet(&wallet).next_nonce, 1);

    // 10 KB of junk as the destination: refused, not burned.
    let junk = model::keys::PublicKeyHex("ab".repeat(5_000));
    let (status, code, _) = chain.submit(&wallet, 1, Tx::Transfer { to: junk, amount: 1 });
    assert_eq!((status, code.as_str()), (400, "invalid_transfer"));

    // A nonce that skips ahead, up to u64::MAX: refused, saying which is next.
    for nonce in [2, 1_000_000, u64::MAX] {
        let (status, code, body) = chain.submit(&wallet, nonce, Tx::Transfer { to: friend.public(), amount: 1 });
        assert_eq!((status, code.as_str()), (400, "bad_nonce"), "{body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("next nonce is 1")), "{body}");
    }

    // An unfunded key cannot send even a zero transfer: the fee is not paid.
    let unfunded = Keypair::generate();
    for _ in 0..50 {
        let (status, code, body) = chain.submit(&unfunded, 1, Tx::Transfer { to: friend.public(), amount: 0 });
        assert_eq!((status, code.as_str()), (402, "insufficient_funds"), "{body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("transaction fee")), "{body}");
    }

    // The first valid transaction still has nonce 1; its fee is taken with the amount.
    let before = chain.wallet(&wallet).balance;
    let pay = Tx::Transfer { to: friend.public(), amount: model::tier::FLUX };
    let fee = model::chain::SignedTx::sign(pay.clone(), 1, &wallet).fee();
    let (status, _, body) = chain.submit(&wallet, 1, pay.clone());
    assert_eq!(status, 200, "{body}\n{}", chain.proc.output());
    assert_eq!(chain.wallet(&wallet).next_nonce, 2, "the next nonce counts the mempool");
    let (status, code, _) = chain.submit(&wallet, 1, pay);
    assert_eq!((status, code.as_str()), (409, "stale_nonce"), "a replay");
    let id = body["tx_id"].as_str().expect("id").to_string();
    eventually(Duration::from_secs(10), "the transfer in a block", || {
        matches!(chain.tx_status(&id), model::api::TxStatus::Included { .. })
    });
    assert_eq!(chain.wallet(&wallet).balance, before - model::tier::FLUX - fee);
    assert_eq!(chain.wallet(&friend).balance, model::tier::FLUX);
    assert_eq!(chain.wallet(&unfunded).nonce, 0, "the spam took no nonce");
}

/// A tmpfs mounted for one test, unmounted on drop (after the processes that use it are gone:
/// declare it before them).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).expect("mount point");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .expect("mount");
        assert!(status.success(), "mounting a tmpfs needs root (CI runs as root)");
        Tmpfs(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem at `dir` with a file until it is full; the file is bounded by the
/// filesystem (a small tmpfs).
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("filler");
    let chunk = vec![0u8; 64 * 1024];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
    path
}

/// On a full disk the chain answers 503 to new transactions and produces no block, never 200
/// for something it then drops; once there is room it accepts again, and every transaction it
/// accepted lands in a block, with no height missing. A transaction given an id also survives a
/// `kill -9` before its block.
#[test]
fn a_full_disk_gives_503s_then_the_chain_resumes_with_no_lost_block() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("chain");
    let _tmpfs = Tmpfs::mount(&data, "24m");
    let mut chain = ChainProc::start(&data, "200ms", dir.path().join("chain.log"));
    let wallet = ChainProc::genesis_wallet(&data);
    let friend = Keypair::generate().public();
    let pay = || Tx::Transfer { to: friend.clone(), amount: 1 };

    let mut accepted = Vec::new();
    let mut nonce = chain.wallet(&wallet).next_nonce;
    let mut submit = |chain: &ChainProc, nonce: &mut u64| {
        let (status, code, body) = chain.submit(&wallet, *nonce, pay());
        if status == 200 {
            accepted.push(body["tx_id"].as_str().expect("id").to_string());
            *nonce += 1;
        }
        (status, code, body)
    };
    for _ in 0..5 {
        assert_eq!(submit(&chain, &mut nonce).0, 200);
    }

    // The disk fills. Writes into space the store had already go on for a while; then every
    // submission is a 503 that says why, and nothing is accepted.
    let filler = fill(&data);
    let mut refused = None;
    let mut tries = 0;
    for _ in 0..2_000 {
        tries += 1;
        let (status, code, body) = submit(&chain, &mut nonce);
        if status != 200 {
            refused = Some((status, code, body));
            break;
        }
    }
    let (status, code, body) =
        refused.unwrap_or_else(|| panic!("never refused on a full disk\n{}", chain.proc.output()));
    eprintln!("refused after {} accepted on the full disk: {body}", tries - 1);
    assert_eq!((status, code.as_str()), (503, "busy"), "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("cannot store")), "{body}");
    let stalled = chain.tip();

    // Room again: it accepts, blocks resume, and every accepted transaction is in a block.
    std::fs::remove_file(&filler).expect("free the disk");
    eventually(Duration::from_secs(10), "a transaction accepted again", || submit(&chain, &mut nonce).0 == 200);
    eventually(Duration::from_secs(20), "every accepted transaction in a block", || {
        accepted.iter().all(|id| matches!(chain.tx_status(id), model::api::TxStatus::Included { .. }))
    });
    let tip = chain.tip();
    assert!(tip > stalled, "blocks resumed");
    for height in 0..=tip {
        let resp = chain.http.get(format!("{}/v1/chain/blocks/{height}", chain.url)).send().expect("block");
        assert_eq!(resp.status().as_u16(), 200, "block {height} of {tip} is stored");
    }
    assert_eq!(chain.wallet(&wallet).nonce, nonce - 1, "every accepted transfer applied");

    // A transaction given an id survives a kill -9 before its block.
    chain.proc.kill();
    let slow = ChainProc::start(&data, "1h", dir.path().join("chain-slow.log"));
    let (status, _, body) = slow.submit(&wallet, nonce, pay());
    assert_eq!(status, 200, "{body}");
    let id = body["tx_id"].as_str().expect("id").to_string();
    slow.proc.sigkill();
    drop(slow);
    chain = ChainProc::start(&data, "200ms", dir.path().join("chain-again.log"));
    eventually(Duration::from_secs(10), "the transaction from before the kill in a block", || {
        matches!(chain.tx_status(&id), model::api::TxStatus::Included { .. })
    });
}

/// Every file under `dir` whose name ends in `.log`, concatenated: what the processes logged.
fn every_log(dir: &std::path::Path) -> String {
    let mut out = String::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.push_str(&every_log(&path));
        } else if path.extension().is_some_and(|e| e == "log") {
            out.push_str(&String::from_utf8_lossy(&std::fs::read(&path).unwrap_or_default()));
        }
    }
    out
}

/// A secret set with `fluxctl app secret set` reaches the guest (the hello app greets with it),
/// and never appears in an API answer, a block or a log line. Only the owner can set one, and a
/// value not sealed to the region's key is refused.
#[test]
fn a_secret_reaches_the_guest_and_appears_nowhere_else() {
    let cloud = Cloud::with_regions(&[(REGION, 1)]);
    let c = &cloud.cluster;
    cloud.deploy_hello_as(
        "name = \"hello\"\ninstances = 1\n[[component]]\nname = \"web\"\nwasm = \"hello.wasm\"\nenv = { GREETING = \"hello\" }\n",
    );
    const VALUE: &str = "s3cret-7f3a9c41";
    let out = c.fluxctl(&["app", "secret", "set", "hello", &format!("GREETING={VALUE}")]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}\n{}", cloud.logs());
    assert!(stderr.contains("eu: GREETING set"), "{stderr}");

    // The instance restarts with it, and the guest reads it.
    eventually(Duration::from_secs(30), "the guest greets with the secret", || {
        cloud.get().and_then(|r| r.text().ok()).is_some_and(|body| body.starts_with(&format!("{VALUE} from")))
    });
    let status = c.fluxctl(&["app", "status", "hello"]);
    assert!(text(&status.stdout).contains("secrets: GREETING"), "{}", text(&status.stdout));

    // Nowhere else: not in any answer of the API, any block, the feed, or any log.
    let mut seen = String::new();
    let tip: u64 = c.get::<model::api::ChainTip>(1, "/v1/chain/tip").expect("tip").height;
    let mut paths: Vec<String> =
        ["/v1/apps/hello", "/v1/apps", "/v1/status", "/v1/nodes", "/v1/events/eu", "/v1/routes/eu"]
            .iter()
            .map(|p| p.to_string())
            .collect();
    paths.extend((0..=tip).map(|h| format!("/v1/chain/blocks/{h}")));
    for path in &paths {
        let answer = c.get::<serde_json::Value>(1, path).unwrap_or_else(|e| panic!("{path}: {e}"));
        seen.push_str(&answer.to_string());
    }
    seen.push_str(&stdout);
    seen.push_str(&stderr);
    seen.push_str(&text(&status.stdout));
    seen.push_str(&every_log(c.dir.path()));
    assert!(seen.contains("GREETING"), "the check reads what it should");
    assert!(!seen.contains(VALUE), "the secret's value appears outside the guest");

    // Only the owner sets secrets; a value must be sealed to the region's key.
    let http = reqwest::blocking::Client::new();
    let url = &c.replicas[&1].url;
    let region_key: model::api::SecretsKeyView = c.get(1, "/v1/secrets-key").expect("key");
    let sealed = |to: &str| {
        let context = model::api::secret_context("hello", "GREETING", REGION);
        std::collections::BTreeMap::from([(
            "GREETING".to_string(),
            model::sealed::seal(to, &context, b"x").expect("seal"),
        )])
    };
    let post = |update: &model::api::SecretsUpdate| {
        let resp = http.post(format!("{url}/v1/apps/hello/secrets")).json(update).send().expect("post");
        (resp.status().as_u16(), resp.text().unwrap_or_default())
    };
    let stranger = Keypair::generate();
    let forged = model::api::SecretsUpdate::sign("hello", REGION, sealed(&region_key.key), chain::now_ms(), &stranger);
    let (status, body) = post(&forged);
    assert_eq!(status, 403, "{body}");
    let elsewhere = model::sealed::BoxKeypair::generate().public_hex();
    let misdirected =
        model::api::SecretsUpdate::sign("hello", REGION, sealed(&elsewhere), chain::now_ms(), &c.wallet());
    let (status, body) = post(&misdirected);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"invalid_secret\"") && body.contains("does not open"), "{body}");
    let good = model::api::SecretsUpdate::sign("hello", REGION, sealed(&region_key.key), chain::now_ms(), &c.wallet());
    assert_eq!(post(&good).0, 200);
    let (status, body) = post(&good);
    assert_eq!(status, 409, "a replayed update: {body}");
    let context = model::api::secret_context("hello", "GREETING", REGION);
    let nul = model::sealed::seal(&region_key.key, &context, b"a\0b").expect("seal");
    let binary = BTreeMap::from([("GREETING".to_string(), nul)]);
    let (status, body) = post(&model::api::SecretsUpdate::sign("hello", REGION, binary, chain::now_ms(), &c.wallet()));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("UTF-8"), "{body}");

    // Removed: the instance restarts without it, and greets with the plain env again.
    let out = c.fluxctl(&["app", "secret", "rm", "hello", "GREETING"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("eu: GREETING removed"), "{}", text(&out.stderr));
    eventually(Duration::from_secs(30), "the guest greets without the secret", || {
        cloud.get().and_then(|r| r.text().ok()).is_some_and(|body| body.starts_with("hello from"))
    });

    // A manifest's [secrets] table: set by the deploy, never in the published spec.
    const FROM_MANIFEST: &str = "manifest-secret-0b5e";
    cloud.deploy_module_as(
        &repo().join("examples/hello/hello.wasm"),
        &format!(
            "name = \"vault\"\ninstances = 1\n[[component]]\nname = \"web\"\nwasm = \"hello.wasm\"\n\n[secrets]\nGREETING = \"{FROM_MANIFEST}\"\n"
        ),
    );
    eventually(Duration::from_secs(30), "the vault guest greets with the manifest's secret", || {
        cloud
            .get_app("vault", "/", Duration::from_secs(5))
            .and_then(|r| r.text().ok())
            .is_some_and(|body| body.starts_with(&format!("{FROM_MANIFEST} from")))
    });
    let spec = c.get::<serde_json::Value>(1, "/v1/apps/vault").expect("app").to_string();
    assert!(spec.contains("GREETING") && !spec.contains(FROM_MANIFEST), "{spec}");
}

/// A garbled `chain.redb` (a page overwritten, at the header or deeper) stops `fluxplane chain`
/// at start with an error that names the file, never a panic.
#[test]
fn a_garbled_chain_store_stops_the_chain_with_its_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("chain");
    let mut chain = ChainProc::start(&data, "100ms", dir.path().join("chain.log"));
    eventually(Duration::from_secs(10), "a few blocks", || chain.tip() >= 3);
    assert!(chain.proc.terminate(Duration::from_secs(10)).is_some(), "the chain stops on SIGTERM");
    let store = data.join("chain.redb");
    let intact = std::fs::read(&store).expect("store");
    for offset in [0usize, 4096, 8192] {
        let mut bytes = intact.clone();
        let end = (offset + 4096).min(bytes.len());
        bytes[offset..end].fill(0xa5);
        std::fs::write(&store, &bytes).expect("garble");
        let listen = format!("127.0.0.1:{}", free_port("127.0.0.1"));
        let mut args = strings(&["chain", "--listen", &listen, "--data-dir"]);
        args.push(path_str(&data));
        let mut garbled = Proc::spawn("chain", fluxplane(), &args, dir.path().join(format!("garbled-{offset}.log")));
        let status = garbled.wait_exit(Duration::from_secs(20)).expect("the chain exits at start");
        let output = garbled.output();
        assert!(!status.success(), "started on a store garbled at {offset}:\n{output}");
        assert!(output.contains(&path_str(&store)), "the error names the file:\n{output}");
        assert!(!output.contains("panicked"), "a panic, not an error:\n{output}");
    }
}

/// A signed logs request to `node_api` for `path_and_query`, signed by `key`, with its headers.
fn signed_logs_get(
    http: &reqwest::blocking::Client,
    node_api: &str,
    path_and_query: &str,
    key: &Keypair,
) -> reqwest::blocking::RequestBuilder {
    let request = model::api::LogsRequest::sign(path_and_query, chain::now_ms(), key);
    with_logs_headers(http.get(format!("http://{node_api}{path_and_query}")), &request)
}

fn with_logs_headers(
    builder: reqwest::blocking::RequestBuilder,
    request: &model::api::LogsRequest,
) -> reqwest::blocking::RequestBuilder {
    use model::api::LogsRequest as L;
    builder
        .header(L::OWNER_HEADER, request.owner.0.as_str())
        .header(L::AT_HEADER, request.at_ms.to_string())
        .header(L::NONCE_HEADER, request.nonce.as_str())
        .header(L::SIGNATURE_HEADER, request.signature.as_str())
}

/// The JSON error code of a node API answer.
fn error_code(resp: reqwest::blocking::Response) -> String {
    let body: serde_json::Value = resp.json().expect("a JSON error body");
    body["error"]["code"].as_str().unwrap_or_default().to_string()
}

/// A captured logs request is answered once: replayed, or sent with another query, it gets
/// 401. An app holds at most eight follow streams on a node; the ninth gets a JSON 429, and a
/// closed stream gives its place back.
#[test]
fn a_logs_request_is_answered_once_and_follow_streams_are_bounded() {
    let cloud = Cloud::with_regions(&[(REGION, 1)]);
    cloud.deploy_hello_as("name = \"hello\"\ninstances = 1\n[[component]]\nname = \"web\"\nwasm = \"hello.wasm\"\n");
    let c = &cloud.cluster;
    let (node_api, instance) = eventually_value(Duration::from_secs(10), "the node's API and the instance", || {
        let nodes: Vec<model::api::NodeView> =
            serde_json::from_slice(&c.fluxctl(&["--output", "json", "node", "list"]).stdout).ok()?;
        let app: model::api::AppView =
            serde_json::from_slice(&c.fluxctl(&["--output", "json", "app", "status", "hello"]).stdout).ok()?;
        let placed = app.placements.first()?;
        Some((nodes.into_iter().find(|n| n.id == placed.node)?.api?, placed.id.clone()))
    });
    let owner = c.wallet();
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    let path = format!("{}?tail=5", client::paths::node_logs(&instance));

    let request = model::api::LogsRequest::sign(&path, chain::now_ms(), &owner);
    let first = with_logs_headers(http.get(format!("http://{node_api}{path}")), &request).send().expect("answer");
    assert_eq!(first.status(), 200, "{}", first.text().unwrap_or_default());
    let replay = with_logs_headers(http.get(format!("http://{node_api}{path}")), &request).send().expect("answer");
    assert_eq!(replay.status(), 401);
    assert_eq!(error_code(replay), "unauthorized");
    // The same signature on another query (a follow stream, say).
    let other = format!("{}?follow=true", client::paths::node_logs(&instance));
    let fresh = model::api::LogsRequest::sign(&path, chain::now_ms(), &owner);
    let moved = with_logs_headers(http.get(format!("http://{node_api}{other}")), &fresh).send().expect("answer");
    assert_eq!(moved.status(), 401);
    // A request signed long ago.
    let old = model::api::LogsRequest::sign(&path, chain::now_ms() - 60_000, &owner);
    let stale = with_logs_headers(http.get(format!("http://{node_api}{path}")), &old).send().expect("answer");
    assert_eq!(stale.status(), 401);

    // Eight follow streams are held open; the ninth is refused.
    let streaming = reqwest::blocking::Client::builder().build().expect("client");
    let mut open: Vec<reqwest::blocking::Response> = (0..8)
        .map(|i| {
            let resp = signed_logs_get(&streaming, &node_api, &other, &owner).send().expect("answer");
            assert_eq!(resp.status(), 200, "follow stream {i}");
            resp
        })
        .collect();
    let ninth = signed_logs_get(&http, &node_api, &other, &owner).send().expect("answer");
    assert_eq!(ninth.status(), 429);
    assert_eq!(error_code(ninth), "too_many_requests");
    // A stream the client closes gives its place back.
    drop(open.pop());
    eventually(Duration::from_secs(10), "a closed follow stream's place is free", || {
        let resp = signed_logs_get(&streaming, &node_api, &other, &owner).send().expect("answer");
        let ok = resp.status() == 200;
        if ok {
            open.push(resp);
        }
        ok
    });
}

/// The answer's status and JSON error code.
fn status_and_code(resp: reqwest::blocking::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().unwrap_or_default();
    (status, body["error"]["code"].as_str().unwrap_or_default().to_string())
}

/// Nobody stores bytes for free: an unsigned upload gets 401 before its body is read, an
/// unfunded key's 402, an unpaid one 402, and a tar that only names a `manifest.json` is
/// refused as `invalid_archive` (400). A paid blob that no app refers to is removed from every
/// replica once its grace period (3 s here) runs out; one an app refers to stays.
#[test]
fn uploads_are_signed_paid_for_checked_and_collected() {
    let config = format!("{TEST_CONFIG}[chain]\nblob_grace = \"3s\"\n");
    let c = Cluster::start(&Loopback, &[1, 2, 3], &[1, 2, 3], &config);
    c.wait_leader(Duration::from_secs(10));
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
    let url = c.replicas[&1].url.clone();
    let wallet = c.wallet();
    let junk = model::tar::build(&[("manifest.json", b"\x8f\x01 random bytes, not JSON"), ("layer", &[7u8; 4096])]);
    let junk_hash = blake3::hash(&junk).to_hex().to_string();

    // Unsigned: refused from the headers.
    let resp = http.put(format!("{url}/v1/blobs/{junk_hash}")).body(junk.clone()).send().expect("answer");
    assert_eq!(status_and_code(resp), (401, "unauthorized".to_string()));
    // Signed by a key with no funds.
    let stranger = Keypair::generate();
    let resp = signed_upload(&http, &url, &stranger, &junk).send().expect("answer");
    assert_eq!(status_and_code(resp), (402, "insufficient_funds".to_string()));
    // Signed by a funded key that has not paid.
    let resp = signed_upload(&http, &url, &wallet, &junk).send().expect("answer");
    assert_eq!(status_and_code(resp), (402, "payment_required".to_string()));

    // Paid: the junk tar is read and refused as an archive; nothing is stored.
    let pay = |bytes: &[u8]| {
        let payment =
            model::chain::BlobPayment { hash: blake3::hash(bytes).to_hex().to_string(), size: bytes.len() as u64 };
        c.submit_applied(&[1, 2, 3], &wallet, Tx::BlobUpload { blobs: vec![payment] }).expect("paid");
    };
    pay(&junk);
    let resp = signed_upload(&http, &url, &wallet, &junk).send().expect("answer");
    assert_eq!(status_and_code(resp), (400, "invalid_archive".to_string()));
    let stored = |id: u64, hash: &str| {
        http.get(format!("{}/v1/blobs/{hash}?local=true", c.replicas[&id].url))
            .send()
            .is_ok_and(|r| r.status().is_success())
    };
    assert!(!stored(1, &junk_hash));

    // A paid module no app refers to is stored, then removed everywhere after the grace.
    let module = std::fs::read(repo().join("tests/guests/misbehave/misbehave.wasm")).expect("wasm");
    let module_hash = blake3::hash(&module).to_hex().to_string();
    pay(&module);
    let resp = signed_upload(&http, &url, &wallet, &module).send().expect("answer");
    assert_eq!(resp.status(), 204, "{}", resp.text().unwrap_or_default());
    assert!([1, 2, 3].iter().filter(|id| stored(**id, &module_hash)).count() >= 2, "held by a majority");
    // One an app refers to stays.
    let hello = c.upload_module();
    c.node_on_chain("eu-keeper");
    let spec = app_spec("keeper", &hello, 1);
    c.submit_applied(&[1, 2, 3], &wallet, Tx::AppRegister { payment: model::price::app_price(&spec), spec })
        .expect("registered");
    eventually(Duration::from_secs(30), "the unreferenced module is removed from every replica", || {
        [1, 2, 3].iter().all(|id| !stored(*id, &module_hash))
    });
    assert!([1, 2, 3].iter().all(|id| stored(*id, &hello)), "a module an app refers to was removed");
    // Its payment has expired too: uploading it again needs a new one.
    let resp = signed_upload(&http, &url, &wallet, &module).send().expect("answer");
    assert_eq!(status_and_code(resp), (402, "payment_required".to_string()));
}

/// A rogue cannot register another node's address and ports, nor ports that hold a control
/// replica's listener; and a node that registered an address it does not answer on gets no work
/// until the node key answers the leader's challenge there.
#[test]
fn a_node_cannot_take_another_address_and_gets_work_only_once_it_proves_its_own() {
    let cloud = Cloud::with_regions(&[(REGION, 1)]);
    let c = &cloud.cluster;
    let control = c.replicas[&1].url.clone();
    let replica_port: u16 = c.replicas[&1].addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
    let nodes = || -> Vec<model::api::NodeView> {
        serde_json::from_slice(&c.fluxctl(&["--output", "json", "node", "list"]).stdout).unwrap_or_default()
    };
    let honest = eventually_value(Duration::from_secs(30), "eu-n1 on chain", || {
        nodes().into_iter().find(|n| n.id == "eu-n1").map(|n| (n.address, n.instance_ports))
    });
    let key = Keypair::generate();
    let start = |address: std::net::IpAddr, instance_ports: PortRange| rogue_start(&key, address, instance_ports);
    // eu-n1's own address and ports.
    let refused = c.submit_applied(&[1], &c.wallet(), Tx::NodeStart(start(honest.0, honest.1)));
    let err = refused.expect_err("another node's ports");
    assert!(err.contains("overlap node `eu-n1`"), "{err}");
    // Ports that hold the control replica's listener.
    let first = replica_port.saturating_sub(10).max(1024);
    let around = PortRange { first, last: first + 200 };
    let loopback: std::net::IpAddr = std::net::Ipv4Addr::LOCALHOST.into();
    let err = c.submit_applied(&[1], &c.wallet(), Tx::NodeStart(start(loopback, around))).expect_err("a replica's");
    assert!(err.contains("control replica"), "{err}");

    // An address of its own on chain, where it does not answer: no work.
    let claimed: std::net::IpAddr = std::net::Ipv4Addr::new(127, 0, 0, 3).into();
    c.submit_applied(&[1], &c.wallet(), Tx::NodeStart(start(claimed, PortRange::DEFAULT))).expect("on chain");
    let dir = c.dir.path().join("two");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::copy(repo().join("examples/hello/hello.wasm"), dir.join("hello.wasm")).expect("wasm");
    let manifest = "name = \"two\"\ninstances = 2\n[[component]]\nname = \"web\"\nwasm = \"hello.wasm\"\n";
    std::fs::write(dir.join("fluxapp.toml"), manifest).expect("manifest");
    let out = c.fluxctl(&["app", "deploy", &path_str(&dir.join("fluxapp.toml"))]);
    assert!(out.status.success(), "deploy: {}", text(&out.stderr));
    // Its beats name an API on 127.0.0.3 where nothing answers.
    let silent = std::net::TcpListener::bind("127.0.0.3:0").expect("a port to name");
    let nowhere = silent.local_addr().expect("addr").to_string();
    drop(silent);
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        let (status, body) = beat_with_api(&control, "eu-rogue", &key, Vec::new(), Some(nowhere.clone()));
        assert_eq!(status, 200, "{body}");
        let assigned: Assignments = serde_json::from_str(&body).expect("assignments");
        assert!(assigned.instances.is_empty(), "work for a node that did not prove its address: {body}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let rogue = nodes().into_iter().find(|n| n.id == "eu-rogue").expect("listed");
    let why = rogue.unavailable.values().next().cloned().unwrap_or_default();
    assert!(why.contains("address not proven"), "{why}");

    // Once the node key answers on its address, it gets its instance.
    let prover = AddressProver::start("127.0.0.3", "eu-rogue", &key);
    let api = Some(prover.addr.to_string());
    let assigned = eventually_value(Duration::from_secs(20), "the proven node gets work", || {
        let (_, body) = beat_with_api(&control, "eu-rogue", &key, Vec::new(), api.clone());
        let a: Assignments = serde_json::from_str(&body).ok()?;
        (!a.instances.is_empty()).then_some(a)
    });
    assert_eq!(assigned.instances[0].app, "two");
}
