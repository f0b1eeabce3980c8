use chain::{dev_genesis, dev_nodes};
use model::keys::Keypair;

use super::*;

fn config(dir: &std::path::Path) -> ShardConfig {
    ShardConfig {
        region: "eu".into(),
        data_dir: dir.to_path_buf(),
        raft_id: 1,
        api_url: "http://127.0.0.1:1".into(),
        node_timeout: Duration::from_secs(2),
        placement_lease: Duration::from_secs(10),
        raft: RaftTiming::default(),
        write_timeout: Duration::from_secs(5),
        // No node listens here: placement is tested without address proofs.
        require_address_proof: false,
    }
}

async fn open_single(dir: &std::path::Path, key: &Keypair, admin: &AdminToken) -> Arc<Shard> {
    let shard = Shard::open(config(dir), key.clone(), admin.clone()).await.expect("open");
    if !shard.is_initialized().await {
        shard.initialize(BTreeMap::from([(1, shard.replica())])).await.expect("init");
    }
    let mut m = shard.raft.metrics();
    tokio::time::timeout(Duration::from_secs(10), m.wait_for(|m| m.current_leader == Some(1)))
        .await
        .expect("elected")
        .expect("metrics");
    shard
}

#[tokio::test]
async fn committed_blocks_and_placements_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, admin) = (Keypair::generate(), AdminToken::generate());
    let wallet = Keypair::from_seed([3; 32]);
    let genesis = dev_genesis(&wallet, &dev_nodes(), 0);
    {
        let shard = open_single(dir.path(), &key, &admin).await;
        assert!(shard.is_leader());
        assert_eq!(shard.propose(Command::ApplyBlock(genesis.clone())).await.expect("commit"), CommandResult::Applied);
        // Applying the same height again is a no-op: blocks apply idempotently by height.
        assert!(matches!(
            shard.propose(Command::ApplyBlock(genesis.clone())).await.expect("commit"),
            CommandResult::Skipped { .. }
        ));
        // A block whose hash is not its contents' is refused, and changes nothing.
        let mut forged = model::chain::Block::new(1, genesis.hash.clone(), 1, None, vec![]);
        forged.hash = "0".repeat(64);
        let result = shard.propose(Command::ApplyBlock(forged)).await.expect("commit");
        assert!(matches!(result, CommandResult::Rejected { ref reason } if reason.contains("hash")), "{result:?}");
        let down = Command::SetLiveness { node: "eu-1".into(), up: false, at_ms: 1 };
        assert_eq!(shard.propose(down).await.expect("commit"), CommandResult::Applied);
        shard.linearize().await.expect("a lone leader linearizes");
        shard.shutdown().await;
    }
    let shard = open_single(dir.path(), &key, &admin).await;
    // The log is replayed from redb once the replica is leader again.
    let mut rx = shard.subscribe();
    let _ =
        tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|_| shard.read(|s| s.chain.height == Some(0)))).await;
    shard.read(|s| {
        assert_eq!(s.chain.height, Some(0));
        assert_eq!(s.chain.genesis_hash, genesis.hash);
        assert_eq!(s.region_nodes().count(), 2);
        assert!(s.down.contains("eu-1"));
    });
    shard.shutdown().await;
}

#[tokio::test]
async fn soft_state_lives_on_the_leader_and_a_new_leader_warms_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shard = open_single(dir.path(), &Keypair::generate(), &AdminToken::generate()).await;
    // Just elected: the feed waits a node timeout before it speaks for every node.
    assert!(matches!(shard.feed(), Err(SoftError::WarmingUp { .. })));
    shard.record_heartbeat("eu-1", vec![], Default::default(), None).expect("the leader records beats");
    assert!(shard.is_fresh("eu-1"));
    shard.shutdown().await;
}

