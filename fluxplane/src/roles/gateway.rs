//! `fluxplane gateway`: the front door. It learns every region from any one control URL and
//! serves from the routes it last saw, also while the control plane is down.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
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
    /// Where to listen for plain HTTP.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Apps answer at `<app>.app.<domain>`.
    #[arg(long)]
    pub domain: Option<String>,
    /// Peers whose `x-fluxplane-client-geo` and `x-forwarded-*` headers are believed,
    /// comma-separated (default: loopback).
    #[arg(long)]
    pub trusted: Option<String>,
    /// The name this gateway gives itself when it follows the feeds (shown to `fluxctl app
    /// status`, and waited for by `deploy --wait`; default: `gw-` and 8 random hex digits).
    #[arg(long)]
    pub id: Option<String>,
    /// A MaxMind-format GeoIP database (GeoLite2-City layout) to locate clients by address.
    #[arg(long)]
    pub geoip_db: Option<PathBuf>,
    /// Where to serve HTTPS (HTTP/1.1 and h2 by ALPN); plain HTTP then redirects to it.
    #[arg(long)]
    pub tls_listen: Option<SocketAddr>,
    /// PEM certificate chain for `*.app.<domain>` (default: a self-signed one is made).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// A custom domain's certificate, `DOMAIN=CERT.pem,KEY.pem`; repeat for more. The files
    /// are read again when they change.
    #[arg(long = "tls-domain")]
    pub tls_domains: Option<Vec<String>>,
    /// Serve plain HTTP as well as HTTPS instead of redirecting it.
    #[arg(long)]
    #[serde(default)]
    pub no_https_redirect: bool,
    /// Where to serve `/metrics` and `/healthz`.
    #[arg(long)]
    pub admin_listen: Option<SocketAddr>,
    /// Regions within this many km of the client's nearest one share its load (default 0:
    /// the nearest region alone, until its instances are all ejected or full).
    #[arg(long)]
    pub spread_km: Option<f64>,
    /// Most requests in flight from one client address (default 256).
    #[arg(long)]
    pub max_in_flight_per_client: Option<u32>,
    /// Most megabytes all request bodies in flight may hold in the gateway (default 256).
    #[arg(long)]
    pub body_memory_mb: Option<usize>,
    /// Worker threads serving connections (default: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
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
            geoip_db: self.geoip_db.or(file.geoip_db),
            tls_listen: self.tls_listen.or(file.tls_listen),
            tls_cert: self.tls_cert.or(file.tls_cert),
            tls_key: self.tls_key.or(file.tls_key),
            tls_domains: self.tls_domains.or(file.tls_domains),
            no_https_redirect: self.no_https_redirect || file.no_https_redirect,
            admin_listen: self.admin_listen.or(file.admin_listen),
            spread_km: self.spread_km.or(file.spread_km),
            max_in_flight_per_client: self.max_in_flight_per_client.or(file.max_in_flight_per_client),
            body_memory_mb: self.body_memory_mb.or(file.body_memory_mb),
            workers: self.workers.or(file.workers),
        }
    }
}

/// Parses `DOMAIN=CERT,KEY`.
pub fn parse_tls_domain(text: &str) -> anyhow::Result<gateway::tls::DomainCert> {
    let parsed = text.split_once('=').and_then(|(domain, files)| {
        let (cert, key) = files.split_once(',')?;
        Some((domain.trim(), cert.trim(), key.trim()))
    });
    match parsed {
        Some((domain, cert, key)) if model::spec::is_domain(domain) && !cert.is_empty() && !key.is_empty() => {
            Ok(gateway::tls::DomainCert { domain: domain.to_ascii_lowercase(), cert: cert.into(), key: key.into() })
        }
        _ => anyhow::bail!("--tls-domain: `{text}` is not DOMAIN=CERT.pem,KEY.pem"),
    }
}

/// The gateway's limits from the daemon's `[http]` section and the gateway's own flags.
pub fn limits(daemon: &DaemonConfig, args: &GatewayArgs) -> gateway::Limits {
    let defaults = gateway::Limits::default();
    gateway::Limits {
        header_read_timeout: daemon.http.header_read_timeout,
        max_connections: daemon.http.max_connections,
        body_idle_timeout: daemon.http.body_timeout,
        max_in_flight_per_client: args.max_in_flight_per_client.unwrap_or(defaults.max_in_flight_per_client),
        body_memory: args.body_memory_mb.map_or(defaults.body_memory, |mb| mb << 20),
        ..defaults
    }
}

