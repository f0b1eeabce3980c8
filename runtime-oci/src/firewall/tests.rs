use super::*;

fn firewall(chain_prefix: &str, bridge_prefix: &str) -> Firewall {
    Firewall::new(FirewallConfig {
        iptables: "iptables".into(),
        chain_prefix: chain_prefix.into(),
        bridge_prefix: bridge_prefix.into(),
    })
}

/// A filter table as Docker leaves it, before our rules.
const DOCKER_ONLY: &str = "*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -i docker0 ! -o docker0 -j ACCEPT
-A DOCKER-USER -j RETURN
COMMIT
";

#[test]
fn the_rules_refuse_neighbours_and_let_replies_dns_and_one_bridge_through() {
    let fw = firewall("FLUXPLANE", "fp-");
    let resolvers = ["10.255.255.53".parse().expect("ip"), "fd00::53".parse().expect("ip")];
    let v4 = fw.rules(Family::V4, &resolvers).join("\n");
    let order = [
        "-A FLUXPLANE-ISOLATION -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        "-A FLUXPLANE-ISOLATION -m physdev --physdev-is-bridged -j RETURN",
        "-A FLUXPLANE-ISOLATION -o fp-+ -j REJECT --reject-with icmp-admin-prohibited",
        "-A FLUXPLANE-ISOLATION -d 10.255.255.53 -p udp -m udp --dport 53 -j RETURN",
        "-A FLUXPLANE-ISOLATION -d 10.0.0.0/8 -j REJECT",
        "-A FLUXPLANE-ISOLATION -d 100.64.0.0/10 -j REJECT",
        "-A FLUXPLANE-INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        "-A FLUXPLANE-INPUT -d 10.255.255.53 -p tcp -m tcp --dport 53 -j RETURN",
        "-A FLUXPLANE-INPUT -j REJECT",
    ];
    let mut at = 0;
    for rule in order {
        let found = v4[at..].find(rule).unwrap_or_else(|| panic!("`{rule}` missing or out of order in\n{v4}"));
        at += found + rule.len();
    }
    assert!(!v4.contains("fd00::53") && !v4.contains("fc00::/7"), "{v4}");
    let v6 = fw.rules(Family::V6, &resolvers).join("\n");
    for rule in [
        "-A FLUXPLANE-ISOLATION -d fd00::53 -p udp -m udp --dport 53 -j RETURN",
        "-A FLUXPLANE-ISOLATION -d fc00::/7 -j REJECT --reject-with icmp6-adm-prohibited",
        "-A FLUXPLANE-ISOLATION -d fe80::/10 -j REJECT",
        "-A FLUXPLANE-INPUT -j REJECT --reject-with icmp6-adm-prohibited",
    ] {
        assert!(v6.contains(rule), "`{rule}` missing in\n{v6}");
    }
    assert!(!v6.contains("10.255.255.53"), "{v6}");
}

#[test]
fn a_plan_puts_our_jumps_first_and_nothing_twice() {
    let fw = firewall("FLUXPLANE", "fp-");
    let script = fw.plan(Family::V4, DOCKER_ONLY, &[], false).expect("a plan");
    assert!(script.starts_with("*filter\n:FLUXPLANE-ISOLATION - [0:0]\n:FLUXPLANE-INPUT - [0:0]\n"), "{script}");
    assert!(script.contains("-I DOCKER-USER 1 -i fp-+ -j FLUXPLANE-ISOLATION\n"), "{script}");
    assert!(script.contains("-I INPUT 1 -i fp-+ -j FLUXPLANE-INPUT\n"), "{script}");
    assert!(script.ends_with("COMMIT\n"), "{script}");
    // Docker's chain is there and FORWARD reaches it: neither is touched.
    assert!(!script.contains(":DOCKER-USER") && !script.contains("FORWARD"), "{script}");

    // Installed, and holding what was written: nothing to do.
    let installed = DOCKER_ONLY.replace(
        "-A DOCKER-USER -j RETURN",
        "-A INPUT -i fp-+ -j FLUXPLANE-INPUT\n-A DOCKER-USER -i fp-+ -j FLUXPLANE-ISOLATION\n-A DOCKER-USER -j RETURN",
    );
    assert_eq!(fw.plan(Family::V4, &installed, &[], true), None);
    // Chains changed by someone else: rewritten, the jumps moved (not doubled).
    let script = fw.plan(Family::V4, &installed, &[], false).expect("a plan");
    assert_eq!(script.matches("-D DOCKER-USER -i fp-+ -j FLUXPLANE-ISOLATION").count(), 1, "{script}");
    assert_eq!(script.matches("-I INPUT 1 -i fp-+ -j FLUXPLANE-INPUT").count(), 1, "{script}");
    // Something accepting before our jump in INPUT (a firewall tool inserted it): moved ahead.
    let behind = installed.replace(
        "-A INPUT -i fp-+ -j FLUXPLANE-INPUT",
        "-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT\n-A INPUT -i fp-+ -j FLUXPLANE-INPUT",
    );
    let script = fw.plan(Family::V4, &behind, &[], true).expect("a plan");
    assert!(script.contains("-D INPUT -i fp-+ -j FLUXPLANE-INPUT\n-I INPUT 1 -i fp-+ -j FLUXPLANE-INPUT"), "{script}");

    // An engine that does not manage iptables: the chain made, and FORWARD sent to it.
    let bare = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";
    let script = fw.plan(Family::V6, bare, &[], false).expect("a plan");
    assert!(script.contains(":DOCKER-USER - [0:0]\n-I FORWARD 1 -j DOCKER-USER\n"), "{script}");
}

