//! Test images for the container runtime: a root filesystem of Debian's `busybox-static`
//! imported into the local Docker engine (nothing can be pulled here), and saved as an
//! archive for uploads. Each is removed on drop.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Where Debian's `busybox-static` puts its binary.
const BUSYBOX: &str = "/bin/busybox";

/// A busybox image in the local engine, `httpd -f -vv -p 80 -h /www` by default, serving
/// `/www/index.html` ("hello from busybox"). Removed (with its containers) on drop.
pub struct BusyboxImage {
    pub tag: String,
    /// Holds the root filesystem it was made from.
    _dir: tempfile::TempDir,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker").args(args).output().expect("the docker CLI runs")
}

impl BusyboxImage {
    /// Imports a new image under a tag no other test uses.
    pub fn import() -> BusyboxImage {
        assert!(Path::new(BUSYBOX).exists(), "{BUSYBOX} is missing: apt-get install busybox-static");
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("bin")).expect("bin");
        std::fs::create_dir_all(root.join("www")).expect("www");
        std::fs::copy(BUSYBOX, root.join("bin/busybox")).expect("busybox");
        for applet in ["sh", "httpd", "sleep", "echo", "nc"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("applet");
        }
        std::fs::write(root.join("www/index.html"), "hello from busybox\n").expect("index");
        let tar = dir.path().join("root.tar");
        let status = Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tar).arg(".").status().expect("tar");
        assert!(status.success(), "tar failed");
        let tag = format!("fluxplane-test/busybox:{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let out = docker(&[
            "import",
            "--change",
            r#"CMD ["httpd", "-f", "-vv", "-p", "80", "-h", "/www"]"#,
            tar.to_str().expect("utf-8 path"),
            &tag,
        ]);
        assert!(out.status.success(), "docker import: {}", String::from_utf8_lossy(&out.stderr));
        BusyboxImage { tag, _dir: dir }
    }
}

