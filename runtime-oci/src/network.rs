//! App networks: one Docker bridge network per node and app, `fluxplane.<node>.<app>`, made
//! before the app's first container starts there and removed once no container (in any state)
//! is on it. Its bridge is named `<prefix><12 hex digits of the name's hash>`, so that the host
//! rules match every app network by one prefix, and its subnet is a /24 of [`POOL`] that no
//! other network or host route uses (Docker's own pools hold about 30 networks in all).

use std::collections::HashMap;
use std::net::Ipv4Addr;

use bollard::Docker;
use bollard::models::{Ipam, IpamConfig, NetworkCreateRequest};
use bollard::query_parameters as q;

use crate::container::{LABEL_APP, LABEL_NODE, NameLocks, is_not_found};

/// Where app networks' subnets come from: 256 /24s (FluxOS uses the same range).
const POOL: (Ipv4Addr, u8) = (Ipv4Addr::new(172, 23, 0, 0), 16);
/// The driver option naming a network's bridge.
const BRIDGE_OPTION: &str = "com.docker.network.bridge.name";
/// Creations tried when another process takes the chosen subnet first.
const CREATE_ATTEMPTS: usize = 10;

/// One creation at a time in a process: the engine reserves a subnet before the network is
/// listed, so two creations picking at once would pick the same one.
static CREATING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The network of `app` on node `node`.
pub(crate) fn network_name(node: &str, app: &str) -> String {
    format!("fluxplane.{node}.{app}")
}

/// The bridge of network `name`: at most 15 characters, as Linux allows.
pub(crate) fn bridge_name(prefix: &str, name: &str) -> String {
    let hash = blake3::hash(name.as_bytes()).to_hex();
    format!("{prefix}{}", &hash.as_str()[..12])
}

/// Makes network `name` for `app` of `node` if it is not there. The caller holds its lock.
pub(crate) async fn ensure(docker: &Docker, node: &str, app: &str, bridge_prefix: &str) -> Result<String, String> {
    let name = network_name(node, app);
    match docker.inspect_network(&name, None::<q::InspectNetworkOptions>).await {
        Ok(_) => return Ok(name),
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(format!("asking the Docker engine about network {name}: {e}")),
    }
    let _creating = CREATING.lock().await;
    let mut last = String::new();
    // Subnets the engine refused: reserved by another process's creation not listed yet.
    let mut refused = Vec::new();
    for _ in 0..CREATE_ATTEMPTS {
        let mut taken = taken_subnets(docker).await?;
        taken.extend(refused.iter().copied());
        let Some(subnet) = free_subnet(&taken) else {
            return Err(format!("no /24 of {}/{} is free for network {name}", POOL.0, POOL.1));
        };
        let request = NetworkCreateRequest {
            name: name.clone(),
            driver: Some("bridge".into()),
            ipam: Some(Ipam {
                config: Some(vec![IpamConfig { subnet: Some(format!("{subnet}/24")), ..Default::default() }]),
                ..Default::default()
            }),
            options: Some(HashMap::from([
                (BRIDGE_OPTION.to_string(), bridge_name(bridge_prefix, &name)),
                // Containers of one network talk directly (the app's own components).
                ("com.docker.network.bridge.enable_icc".to_string(), "true".to_string()),
            ])),
            labels: Some(HashMap::from([
                (LABEL_NODE.to_string(), node.to_string()),
                (LABEL_APP.to_string(), app.to_string()),
            ])),
            ..Default::default()
        };
        match docker.create_network(request).await {
            Ok(_) => {
                tracing::info!(network = %name, %subnet, "app network created");
                return Ok(name);
            }
            Err(e) => {
                last = e.to_string();
                // Another process took the subnet (or made the network) meanwhile.
                if last.contains("overlaps") || last.contains("already exists") {
                    if docker.inspect_network(&name, None::<q::InspectNetworkOptions>).await.is_ok() {
                        return Ok(name);
                    }
                    refused.push((subnet, 24));
                    continue;
                }
                return Err(format!("creating network {name}: {last}"));
            }
        }
    }
    Err(format!("creating network {name}: {last}"))
}

/// Removes network `name` if no container, running or not, is on it (a stopped container
/// whose network went could not start again). The caller holds its lock. Whether it went.
pub(crate) async fn remove_if_unused(docker: &Docker, name: &str) -> Result<bool, String> {
    let filters = HashMap::from([("network".to_string(), vec![name.to_string()])]);
    let options = q::ListContainersOptions { all: true, filters: Some(filters), ..Default::default() };
    let on_it = docker.list_containers(Some(options)).await.map_err(|e| format!("listing containers: {e}"))?;
    if !on_it.is_empty() {
        return Ok(false);
    }
    match docker.remove_network(name).await {
        Ok(()) => {
            tracing::info!(network = %name, "app network removed");
            Ok(true)
        }
        Err(e) if is_not_found(&e) => Ok(false),
        // A container joined it meanwhile (another process's): it stays.
        Err(e) => Err(format!("removing network {name}: {e}")),
    }
}