/// The TLS settings the flags ask for, if any.
pub fn tls(args: &GatewayArgs) -> anyhow::Result<Option<gateway::TlsConfig>> {
    let Some(listen) = args.tls_listen else {
        anyhow::ensure!(
            args.tls_cert.is_none() && args.tls_domains.is_none(),
            "--tls-cert and --tls-domain need --tls-listen"
        );
        return Ok(None);
    };
    let domains = args.tls_domains.iter().flatten().map(|d| parse_tls_domain(d)).collect::<anyhow::Result<_>>()?;
    Ok(Some(gateway::TlsConfig {
        listen,
        default_cert: args.tls_cert.clone().zip(args.tls_key.clone()),
        domains,
        redirect_http: !args.no_https_redirect,
        reload_every: std::time::Duration::from_secs(2),
    }))
}

/// Where a gateway's listeners are.
pub struct Addrs {
    pub http: SocketAddr,
    pub https: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

/// A resolved gateway role.
pub struct Config {
    inner: gateway::GatewayConfig,
}

impl Config {
    /// Resolves flags over the file.
    pub fn resolve(args: GatewayArgs, daemon: Arc<DaemonConfig>) -> anyhow::Result<Config> {
        let args = args.or(daemon.gateway.clone());
        let control = config::required(args.control.clone(), "--control", "gateway.control")?;
        let trusted = match &args.trusted {
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| s.parse::<IpAddr>().map_err(|_| anyhow::anyhow!("--trusted: `{s}` is not an IP address")))
                .collect::<anyhow::Result<Vec<_>>>()?,
            None => vec![IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)],
        };
        let id = args.id.clone().unwrap_or_else(gateway::random_id);
        anyhow::ensure!(
            model::api::valid_gateway_id(&id),
            "--id: `{id}` is not a gateway name: 1 to 64 letters, digits, `-`, `_`, `.` or `:`"
        );
        let spread_km = args.spread_km.unwrap_or(0.0);
        anyhow::ensure!(spread_km.is_finite() && spread_km >= 0.0, "--spread-km must be 0 or more");
        Ok(Config {
            inner: gateway::GatewayConfig {
                id,
                listen: config::required(args.listen, "--listen", "gateway.listen")?,
                domain: args.domain.clone().unwrap_or_else(|| "localhost".into()),
                control: client::Client::from_list(&control)?,
                geo: config::required(args.geo, "--geo", "gateway.geo")?,
                trusted,
                geoip_db: args.geoip_db.clone(),
                spread_km,
                response_header_timeout: daemon.timing.request_deadline + std::time::Duration::from_secs(1),
                tls: tls(&args)?,
                admin_listen: args.admin_listen,
                workers: args.workers.unwrap_or(0),
                limits: limits(&daemon, &args),
            },
        })
    }

    /// A config composed in-process (`fluxplane dev`).
    pub fn new(inner: gateway::GatewayConfig) -> Config {
        Config { inner }
    }

    /// Binds and starts the gateway.
    pub async fn spawn(self) -> anyhow::Result<(Running, SocketAddr)> {
        let (running, addrs) = self.spawn_with_addrs().await?;
        Ok((running, addrs.http))
    }

    /// Binds and starts the gateway; says where each of its listeners is.
    pub async fn spawn_with_addrs(self) -> anyhow::Result<(Running, Addrs)> {
        let handle = gateway::Gateway::spawn(self.inner).await?;
        let addrs = Addrs { http: handle.local_addr(), https: handle.tls_addr(), admin: handle.admin_addr() };
        eprintln!("gateway serving on http://{}", addrs.http);
        if let Some(tls) = addrs.https {
            eprintln!("gateway serving on https://{tls}");
        }
        if let Some(admin) = addrs.admin {
            eprintln!("gateway metrics on http://{admin}/metrics");
        }
        Ok((
            Running::new("gateway", Fatal::default(), move |deadline| async move {
                handle.drain(deadline).await;
            }),
            addrs,
        ))
    }
}
