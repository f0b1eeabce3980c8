//! A real network partition: each control replica in its own network namespace, linked to a
//! bridge by a veth pair; the leader's link is set down, then up again. Needs root (CI runs as
//! root); the namespaces, links and firewall rule are removed on drop, also when a test fails.

use std::process::Command;
use std::time::{Duration, Instant};

use model::api::NodeView;
use model::chain::Tx;
use model::keys::Keypair;
use model::tier::FLUX;

use crate::cluster::*;

/// Namespaces `fp<k>r<id>`, a bridge `fp<k>br` at 10.77.<k>.1 with the chain behind it, replica
/// `id` at 10.77.<k>.(10+id).
pub(crate) struct Netns {
    k: u32,
    ids: Vec<u64>,
    accept_rule: bool,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr)))
    }
}

impl Netns {
    pub(crate) fn new(ids: &[u64]) -> Netns {
        let k = std::process::id() % 250;
        let mut net = Netns { k, ids: Vec::new(), accept_rule: false };
        let bridge = net.bridge();
        ip(&["link", "add", &bridge, "type", "bridge"])
            .unwrap_or_else(|e| panic!("network namespaces need root and iproute2 (CI runs as root): {e}"));
        ip(&["addr", "add", &format!("{}/24", net.chain_ip()), "dev", &bridge]).expect("bridge address");
        ip(&["link", "set", &bridge, "up"]).expect("bridge up");
        // Docker sets the FORWARD policy to DROP and bridged frames pass through iptables:
        // let this bridge's own traffic through.
        net.accept_rule = Command::new("iptables")
            .args(["-I", "FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT"])
            .status()
            .is_ok_and(|s| s.success());
        for id in ids {
            let (ns, host, inner) = (net.ns(*id), net.host_link(*id), format!("fp{k}n{id}"));
            ip(&["netns", "add", &ns]).expect("netns");
            net.ids.push(*id);
            ip(&["link", "add", &host, "type", "veth", "peer", "name", &inner]).expect("veth");
            ip(&["link", "set", &inner, "netns", &ns]).expect("move veth");
            ip(&["link", "set", &host, "master", &bridge, "up"]).expect("attach veth");
            let addr = format!("{}/24", net.replica_ip(*id));
            for args in [
                vec!["netns", "exec", &ns, "ip", "addr", "add", &addr, "dev", &inner],
                vec!["netns", "exec", &ns, "ip", "link", "set", &inner, "up"],
                vec!["netns", "exec", &ns, "ip", "link", "set", "lo", "up"],
            ] {
                ip(&args).expect("configure namespace");
            }
        }
        net
    }

    fn bridge(&self) -> String {
        format!("fp{}br", self.k)
    }

    fn ns(&self, id: u64) -> String {
        format!("fp{}r{id}", self.k)
    }

    fn host_link(&self, id: u64) -> String {
        format!("fp{}h{id}", self.k)
    }

    /// Cuts replica `id`'s only link.
    fn cut(&self, id: u64) {
        ip(&["link", "set", &self.host_link(id), "down"]).expect("link down");
    }

    fn heal(&self, id: u64) {
        ip(&["link", "set", &self.host_link(id), "up"]).expect("link up");
    }

    /// Runs `args` inside replica `id`'s namespace.
    pub(crate) fn exec(&self, id: u64, args: &[&str]) -> std::process::Output {
        Command::new("ip").args(["netns", "exec", &self.ns(id)]).args(args).output().expect("ip netns exec")
    }
}

