//! Custom domains are proven before they are served: an owner's claim waits for the DNS TXT
//! record `_fluxplane.<domain>` holding its address, and a stranger's later claim on a proven
//! domain changes nothing. The DNS server is Debian's `pebble-challtestsrv`, filled with
//! records through its management API.

use std::path::PathBuf;
use std::time::Duration;

use model::chain::Tx;
use model::keys::Keypair;
use model::tier::FLUX;
use runtime_oci::LABEL_APP;

use crate::cloud::Cloud;
use crate::cluster::*;
use crate::oci::{BusyboxImage, LabelledCleanup};

const DOMAIN: &str = "shop.example.com";

/// `pebble-challtestsrv` answering DNS on a loopback port; killed on drop.
struct DnsServer {
    _proc: Proc,
    /// `127.0.0.1:PORT` of its DNS server.
    dns: String,
    management: String,
    http: reqwest::blocking::Client,
}

impl DnsServer {
    fn start(dir: &std::path::Path) -> DnsServer {
        let program = "/usr/bin/pebble-challtestsrv";
        assert!(PathBuf::from(program).exists(), "{program} is missing: apt-get install pebble");
        let dns = format!("127.0.0.1:{}", free_port("127.0.0.1"));
        let management = format!("127.0.0.1:{}", free_port("127.0.0.1"));
        // Only its DNS server and the API that fills it; no challenge servers.
        let args =
            strings(&["-dns01", &dns, "-management", &management, "-http01", "", "-https01", "", "-tlsalpn01", ""]);
        let proc = Proc::spawn("pebble-challtestsrv", program, &args, dir.join("dns.log"));
        let server = DnsServer {
            _proc: proc,
            dns,
            management: format!("http://{management}"),
            http: reqwest::blocking::Client::builder().timeout(Duration::from_secs(5)).build().expect("http"),
        };
        eventually(Duration::from_secs(10), "pebble-challtestsrv answers", || {
            server.post("clear-txt", "_x.test.", None)
        });
        server
    }

    fn post(&self, verb: &str, host: &str, value: Option<&str>) -> bool {
        let mut body = serde_json::json!({ "host": host });
        if let Some(v) = value {
            body["value"] = v.into();
        }
        let resp = self.http.post(format!("{}/{verb}", self.management)).json(&body).send();
        resp.is_ok_and(|r| r.status().is_success())
    }

    /// Adds a value to the TXT record at `host` (the server keeps every value added).
    fn add_txt(&self, host: &str, value: &str) {
        assert!(self.post("set-txt", &format!("{host}."), Some(value)), "set-txt {host}");
    }
}

/// `GET /` with `host` through the gateway: status and body.
fn get(cloud: &Cloud, host: &str) -> (u16, String) {
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(5)).build().expect("http");
    match client.get(format!("http://{}/", cloud.gateway_addr())).header("host", host).send() {
        Ok(r) => (r.status().as_u16(), r.text().unwrap_or_default().trim().to_string()),
        Err(e) => (0, e.to_string()),
    }
}

