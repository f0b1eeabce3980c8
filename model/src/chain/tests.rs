use super::*;
use crate::geo::GeoPoint;
use crate::geo::default_regions;
use crate::keys::{Keypair, PublicKeyHex};
use crate::spec::ComponentSpec;
use crate::tier::FLUX;

fn spec(name: &str) -> AppSpec {
    AppSpec {
        network: Default::default(),
        name: name.into(),
        description: String::new(),
        instances: 3,
        geolocation: vec![],
        expire: 10,
        components: vec![ComponentSpec {
            name: "web".into(),
            workload: crate::spec::Workload::Wasm(format!("blake3:{}", "00".repeat(32))),
            cpu_tenths: 1,
            ram_mb: 64,
            hdd_gb: 1,
            env: Default::default(),
            traffic: Default::default(),
        }],
    }
}

/// A Cumulus node in `eu` on loopback with the default instance ports.
fn node_start(node_id: &str) -> NodeStart {
    NodeStart {
        node_id: node_id.into(),
        collateral: crate::tier::Tier::Cumulus.collateral(),
        region: "eu".into(),
        continent: "EU".into(),
        country: "DE".into(),
        geo: GeoPoint { lat: 50.1, lon: 8.7 },
        capabilities: vec![Capability::Wasm],
        node_key: Keypair::generate().public(),
        address: std::net::Ipv4Addr::LOCALHOST.into(),
        instance_ports: crate::chain::PortRange::DEFAULT,
    }
}

fn genesis(funded: &Keypair) -> (ChainState, Block) {
    let g = Genesis {
        regions: default_regions(),
        allocations: vec![(funded.public(), 100_000 * FLUX)],
        control_operators: vec![funded.public()],
        blob_rules: Some(BlobRules { grace_ms: 60_000, quota_bytes: 10_000_000 }),
    };
    let block = Block::new(0, String::new(), 0, Some(g), vec![]);
    let mut state = ChainState::default();
    assert!(state.follows(&block));
    state.apply_block(&block);
    (state, block)
}

#[test]
fn register_then_only_the_owner_removes() {
    let owner = Keypair::generate();
    let other = Keypair::generate();
    let (mut state, g) = genesis(&owner);
    let reg = SignedTx::sign(Tx::AppRegister { spec: spec("a"), payment: FLUX }, 1, &owner);
    let fee = reg.fee();
    let b1 = Block::new(1, g.hash.clone(), 1, None, vec![reg]);
    assert!(state.follows(&b1));
    let out = state.apply_block(&b1);
    assert!(out.rejected.is_empty(), "{out:?}");
    assert_eq!(state.apps["a"].owner, owner.public());
    assert_eq!(state.balances[&owner.public()], 100_000 * FLUX - FLUX - fee);

    let steal = SignedTx::sign(Tx::AppRemove { name: "a".into() }, 1, &other);
    assert!(matches!(state.check_tx(&steal, 2), Err(TxError::NotOwner { .. })));
    let remove = SignedTx::sign(Tx::AppRemove { name: "a".into() }, 2, &owner);
    state.apply_tx(&remove, 2).expect("owner may remove");
    assert!(state.apps.is_empty());
}

#[test]
fn replays_forged_and_underpaid_transactions_are_refused() {
    let owner = Keypair::generate();
    let (mut state, _) = genesis(&owner);
    let reg = SignedTx::sign(Tx::AppRegister { spec: spec("a"), payment: FLUX }, 1, &owner);
    state.apply_tx(&reg, 1).expect("applies");
    assert!(matches!(state.check_tx(&reg, 2), Err(TxError::StaleNonce { .. })));

    let mut forged = SignedTx::sign(Tx::Transfer { to: owner.public(), amount: 1 }, 2, &owner);
    forged.tx = Tx::Transfer { to: owner.public(), amount: 2 };
    assert!(matches!(state.check_tx(&forged, 2), Err(TxError::BadSignature(_))));

    let cheap = SignedTx::sign(Tx::AppRegister { spec: spec("b"), payment: 1 }, 2, &owner);
    assert!(matches!(state.check_tx(&cheap, 2), Err(TxError::Underpaid { .. })));

    let poor = Keypair::generate();
    let broke = SignedTx::sign(Tx::AppRegister { spec: spec("c"), payment: FLUX }, 1, &poor);
    assert!(matches!(state.check_tx(&broke, 2), Err(TxError::InsufficientFunds { .. })));
}

