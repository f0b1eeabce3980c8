use std::time::Duration;

use chain::{Devnet, dev_genesis, dev_nodes};
use control_plane::{Shard, ShardConfig};
use model::keys::Keypair;

use crate::{actor_name, start_region};

#[tokio::test]
async fn a_killed_child_comes_back_and_the_shard_keeps_following_the_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wallet = Keypair::from_seed([9; 32]);
    let devnet =
        Devnet::open(&dir.path().join("chain.redb"), || dev_genesis(&wallet, &dev_nodes(), 0)).expect("devnet");
    let shard = Shard::open(ShardConfig {
        region: "as".into(),
        data_dir: dir.path().to_path_buf(),
        raft_id: 1,
        raft_addr: "127.0.0.1:1".into(),
        node_timeout: Duration::from_secs(1),
    })
    .await
    .expect("shard");
    let (supervisor, handle) = start_region(shard.clone(), devnet.clone()).await.expect("start");

    let wait_for = |name: String| async move {
        for _ in 0..100 {
            if let Some(cell) = ractor::registry::where_is(name.clone()) {
                return cell;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{name} never registered");
    };
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

    supervisor.stop(None);
    handle.await.expect("supervisor stopped");
    shard.shutdown().await;
}