/// A manifest of busybox's httpd on public port `port` claiming [`DOMAIN`], with `commands`.
fn manifest(cloud: &Cloud, name: &str, image: &str, port: u16, commands: &str) -> PathBuf {
    let dir = cloud.cluster.dir.path().join(format!("manifest-{name}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let toml = format!(
        "name = \"{name}\"\ninstances = 1\n[[component]]\nname = \"web\"\nimage = \"{image}\"\nports = [{{ container = \
         80, public = {port}, domain = \"{DOMAIN}\" }}]\ncommands = {commands}\ncpu = 0.2\nram = 128\n"
    );
    std::fs::write(dir.join("fluxapp.toml"), toml).expect("manifest");
    dir.join("fluxapp.toml")
}

/// `fluxctl app deploy --wait` signed with `key`; its stderr (the deploy must succeed).
fn deploy(cloud: &Cloud, key: &std::path::Path, manifest: &std::path::Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fluxctl"))
        .args(["--api", &cloud.cluster.urls(), "--key", &path_str(key)])
        .args(["app", "deploy", &path_str(manifest), "--wait", "--timeout", "90"])
        .env("FLUXCTL_CONFIG_DIR", cloud.cluster.dir.path().join("fluxctl"))
        .output()
        .expect("fluxctl");
    let err = text(&out.stderr);
    assert!(out.status.success(), "deploy: {err}\n{}", cloud.logs());
    err
}

fn domain_view(cloud: &Cloud, app: &str) -> Option<model::domains::DomainView> {
    let out = cloud.cluster.fluxctl(&["--output", "json", "app", "status", app]);
    let view: model::api::AppView = serde_json::from_slice(&out.stdout).ok()?;
    view.domains.into_iter().find(|d| d.domain == DOMAIN)
}

#[test]
fn a_strangers_claim_on_a_proven_domain_changes_nothing_and_an_owners_waits_for_its_record() {
    let image = BusyboxImage::import();
    let _cleanup = [
        LabelledCleanup { label: LABEL_APP, value: "shop".into() },
        LabelledCleanup { label: LABEL_APP, value: "thief".into() },
    ];
    let scratch = tempfile::tempdir().expect("tempdir");
    let dns = DnsServer::start(scratch.path());
    // Claims are looked up again every second, so a record is found within one.
    let config = format!("{TEST_CONFIG}[timing]\ndomain_recheck = \"1s\"\n[control]\ndns = \"{}\"\n", dns.dns);
    let cloud = Cloud::around(Cluster::start(&Loopback, &[1], &[1], &config), &[(REGION, 1)]);
    let owner = cloud.cluster.wallet().public();

    // The owner's claim, with no record yet: its port is served, the domain is not.
    let shop = manifest(&cloud, "shop", &image.tag, 31080, "[]");
    let said = deploy(&cloud, &cloud.cluster.genesis_key, &shop);
    assert!(
        said.contains(&format!("domain {DOMAIN} waits for verification"))
            && said.contains(&format!("add a DNS TXT record _fluxplane.{DOMAIN} with the value {owner}")),
        "{said}"
    );
    assert_eq!(get(&cloud, "shop_31080.app.localhost"), (200, "hello from busybox".into()));
    let view = domain_view(&cloud, "shop").expect("the claim in app status");
    assert_eq!(view.state, model::domains::DomainState::Pending, "{view:?}");
    for _ in 0..6 {
        assert_eq!(get(&cloud, DOMAIN).0, 404, "an unproven domain is not served");
        std::thread::sleep(Duration::from_millis(500));
    }

    // The record: served.
    dns.add_txt(&format!("_fluxplane.{DOMAIN}"), &owner.0);
    eventually(Duration::from_secs(20), "the proven domain served", || get(&cloud, DOMAIN).0 == 200);
    assert_eq!(get(&cloud, DOMAIN).1, "hello from busybox");
    let out = cloud.cluster.fluxctl(&["app", "status", "shop"]);
    assert!(text(&out.stdout).contains(&format!("domain {DOMAIN}: proven by _fluxplane.{DOMAIN}, served")));

    // A stranger, with funds and an app of its own on the same domain.
    let stranger = Keypair::generate();
    let key_file = cloud.cluster.dir.path().join("stranger.key");
    std::fs::write(&key_file, stranger.secret_hex()).expect("key");
    let fund = Tx::Transfer { to: stranger.public(), amount: 1_000 * FLUX };
    cloud.cluster.submit_applied(&cloud.cluster.running(), &cloud.cluster.wallet(), fund).expect("funds");
    let commands = r#"["sh", "-c", "echo stranger > /www/index.html && exec httpd -f -p 80 -h /www"]"#;
    let thief = manifest(&cloud, "thief", &image.tag, 31081, commands);
    let said = deploy(&cloud, &key_file, &thief);
    assert!(
        said.contains(&format!("domain {DOMAIN} waits for verification"))
            && said.contains(&format!("with the value {}", stranger.public())),
        "the stranger is told its claim waits: {said}"
    );
    // Its app runs, and the domain still serves the owner's.
    assert_eq!(get(&cloud, "thief_31081.app.localhost"), (200, "stranger".into()));
    for _ in 0..6 {
        assert_eq!(get(&cloud, DOMAIN), (200, "hello from busybox".into()), "{}", cloud.logs());
        std::thread::sleep(Duration::from_millis(500));
    }

    // Even proven, the stranger's newer claim does not take the domain.
    dns.add_txt(&format!("_fluxplane.{DOMAIN}"), &stranger.public().0);
    eventually(Duration::from_secs(20), "the stranger's claim proven", || {
        domain_view(&cloud, "thief").is_some_and(|d| d.state == model::domains::DomainState::Outranked)
    });
    for _ in 0..4 {
        assert_eq!(get(&cloud, DOMAIN), (200, "hello from busybox".into()), "{}", cloud.logs());
        std::thread::sleep(Duration::from_millis(500));
    }
    let view = domain_view(&cloud, "thief").expect("thief's claim");
    assert_eq!(view.served_by.as_deref(), Some("shop"));
}