#[test]
fn apps_expire_at_their_height() {
    let owner = Keypair::generate();
    let (mut state, g) = genesis(&owner);
    let reg = SignedTx::sign(Tx::AppRegister { spec: spec("a"), payment: FLUX }, 1, &owner);
    let mut prev = Block::new(1, g.hash, 1, None, vec![reg]);
    state.apply_block(&prev);
    for h in 2..=11 {
        let b = Block::new(h, prev.hash.clone(), h, None, vec![]);
        let out = state.apply_block(&b);
        assert_eq!(out.expired.is_empty(), h < 11, "height {h}");
        prev = b;
    }
    assert!(state.apps.is_empty());
}

#[test]
fn node_start_locks_collateral_and_sets_tier() {
    let op = Keypair::generate();
    let (mut state, _) = genesis(&op);
    let start = NodeStart { collateral: 12_500 * FLUX, ..node_start("eu-1") };
    let first = SignedTx::sign(Tx::NodeStart(start.clone()), 1, &op);
    state.apply_tx(&first, 1).expect("starts");
    assert_eq!(state.nodes["eu-1"].tier, Tier::Nimbus);
    assert_eq!(state.balances[&op.public()], (100_000 - 12_500) * FLUX - first.fee());
    let again = SignedTx::sign(Tx::NodeStart(start.clone()), 2, &op);
    assert!(matches!(state.check_tx(&again, 2), Err(TxError::InvalidNode(_))));
    let bad_region = NodeStart { node_id: "x-1".into(), region: "mars".into(), ..start.clone() };
    assert!(state.check_tx(&SignedTx::sign(Tx::NodeStart(bad_region), 2, &op), 2).is_err());
    // A node must name its own address and a usable port range.
    let anywhere =
        NodeStart { node_id: "x-2".into(), address: std::net::Ipv4Addr::UNSPECIFIED.into(), ..start.clone() };
    let refused = state.check_tx(&SignedTx::sign(Tx::NodeStart(anywhere), 2, &op), 2);
    assert!(matches!(&refused, Err(TxError::InvalidNode(m)) if m.contains("0.0.0.0")), "{refused:?}");
    let privileged =
        NodeStart { node_id: "x-3".into(), instance_ports: crate::chain::PortRange { first: 80, last: 200 }, ..start };
    assert!(matches!(
        state.check_tx(&SignedTx::sign(Tx::NodeStart(privileged), 2, &op), 2),
        Err(TxError::InvalidNode(_))
    ));
}

/// An instance endpoint is the node's registered address and a port in its range, and nothing
/// else: not another address, not a port outside, not a name.
#[test]
fn a_node_may_only_report_endpoints_on_its_own_address_and_ports() {
    let start = NodeStart {
        address: "10.0.0.5".parse().expect("ip"),
        instance_ports: "20000-20199".parse().expect("range"),
        ..node_start("eu-1")
    };
    assert!(start.check_endpoint("10.0.0.5:20000").is_ok());
    assert!(start.check_endpoint("10.0.0.5:20199").is_ok());
    assert!(start.check_endpoint("[::ffff:10.0.0.5]:20001").is_ok(), "the same address, IPv4-mapped");
    for bad in [
        "10.0.0.5:20200",
        "[::ffff:10.0.0.6]:20001",
        "10.0.0.5:8080",
        "127.0.0.1:20000",
        "10.0.0.6:20001",
        "localhost:20000",
        "10.0.0.5",
    ] {
        let refused = start.check_endpoint(bad).expect_err(bad);
        assert!(refused.contains(bad) || refused.contains("not an address"), "{refused}");
    }
    assert!("20000-20010".parse::<crate::chain::PortRange>().is_err(), "fewer than 128 ports");
    assert!("1024-65535".parse::<crate::chain::PortRange>().is_err(), "more than 4096 ports");
    assert!("30000-20000".parse::<crate::chain::PortRange>().is_err());
    assert!("eighty".parse::<crate::chain::PortRange>().is_err());
}

#[test]
fn a_block_that_does_not_follow_is_detected() {
    let owner = Keypair::generate();
    let (state, g) = genesis(&owner);
    assert!(!state.follows(&Block::new(2, g.hash.clone(), 0, None, vec![])));
    assert!(!state.follows(&Block::new(1, "other".into(), 0, None, vec![])));
    assert!(state.follows(&Block::new(1, g.hash, 0, None, vec![])));
}

