use std::sync::Arc;
use std::time::Duration;

use chain::{Devnet, SharedChainSource, dev_genesis, dev_nodes};
use control_plane::auth::AdminToken;
use control_plane::{RaftTiming, Shard, ShardConfig};
use model::keys::Keypair;

use crate::{Fatal, actor_name, lead};

async fn leader_shard(dir: &std::path::Path, region: &str) -> Arc<Shard> {
    let shard = Shard::open(
        ShardConfig {
            region: region.into(),
            data_dir: dir.to_path_buf(),
            raft_id: 1,
            api_url: "http://127.0.0.1:1".into(),
            node_timeout: Duration::from_secs(1),
            placement_lease: Duration::from_secs(10),
            raft: RaftTiming::default(),
            write_timeout: Duration::from_secs(5),
            // No node listens here: placement is tested without address proofs.
            require_address_proof: false,
        },
        Keypair::generate(),
        AdminToken::generate(),
    )
    .await
    .expect("shard");
    shard.initialize([(1, shard.replica())].into()).await.expect("init");
    shard
}

async fn wait_for(name: String) -> ractor::ActorCell {
    for _ in 0..100 {
        if let Some(cell) = ractor::registry::where_is(name.clone()) {
            return cell;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{name} never registered");
}

#[tokio::test]
async fn a_killed_child_comes_back_and_the_shard_keeps_following_the_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wallet = Keypair::from_seed([9; 32]);
    let devnet =
        Devnet::open(&dir.path().join("chain.redb"), || dev_genesis(&wallet, &dev_nodes(), 0)).expect("devnet");
    let shard = leader_shard(dir.path(), "as").await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let chain: SharedChainSource = Arc::new(devnet.clone());
    let tree = tokio::spawn(lead(shard.clone(), chain, Fatal::default(), stopped));

    let chain_name = actor_name("as", "chain", None);
    let first = wait_for(chain_name.clone()).await;
    let node_actor = wait_for(actor_name("as", "node", Some("as-1"))).await;
    first.kill();
    node_actor.kill();
    let mut restarted = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Some(cell) = ractor::registry::where_is(chain_name.clone())
            && cell.get_id() != first.get_id()
        {
            restarted = Some(cell);
            break;
        }
    }
    assert!(restarted.is_some(), "the chain actor was not restarted");
    let node_again = wait_for(actor_name("as", "node", Some("as-1"))).await;
    assert_ne!(node_again.get_id(), node_actor.get_id());

    // The restarted ChainActor re-reads its cursor from the shard and applies new blocks.
    devnet.produce_block(1).expect("block");
    let mut rx = shard.subscribe();
    tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|_| shard.read(|s| s.chain.height == Some(1))))
        .await
        .expect("block 1 applied after the restart")
        .expect("watch open");
    // The node never beat, so its NodeActor declares it down after the timeout.
    tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|_| shard.read(|s| s.down.contains("as-1"))))
        .await
        .expect("as-1 declared down")
        .expect("watch open");

    stop.send_replace(true);
    tree.await.expect("tree stopped");
    assert!(ractor::registry::where_is(chain_name).is_none(), "actors outlived the tree");
    shard.shutdown().await;
}

#[tokio::test]
async fn a_chain_with_another_genesis_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wallet = Keypair::from_seed([4; 32]);
    let first = Devnet::open(&dir.path().join("a.redb"), || dev_genesis(&wallet, &dev_nodes(), 0)).expect("devnet");
    let shard = leader_shard(dir.path(), "na").await;
    let fatal = Fatal::default();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let tree = tokio::spawn(lead(shard.clone(), Arc::new(first.clone()), fatal.clone(), stopped));
    let mut rx = shard.subscribe();
    tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|_| shard.read(|s| s.chain.height == Some(0))))
        .await
        .expect("genesis applied")
        .expect("watch open");
    stop.send_replace(true);
    tree.await.expect("stopped");

    // The same shard, now pointed at a chain with another genesis (another time stamp).
    let other = Devnet::open(&dir.path().join("b.redb"), || dev_genesis(&wallet, &dev_nodes(), 1)).expect("devnet");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let tree = tokio::spawn(lead(shard.clone(), Arc::new(other.clone()), fatal.clone(), stopped));
    let message = tokio::time::timeout(Duration::from_secs(5), fatal.wait()).await.expect("refused");
    assert!(message.contains(&first.tip().genesis_hash), "{message}");
    assert!(message.contains(&other.tip().genesis_hash), "{message}");
    stop.send_replace(true);
    tree.await.expect("stopped");
    shard.shutdown().await;
}

