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
            capabilities: vec![model::chain::Capability::Wasm],
            node_key: Keypair::from_seed([1; 32]).public(),
            address: std::net::Ipv4Addr::LOCALHOST.into(),
            instance_ports: model::chain::PortRange::DEFAULT,
        },
        operator: Keypair::from_seed([2; 32]).public(),
        tier,
        started_height: 0,
    }
}

fn app(instances: u32, geo: &[&str], ram_mb: u32) -> AppSpec {
    AppSpec {
        network: Default::default(),
        name: "a".into(),
        description: String::new(),
        instances,
        geolocation: geo.iter().map(|g| GeoRule::parse(g).expect("rule")).collect(),
        expire: 100,
        components: vec![ComponentSpec {
            name: "w".into(),
            workload: model::spec::Workload::Wasm("w".into()),
            cpu_tenths: 1,
            ram_mb,
            hdd_gb: 1,
            env: Default::default(),
            traffic: Default::default(),
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
    let q = quotas(&app(3, &["acEU", "acNA", "acAS"], 64), &c);
    assert_eq!(q.values().copied().collect::<Vec<_>>(), vec![1, 1, 1]);
    let q = quotas(&app(4, &["acEU", "acNA"], 64), &c);
    assert_eq!((q["eu"], q["na"], q.get("as")), (2, 2, None));
    // Five wanted, four eligible nodes: one is left out.
    let q = quotas(&app(5, &["acEU", "acNA"], 64), &c);
    assert_eq!(q.values().sum::<u32>(), 4);
    let q = quotas(&app(2, &["a!cEU"], 64), &c);
    assert!(!q.contains_key("eu"));
}

#[test]
fn places_on_emptiest_eligible_nodes_and_never_twice() {
    let n1 = node("eu-1", "eu", "EU", Tier::Cumulus);
    let n2 = node("eu-2", "eu", "EU", Tier::Cumulus);
    let cands = vec![
        Candidate {
            node: &n1,
            up: true,
            cordoned: false,
            free: Resources { cpu_tenths: 20, ram_mb: 100, hdd_gb: 10 },
            lacks: None,
        },
        Candidate {
            node: &n2,
            up: true,
            cordoned: false,
            free: Resources { cpu_tenths: 20, ram_mb: 8000, hdd_gb: 10 },
            lacks: None,
        },
    ];
    let d = place(&app(1, &[], 64), Quota::exactly(1), &cands, &BTreeSet::new());
    assert_eq!(d.place, vec!["eu-2".to_string()]);
    let d = place(&app(2, &[], 64), Quota::exactly(2), &cands, &BTreeSet::from(["eu-2".to_string()]));
    assert_eq!(d.place, vec!["eu-1".to_string()]);
    assert!(d.shortfall.is_none());
    let d = place(&app(3, &[], 64), Quota::exactly(3), &cands, &BTreeSet::new());
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
            lacks: None,
        },
        Candidate {
            node: &n2,
            up: true,
            cordoned: false,
            free: Resources { cpu_tenths: 20, ram_mb: 8000, hdd_gb: 10 },
            lacks: None,
        },
    ];
    let d = place(&app(1, &[], 64), Quota::exactly(1), &cands, &BTreeSet::from(["eu-1".to_string()]));
    assert_eq!((d.remove, d.place), (vec!["eu-1".to_string()], vec!["eu-2".to_string()]));
    let d = place(&app(1, &[], 9000), Quota::exactly(1), &cands, &BTreeSet::new());
    assert!(d.place.is_empty());
    assert!(d.shortfall.is_some());
}

/// The quota of `region` for `spec`, with its own `down` nodes and the others' `reports`.
fn quota_in(spec: &AppSpec, c: &ChainState, region: &str, down: &[&str], reports: &[(&str, RegionReport)]) -> Quota {
    let down: BTreeSet<NodeId> = down.iter().map(|d| d.to_string()).collect();
    let reports: BTreeMap<String, RegionReport> = reports.iter().map(|(r, rep)| (r.to_string(), rep.clone())).collect();
    let none = BTreeSet::new();
    let (eligible, open) = count_nodes(c, region, &down, &none, &reports);
    let capacity = Capacity { region, regions: &c.regions, eligible: &eligible, open: &open, reports: &reports };
    spill_quota(spec, &capacity)
}

/// Base quotas over every node of `c`.
fn quotas(spec: &AppSpec, c: &ChainState) -> BTreeMap<String, u32> {
    region_quotas(spec, &c.regions, &NodeCounts::of(c.nodes.values()))
}

/// A region that answers, with `open` nodes and `app` short as given.
fn report(open: &[&str], short: Option<(u32, u32)>) -> RegionReport {
    RegionReport {
        reachable: true,
        open: open.iter().map(|n| n.to_string()).collect(),
        short: short
            .map(|(unplaced, unstarted)| ("a".to_string(), Shortage { unplaced, unstarted }))
            .into_iter()
            .collect(),
        error: None,
    }
}

#[test]
fn a_lost_region_spills_to_the_nearest_allowed_regions_with_room() {
    let c = chain(2);
    // eu 2, na 1, as 1 (round robin over two nodes each).
    let spec = app(4, &["acEU", "acNA", "acAS"], 64);
    let whole = [("na", report(&["na-0", "na-1"], None)), ("as", report(&["as-0", "as-1"], None))];
    assert_eq!(quota_in(&spec, &c, "eu", &[], &whole), Quota::exactly(2));
    // Nothing reported: every region counts as whole.
    assert_eq!(quota_in(&spec, &c, "na", &[], &[]), Quota::exactly(1));

    // eu unreachable: its 2 go to na (nearest, room for 1 more) and then as (room for 1).
    let lost = RegionReport::unreachable("timed out".into());
    let others = |me: &str| -> Vec<(&str, RegionReport)> {
        [("eu", lost.clone()), ("na", report(&["na-0", "na-1"], None)), ("as", report(&["as-0", "as-1"], None))]
            .into_iter()
            .filter(|(r, _)| *r != me)
            .collect()
    };
    assert_eq!(quota_in(&spec, &c, "na", &[], &others("na")), Quota::exactly(2));
    assert_eq!(quota_in(&spec, &c, "as", &[], &others("as")), Quota::exactly(2));

    // The same through a report: eu answers with no open node and both instances unplaced.
    let eu_empty = report(&[], Some((2, 2)));
    assert_eq!(quota_in(&spec, &c, "na", &[], &[("eu", eu_empty.clone())]), Quota::exactly(2));
    // na lost a node of its own: no room there, so as takes what it can and one is left over.
    assert_eq!(quota_in(&spec, &c, "na", &["na-1"], &[("eu", eu_empty.clone())]), Quota::exactly(1));
    let na_full = report(&["na-0"], None);
    assert_eq!(quota_in(&spec, &c, "as", &[], &[("eu", eu_empty), ("na", na_full)]), Quota::exactly(2));

    // A region the app does not allow takes nothing.
    let spec = app(2, &["acEU", "acNA"], 64);
    assert_eq!(quota_in(&spec, &c, "as", &[], &[("eu", lost.clone())]), Quota::exactly(0));
    assert_eq!(quota_in(&spec, &c, "na", &[], &[("eu", lost)]), Quota::exactly(2));
}

#[test]
fn a_returning_region_takes_its_quota_back_once_its_instances_started() {
    let c = chain(2);
    let spec = app(2, &["acEU", "acNA"], 64);
    // eu's nodes are back and its instance is placed but still starting: na places no more
    // than its own, but keeps its stand-in.
    let starting = report(&["eu-0", "eu-1"], Some((0, 1)));
    assert_eq!(quota_in(&spec, &c, "na", &[], &[("eu", starting)]), Quota { place: 1, keep: 2 });
    // Started: the stand-in goes.
    let started = report(&["eu-0", "eu-1"], None);
    assert_eq!(quota_in(&spec, &c, "na", &[], &[("eu", started)]), Quota::exactly(1));
    // A shortage larger than the region's base quota counts only up to it.
    let wild = report(&[], Some((50, 50)));
    assert_eq!(quota_in(&spec, &c, "na", &[], &[("eu", wild)]), Quota::exactly(2));
}

#[test]
fn place_keeps_stand_ins_up_to_keep_but_adds_only_up_to_place() {
    let nodes: Vec<NodeRecord> = (0..3).map(|i| node(&format!("na-{i}"), "na", "NA", Tier::Cumulus)).collect();
    let cands: Vec<Candidate<'_>> = nodes
        .iter()
        .map(|n| Candidate {
            node: n,
            up: true,
            cordoned: false,
            free: Resources { cpu_tenths: 20, ram_mb: 500, hdd_gb: 10 },
            lacks: None,
        })
        .collect();
    let current: BTreeSet<NodeId> = ["na-0".to_string(), "na-1".to_string()].into();
    let d = place(&app(3, &[], 64), Quota { place: 1, keep: 2 }, &cands, &current);
    assert_eq!(d, Decision::default());
    let d = place(&app(3, &[], 64), Quota { place: 1, keep: 1 }, &cands, &current);
    assert_eq!(d.remove, vec!["na-1".to_string()]);
    let d = place(&app(3, &[], 64), Quota { place: 3, keep: 3 }, &cands, &current);
    assert_eq!(d.place, vec!["na-2".to_string()]);
}

proptest! {
    /// Whole rounds at a time give what one instance at a time gave.
    #[test]
    fn quotas_equal_one_at_a_time_round_robin(
        rooms in proptest::collection::vec(0usize..5, 3),
        instances in 0u32..40,
    ) {
        let mut c = ChainState { regions: default_regions(), ..Default::default() };
        for (r, n) in default_regions().iter().zip(&rooms) {
            for i in 0..*n {
                let id = format!("{}-{i}", r.name);
                c.nodes.insert(id.clone(), node(&id, &r.name, &r.continent, Tier::Cumulus));
            }
        }
        let spec = app(instances, &[], 64);
        let mut room: Vec<(String, u32)> =
            default_regions().iter().zip(&rooms).map(|(r, n)| (r.name.clone(), *n as u32)).collect();
        let mut want: BTreeMap<String, u32> = BTreeMap::new();
        let mut left = instances;
        while left > 0 && room.iter().any(|(_, n)| *n > 0) {
            for (region, n) in room.iter_mut() {
                if left > 0 && *n > 0 {
                    *n -= 1;
                    left -= 1;
                    *want.entry(region.clone()).or_default() += 1;
                }
            }
        }
        prop_assert_eq!(quotas(&spec, &c), want);
    }

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
            free: Resources { cpu_tenths: 20, ram_mb: frees[i % frees.len()], hdd_gb: 10 }, lacks: None,
        }).collect();
        let current: BTreeSet<NodeId> = nodes.iter().enumerate()
            .filter(|(i, _)| current_mask[i % current_mask.len()])
            .map(|(_, n)| n.start.node_id.clone()).collect();
        let spec = app(quota.max(1), &[], 100);
        let d = place(&spec, Quota::exactly(quota), &cands, &current);
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

