//! The devnet's genesis: a funded dev wallet and two nodes in each default region.

use model::chain::{Block, Capability, Genesis, NodeStart, PortRange, SignedTx, Tx};
use model::geo::{GeoPoint, default_regions};
use model::keys::Keypair;
use model::tier::{FLUX, Tier};

/// A node the devnet starts in genesis.
#[derive(Debug, Clone)]
pub struct DevNode {
    /// Id, e.g. `eu-1`.
    pub id: String,
    /// Region.
    pub region: String,
    /// Continent code.
    pub continent: String,
    /// Country code.
    pub country: String,
    /// Location.
    pub geo: GeoPoint,
    /// Tier.
    pub tier: Tier,
    /// The address its instances listen on.
    pub address: std::net::IpAddr,
    /// Its instance ports: its own on that address.
    pub instance_ports: PortRange,
}

/// Two nodes per default region, in real data-centre cities. They all serve on loopback, each on
/// its own thousand instance ports from 20000 up (a node's address and ports are its own).
pub fn dev_nodes() -> Vec<DevNode> {
    let n = |id: &str, region: &str, continent: &str, country: &str, lat: f64, lon: f64, tier| DevNode {
        id: id.into(),
        region: region.into(),
        continent: continent.into(),
        country: country.into(),
        geo: GeoPoint { lat, lon },
        tier,
        address: std::net::Ipv4Addr::LOCALHOST.into(),
        instance_ports: PortRange::DEFAULT,
    };
    let nodes = vec![
        n("eu-1", "eu", "EU", "DE", 50.11, 8.68, Tier::Nimbus),
        n("eu-2", "eu", "EU", "NL", 52.37, 4.90, Tier::Cumulus),
        n("na-1", "na", "NA", "US", 39.04, -77.49, Tier::Nimbus),
        n("na-2", "na", "NA", "US", 37.34, -121.89, Tier::Cumulus),
        n("as-1", "as", "AS", "SG", 1.35, 103.82, Tier::Nimbus),
        n("as-2", "as", "AS", "JP", 35.68, 139.69, Tier::Cumulus),
    ];
    nodes
        .into_iter()
        .enumerate()
        .map(|(i, node)| {
            let first = PortRange::DEFAULT.first + 1000 * i as u16;
            DevNode { instance_ports: PortRange { first, last: first + 999 }, ..node }
        })
        .collect()
}

/// The node key of a dev node: derived from the dev wallet and the node id, so that the chain
/// (which records the public half) and the agents (which sign with it) agree without sharing files.
pub fn dev_node_key(wallet: &Keypair, node_id: &str) -> Keypair {
    let mut h = blake3::Hasher::new_derive_key("fluxplane dev node key v1");
    h.update(wallet.secret_hex().as_bytes());
    h.update(node_id.as_bytes());
    Keypair::from_seed(*h.finalize().as_bytes())
}

/// Block 0: fund `wallet` with 1,000,000 FLUX, make it the control operator, and start `nodes`
/// with its collateral.
pub fn dev_genesis(wallet: &Keypair, nodes: &[DevNode], time_ms: u64) -> Block {
    funded_genesis(wallet, nodes, 1_000_000 * FLUX, None, time_ms)
}

/// [`dev_genesis`] with `allocation` (in the chain's smallest unit) for `wallet`: big clouds
/// for scale tests need more than a million FLUX of collateral. `blob_rules` (None: the
/// defaults) set how long unreferenced uploads are kept and how many bytes a key may hold.
pub fn funded_genesis(
    wallet: &Keypair,
    nodes: &[DevNode],
    allocation: u64,
    blob_rules: Option<model::chain::BlobRules>,
    time_ms: u64,
) -> Block {
    let genesis = Genesis {
        regions: default_regions(),
        allocations: vec![(wallet.public(), allocation)],
        control_operators: vec![wallet.public()],
        blob_rules,
    };
    let txs = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let start = NodeStart {
                node_id: n.id.clone(),
                collateral: n.tier.collateral(),
                region: n.region.clone(),
                continent: n.continent.clone(),
                country: n.country.clone(),
                geo: n.geo,
                // What the dev nodes' runtimes run; a node whose Docker engine does not answer
                // says so in its beats, and gets no container meanwhile.
                capabilities: vec![Capability::Wasm, Capability::Oci],
                node_key: dev_node_key(wallet, &n.id).public(),
                address: n.address,
                instance_ports: n.instance_ports,
            };
            SignedTx::sign(Tx::NodeStart(start), i as u64 + 1, wallet)
        })
        .collect();
    Block::new(0, String::new(), time_ms, Some(genesis), txs)
}

/// Block 0 of `fluxplane chain`: the default regions, `wallet` funded with 1,000,000 FLUX and made
/// the control operator, and no nodes (nodes register themselves, paying their collateral).
pub fn chain_genesis(wallet: &Keypair, time_ms: u64) -> Block {
    dev_genesis(wallet, &[], time_ms)
}
