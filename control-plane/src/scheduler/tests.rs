use model::chain::NodeStart;
use model::geo::{GeoPoint, default_regions};
use model::keys::Keypair;
use model::spec::{ComponentSpec, GeoRule};
use model::tier::Tier;
use proptest::prelude::*;

use super::*;

fn node(id: &str, region: &str, continent: &str, tier: Tier) -> NodeRecord {
    NodeRecord {
        start: NodeStart {
            node_id: id.into(),
            collateral: tier.collateral(),
            region: region.into(),
            continent: continent.into(),
            country: "XX".into(),
            geo: GeoPoint { lat: 0.0, lon: 0.0 },
            capabilities: vec![Capability::Wasm],
            node_key: Keypair::from_seed([1; 32]).public(),
        },
        operator: Keypair::from_seed([2; 32]).public(),
        tier,
        started_height: 0,
    }
}

fn app(instances: u32, geo: &[&str], ram_mb: u32) -> AppSpec {
    AppSpec {
        name: "a".into(),
        description: String::new(),
        instances,
        geolocation: geo.iter().map(|g| GeoRule::parse(g).expect("rule")).collect(),
        expire: 100,
        components: vec![ComponentSpec {
            name: "w".into(),
            wasm: "w".into(),
            cpu_tenths: 1,
            ram_mb,
            hdd_gb: 1,
            env: Default::default(),
        }],
    }
}

fn chain(nodes_per_region: usize) -> ChainState {
    let mut chain = ChainState { regions: default_regions(), ..Default::default() };
    for r in default_regions() {
        for i in 0..nodes_per_region {
            let id = format!("{}-{i}", r.name);
            chain.nodes.insert(id.clone(), node(&id, &r.name, &r.continent, Tier::Cumulus));
        }
    }
    chain
}

#[test]
fn quotas_spread_over_allowed_regions_first() {
    let c = chain(2);
    let q = region_quotas(&app(3, &["acEU", "acNA", "acAS"], 64), &c);
    assert_eq!(q.values().copied().collect::<Vec<_>>(), vec![1, 1, 1]);
    let q = region_quotas(&app(4, &["acEU", "acNA"], 64), &c);
    assert_eq!((q["eu"], q["na"], q.get("as")), (2, 2, None));
    // Five wanted, four eligible nodes: one is left out.
    let q = region_quotas(&app(5, &["acEU", "acNA"], 64), &c);
    assert_eq!(q.values().sum::<u32>(), 4);
    let q = region_quotas(&app(2, &["a!cEU"], 64), &c);
    assert!(!q.contains_key("eu"));
}

#[test]
fn places_on_emptiest_eligible_nodes_and_never_twice() {
    let n1 = node("eu-1", "eu", "EU", Tier::Cumulus);
    let n2 = node("eu-2", "eu", "EU", Tier::Cumulus);
    let cands = vec![
        Candidate { node: &n1, up: true, cordoned: false, free: Resources { cpu_tenths: 20, ram_mb: 100, hdd_gb: 10 } },
        Candidate {
            node: &n2,
            up: true,
            cordoned: false,
            free: Resources { cpu_tenths: 20, ram_mb: 8000, hdd_gb: 10 },
        },
    ];
    let d = place(&app(1, &[], 64), 1, &cands, &BTreeSet::new());
    assert_eq!(d.place, vec!["eu-2".to_string()]);
    let d = place(&app(2, &[], 64), 2, &cands, &BTreeSet::from(["eu-2".to_string()]));
    assert_eq!(d.place, vec!["eu-1".to_string()]);
    assert!(d.shortfall.is_none());
    let d = place(&app(3, &[], 64), 3, &cands, &BTreeSet::new());
    assert_eq!(d.place.len(), 2);
    assert!(d.shortfall.as_deref().is_some_and(|s| s.starts_with("2 of 3 placed")), "{d:?}");
}

#[test]
fn moves_off_down_nodes_and_reports_capacity_shortfall() {
    let n1 = node("eu-1", "eu", "EU", Tier::Cumulus);
    let n2 = node("eu-2", "eu", "EU", Tier::Cumulus);
    let cands = vec![
        Candidate {
            node: &n1,
            up: false,
            cordoned: false,
            free: Resources { cpu_tenths: 20, ram_mb: 8000, hdd_gb: 10 },
        },
        Candidate {
            node: &n2,
            up: true,
            cordoned: false,
            free: Resources { cpu_tenths: 20, ram_mb: 8000, hdd_gb: 10 },
        },
    ];
    let d = place(&app(1, &[], 64), 1, &cands, &BTreeSet::from(["eu-1".to_string()]));
    assert_eq!((d.remove, d.place), (vec!["eu-1".to_string()], vec!["eu-2".to_string()]));
    let d = place(&app(1, &[], 9000), 1, &cands, &BTreeSet::new());
    assert!(d.place.is_empty());
    assert!(d.shortfall.is_some());
}

proptest! {
    #[test]
    fn placements_respect_every_rule(
        quota in 0u32..8,
        ups in proptest::collection::vec(any::<bool>(), 1..8),
        cordons in proptest::collection::vec(any::<bool>(), 1..8),
        frees in proptest::collection::vec(0u32..300, 1..8),
        current_mask in proptest::collection::vec(any::<bool>(), 1..8),
    ) {
        let nodes: Vec<NodeRecord> = (0..ups.len()).map(|i| node(&format!("n{i}"), "eu", "EU", Tier::Cumulus)).collect();
        let cands: Vec<Candidate<'_>> = nodes.iter().enumerate().map(|(i, n)| Candidate {
            node: n,
            up: ups[i],
            cordoned: cordons[i % cordons.len()],
            free: Resources { cpu_tenths: 20, ram_mb: frees[i % frees.len()], hdd_gb: 10 },
        }).collect();
        let current: BTreeSet<NodeId> = nodes.iter().enumerate()
            .filter(|(i, _)| current_mask[i % current_mask.len()])
            .map(|(_, n)| n.start.node_id.clone()).collect();
        let spec = app(quota.max(1), &[], 100);
        let d = place(&spec, quota, &cands, &current);
        let mut after: BTreeSet<NodeId> = current.clone();
        for r in &d.remove { prop_assert!(after.remove(r)); }
        for p in &d.place { prop_assert!(after.insert(p.clone()), "placed twice on {}", p); }
        prop_assert!(after.len() <= quota as usize);
        for id in &after {
            let c = cands.iter().find(|c| &c.node.start.node_id == id).expect("known");
            prop_assert!(c.up, "placed on down node {}", id);
        }
        for p in &d.place {
            let c = cands.iter().find(|c| &c.node.start.node_id == p).expect("known");
            prop_assert!(c.free.ram_mb >= 100);
            prop_assert!(!c.cordoned, "new instance on cordoned node {}", p);
        }
        prop_assert_eq!(d.shortfall.is_some(), after.len() < quota as usize);
        // A cordoned node keeps what it runs.
        for id in &current {
            let c = cands.iter().find(|c| &c.node.start.node_id == id).expect("known");
            if c.up && c.cordoned && d.remove.contains(id) {
                prop_assert!(current.len() > quota as usize, "removed {} from a cordoned node for no reason", id);
            }
        }
    }
}