impl BusyboxImage {
    /// Builds a new image with `docker build` from a scratch Dockerfile, in layers as a
    /// Dockerfile makes them: busybox, the page, then a file at the top added, removed and added
    /// again. The two layers that add the file are the same (no directory of theirs changes),
    /// so the engine stores that layer once: `docker save` before Docker 25 links the second to
    /// the first.
    pub fn build() -> BusyboxImage {
        assert!(Path::new(BUSYBOX).exists(), "{BUSYBOX} is missing: apt-get install busybox-static");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::copy(BUSYBOX, dir.path().join("busybox")).expect("busybox");
        std::fs::write(dir.path().join("index.html"), "hello from busybox\n").expect("index");
        let tag = format!("fluxplane-test/built:{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        // A file of this image's own, so its layers are not ones the engine holds from another
        // image (a tampered copy of a held layer would load).
        std::fs::write(dir.path().join("built.txt"), format!("built as {tag}\n")).expect("built.txt");
        let dockerfile = "FROM scratch\n\
                          COPY busybox /bin/busybox\n\
                          COPY index.html /www/index.html\n\
                          COPY built.txt /built.txt\n\
                          RUN [\"/bin/busybox\", \"rm\", \"/built.txt\"]\n\
                          COPY built.txt /built.txt\n\
                          CMD [\"/bin/busybox\", \"httpd\", \"-f\", \"-vv\", \"-p\", \"80\", \"-h\", \"/www\"]\n";
        std::fs::write(dir.path().join("Dockerfile"), dockerfile).expect("Dockerfile");
        // The classic builder: one layer per step, the same on every engine (BuildKit, where
        // installed, may merge or skip layers).
        let out = Command::new("docker")
            .env("DOCKER_BUILDKIT", "0")
            .args(["build", "-q", "--force-rm", "-t", &tag])
            .arg(dir.path())
            .output()
            .expect("the docker CLI runs");
        assert!(out.status.success(), "docker build: {}", String::from_utf8_lossy(&out.stderr));
        BusyboxImage { tag, _dir: dir }
    }

    /// `docker save` of the image: an archive to upload.
    pub fn save(&self, to: &Path) {
        let out = docker(&["save", "-o", to.to_str().expect("utf-8 path"), &self.tag]);
        assert!(out.status.success(), "docker save: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// `docker load` of an archive: the engine's error when it refuses it.
    pub fn load(archive: &Path) -> Result<(), String> {
        let out = docker(&["load", "-q", "-i", archive.to_str().expect("utf-8 path")]);
        if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
    }

    /// Removes the image from the engine, so that only an archive can bring it back.
    pub fn remove_from_engine(&self) {
        let out = docker(&["rmi", "-f", &self.tag]);
        assert!(out.status.success(), "docker rmi: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// The ids of the running containers carrying `label=value`.
pub fn running_labelled(label: &str, value: &str) -> Vec<String> {
    let out = docker(&["ps", "-q", "--filter", &format!("label={label}={value}")]);
    String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect()
}

impl Drop for BusyboxImage {
    fn drop(&mut self) {
        // Containers made from it first, whatever their state.
        let out = docker(&["ps", "-aq", "--filter", &format!("ancestor={}", self.tag)]);
        for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = docker(&["rm", "-f", id]);
        }
        let _ = docker(&["rmi", "-f", &self.tag]);
    }
}

/// The containers (all states) carrying `label=value`.
pub fn containers_labelled(label: &str, value: &str) -> Vec<String> {
    let out = docker(&["ps", "-aq", "--filter", &format!("label={label}={value}")]);
    String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect()
}

/// Removes every container, volume and network carrying `label=value`, whatever the test left.
pub struct LabelledCleanup {
    pub label: &'static str,
    pub value: String,
}

impl Drop for LabelledCleanup {
    fn drop(&mut self) {
        for id in containers_labelled(self.label, &self.value) {
            let _ = docker(&["rm", "-f", &id]);
        }
        let out = docker(&["volume", "ls", "-q", "--filter", &format!("label={}={}", self.label, self.value)]);
        for v in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = docker(&["volume", "rm", "-f", v]);
        }
        for n in networks_labelled(self.label, &self.value) {
            // Containers of other apps that shared it are cut off first.
            let out =
                docker(&["network", "inspect", "--format", "{{range $id, $c := .Containers}}{{$id}} {{end}}", &n]);
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = docker(&["network", "disconnect", "-f", &n, id]);
            }
            let _ = docker(&["network", "rm", &n]);
        }
        remove_host_rules_if_unused();
    }
}

/// Removes the nodes' host rules (which killed nodes leave) once no app network is left on the
/// engine, as the last node's graceful stop would.
pub fn remove_host_rules_if_unused() {
    let out = docker(&["network", "ls", "--filter", "label=fluxplane.node", "--format", "{{.Name}}"]);
    if !out.status.success() {
        return;
    }
    for network in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let bridge = docker(&[
            "network",
            "inspect",
            "--format",
            "{{index .Options \"com.docker.network.bridge.name\"}}",
            network,
        ]);
        if String::from_utf8_lossy(&bridge.stdout).trim().starts_with("fp-") {
            return;
        }
    }
    for tool in ["iptables", "ip6tables"] {
        let run = |args: &[&str]| Command::new(tool).args(args).output().is_ok_and(|o| o.status.success());
        while run(&["-D", "DOCKER-USER", "-i", "fp-+", "-j", "FLUXPLANE-ISOLATION"]) {}
        while run(&["-D", "INPUT", "-i", "fp-+", "-j", "FLUXPLANE-INPUT"]) {}
        for chain in ["FLUXPLANE-ISOLATION", "FLUXPLANE-INPUT"] {
            run(&["-F", chain]);
            run(&["-X", chain]);
        }
    }
}

/// The names of the networks carrying `label=value`.
pub fn networks_labelled(label: &str, value: &str) -> Vec<String> {
    let out = docker(&["network", "ls", "--format", "{{.Name}}", "--filter", &format!("label={label}={value}")]);
    String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect()
}
