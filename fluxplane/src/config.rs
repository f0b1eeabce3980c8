//! The daemon's configuration: one TOML file (`--config FILE`) with a section per role and one
//! `[timing]` section, overridden by command-line flags. [`Timing::validate`] checks the timings
//! against each other once, at load, and names the key it refuses.
//!
//! ```toml
//! [timing]
//! heartbeat_period = "500ms"   # node agents beat this often
//! node_timeout = "3s"          # a node silent this long leaves the feed and is declared down
//! placement_lease = "10s"      # an instance not healthy this long after placement goes elsewhere
//! health_timeout = "250ms"     # one instance health check, shorter than a beat
//! raft_heartbeat = "100ms"
//! raft_election_min = "300ms"
//! raft_election_max = "600ms"
//! write_timeout = "5s"         # a write not committed by then is reported as not committed
//! drain_deadline = "5s"        # SIGTERM: longest a role takes to drain
//!
//! [raft]
//! snapshot_logs = 500          # snapshot and compact the log after this many entries
//! keep_logs = 100
//!
//! [http]                       # every listener
//! header_read_timeout = "10s"
//! body_timeout = "10s"
//! max_connections = 4096
//!
//! [control]
//! region = "eu"
//! id = 1
//! # ... every flag of `fluxplane control`, by its long name with `_` for `-`
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::roles::{chain::ChainArgs, control::ControlArgs, gateway::GatewayArgs, node::NodeArgs};

/// The whole file; every section is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// Timings shared by the roles.
    #[serde(default)]
    pub timing: Timing,
    /// Raft log compaction.
    #[serde(default)]
    pub raft: RaftConfig,
    /// What every HTTP listener allows a client.
    #[serde(default)]
    pub http: HttpConfig,
    /// `fluxplane chain`.
    #[serde(default)]
    pub chain: ChainArgs,
    /// `fluxplane control`.
    #[serde(default)]
    pub control: ControlArgs,
    /// `fluxplane node`.
    #[serde(default)]
    pub node: NodeArgs,
    /// `fluxplane gateway`.
    #[serde(default)]
    pub gateway: GatewayArgs,
}

impl DaemonConfig {
    /// Reads and validates `path`; no file means every default.
    pub fn load(path: Option<&Path>) -> anyhow::Result<DaemonConfig> {
        let Some(path) = path else {
            let config = DaemonConfig::default();
            config.validate()?;
            return Ok(config);
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading config {}: {e}", path.display()))?;
        let config: DaemonConfig =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("config {}: {}", path.display(), e.message()))?;
        config.validate().map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))?;
        Ok(config)
    }

    /// Checks every rule that relates one setting to another.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.timing.validate()?;
        anyhow::ensure!(self.raft.snapshot_logs >= 1, "raft.snapshot_logs must be at least 1");
        anyhow::ensure!(self.http.max_connections >= 1, "http.max_connections must be at least 1");
        anyhow::ensure!(!self.http.header_read_timeout.is_zero(), "http.header_read_timeout must be above zero");
        anyhow::ensure!(!self.http.body_timeout.is_zero(), "http.body_timeout must be above zero");
        Ok(())
    }
}

/// What every HTTP listener (control API, chain, gateway) allows a client, so that none can
/// hold a server open.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// A connection that has not sent a whole request head by then is closed (also an idle
    /// keep-alive connection).
    #[serde(deserialize_with = "duration")]
    pub header_read_timeout: Duration,
    /// A request body not received by then is answered 408.
    #[serde(deserialize_with = "duration")]
    pub body_timeout: Duration,
    /// Most connections open at once, per listener.
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_connections: 4096,
        }
    }
}

impl HttpConfig {
    /// The listener limits.
    pub fn limits(&self) -> serve::Limits {
        serve::Limits {
            header_read_timeout: self.header_read_timeout,
            max_connections: self.max_connections,
            ..serve::Limits::default()
        }
    }
}

/// Raft log compaction.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftConfig {
    /// Snapshot, and compact the log, after this many entries.
    pub snapshot_logs: u64,
    /// Entries kept behind a snapshot for followers that lag a little.
    pub keep_logs: u64,
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self { snapshot_logs: 500, keep_logs: 100 }
    }
}

