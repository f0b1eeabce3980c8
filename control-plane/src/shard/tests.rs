use chain::{dev_genesis, dev_nodes};
use model::keys::Keypair;

use super::*;

fn config(dir: &std::path::Path) -> ShardConfig {
    ShardConfig {
        region: "eu".into(),
        data_dir: dir.to_path_buf(),
        raft_id: 1,
        raft_addr: "127.0.0.1:1".into(),
        node_timeout: Duration::from_secs(2),
    }
}

#[tokio::test]
async fn committed_blocks_and_placements_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wallet = Keypair::from_seed([3; 32]);
    let genesis = dev_genesis(&wallet, &dev_nodes(), 0);
    {
        let shard = Shard::open(config(dir.path())).await.expect("open");
        assert!(shard.is_leader());
        assert_eq!(shard.propose(Command::ApplyBlock(genesis.clone())).await.expect("commit"), CommandResult::Applied);
        // Applying the same height again is a no-op: blocks apply idempotently by height.
        assert!(matches!(
            shard.propose(Command::ApplyBlock(genesis.clone())).await.expect("commit"),
            CommandResult::Skipped { .. }
        ));
        let down = Command::SetLiveness { node: "eu-1".into(), up: false, at_ms: 1 };
        assert_eq!(shard.propose(down).await.expect("commit"), CommandResult::Applied);
        shard.shutdown().await;
    }
    let shard = Shard::open(config(dir.path())).await.expect("reopen");
    // The log is replayed from redb once the replica is leader again.
    let mut rx = shard.subscribe();
    let _ =
        tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|_| shard.read(|s| s.chain.height == Some(0)))).await;
    shard.read(|s| {
        assert_eq!(s.chain.height, Some(0));
        assert_eq!(s.region_nodes().count(), 2);
        assert!(s.down.contains("eu-1"));
    });
    shard.shutdown().await;
}
