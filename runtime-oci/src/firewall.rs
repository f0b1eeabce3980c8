//! The host rules that keep app networks apart: two chains of ours in the filter table, for
//! IPv4 and (where the kernel has it) IPv6, matching every app network by its bridge's name
//! prefix, so that they never change per app.
//!
//! - `<PREFIX>-ISOLATION`, jumped to first from `DOCKER-USER` (which Docker jumps to first
//!   from `FORWARD`) for traffic coming in on an app bridge: replies and traffic within one
//!   bridge go on; traffic to another app bridge, to a private or link-local range is refused;
//!   DNS to the host's resolvers goes on; the rest (public egress) returns to Docker's rules.
//! - `<PREFIX>-INPUT`, jumped to first from `INPUT` for traffic from an app bridge to the host
//!   itself (its bridge gateway, 172.17.0.1, any address the host holds): refused, but for
//!   replies and DNS to the resolvers.
//!
//! Both chains are written in one `iptables-restore --noflush` transaction per family, so a
//! rewrite never leaves them half-filled. Several nodes on one host (one Docker engine) share
//! the chains: installing is idempotent, and they are removed only when no app network of any
//! node is left (see `OciRuntime::shutdown`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Ranges no app container may reach: private, shared (CGNAT) and link-local.
const PRIVATE_V4: [&str; 5] = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10"];
const PRIVATE_V6: [&str; 2] = ["fc00::/7", "fe80::/10"];
/// Where the host's resolvers are listed; Docker's embedded DNS forwards to them from the
/// container's namespace, so they are the one private destination (port 53) let through.
const RESOLV_CONFS: [&str; 2] = ["/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"];

/// How the rules are named and installed.
#[derive(Debug, Clone)]
pub struct FirewallConfig {
    /// The `iptables` binary (a bare name is looked up on `PATH`). `iptables-save` and
    /// `iptables-restore`, and the `ip6tables` ones for IPv6, are expected beside it.
    pub iptables: PathBuf,
    /// The prefix of our chains' names: `<PREFIX>-ISOLATION`, `<PREFIX>-INPUT`.
    pub chain_prefix: String,
    /// The prefix of every app network's bridge name (at most 3 characters: a bridge name has
    /// at most 15, and 12 go to the network's hash).
    pub bridge_prefix: String,
}

impl Default for FirewallConfig {
    fn default() -> Self {
        Self { iptables: "iptables".into(), chain_prefix: "FLUXPLANE".into(), bridge_prefix: "fp-".into() }
    }
}

/// One address family's tools and rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn tool(self, iptables: &Path, suffix: &str) -> PathBuf {
        let name = iptables.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let name = match self {
            Family::V4 => name,
            // `iptables` → `ip6tables`, `iptables-nft` → `ip6tables-nft`.
            Family::V6 => name.replacen("iptables", "ip6tables", 1),
        };
        iptables.with_file_name(format!("{name}{suffix}"))
    }

    fn reject(self) -> &'static str {
        match self {
            Family::V4 => "-j REJECT --reject-with icmp-admin-prohibited",
            Family::V6 => "-j REJECT --reject-with icmp6-adm-prohibited",
        }
    }

    fn private(self) -> &'static [&'static str] {
        match self {
            Family::V4 => &PRIVATE_V4,
            Family::V6 => &PRIVATE_V6,
        }
    }

    fn holds(self, ip: &IpAddr) -> bool {
        matches!((self, ip), (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_)))
    }
}

/// The rules of one host, as this node installs, checks and removes them.
pub struct Firewall {
    config: FirewallConfig,
    /// What our chains held right after this process last wrote them, per family, as
    /// `iptables-save` prints them, and the resolvers they were written for: a check compares
    /// against both (a changed resolv.conf is a rewrite too).
    written: tokio::sync::Mutex<Vec<Written>>,
}

/// One family's chains as last written (`iptables-save` lines), and the resolvers they let through.
type Written = (Family, Vec<String>, Vec<IpAddr>);

