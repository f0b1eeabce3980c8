//! Starting and stopping `fluxplane dev` and running `fluxctl`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A running `fluxplane dev`, killed on drop.
pub struct Dev {
    child: Child,
    pub api: String,
    pub gateway: String,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Dev {
    /// Starts `fluxplane dev` on `data` with ephemeral ports and waits for its endpoints file.
    pub fn start(data: &Path, config: &Path) -> Dev {
        Dev::start_with(data, config, &[])
    }

    /// [`Dev::start`] with more flags.
    pub fn start_with(data: &Path, config: &Path, flags: &[&str]) -> Dev {
        let endpoints = data.join("endpoints.json");
        let _ = std::fs::remove_file(&endpoints);
        let child = Command::new(env!("CARGO_BIN_EXE_fluxplane"))
            .args([
                "dev",
                "--no-demo",
                "--api-listen",
                "127.0.0.1:0",
                "--gateway-listen",
                "127.0.0.1:0",
                "--block-time",
                "1s",
            ])
            .args(flags)
            .arg("--data-dir")
            .arg(data)
            .env("FLUXCTL_CONFIG_DIR", config)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn fluxplane dev");
        // Owned by `Dev` at once, so a failed start still kills the process.
        let mut dev = Dev { child, api: String::new(), gateway: String::new() };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(text) = std::fs::read_to_string(&endpoints)
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            {
                dev.api = v["api"].as_str().expect("api").to_string();
                dev.gateway = v["gateway"].as_str().expect("gateway").to_string();
                return dev;
            }
            assert!(Instant::now() < deadline, "fluxplane dev did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs fluxctl against this cloud.
    pub fn fluxctl(&self, config: &Path, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_fluxctl"))
            .arg("--api")
            .arg(&self.api)
            .args(args)
            .env("FLUXCTL_CONFIG_DIR", config)
            .output()
            .expect("run fluxctl")
    }

    /// GET / on `host` through the gateway, as a client at `geo`.
    pub fn get(&self, host: &str, geo: Option<&str>) -> Option<reqwest::blocking::Response> {
        let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
        let mut req = client.get(format!("http://{}/", self.gateway)).header("host", host);
        if let Some(g) = geo {
            req = req.header("x-fluxplane-client-geo", g);
        }
        req.send().ok()
    }

    /// Polls `f` until it holds or `within` passes.
    pub fn eventually(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + within;
        while !f() {
            assert!(Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}