#[test]
fn only_control_operators_publish_the_directory() {
    let operator = Keypair::generate();
    let stranger = Keypair::generate();
    let (mut state, _) = genesis(&operator);
    let announce =
        |region: &str, url: &str| Tx::ControlAnnounce { region: region.into(), replica_id: 1, api_url: url.into() };
    let forged = SignedTx::sign(announce("eu", "http://10.0.0.9:7070"), 1, &stranger);
    assert!(matches!(state.apply_tx(&forged, 1), Err(TxError::NotAuthorized(_))));
    let bad_url = SignedTx::sign(announce("eu", "http://x/../v1"), 1, &operator);
    assert!(matches!(state.apply_tx(&bad_url, 1), Err(TxError::InvalidAnnounce(_))));
    let unknown = SignedTx::sign(announce("mars", "http://10.0.0.1:7070"), 1, &operator);
    assert!(matches!(state.apply_tx(&unknown, 1), Err(TxError::InvalidAnnounce(_))));
    let ok = SignedTx::sign(announce("eu", "http://10.0.0.1:7070"), 1, &operator);
    state.apply_tx(&ok, 1).expect("operator announces");
    assert_eq!(state.directory["eu"][&1], "http://10.0.0.1:7070");
}

#[test]
fn a_block_must_hash_to_its_contents_and_follow_the_tip() {
    let owner = Keypair::generate();
    let (state, g) = genesis(&owner);
    assert_eq!(state.genesis_hash, g.hash);
    let good = Block::new(1, g.hash.clone(), 5, None, vec![]);
    state.check_block(&good).expect("follows");
    let mut forged = good.clone();
    forged.time_ms = 6;
    assert!(matches!(state.check_block(&forged), Err(BlockError::BadHash { .. })));
    let orphan = Block::new(1, "f".repeat(64), 5, None, vec![]);
    assert!(matches!(state.check_block(&orphan), Err(BlockError::DoesNotFollow { .. })));
    state.check_genesis(&g.hash).expect("same chain");
    let err = state.check_genesis("abc").expect_err("other chain");
    assert!(err.to_string().contains(&g.hash) && err.to_string().contains("abc"), "{err}");
}

#[test]
fn node_starts_and_transfers_name_real_places_and_keys() {
    let operator = Keypair::generate();
    let (mut state, _) = genesis(&operator);
    let start = |lat: f64, key: PublicKeyHex| NodeStart {
        geo: GeoPoint { lat, lon: 8.0 },
        node_key: key,
        ..node_start("eu-9")
    };
    let bad_geo = SignedTx::sign(Tx::NodeStart(start(-1000.5, Keypair::generate().public())), 1, &operator);
    assert!(matches!(state.apply_tx(&bad_geo, 1), Err(TxError::InvalidNode(_))));
    let bad_key = SignedTx::sign(Tx::NodeStart(start(50.0, PublicKeyHex("nope".into()))), 1, &operator);
    assert!(matches!(state.apply_tx(&bad_key, 1), Err(TxError::InvalidNode(_))));
    let good = SignedTx::sign(Tx::NodeStart(start(50.0, Keypair::generate().public())), 1, &operator);
    state.apply_tx(&good, 1).expect("a real node starts");
    let burn = SignedTx::sign(Tx::Transfer { to: PublicKeyHex("not-a-key".into()), amount: FLUX }, 2, &operator);
    assert!(matches!(state.apply_tx(&burn, 1), Err(TxError::InvalidTransfer(_))));
}