/// One process's nodes take turns at the tables (`fluxplane dev` runs six).
static TABLES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Firewall {
    /// Rules named and installed as `config` says.
    pub fn new(config: FirewallConfig) -> Self {
        Self { config, written: Default::default() }
    }

    /// The bridge-name prefix the rules match.
    pub fn bridge_prefix(&self) -> &str {
        &self.config.bridge_prefix
    }

    fn forward_chain(&self) -> String {
        format!("{}-ISOLATION", self.config.chain_prefix)
    }

    fn input_chain(&self) -> String {
        format!("{}-INPUT", self.config.chain_prefix)
    }

    fn families() -> Vec<Family> {
        // A kernel without IPv6 has no IPv6 path to guard.
        match Path::new("/proc/net/if_inet6").exists() {
            true => vec![Family::V4, Family::V6],
            false => vec![Family::V4],
        }
    }

    /// Checks the rules and installs what is missing or changed. The error says why they
    /// cannot be installed (no iptables, not root, ...).
    pub async fn ensure(&self) -> Result<(), String> {
        let _turn = TABLES.lock().await;
        let resolvers = resolvers();
        for family in Self::families() {
            self.ensure_family(family, &resolvers).await.map_err(|e| {
                let name = if family == Family::V4 { "IPv4" } else { "IPv6" };
                format!("the {name} isolation rules cannot be installed: {e}")
            })?;
        }
        Ok(())
    }

    async fn ensure_family(&self, family: Family, resolvers: &[IpAddr]) -> Result<(), String> {
        // Two writers (nodes of other processes) may race: one of them is refused and tries again.
        for attempt in 0..3 {
            let table = self.save(family).await?;
            let ours = self.chains_in(&table);
            let current = self
                .written
                .lock()
                .await
                .iter()
                .any(|(f, rules, written_for)| *f == family && *rules == ours && written_for == resolvers);
            let plan = self.plan(family, &table, resolvers, current);
            let Some(script) = plan else { return Ok(()) };
            match self.restore(family, &script).await {
                Ok(()) => {
                    tracing::info!(?family, "isolation rules installed");
                    let now = self.chains_in(&self.save(family).await?);
                    let mut written = self.written.lock().await;
                    written.retain(|(f, _, _)| *f != family);
                    written.push((family, now, resolvers.to_vec()));
                    return Ok(());
                }
                Err(e) if attempt == 2 => return Err(e),
                Err(e) => tracing::debug!(?family, "isolation rules not written, trying again: {e}"),
            }
        }
        Ok(())
    }

    /// The `iptables-restore --noflush` script that makes `table` (as `iptables-save` printed
    /// it) hold our rules, or `None` when it does already. `chains_current` says whether our
    /// chains hold what this process last wrote.
    fn plan(&self, family: Family, table: &str, resolvers: &[IpAddr], chains_current: bool) -> Option<String> {
        let (forward, input) = (self.forward_chain(), self.input_chain());
        let bridges = format!("{}+", self.config.bridge_prefix);
        let chains: Vec<&str> = table.lines().filter_map(|l| l.strip_prefix(':')?.split(' ').next()).collect();
        let rules_of = |chain: &str| -> Vec<&str> {
            let head = format!("-A {chain} ");
            table.lines().filter(|l| l.starts_with(&head)).collect()
        };
        let forward_jump = format!("-A DOCKER-USER -i {bridges} -j {forward}");
        let input_jump = format!("-A INPUT -i {bridges} -j {input}");
        let user_rules = rules_of("DOCKER-USER");
        let input_rules = rules_of("INPUT");
        let has_user_chain = chains.contains(&"DOCKER-USER");
        let reaches_user = rules_of("FORWARD").contains(&"-A FORWARD -j DOCKER-USER");
        let jumps_first = user_rules.first() == Some(&forward_jump.as_str())
            && input_rules.first() == Some(&input_jump.as_str())
            && reaches_user;
        if chains_current && jumps_first {
            return None;
        }
        let mut script = vec!["*filter".to_string()];
        // Declaring a chain with --noflush empties it (or makes it): the rules below are all
        // it holds once the transaction commits.
        script.push(format!(":{forward} - [0:0]"));
        script.push(format!(":{input} - [0:0]"));
        if !has_user_chain {
            // Docker makes it; a host whose engine does not manage iptables gets it from us.
            script.push(":DOCKER-USER - [0:0]".into());
        }
        if !reaches_user {
            script.push("-I FORWARD 1 -j DOCKER-USER".into());
        }
        for rule in self.rules(family, resolvers) {
            script.push(rule);
        }
        // Our jumps first in their chains: whatever else is there must not accept first.
        for (chain, jump, rules) in [("DOCKER-USER", &forward_jump, &user_rules), ("INPUT", &input_jump, &input_rules)]
        {
            for _ in rules.iter().filter(|r| *r == jump) {
                script.push(jump.replacen("-A ", "-D ", 1));
            }
            script.push(jump.replacen(&format!("-A {chain} "), &format!("-I {chain} 1 "), 1));
        }
        script.push("COMMIT".into());
        Some(script.join("\n") + "\n")
    }

    /// The rules of our two chains, as `-A` lines.
    fn rules(&self, family: Family, resolvers: &[IpAddr]) -> Vec<String> {
        let (forward, input) = (self.forward_chain(), self.input_chain());
        let reject = family.reject();
        let mut rules = vec![
            format!("-A {forward} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"),
            // One bridge's containers talk among themselves. (With br_netfilter off, such
            // traffic never reaches iptables at all.)
            format!("-A {forward} -m physdev --physdev-is-bridged -j RETURN"),
            format!("-A {forward} -o {}+ {reject}", self.config.bridge_prefix),
        ];
        let dns = |chain: &str, rules: &mut Vec<String>| {
            for ip in resolvers.iter().filter(|ip| family.holds(ip)) {
                for proto in ["udp", "tcp"] {
                    rules.push(format!("-A {chain} -d {ip} -p {proto} -m {proto} --dport 53 -j RETURN"));
                }
            }
        };
        dns(&forward, &mut rules);
        for range in family.private() {
            rules.push(format!("-A {forward} -d {range} {reject}"));
        }
        rules.push(format!("-A {input} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"));
        dns(&input, &mut rules);
        rules.push(format!("-A {input} {reject}"));
        rules
    }

    /// Our chains' lines in `table`, as `iptables-save` printed them.
    fn chains_in(&self, table: &str) -> Vec<String> {
        let heads = [format!("-A {} ", self.forward_chain()), format!("-A {} ", self.input_chain())];
        table.lines().filter(|l| heads.iter().any(|h| l.starts_with(h))).map(str::to_string).collect()
    }

    /// Removes our chains and the jumps to them.
    pub async fn remove(&self) -> Result<(), String> {
        let _turn = TABLES.lock().await;
        let bridges = format!("{}+", self.config.bridge_prefix);
        let (forward, input) = (self.forward_chain(), self.input_chain());
        let mut failed = Vec::new();
        for family in Self::families() {
            let table = match self.save(family).await {
                Ok(t) => t,
                Err(e) => {
                    failed.push(e);
                    continue;
                }
            };
            let jumps =
                [format!("-A DOCKER-USER -i {bridges} -j {forward}"), format!("-A INPUT -i {bridges} -j {input}")];
            let has = |chain: &str| {
                table.lines().any(|l| l.strip_prefix(':').and_then(|c| c.split(' ').next()) == Some(chain))
            };
            let mut script = vec!["*filter".to_string()];
            for line in table.lines().filter(|l| jumps.iter().any(|j| j == l)) {
                script.push(line.replacen("-A ", "-D ", 1));
            }
            for chain in [&forward, &input] {
                if has(chain) {
                    script.push(format!("-F {chain}"));
                    script.push(format!("-X {chain}"));
                }
            }
            script.push("COMMIT".into());
            if script.len() > 2
                && let Err(e) = self.restore(family, &(script.join("\n") + "\n")).await
            {
                failed.push(e);
            }
            self.written.lock().await.retain(|(f, _, _)| *f != family);
        }
        match failed.is_empty() {
            true => Ok(()),
            false => Err(failed.join("; ")),
        }
    }

    /// The filter table, as `iptables-save` prints it.
    async fn save(&self, family: Family) -> Result<String, String> {
        let tool = family.tool(&self.config.iptables, "-save");
        let out = tokio::process::Command::new(&tool)
            .args(["-t", "filter"])
            .output()
            .await
            .map_err(|e| format!("running {}: {e}", tool.display()))?;
        if !out.status.success() {
            return Err(format!("{} -t filter: {}", tool.display(), String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    async fn restore(&self, family: Family, script: &str) -> Result<(), String> {
        use tokio::io::AsyncWriteExt;
        let tool = family.tool(&self.config.iptables, "-restore");
        let mut child = tokio::process::Command::new(&tool)
            .args(["--noflush", "-w", "5"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("running {}: {e}", tool.display()))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(script.as_bytes()).await.map_err(|e| format!("writing to {}: {e}", tool.display()))?;
        }
        let out = child.wait_with_output().await.map_err(|e| format!("running {}: {e}", tool.display()))?;
        if !out.status.success() {
            return Err(format!("{} --noflush: {}", tool.display(), String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(())
    }
}

/// The host's resolvers: the non-loopback nameservers its resolv.conf files list.
fn resolvers() -> Vec<IpAddr> {
    let mut found = Vec::new();
    for path in RESOLV_CONFS {
        for ip in std::fs::read_to_string(path).map(|text| nameservers(&text)).unwrap_or_default() {
            if !found.contains(&ip) {
                found.push(ip);
            }
        }
    }
    found
}

fn nameservers(resolv_conf: &str) -> Vec<IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.split_whitespace().next()?.split('%').next()?.parse::<IpAddr>().ok())
        .filter(|ip| !ip.is_loopback())
        .collect()
}

#[cfg(test)]
mod tests;
