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