/// Removes the networks of `node` that no container is on; how many.
pub(crate) async fn sweep(docker: &Docker, node: &str, locks: &NameLocks) -> Result<usize, String> {
    let mut removed = 0;
    for name in labelled(docker, node).await? {
        let _turn = locks.hold(&name).await;
        if remove_if_unused(docker, &name).await? {
            removed += 1;
        }
    }
    Ok(removed)
}

/// The names of the app networks of `node`.
async fn labelled(docker: &Docker, node: &str) -> Result<Vec<String>, String> {
    Ok(app_networks(docker, &format!("{LABEL_NODE}={node}")).await?.into_iter().filter_map(|n| n.name).collect())
}

/// The names of every node's app networks whose bridges the rules for `bridge_prefix` match.
pub(crate) async fn bridged(docker: &Docker, bridge_prefix: &str) -> Result<Vec<String>, String> {
    let networks = app_networks(docker, LABEL_NODE).await?;
    Ok(networks
        .into_iter()
        .filter(|n| n.options.as_ref().and_then(|o| o.get(BRIDGE_OPTION)).is_some_and(|b| b.starts_with(bridge_prefix)))
        .filter_map(|n| n.name)
        .collect())
}

async fn app_networks(docker: &Docker, label: &str) -> Result<Vec<bollard::models::Network>, String> {
    let filters = HashMap::from([("label".to_string(), vec![label.to_string()])]);
    docker
        .list_networks(Some(q::ListNetworksOptions { filters: Some(filters) }))
        .await
        .map_err(|e| format!("listing networks: {e}"))
}

/// The IPv4 subnets in use: every Docker network's, and the host's routes but the default.
async fn taken_subnets(docker: &Docker) -> Result<Vec<(Ipv4Addr, u8)>, String> {
    let networks =
        docker.list_networks(None::<q::ListNetworksOptions>).await.map_err(|e| format!("listing networks: {e}"))?;
    let mut taken: Vec<(Ipv4Addr, u8)> = networks
        .iter()
        .filter_map(|n| n.ipam.as_ref()?.config.as_ref())
        .flatten()
        .filter_map(|c| parse_cidr(c.subnet.as_deref()?))
        .collect();
    taken.extend(std::fs::read_to_string("/proc/net/route").map(|t| routes(&t)).unwrap_or_default());
    Ok(taken)
}

fn parse_cidr(text: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, len) = text.split_once('/')?;
    Some((addr.parse().ok()?, len.parse().ok().filter(|l| *l <= 32)?))
}

/// The destinations of `/proc/net/route` (hex, little-endian), but the default route.
fn routes(table: &str) -> Vec<(Ipv4Addr, u8)> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let dest = u32::from_str_radix(fields.get(1)?, 16).ok()?;
            let mask = u32::from_str_radix(fields.get(7)?, 16).ok()?;
            let len = mask.count_ones() as u8;
            (len > 0).then(|| (Ipv4Addr::from(u32::from_be(dest)), len))
        })
        .collect()
}

fn overlaps(a: (Ipv4Addr, u8), b: (Ipv4Addr, u8)) -> bool {
    let len = a.1.min(b.1);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
    u32::from(a.0) & mask == u32::from(b.0) & mask
}

/// The first /24 of the pool that overlaps nothing in `taken`.
fn free_subnet(taken: &[(Ipv4Addr, u8)]) -> Option<Ipv4Addr> {
    let base = u32::from(POOL.0);
    (0..1u32 << (24 - POOL.1))
        .map(|i| Ipv4Addr::from(base + (i << 8)))
        .find(|candidate| !taken.iter().any(|t| overlaps((*candidate, 24), *t)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_names_fit_linux_and_differ_per_network() {
        let a = bridge_name("fp-", &network_name("eu-n1-abcd1234", "web"));
        let b = bridge_name("fp-", &network_name("eu-n1-abcd1234", "db"));
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("fp-") && a != b, "{a} {b}");
    }

    #[test]
    fn the_first_free_24_is_picked_around_networks_and_routes() {
        assert_eq!(free_subnet(&[]), Some(Ipv4Addr::new(172, 23, 0, 0)));
        let taken = [
            (Ipv4Addr::new(172, 17, 0, 0), 16),
            (Ipv4Addr::new(172, 23, 0, 0), 24),
            (Ipv4Addr::new(172, 23, 1, 128), 25),
        ];
        assert_eq!(free_subnet(&taken), Some(Ipv4Addr::new(172, 23, 2, 0)));
        // A host route over the whole pool leaves nothing.
        assert_eq!(free_subnet(&[(Ipv4Addr::new(172, 16, 0, 0), 12)]), None);
        // The default route is not a subnet in use.
        let table = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n\
                     eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                     docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        assert_eq!(routes(table), [(Ipv4Addr::new(172, 17, 0, 0), 16)]);
        assert_eq!(parse_cidr("172.23.4.0/24"), Some((Ipv4Addr::new(172, 23, 4, 0), 24)));
        assert_eq!(parse_cidr("fd00::/64"), None);
    }
}