/// Every timing that relates to another, in one place.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timing {
    /// How often a node agent heartbeats.
    #[serde(deserialize_with = "duration")]
    pub heartbeat_period: Duration,
    /// A node silent this long leaves the routing feed and is declared down.
    #[serde(deserialize_with = "duration")]
    pub node_timeout: Duration,
    /// Longest one instance health check may take.
    #[serde(deserialize_with = "duration")]
    pub health_timeout: Duration,
    /// The Raft leader's heartbeat period.
    #[serde(deserialize_with = "duration")]
    pub raft_heartbeat: Duration,
    /// Shortest Raft election timeout.
    #[serde(deserialize_with = "duration")]
    pub raft_election_min: Duration,
    /// Longest Raft election timeout (also the leader's lease).
    #[serde(deserialize_with = "duration")]
    pub raft_election_max: Duration,
    /// A shard write or linearizable read not done by then is reported as not done.
    #[serde(deserialize_with = "duration")]
    pub write_timeout: Duration,
    /// On SIGTERM, the longest a role takes to drain.
    #[serde(deserialize_with = "duration")]
    pub drain_deadline: Duration,
    /// Longest one request may run in a WASM guest.
    #[serde(deserialize_with = "duration")]
    pub request_deadline: Duration,
    /// An instance placed but not reported healthy within this is placed on another node.
    #[serde(deserialize_with = "duration")]
    pub placement_lease: Duration,
    /// How long a stopped container gets to end by itself (SIGTERM) before it is killed.
    #[serde(deserialize_with = "duration")]
    pub stop_grace: Duration,
    /// How often the control plane's leader looks up each custom domain's TXT record again
    /// (a new claim is looked up within a second).
    #[serde(deserialize_with = "duration")]
    pub domain_recheck: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            heartbeat_period: Duration::from_millis(500),
            node_timeout: Duration::from_secs(3),
            health_timeout: Duration::from_millis(250),
            raft_heartbeat: Duration::from_millis(100),
            raft_election_min: Duration::from_millis(300),
            raft_election_max: Duration::from_millis(600),
            write_timeout: Duration::from_secs(5),
            drain_deadline: Duration::from_secs(5),
            request_deadline: Duration::from_secs(10),
            placement_lease: Duration::from_secs(10),
            stop_grace: Duration::from_secs(5),
            domain_recheck: Duration::from_secs(60),
        }
    }
}

/// A node may miss this many beats, less one, before it is declared down.
const BEATS_PER_TIMEOUT: u32 = 3;

impl Timing {
    /// Checks the timings against each other; the error names the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        let t = self;
        let ms = |d: Duration| humantime::format_duration(d).to_string();
        anyhow::ensure!(!t.heartbeat_period.is_zero(), "timing.heartbeat_period must be above zero");
        anyhow::ensure!(
            t.domain_recheck >= Duration::from_secs(1),
            "timing.domain_recheck ({}) must be at least 1s, so that DNS servers are not asked in a loop",
            ms(t.domain_recheck)
        );
        anyhow::ensure!(
            t.placement_lease >= t.heartbeat_period * 4,
            "timing.placement_lease ({}) must be at least 4 × timing.heartbeat_period ({}), so that an instance \
             has time to start and be reported before it is placed elsewhere",
            ms(t.placement_lease),
            ms(t.heartbeat_period)
        );
        anyhow::ensure!(
            t.node_timeout >= t.heartbeat_period * BEATS_PER_TIMEOUT,
            "timing.node_timeout ({}) must be at least {BEATS_PER_TIMEOUT} × timing.heartbeat_period ({}), so that \
             one or two lost beats do not get a node declared down",
            ms(t.node_timeout),
            ms(t.heartbeat_period)
        );
        anyhow::ensure!(
            t.health_timeout < t.heartbeat_period,
            "timing.health_timeout ({}) must be shorter than timing.heartbeat_period ({}), so that a slow guest \
             cannot delay its node's heartbeat",
            ms(t.health_timeout),
            ms(t.heartbeat_period)
        );
        anyhow::ensure!(
            t.raft_election_min > t.raft_heartbeat,
            "timing.raft_election_min ({}) must be longer than timing.raft_heartbeat ({}), or followers elect \
             between two heartbeats of a healthy leader",
            ms(t.raft_election_min),
            ms(t.raft_heartbeat)
        );
        anyhow::ensure!(
            t.raft_election_max > t.raft_election_min,
            "timing.raft_election_max ({}) must be longer than timing.raft_election_min ({})",
            ms(t.raft_election_max),
            ms(t.raft_election_min)
        );
        anyhow::ensure!(
            t.write_timeout >= t.raft_election_max * 2,
            "timing.write_timeout ({}) must be at least 2 × timing.raft_election_max ({}), so that a write can \
             outlast an election",
            ms(t.write_timeout),
            ms(t.raft_election_max)
        );
        Ok(())
    }

    /// The Raft part, with the log compaction settings.
    pub fn raft(&self, raft: &RaftConfig) -> control_plane::RaftTiming {
        control_plane::RaftTiming {
            heartbeat: self.raft_heartbeat,
            election_min: self.raft_election_min,
            election_max: self.raft_election_max,
            snapshot_logs: raft.snapshot_logs,
            keep_logs: raft.keep_logs,
        }
    }
}