impl Placement for Netns {
    fn replica_ip(&self, id: u64) -> String {
        format!("10.77.{}.{}", self.k, 10 + id)
    }
    fn chain_ip(&self) -> String {
        format!("10.77.{}.1", self.k)
    }
    fn prefix(&self, id: u64) -> Vec<String> {
        strings(&["ip", "netns", "exec", &self.ns(id)])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for id in &self.ids {
            // Deleting a namespace deletes its veth, and with it the bridge's end.
            let _ = ip(&["netns", "del", &self.ns(*id)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
        if self.accept_rule {
            let bridge = self.bridge();
            let _ =
                Command::new("iptables").args(["-D", "FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT"]).status();
        }
    }
}

fn cordoned(c: &Cluster, replica: u64, node: &str) -> Option<bool> {
    let nodes: Vec<NodeView> = c.get(replica, "/v1/nodes?stale=true&scope=region").ok()?;
    nodes.iter().find(|n| n.id == node).map(|n| n.cordoned)
}

#[test]
fn a_partitioned_leader_acknowledges_nothing_and_the_majority_carries_on() {
    // Declared first, so it is dropped last: after the processes that live in it.
    let net = Netns::new(&[1, 2, 3]);
    let c = Cluster::start(&net, &[1, 2, 3], &[1, 2, 3], TEST_CONFIG);
    c.node_on_chain("eu-isolated-write");
    c.node_on_chain("eu-majority-write");
    let (old, term) = c.wait_leader(Duration::from_secs(10));
    let majority: Vec<u64> = [1u64, 2, 3].into_iter().filter(|id| *id != old).collect();

    net.cut(old);
    let cut = Instant::now();
    // A write sent to the isolated leader from inside its own namespace.
    let isolated_url = c.replicas[&old].url.clone();
    let isolated_write = std::thread::scope(|s| {
        let attempt = s.spawn(|| {
            net.exec(
                old,
                &[
                    "curl",
                    "-s",
                    "-m",
                    "20",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "-X",
                    "POST",
                    "-H",
                    &format!("x-fluxplane-admin-token: {TOKEN}"),
                    &format!("{isolated_url}/v1/nodes/eu-isolated-write/cordon"),
                ],
            )
        });
        // The majority elects a new leader.
        let deadline = Instant::now() + Duration::from_secs(10);
        let (new, new_term) = loop {
            let found = majority
                .iter()
                .filter_map(|id| c.status(*id).ok())
                .find_map(|s| (s.role == "leader" && s.term > term).then_some((s.id, s.term)));
            if let Some(l) = found {
                break l;
            }
            assert!(Instant::now() < deadline, "the majority elected no leader\n{}", c.logs());
            std::thread::sleep(Duration::from_millis(20));
        };
        let elected_in = cut.elapsed();
        eprintln!("partitioned majority elected replica {new} (term {new_term}) in {} ms", elected_in.as_millis());
        assert!(elected_in < Duration::from_secs(2), "election took {elected_in:?}");
        // ...and keeps taking writes: a cordon (Raft only) and a chain transaction.
        let resp = reqwest::blocking::Client::new()
            .post(format!("{}/v1/nodes/eu-majority-write/cordon", c.replicas[&new].url))
            .header("x-fluxplane-admin-token", TOKEN)
            .send()
            .expect("majority write");
        assert!(resp.status().is_success(), "majority write: {}", resp.status());
        let fresh = Keypair::generate();
        c.submit_applied(&majority, &c.wallet(), Tx::Transfer { to: fresh.public(), amount: FLUX })
            .expect("majority transaction");
        (attempt.join().expect("isolated attempt"), fresh)
    });
    let (attempt, fresh) = isolated_write;
    let code = String::from_utf8_lossy(&attempt.stdout).to_string();
    assert!(!code.starts_with('2'), "the isolated leader acknowledged a write (HTTP {code})");
    eprintln!("the isolated leader answered the write with HTTP {code}");

    net.heal(old);
    let all = [1u64, 2, 3];
    eventually(Duration::from_secs(20), "the old leader rejoins and the three converge", || {
        let s: Vec<_> = all.iter().filter_map(|id| c.status(*id).ok()).collect();
        s.len() == 3
            && s.iter().all(|x| x.term == s[0].term && x.leader == s[0].leader && x.leader != Some(old))
            && s.iter().all(|x| x.applied == s[0].applied || x.applied >= s.iter().filter_map(|y| y.committed).min())
    });
    eventually(Duration::from_secs(20), "the old leader applied the majority's writes", || {
        cordoned(&c, old, "eu-majority-write") == Some(true)
    });
    for id in all {
        assert_eq!(cordoned(&c, id, "eu-isolated-write"), Some(false), "replica {id} kept the unacknowledged write");
        let w: Result<model::api::WalletView, _> = c.get(id, &format!("/v1/wallets/{}?stale=true", fresh.public()));
        assert_eq!(w.map(|w| w.balance).ok(), Some(FLUX), "replica {id}");
    }
}