/// A nonce must be exactly the next one: a jump (up to `u64::MAX`) and a reuse are refused, each
/// saying which nonce is next, and the refused transactions change nothing.
#[test]
fn a_nonce_must_be_exactly_the_next_one() {
    let owner = Keypair::generate();
    let (mut state, _) = genesis(&owner);
    let friend = Keypair::generate().public();
    let transfer = |nonce| SignedTx::sign(Tx::Transfer { to: friend.clone(), amount: 1 }, nonce, &owner);
    for jump in [2, 1_000, u64::MAX] {
        let refused = state.apply_tx(&transfer(jump), 1).expect_err("a jump is refused");
        assert_eq!(refused.code(), "bad_nonce", "{refused}");
        assert!(refused.to_string().contains("next nonce is 1"), "{refused}");
    }
    state.apply_tx(&transfer(1), 1).expect("the first nonce is 1");
    let reused = state.apply_tx(&transfer(1), 1).expect_err("a reuse is refused");
    assert_eq!(reused.code(), "stale_nonce");
    assert!(reused.to_string().contains("next nonce is 2"), "{reused}");
    state.apply_tx(&transfer(2), 1).expect("and the next");
    assert_eq!(state.nonces[&owner.public()], 2);
}

/// Every transaction pays its fee from the signer, by size; a key that cannot pay it sends
/// nothing, even a transaction that moves no funds.
#[test]
fn every_transaction_pays_a_fee_by_its_size() {
    let owner = Keypair::generate();
    let (mut state, _) = genesis(&owner);
    let friend = Keypair::generate();
    let pay = SignedTx::sign(Tx::Transfer { to: friend.public(), amount: FLUX }, 1, &owner);
    assert_eq!(pay.fee(), crate::fee::MIN_TX_FEE, "a small transfer pays the minimum");
    state.apply_tx(&pay, 1).expect("funded");
    assert_eq!(state.balances[&owner.public()], 100_000 * FLUX - FLUX - pay.fee());
    assert_eq!(state.balances[&friend.public()], FLUX);

    // A larger transaction pays more: a spec with 8 KB of environment.
    let mut big = spec("big");
    big.components[0].env.insert("PADDING".into(), "x".repeat(8_000));
    let register = SignedTx::sign(Tx::AppRegister { spec: big, payment: FLUX }, 2, &owner);
    assert!(register.fee() >= 9 * crate::fee::FEE_PER_KB, "{}", register.fee());

    // The friend holds 1 FLUX: sending all of it leaves nothing for the fee.
    let stranger = Keypair::generate().public();
    let all = SignedTx::sign(Tx::Transfer { to: stranger.clone(), amount: FLUX }, 1, &friend);
    let refused = state.apply_tx(&all, 2).expect_err("cannot pay the fee");
    assert!(matches!(refused, TxError::InsufficientFunds { fee, .. } if fee == all.fee()), "{refused}");
    assert_eq!(state.balances[&friend.public()], FLUX, "a refused transaction takes nothing");

    // An unfunded key cannot even send a zero transfer.
    let unfunded = Keypair::generate();
    let spam = SignedTx::sign(Tx::Transfer { to: stranger, amount: 0 }, 1, &unfunded);
    assert!(matches!(state.apply_tx(&spam, 2), Err(TxError::InsufficientFunds { .. })));
    assert!(!state.nonces.contains_key(&unfunded.public()));
}

/// A register signed before components could be containers: it must still read, verify and
/// hash as it did, or every replica would refuse the chain it already holds.
#[test]
fn a_transaction_signed_before_workloads_still_verifies() {
    const SIGNED_BEFORE: &str = r#"{"tx":{"type":"app_register","spec":{"name":"old","description":"","instances":3,"geolocation":["acEU"],"expire":10,"components":[{"name":"web","wasm":"blake3:0000000000000000000000000000000000000000000000000000000000000000","cpu_tenths":1,"ram_mb":64,"hdd_gb":1,"env":{"GREETING":"hi"}}]},"payment":100000000},"nonce":1,"signer":"ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c","signature":"80af66ae699accae4c4fd6e971e04a599e90d257a35042da1d82b06604ed73d6b66480acdd81d6c56f804fee284adf6edb03cf2be9bf1a26fe8a920fc6de4a03"}"#;
    let stx: SignedTx = serde_json::from_str(SIGNED_BEFORE).expect("reads");
    stx.verify().expect("the old signature verifies");
    assert_eq!(stx.id(), "730e6441043d58c979bd756a692d3c22448cb9fa4a2e0c08c6c3cb00d096e32b");
    assert_eq!(serde_json::to_string(&stx).expect("json"), SIGNED_BEFORE);
    let Tx::AppRegister { spec, .. } = &stx.tx else { panic!("a register") };
    assert_eq!(spec.components[0].capability(), Capability::Wasm);
}