/// A duration written as `300ms`, `1.5s`, `2m`.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| serde::de::Error::custom(format!("`{text}`: {e}")))
}

/// An optional duration written as `300ms`.
pub fn option_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// A location written as `LAT,LON` in degrees.
pub fn parse_geo(text: &str) -> Result<model::GeoPoint, String> {
    model::GeoPoint::parse(text).ok_or_else(|| format!("`{text}` is not LAT,LON (degrees)"))
}

/// An optional location written as `LAT,LON`.
pub fn option_geo<'de, D: Deserializer<'de>>(d: D) -> Result<Option<model::GeoPoint>, D::Error> {
    parse_geo(&String::deserialize(d)?).map(Some).map_err(serde::de::Error::custom)
}

/// A required setting, from the flag or the file; the error names both.
pub fn required<T>(value: Option<T>, flag: &str, key: &str) -> anyhow::Result<T> {
    value.ok_or_else(|| anyhow::anyhow!("{flag} is required (or `{key}` in the --config file)"))
}

/// `path`, or `dir/name` when not given.
pub fn file_in(path: Option<PathBuf>, dir: &Path, name: &str) -> PathBuf {
    path.unwrap_or_else(|| dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        DaemonConfig::default().validate().expect("defaults");
    }

    #[test]
    fn refusals_name_the_key() {
        let bad = |f: fn(&mut Timing)| {
            let mut t = Timing::default();
            f(&mut t);
            t.validate().expect_err("refused").to_string()
        };
        assert!(bad(|t| t.node_timeout = t.heartbeat_period * 2).starts_with("timing.node_timeout"));
        assert!(bad(|t| t.health_timeout = t.heartbeat_period).starts_with("timing.health_timeout"));
        assert!(bad(|t| t.raft_election_min = t.raft_heartbeat).starts_with("timing.raft_election_min"));
        assert!(bad(|t| t.raft_election_max = t.raft_election_min).starts_with("timing.raft_election_max"));
        assert!(bad(|t| t.write_timeout = t.raft_election_max).starts_with("timing.write_timeout"));
    }

    #[test]
    fn a_file_parses_and_unknown_keys_are_refused() {
        let text =
            "[timing]\nheartbeat_period = \"500ms\"\nnode_timeout = \"3s\"\n[control]\nregion = \"eu\"\nid = 2\n";
        let c: DaemonConfig = toml::from_str(text).expect("parses");
        assert_eq!(c.timing.heartbeat_period, Duration::from_millis(500));
        assert_eq!(c.control.region.as_deref(), Some("eu"));
        assert_eq!(c.control.id, Some(2));
        c.validate().expect("valid");
        let err = toml::from_str::<DaemonConfig>("[timing]\nheartbeat = \"1s\"\n").expect_err("unknown key");
        assert!(err.to_string().contains("heartbeat"), "{err}");
        let err = toml::from_str::<DaemonConfig>("[timing]\nnode_timeout = \"soon\"\n").expect_err("bad duration");
        assert!(err.to_string().contains("soon"), "{err}");
    }
}