/// The done-when of the scale work, through the real loop (a one-replica shard, the supervision
/// tree, real commits): 1,500 nodes and 2,500 apps of 4 instances. Every instance is placed,
/// none over its count; at steady state nothing but the sweep reconciles; and a node going down
/// reconciles exactly the apps that had instances on it, as the loop itself counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_1500_nodes_the_loop_places_every_instance_and_a_node_down_reconciles_only_its_apps() {
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    use control_plane::touched::Cause;
    use model::chain::{SignedTx, Tx};

    const NODES: usize = 1500;
    const APPS: usize = 2500;
    let dir = tempfile::tempdir().expect("tempdir");
    let wallet = Keypair::from_seed([7; 32]);
    let nodes: Vec<chain::DevNode> = (0..NODES)
        .map(|i| chain::DevNode {
            id: format!("eu-n{i}"),
            region: "eu".into(),
            continent: "EU".into(),
            country: "DE".into(),
            geo: model::geo::GeoPoint { lat: 50.1, lon: 8.7 },
            tier: model::tier::Tier::Cumulus,
            // Each its own loopback address: a node's address and ports are its own.
            address: std::net::Ipv4Addr::new(127, 1 + (i >> 16) as u8, (i >> 8) as u8, i as u8).into(),
            instance_ports: model::chain::PortRange::DEFAULT,
        })
        .collect();
    let funds = 100_000_000 * model::tier::FLUX;
    let genesis = chain::funded_genesis(&wallet, &nodes, funds, None, 0);
    let devnet = Devnet::open(&dir.path().join("chain.redb"), || genesis).expect("devnet");
    let wasm = format!("blake3:{}", "ab".repeat(32));
    for a in 0..APPS {
        let spec = model::AppSpec::from_toml(&format!(
            "name = \"app{a}\"\ninstances = 4\n[[component]]\nname = \"web\"\nwasm = \"{wasm}\"\ncpu = 0.1\nram = 64\n"
        ))
        .expect("spec");
        let payment = model::price::app_price(&spec);
        let tx = SignedTx::sign(Tx::AppRegister { spec, payment }, (NODES + a + 1) as u64, &wallet);
        devnet.submit(tx).expect("app registered");
    }
    devnet.produce_block(1).expect("block");

    let shard = Shard::open(
        ShardConfig {
            region: "eu".into(),
            data_dir: dir.path().to_path_buf(),
            raft_id: 1,
            api_url: "http://127.0.0.1:1".into(),
            node_timeout: Duration::from_secs(3),
            // No agent runs here, so no instance ever starts: leases must not run out.
            placement_lease: Duration::from_secs(3600),
            raft: RaftTiming::default(),
            write_timeout: Duration::from_secs(10),
            // No node listens here: placement is tested without address proofs.
            require_address_proof: false,
        },
        Keypair::generate(),
        AdminToken::generate(),
    )
    .await
    .expect("shard");
    shard.initialize([(1, shard.replica())].into()).await.expect("init");

    // Every node beats, except those silenced.
    let silenced: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let beats = {
        let (shard, silenced) = (shard.clone(), silenced.clone());
        let ids: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
        tokio::spawn(async move {
            loop {
                let quiet = silenced.lock().expect("lock").clone();
                for id in ids.iter().filter(|id| !quiet.contains(*id)) {
                    let _ = shard.record_heartbeat(id, vec![], Default::default(), None);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let tree = tokio::spawn(lead(shard.clone(), Arc::new(devnet.clone()), Fatal::default(), stopped));

    let placed = |s: &control_plane::state::ShardState| s.placements.values().map(|p| p.len()).sum::<usize>();
    let mut rx = shard.subscribe();
    let converged = |s: &control_plane::state::ShardState| {
        s.chain.apps.len() == APPS && placed(s) == APPS * 4 && s.shortfall.is_empty()
    };
    tokio::time::timeout(Duration::from_secs(120), rx.wait_for(|_| shard.read(converged)))
        .await
        .expect("every instance placed within 2 minutes")
        .expect("watch open");
    shard.read(|s| {
        for (app, on) in &s.placements {
            assert_eq!(on.len(), 4, "{app} is not at its count: {on:?}");
        }
    });

    // Steady: past the leader's grace, only the sweep reconciles.
    while !shard.past_leader_grace() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mark = shard.loop_stats().last_seq();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let steady: Vec<_> = shard.loop_stats().recent(mark).into_iter().filter(|r| r.cause != Cause::Sweep).collect();
    assert!(steady.is_empty(), "reconciles at steady state besides the sweep: {:?}", &steady[..steady.len().min(10)]);
    assert!(shard.loop_stats().recent(mark).iter().all(|r| !r.changed), "the sweep found work the changes missed");

    // One node goes silent.
    let (victim, on_victim) = shard.read(|s| {
        let node = s.placements.values().flat_map(|p| p.keys()).next().expect("a placement").clone();
        let apps: BTreeSet<String> = s.placements_on(&node).map(|p| p.app.clone()).collect();
        (node, apps)
    });
    let mark = shard.loop_stats().last_seq();
    silenced.lock().expect("lock").insert(victim.clone());
    let healed = |s: &control_plane::state::ShardState| {
        s.down.contains(&victim) && s.placements_on(&victim).next().is_none() && converged(s)
    };
    tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|_| shard.read(healed)))
        .await
        .expect("the node's instances re-placed within 30 s")
        .expect("watch open");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after: Vec<_> = shard.loop_stats().recent(mark).into_iter().filter(|r| r.cause != Cause::Sweep).collect();
    let reconciled: BTreeSet<String> = after.iter().map(|r| r.app.clone()).collect();
    assert!(after.iter().all(|r| r.cause == Cause::Node), "{after:?}");
    assert_eq!(reconciled, on_victim, "a node down reconciles exactly the apps it held");
    assert_eq!(after.len(), on_victim.len(), "each once: {after:?}");
    shard.read(|s| {
        for (app, on) in &s.placements {
            assert_eq!(on.len(), 4, "{app} is not at its count: {on:?}");
            assert!(!on.contains_key(&victim), "{app} is still on the dead node");
        }
    });

    beats.abort();
    stop.send_replace(true);
    tree.await.expect("tree stopped");
    shard.shutdown().await;
}
