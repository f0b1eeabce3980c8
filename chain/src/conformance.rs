//! One suite run against every [`ChainSource`]: the devnet in process, and the devnet over HTTP
//! through [`HttpChain`] against the real router on a socket.

use std::time::{Duration, Instant};

use model::api::TxStatus;
use model::chain::{SignedTx, Tx};
use model::keys::Keypair;
use model::tier::FLUX;

use crate::{ChainError, ChainSource, Devnet, HttpChain, chain_genesis};

/// Checks `source`, whose blocks `devnet` produces.
async fn suite(source: &dyn ChainSource, devnet: &Devnet, wallet: &Keypair) {
    let tip = source.tip().await.expect("tip");
    let genesis = source.block(0).await.expect("block 0").expect("genesis exists");
    assert_eq!(tip.genesis_hash, genesis.hash, "the tip names block 0 as the genesis");
    assert!(source.block(tip.height + 100).await.expect("asks").is_none(), "a future block is None, not an error");

    // A valid transaction is pending until a block includes it.
    let to = Keypair::generate().public();
    let nonce = source.next_nonce(&wallet.public()).await.expect("next nonce");
    assert_eq!(nonce, 1, "a new wallet's first nonce");
    let tx = SignedTx::sign(Tx::Transfer { to, amount: FLUX }, nonce, wallet);
    let id = source.submit(tx.clone()).await.expect("accepted");
    assert_eq!(source.tx_status(&id).await.expect("status"), TxStatus::Pending);
    assert_eq!(source.next_nonce(&wallet.public()).await.expect("next nonce"), 2, "the mempool counts");
    // A replay is rejected with the rule's code.
    match source.submit(tx).await {
        Err(ChainError::Rejected { code, .. }) => assert_eq!(code, "stale_nonce"),
        other => panic!("replay not rejected: {other:?}"),
    }

    // A waiter wakes when the block is produced, not at its deadline.
    let started = Instant::now();
    let (tip_after, _) = tokio::join!(source.wait_for_tip(tip.height, Duration::from_secs(10)), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        devnet.produce_block(1).expect("produce");
    });
    let tip_after = tip_after.expect("wait");
    assert_eq!(tip_after.height, tip.height + 1);
    assert!(started.elapsed() < Duration::from_secs(5), "woke at the deadline, not at the block");
    assert_eq!(source.tx_status(&id).await.expect("status"), TxStatus::Included { height: tip.height + 1 });
    let block = source.block(tip.height + 1).await.expect("read").expect("produced");
    assert_eq!(block.txs.len(), 1);
    assert_eq!(block.prev_hash, genesis.hash);

    // With nothing produced, a wait returns the unchanged tip after its deadline.
    let same = source.wait_for_tip(tip_after.height, Duration::from_millis(100)).await.expect("wait");
    assert_eq!(same.height, tip_after.height);
    assert_eq!(source.tx_status("no-such-tx").await.expect("status"), TxStatus::Unknown);
}

fn devnet(dir: &std::path::Path, wallet: &Keypair) -> Devnet {
    let w = wallet.clone();
    Devnet::open(&dir.join("chain.redb"), move || chain_genesis(&w, 0)).expect("devnet")
}

#[tokio::test]
async fn devnet_in_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wallet = Keypair::generate();
    let devnet = devnet(dir.path(), &wallet);
    suite(&devnet, &devnet, &wallet).await;
}

#[tokio::test]
async fn devnet_over_http() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wallet = Keypair::generate();
    let devnet = devnet(dir.path(), &wallet);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(axum::serve(listener, crate::server::router(devnet.clone())).into_future());
    // The first URL refuses connections: the source fails over to the second.
    let client = client::Client::from_list(&format!("127.0.0.1:1,{addr}")).expect("client");
    let source = HttpChain::new(client);
    suite(&source, &devnet, &wallet).await;
    server.abort();

    // A source that cannot be reached says so, naming itself.
    match source.tip().await {
        Err(ChainError::Unavailable { source_name, .. }) => assert!(source_name.contains(&addr.to_string())),
        other => panic!("expected unavailable, got {other:?}"),
    }
}