/// A shortfall changes when it begins, ends, or its "N of Q placed" changes; its node counts
/// drift with every failing node and do not by themselves make a change to commit.
#[test]
fn a_shortfall_changes_only_when_its_placed_count_does() {
    let short = |why: &str| Decision { shortfall: Some(why.to_string()), ..Default::default() };
    let recorded = "1 of 2 placed: 9 eligible node(s) in eu, 4 open (up, not cordoned), 1 with room".to_string();
    assert!(
        !short("1 of 2 placed: 9 eligible node(s) in eu, 2 open (up, not cordoned), 0 with room")
            .changes(Some(&recorded))
    );
    assert!(
        short("0 of 2 placed: 9 eligible node(s) in eu, 0 open (up, not cordoned), 0 with room")
            .changes(Some(&recorded))
    );
    assert!(short(&recorded).changes(None));
    assert!(Decision::default().changes(Some(&recorded)));
    assert!(!Decision::default().changes(None));
}

fn container_app(instances: u32) -> AppSpec {
    let mut spec = app(instances, &[], 64);
    spec.components[0].workload = model::spec::Workload::Oci(model::spec::OciWorkload {
        image: "busybox:local".into(),
        archive: None,
        ports: vec![],
        commands: vec![],
        volumes: vec![],
        health_path: None,
    });
    spec
}

