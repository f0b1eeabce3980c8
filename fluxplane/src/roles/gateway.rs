//! `fluxplane gateway`: the front door. It learns every region from any one control URL and
//! serves from the routes it last saw, also while the control plane is down.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use actors::Fatal;
use model::geo::GeoPoint;
use serde::Deserialize;

use super::Running;
use crate::config::{self, DaemonConfig};

/// Flags of `fluxplane gateway` (and the `[gateway]` section of the config file).
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayArgs {
    /// The gateway's own location: where a client with no better location is assumed to be.
    #[arg(long, value_parser = config::parse_geo)]
    #[serde(default, deserialize_with = "config::option_geo")]
    pub geo: Option<GeoPoint>,
    /// Control-plane URLs, comma-separated (any one finds every region).
    #[arg(long)]
    pub control: Option<String>,
    /// Where to listen.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Apps answer at `<app>.app.<domain>`.
    #[arg(long)]
    pub domain: Option<String>,
    /// Peers whose `x-fluxplane-client-geo` header is believed, comma-separated (default:
    /// loopback).
    #[arg(long)]
    pub trusted: Option<String>,
    /// The name this gateway gives itself when it follows the feeds (shown to `fluxctl app
    /// status`, and waited for by `deploy --wait`; default: `gw-` and 8 random hex digits).
    #[arg(long)]
    pub id: Option<String>,
}

impl GatewayArgs {
    /// Flags over file.
    pub fn or(self, file: GatewayArgs) -> GatewayArgs {
        GatewayArgs {
            geo: self.geo.or(file.geo),
            control: self.control.or(file.control),
            listen: self.listen.or(file.listen),
            domain: self.domain.or(file.domain),
            trusted: self.trusted.or(file.trusted),
            id: self.id.or(file.id),
        }
    }
}

/// A resolved gateway role.
pub struct Config {
    inner: gateway::GatewayConfig,
    limits: serve::Limits,
}

impl Config {
    /// Resolves flags over the file.
    pub fn resolve(args: GatewayArgs, daemon: Arc<DaemonConfig>) -> anyhow::Result<Config> {
        let args = args.or(daemon.gateway.clone());
        let control = config::required(args.control, "--control", "gateway.control")?;
        let trusted = match args.trusted {
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| s.parse::<IpAddr>().map_err(|_| anyhow::anyhow!("--trusted: `{s}` is not an IP address")))
                .collect::<anyhow::Result<Vec<_>>>()?,
            None => vec![IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)],
        };
        let id = args.id.unwrap_or_else(gateway::random_id);
        anyhow::ensure!(
            model::api::valid_gateway_id(&id),
            "--id: `{id}` is not a gateway name: 1 to 64 letters, digits, `-`, `_`, `.` or `:`"
        );
        Ok(Config {
            inner: gateway::GatewayConfig {
                id,
                listen: config::required(args.listen, "--listen", "gateway.listen")?,
                domain: args.domain.unwrap_or_else(|| "localhost".into()),
                control: client::Client::from_list(&control)?,
                geo: config::required(args.geo, "--geo", "gateway.geo")?,
                trusted,
                body_timeout: daemon.http.body_timeout,
                response_header_timeout: daemon.timing.request_deadline + std::time::Duration::from_secs(1),
            },
            limits: daemon.http.limits(),
        })
    }

    /// A config composed in-process (`fluxplane dev`).
    pub fn new(inner: gateway::GatewayConfig, limits: serve::Limits) -> Config {
        Config { inner, limits }
    }

    /// Binds and starts the gateway.
    pub async fn spawn(self) -> anyhow::Result<(Running, SocketAddr)> {
        let handle = gateway::Gateway::spawn(self.inner, self.limits).await?;
        let addr = handle.local_addr();
        eprintln!("gateway serving on http://{addr}");
        Ok((
            Running::new("gateway", Fatal::default(), move |deadline| async move {
                handle.drain(deadline).await;
            }),
            addr,
        ))
    }
}