#[test]
fn a_container_component_round_trips_and_signs() {
    let owner = Keypair::generate();
    let mut s = spec("box");
    s.components[0].workload = crate::spec::Workload::Oci(crate::spec::OciWorkload {
        image: "busybox:local".into(),
        archive: Some(format!("blake3:{}", "11".repeat(32))),
        ports: vec![crate::spec::OciPort { container: 80, public: 8080, domain: None }],
        commands: vec!["httpd".into(), "-f".into()],
        volumes: vec![],
        health_path: None,
    });
    s.validate_for_chain().expect("valid chain form");
    let stx = SignedTx::sign(Tx::AppRegister { spec: s, payment: FLUX }, 1, &owner);
    let json = serde_json::to_string(&stx).expect("json");
    assert!(json.contains(r#""oci":{"image":"busybox:local""#), "{json}");
    let back: SignedTx = serde_json::from_str(&json).expect("reads");
    back.verify().expect("verifies");
    assert_eq!(back, stx);
    let Tx::AppRegister { spec, .. } = &back.tx else { panic!("a register") };
    assert_eq!(spec.components[0].capability(), Capability::Oci);
}

#[test]
fn blobs_are_paid_per_megabyte_bounded_per_key_and_dropped_unless_an_app_refers_to_them() {
    let owner = Keypair::generate();
    let (mut state, g) = genesis(&owner);
    let hash = |n: u8| format!("{n:02x}").repeat(32);
    let pay = |blobs: Vec<(u8, u64)>, nonce: u64| {
        let blobs = blobs.into_iter().map(|(n, size)| BlobPayment { hash: hash(n), size }).collect();
        SignedTx::sign(Tx::BlobUpload { blobs }, nonce, &owner)
    };
    let before = state.balances[&owner.public()];
    let tx = pay(vec![(1, 2_500_000), (2, 10)], 1);
    let fee = tx.fee();
    let b1 = Block::new(1, g.hash.clone(), 1_000, None, vec![tx]);
    let out = state.apply_block(&b1);
    assert!(out.rejected.is_empty(), "{out:?}");
    // 3 started MB and 1 started MB, burned with the transaction fee.
    assert_eq!(state.balances[&owner.public()], before - 4 * crate::fee::FEE_PER_BLOB_MB - fee);
    assert_eq!(state.blobs[&hash(1)].payer, owner.public());
    assert_eq!(state.blobs[&hash(1)].paid_ms, 1_000);

    // The quota (10 MB here) counts what no app refers to.
    let over = pay(vec![(3, 8_000_000)], 2);
    assert!(
        matches!(state.check_tx(&over, 2), Err(TxError::BlobQuota { held: 2_500_010, .. })),
        "{:?}",
        state.check_tx(&over, 2)
    );
    for bad in [vec![], vec![(4, 0)], vec![(5, MAX_BLOB_BYTES + 1)], vec![(6, 1), (6, 1)]] {
        assert!(matches!(state.check_tx(&pay(bad.clone(), 2), 2), Err(TxError::InvalidBlob(_))), "{bad:?}");
    }
    let upper = SignedTx::sign(
        Tx::BlobUpload { blobs: vec![BlobPayment { hash: hash(0xab).to_uppercase(), size: 1 }] },
        2,
        &owner,
    );
    assert!(matches!(state.check_tx(&upper, 2), Err(TxError::InvalidBlob(_))));
    let unfunded =
        SignedTx::sign(Tx::BlobUpload { blobs: vec![BlobPayment { hash: hash(8), size: 1 }] }, 1, &Keypair::generate());
    assert!(matches!(state.check_tx(&unfunded, 2), Err(TxError::InsufficientFunds { .. })));

    // An app refers to blob 1: it stays past the grace; blob 2 goes.
    let mut app = spec("a");
    app.components[0].workload = crate::spec::Workload::Wasm(format!("blake3:{}", hash(1)));
    app.expire = 1000;
    let reg = SignedTx::sign(Tx::AppRegister { spec: app, payment: FLUX }, 2, &owner);
    let b2 = Block::new(2, b1.hash.clone(), 2_000, None, vec![reg]);
    assert!(state.apply_block(&b2).rejected.is_empty());
    let b3 = Block::new(3, b2.hash.clone(), 61_000, None, vec![]);
    state.apply_block(&b3);
    assert!(state.blobs.contains_key(&hash(1)) && !state.blobs.contains_key(&hash(2)), "{:?}", state.blobs.keys());
    // Referenced bytes do not count: 8 MB more fit now.
    state.check_tx(&pay(vec![(3, 8_000_000)], 3), 4).expect("within the quota");
    // Once the app goes, so does its blob.
    let remove = SignedTx::sign(Tx::AppRemove { name: "a".into() }, 3, &owner);
    let b4 = Block::new(4, b3.hash.clone(), 62_000, None, vec![remove]);
    state.apply_block(&b4);
    assert!(state.blobs.is_empty());
}

#[test]
fn a_node_cannot_claim_another_nodes_ports_or_a_control_replicas_listener() {
    let operator = Keypair::generate();
    let (mut state, _) = genesis(&operator);
    let next = |state: &ChainState| state.nonces.get(&operator.public()).copied().unwrap_or(0) + 1;
    let start = |state: &mut ChainState, id: &str, address: [u8; 4], first: u16| {
        let mut s = node_start(id);
        s.address = std::net::Ipv4Addr::from(address).into();
        s.instance_ports = PortRange { first, last: first + 999 };
        let nonce = next(state);
        state.apply_tx(&SignedTx::sign(Tx::NodeStart(s), nonce, &operator), 1)
    };
    start(&mut state, "eu-1", [127, 0, 0, 1], 20_000).expect("the first node");
    start(&mut state, "eu-2", [127, 0, 0, 1], 21_000).expect("the next range on the same address");
    start(&mut state, "eu-3", [127, 0, 0, 2], 20_000).expect("the same range on another address");
    let err = start(&mut state, "eu-rogue", [127, 0, 0, 1], 20_500).expect_err("overlaps eu-1 and eu-2");
    assert!(err.to_string().contains("overlap node `eu-1`"), "{err}");
    let announce = Tx::ControlAnnounce { region: "eu".into(), replica_id: 1, api_url: "http://127.0.0.9:7070".into() };
    let nonce = next(&state);
    state.apply_tx(&SignedTx::sign(announce, nonce, &operator), 1).expect("announced");
    let err = start(&mut state, "eu-4", [127, 0, 0, 9], 7_000).expect_err("covers the replica");
    assert!(err.to_string().contains("control replica http://127.0.0.9:7070"), "{err}");
    assert_eq!(url_listener("https://[::1]"), Some("[::1]:443".parse().expect("addr")));
    assert_eq!(url_listener("http://example.com:80"), None);
}

#[test]
fn a_domain_claim_keeps_its_height_across_updates_that_keep_it() {
    let owner = Keypair::generate();
    let (mut state, _) = genesis(&owner);
    let with_domains = |domains: &[&str]| {
        let mut s = spec("shop");
        let ports = domains
            .iter()
            .enumerate()
            .map(|(i, d)| crate::spec::OciPort { container: 80, public: 8080 + i as u16, domain: Some(d.to_string()) })
            .collect();
        s.components[0].workload = crate::spec::Workload::Oci(crate::spec::OciWorkload {
            image: "busybox:local".into(),
            archive: None,
            ports,
            commands: vec![],
            volumes: vec![],
            health_path: None,
        });
        s
    };
    let claims = |state: &ChainState| state.apps["shop"].claims().collect::<Vec<_>>();
    let reg = SignedTx::sign(Tx::AppRegister { spec: with_domains(&["Shop.Example.com"]), payment: FLUX }, 1, &owner);
    state.apply_tx(&reg, 1).expect("register");
    assert_eq!(claims(&state), [("shop.example.com".to_string(), 1)]);
    let update = |domains: &[&str], nonce| {
        SignedTx::sign(Tx::AppUpdate { spec: with_domains(domains), payment: FLUX }, nonce, &owner)
    };
    state.apply_tx(&update(&["shop.example.com", "b.example.com"], 2), 2).expect("update");
    assert_eq!(claims(&state), [("b.example.com".to_string(), 2), ("shop.example.com".to_string(), 1)]);
    // Dropped, then claimed again: a new claim.
    state.apply_tx(&update(&["b.example.com"], 3), 3).expect("update");
    state.apply_tx(&update(&["b.example.com", "shop.example.com"], 4), 4).expect("update");
    assert_eq!(claims(&state), [("b.example.com".to_string(), 2), ("shop.example.com".to_string(), 4)]);
}