#[test]
fn containers_go_only_to_nodes_that_declare_and_have_oci() {
    use model::chain::Capability;
    let wasm_only = node("eu-1", "eu", "EU", Tier::Cumulus);
    let mut both = node("eu-2", "eu", "EU", Tier::Cumulus);
    both.start.capabilities = vec![Capability::Wasm, Capability::Oci];
    let mut broken = node("eu-3", "eu", "EU", Tier::Cumulus);
    broken.start.capabilities = vec![Capability::Wasm, Capability::Oci];
    let free = Resources { cpu_tenths: 20, ram_mb: 8000, hdd_gb: 10 };
    let cand =
        |n, lacks: Option<&str>| Candidate { node: n, up: true, cordoned: false, free, lacks: lacks.map(Into::into) };
    let cands =
        vec![cand(&wasm_only, None), cand(&both, None), cand(&broken, Some("oci: the Docker engine does not answer"))];
    let d = place(&container_app(3), Quota::exactly(3), &cands, &BTreeSet::new());
    assert_eq!(d.place, vec!["eu-2".to_string()]);
    let why = d.shortfall.expect("short");
    assert!(why.contains("eu-3: oci: the Docker engine does not answer"), "{why}");
    // Quotas count only the nodes that declare oci.
    let mut c = chain(0);
    for n in [&wasm_only, &both, &broken] {
        c.nodes.insert(n.start.node_id.clone(), n.clone());
    }
    assert_eq!(quotas(&container_app(3), &c).get("eu"), Some(&2));
    assert_eq!(quotas(&app(3, &[], 64), &c).get("eu"), Some(&3));
    // An app no node could ever run is refused with the missing capability named.
    c.nodes.remove("eu-2");
    c.nodes.remove("eu-3");
    let refused = feasibility(&container_app(1), c.nodes.values()).expect_err("no oci node");
    assert!(refused.contains("run oci (1 more match them but do not run oci)"), "{refused}");
}
