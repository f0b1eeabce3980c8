//! The spine: deploy through fluxctl, geo routing, restart, removal, validation, ownership.

use std::time::{Duration, Instant};

use crate::util::{Dev, repo};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn deploy_route_restart_validate_and_remove() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, config) = (dir.path().join("data"), dir.path().join("config"));
    let dev = Dev::start(&data, &config);
    let manifest = repo().join("examples/hello/fluxapp.toml");

    // 1. Deploy hello with 3 instances over acEU, acNA and acAS through the fluxctl binary.
    let started = Instant::now();
    let out = dev.fluxctl(&config, &["app", "deploy", manifest.to_str().expect("utf-8"), "--wait"]);
    assert!(out.status.success(), "deploy failed: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains("registered in block"), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("http://hello.app."), "{}", text(&out.stdout));
    // --wait returns once the gateway holds every region's routes: the first request is served,
    // from the nearest region, with nothing to wait for.
    assert!(text(&out.stderr).contains("routed by 1 gateway(s)"), "{}", text(&out.stderr));
    let first = dev.get("hello.app.localhost", None).map(|r| r.status());
    assert_eq!(first, Some(reqwest::StatusCode::OK), "{}", text(&out.stderr));
    eprintln!("deploy --wait to first 200: {:?}", started.elapsed());

    // 2. Nearest region by client location.
    let check_geo = |dev: &Dev| {
        for (geo, region) in [("50.11,8.68", "eu"), ("38.9,-77.0", "na"), ("1.29,103.85", "as")] {
            let resp = dev.get("hello.app.localhost", Some(geo)).expect("gateway answers");
            assert_eq!(resp.status(), 200);
            let got = resp.headers().get("x-fluxplane-region").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            let node = resp.headers().get("x-fluxplane-node").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            assert_eq!(got, region, "client at {geo}");
            assert!(node.starts_with(region), "node {node} for {geo}");
            let body = resp.text().expect("body");
            assert_eq!(body.trim(), format!("hello from {node}"));
        }
    };
    // After a restart, the gateway learns each region's routes from that region's feed.
    let routed = |dev: &Dev| {
        [("50.11,8.68", "eu"), ("38.9,-77.0", "na"), ("1.29,103.85", "as")].iter().all(|(g, region)| {
            dev.get("hello.app.localhost", Some(g)).is_some_and(|r| {
                r.status() == 200 && r.headers().get("x-fluxplane-region").is_some_and(|v| v == region)
            })
        })
    };
    check_geo(&dev);

    // 5. A manifest with three errors is refused with all three named, and nothing reaches the chain.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "name = \"Bad_App\"\ninstances = 0\n[[component]]\nname = \"web\"\nwasm = \"x.wasm\"\nram = 8\n",
    )
    .expect("write");
    let out = dev.fluxctl(&config, &["app", "deploy", bad.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    for field in ["name:", "instances:", "component[0].ram:"] {
        assert!(err.contains(field), "`{field}` missing from: {err}");
    }
    let status: serde_json::Value =
        reqwest::blocking::get(format!("{}/v1/status", dev.api)).expect("status").json().expect("json");
    let tip = status["chain_height"].as_u64().expect("height");
    for h in 0..=tip {
        let block: serde_json::Value =
            reqwest::blocking::get(format!("{}/v1/chain/blocks/{h}", dev.api)).expect("block").json().expect("json");
        let body = block.to_string();
        assert!(!body.contains("Bad_App"), "the invalid app reached block {h}");
    }

    // 6. A second owner's key cannot remove the app.
    let other = dir.path().join("other.key");
    let out = dev.fluxctl(&config, &["wallet", "new", "--path", other.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = dev.fluxctl(&config, &["--key", other.to_str().expect("utf-8"), "app", "rm", "hello"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("only the owner of `hello`"), "{}", text(&out.stderr));
    assert_eq!(dev.get("hello.app.localhost", None).expect("answers").status(), 200);

    // 3. Restart on the same data dir: served again with no redeploy.
    drop(dev);
    let dev = Dev::start(&data, &config);
    Dev::eventually(Duration::from_secs(30), "hello served after restart", || {
        dev.get("hello.app.localhost", Some("1.29,103.85")).is_some_and(|r| r.status() == 200)
    });
    Dev::eventually(Duration::from_secs(15), "all three regions serve after restart", || {
        ["50.11,8.68", "38.9,-77.0", "1.29,103.85"]
            .iter()
            .all(|g| dev.get("hello.app.localhost", Some(g)).is_some_and(|r| r.status() == 200))
    });
    Dev::eventually(Duration::from_secs(15), "every region routed after restart", || routed(&dev));
    check_geo(&dev);

    // 4. `app rm` makes the gateway answer 404.
    let out = dev.fluxctl(&config, &["app", "rm", "hello"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    Dev::eventually(Duration::from_secs(10), "404 after app rm", || {
        dev.get("hello.app.localhost", None).is_some_and(|r| r.status() == 404)
    });
    let body = dev.get("hello.app.localhost", None).expect("answers").text().expect("body");
    assert!(body.contains("hello.app.localhost"), "{body}");

    // 7. With the chain store deleted under shards that followed it, dev refuses to start a new
    //    chain, and names the file.
    drop(dev);
    std::fs::remove_file(data.join("chain.redb")).expect("delete chain.redb");
    let mut again = crate::cluster::Proc::spawn(
        "dev",
        env!("CARGO_BIN_EXE_fluxplane"),
        &["dev", "--no-demo", "--api-listen", "127.0.0.1:0", "--gateway-listen", "127.0.0.1:0", "--data-dir"]
            .iter()
            .map(|s| s.to_string())
            .chain([data.display().to_string()])
            .collect::<Vec<_>>(),
        dir.path().join("dev-again.log"),
    );
    let status = again.wait_exit(Duration::from_secs(30)).expect("dev exits");
    assert!(!status.success());
    let out = again.output();
    assert!(out.contains("chain.redb") && out.contains("refusing to start a new chain"), "{out}");
}