#[tokio::test]
async fn concurrent_writes_share_entries_and_each_gets_its_own_result() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shard = open_single(dir.path(), &Keypair::generate(), &AdminToken::generate()).await;
    let before = shard.raft.metrics().borrow().last_log_index.unwrap_or(0);
    // 200 writes at once, each refused with a reason that names its own app, so that a result
    // delivered to the wrong caller shows.
    let writes = (0..200).map(|i| {
        let shard = shard.clone();
        async move {
            let app = format!("app-{i}");
            let cmd = Command::Reconcile {
                app: app.clone(),
                place: vec![],
                remove: vec![],
                shortfall: None,
                at_ms: 0,
                why: Default::default(),
            };
            (app, shard.propose(cmd).await.expect("commit"))
        }
    });
    for (app, result) in futures::future::join_all(writes).await {
        assert!(
            matches!(&result, CommandResult::Rejected { reason } if reason.contains(&format!("`{app}`"))),
            "{app}: {result:?}"
        );
    }
    let entries = shard.raft.metrics().borrow().last_log_index.unwrap_or(0) - before;
    assert!(entries < 200, "200 concurrent writes took {entries} entries: nothing was batched");
    shard.shutdown().await;
}

#[tokio::test]
async fn the_leader_keeps_a_bounded_list_of_gateways_and_their_versions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shard = open_single(dir.path(), &Keypair::generate(), &AdminToken::generate()).await;
    let now = shard.version();
    assert!(!shard.gateways_known(), "a new leader has heard from no gateway");
    shard.record_gateway("gw-a", 0, vec![]).expect("leader");
    assert!(shard.gateways_known());
    // A version this leader never reached is not believed.
    shard.record_gateway("gw-b", u64::MAX, vec![]).expect("leader");
    assert_eq!(shard.gateways(), vec![("gw-a".to_string(), 0), ("gw-b".to_string(), 0)]);
    shard.record_gateway("gw-a", now, vec!["app@n1".into()]).expect("leader");
    assert_eq!(shard.gateways()[0], ("gw-a".to_string(), now));
    assert_eq!(shard.ejected_by("app@n1"), vec!["gw-a".to_string()], "what a gateway ejected is shown");
    assert!(shard.ejected_by("app@n2").is_empty());
    // A flood of ids neither grows the list past its bound nor pushes out a gateway that follows.
    let busy = (0..(MAX_GATEWAYS + 50))
        .filter(|i| matches!(shard.record_gateway(&format!("gw-flood-{i}"), 0, vec![]), Err(SoftError::Busy { .. })))
        .count();
    assert_eq!((shard.gateways().len(), busy), (MAX_GATEWAYS, 52));
    assert!(shard.gateways().contains(&("gw-a".to_string(), now)));
}

/// A shard store garbled on disk is a clean error that names the file, never a panic.
#[tokio::test]
async fn a_garbled_shard_store_fails_cleanly_with_its_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, admin) = (Keypair::generate(), AdminToken::generate());
    let wallet = Keypair::from_seed([3; 32]);
    {
        let shard = open_single(dir.path(), &key, &admin).await;
        shard.propose(Command::ApplyBlock(dev_genesis(&wallet, &dev_nodes(), 0))).await.expect("commit");
        shard.shutdown().await;
    }
    let path = dir.path().join("eu.redb");
    let clean = std::fs::read(&path).expect("read");
    let mut refused = 0;
    for garble in [0usize, 4096, 8192, 12288] {
        let mut bytes = clean.clone();
        let end = (garble + 4096).min(bytes.len());
        for b in &mut bytes[garble.min(end)..end] {
            *b = 0xa5;
        }
        std::fs::write(&path, &bytes).expect("write");
        let opened = Shard::open(config(dir.path()), key.clone(), admin.clone()).await;
        // A garble in a page the open does not read may open; what fails, fails by name.
        if let Err(e) = opened {
            let e = format!("{e:#}");
            assert!(e.contains("eu.redb"), "{e}");
            refused += 1;
        }
    }
    assert!(refused > 0, "no garbled store was refused");
}