#[test]
fn resolvers_are_the_non_loopback_nameservers() {
    let conf = "# generated\nnameserver 10.255.255.53\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\n\
                search example\nnameserver   2001:db8::53  \n";
    let found: Vec<String> = nameservers(conf).iter().map(ToString::to_string).collect();
    assert_eq!(found, ["10.255.255.53", "fe80::1", "2001:db8::53"]);
}

#[test]
fn tools_are_found_beside_the_iptables_binary() {
    let iptables = Path::new("/usr/sbin/iptables");
    assert_eq!(Family::V4.tool(iptables, "-save"), Path::new("/usr/sbin/iptables-save"));
    assert_eq!(Family::V6.tool(iptables, "-restore"), Path::new("/usr/sbin/ip6tables-restore"));
    assert_eq!(Family::V6.tool(Path::new("iptables"), ""), Path::new("ip6tables"));
}

/// Runs `iptables ARGS` (or ip6tables), for what the firewall itself does not do.
fn iptables(v6: bool, args: &[&str]) -> std::process::Output {
    let tool = if v6 { "ip6tables" } else { "iptables" };
    std::process::Command::new(tool).args(args).output().expect("iptables runs")
}

/// Removes the test's chains and jumps, however the test ended.
struct Cleanup(String, String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for v6 in [false, true] {
            for (chain, jump) in
                [("DOCKER-USER", format!("{}-ISOLATION", self.0)), ("INPUT", format!("{}-INPUT", self.0))]
            {
                while iptables(v6, &["-D", chain, "-i", &format!("{}+", self.1), "-j", &jump]).status.success() {}
            }
            for chain in [format!("{}-ISOLATION", self.0), format!("{}-INPUT", self.0)] {
                let _ = iptables(v6, &["-F", &chain]);
                let _ = iptables(v6, &["-X", &chain]);
            }
        }
    }
}

/// Real iptables (root, as in CI), under chain and bridge names of the test's own, which match
/// no real bridge.
#[tokio::test]
async fn rules_are_installed_once_repaired_and_removed_for_real() {
    let prefix = format!("FPT{}", std::process::id() % 100_000);
    let _cleanup = Cleanup(prefix.clone(), "fq-".into());
    let fw = firewall(&prefix, "fq-");
    fw.ensure().await.expect("installed");
    let saved = |v6: bool| String::from_utf8_lossy(&iptables(v6, &["-S"]).stdout).into_owned();
    let forward_jump = format!("-A DOCKER-USER -i fq-+ -j {prefix}-ISOLATION");
    let input_jump = format!("-A INPUT -i fq-+ -j {prefix}-INPUT");
    for v6 in [false, true] {
        let table = saved(v6);
        assert!(table.contains(&forward_jump) && table.contains(&input_jump), "{table}");
        assert!(table.contains(&format!("-A {prefix}-INPUT -j REJECT")), "{table}");
    }
    // Again: nothing doubled.
    fw.ensure().await.expect("checked");
    assert_eq!(saved(false).matches(&input_jump).count(), 1);
    // A rule removed by hand comes back at the next check.
    let reject = format!("{prefix}-INPUT");
    assert!(
        iptables(false, &["-D", &reject, "-j", "REJECT", "--reject-with", "icmp-admin-prohibited"]).status.success()
    );
    assert!(!saved(false).contains(&format!("-A {prefix}-INPUT -j REJECT")));
    fw.ensure().await.expect("repaired");
    assert!(saved(false).contains(&format!("-A {prefix}-INPUT -j REJECT")));
    // So does a jump.
    assert!(iptables(false, &["-D", "INPUT", "-i", "fq-+", "-j", &reject]).status.success());
    fw.ensure().await.expect("repaired");
    assert_eq!(saved(false).matches(&input_jump).count(), 1);

    fw.remove().await.expect("removed");
    for v6 in [false, true] {
        let table = saved(v6);
        assert!(!table.contains(&prefix), "{table}");
    }
}

#[tokio::test]
async fn a_missing_iptables_is_named_in_the_error() {
    let fw = Firewall::new(FirewallConfig { iptables: "/nonexistent/iptables".into(), ..FirewallConfig::default() });
    let why = fw.ensure().await.expect_err("no iptables");
    assert!(why.contains("isolation rules cannot be installed") && why.contains("/nonexistent/iptables-save"), "{why}");
}
