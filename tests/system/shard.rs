//! A region's shard of 3 (and 5) control replicas as separate processes: a leader kill, a rejoin
//! by snapshot, a membership change, a forged Raft call and a swapped chain.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use model::chain::Tx;
use model::keys::Keypair;
use model::tier::FLUX;

use crate::cluster::*;

/// Funds `n` new wallets from genesis, so writers never contend for one wallet's nonces.
fn writers(c: &Cluster, n: usize) -> Vec<Keypair> {
    // The writes are app registrations: a node on chain makes them placeable.
    c.node_on_chain("eu-writes");
    let genesis = c.wallet();
    (0..n)
        .map(|_| {
            let w = Keypair::generate();
            c.submit_applied(&c.running(), &genesis, Tx::Transfer { to: w.public(), amount: 1_000 * FLUX })
                .expect("fund a writer");
            w
        })
        .collect()
}

fn register(name: &str, hash: &str) -> Tx {
    let spec = app_spec(name, hash, 1);
    let payment = model::price::app_price(&spec);
    Tx::AppRegister { spec, payment }
}

/// Every replica in `ids` has applied up to the highest commit index any of them reports.
fn converged(c: &Cluster, ids: &[u64]) -> bool {
    let statuses: Vec<_> = ids.iter().filter_map(|id| c.status(*id).ok()).collect();
    if statuses.len() != ids.len() {
        return false;
    }
    let committed = statuses.iter().filter_map(|s| s.committed).max();
    statuses.iter().all(|s| s.applied >= committed)
}

fn assert_present(c: &Cluster, ids: &[u64], names: &[String], when: &str) {
    for id in ids {
        let missing: Vec<&String> = names.iter().filter(|n| !has_app(c, *id, n)).collect();
        assert!(missing.is_empty(), "{when}: replica {id} lost acknowledged writes {missing:?}\n{}", c.logs());
    }
}

/// Writers submit `per_writer` app registrations each, round-robin over `ids`; returns
/// the acknowledged names as they come in.
fn write_loop(
    c: &Cluster,
    w: &Keypair,
    t: usize,
    per_writer: usize,
    hash: &str,
    acked: &Mutex<Vec<String>>,
    tried: &AtomicUsize,
) {
    for i in 0..per_writer {
        if c.stopping() {
            return;
        }
        let name = format!("w{t}-{i}");
        let mut order = c.replicas.keys().copied().collect::<Vec<_>>();
        let n = order.len();
        order.rotate_left(i % n);
        order.retain(|id| c.is_running(*id));
        tried.fetch_add(1, Ordering::Relaxed);
        match c.submit_applied(&order, w, register(&name, hash)) {
            Ok(_) => acked.lock().unwrap_or_else(|e| e.into_inner()).push(name),
            Err(e) => eprintln!("write {name} not acknowledged: {}", &e[..e.len().min(200)]),
        }
    }
}

#[test]
fn a_leader_kill_loses_no_acknowledged_write() {
    let c = Cluster::start(&Loopback, &[1, 2, 3], &[1, 2, 3], TEST_CONFIG);
    let hash = c.upload_module();
    let ws = writers(&c, 4);
    let acked = Mutex::new(Vec::new());
    let tried = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let _stop = c.stop_on_panic();
        for (t, w) in ws.iter().enumerate() {
            let (c, hash, acked, tried) = (&c, &hash, &acked, &tried);
            s.spawn(move || write_loop(c, w, t, 50, hash, acked, tried));
        }
        eventually(Duration::from_secs(60), "60 acknowledged writes", || acked.lock().map_or(0, |a| a.len()) >= 60);
        // Freeze the chain first, so the new leader cannot re-read blocks: what it has must come
        // from the Raft log alone.
        c.chain.freeze();
        let (old, term) = c.wait_leader(Duration::from_secs(5));
        c.kill(old);
        let killed = Instant::now();
        let before_kill: Vec<String> = acked.lock().expect("acked").clone();
        let (new, new_term) = c.wait_leader(Duration::from_secs(10));
        let gap = killed.elapsed();
        assert!(new != old && new_term > term, "leader {new} term {new_term} after killing {old} of term {term}");
        eprintln!("election gap after a leader kill: {} ms (leader {old} -> {new})", gap.as_millis());
        let live = c.running();
        eventually(Duration::from_secs(10), "survivors apply what is committed", || converged(&c, &live));
        assert_present(&c, &live, &before_kill, "right after the kill, chain frozen");
        c.chain.thaw();
    });
    let acked = acked.into_inner().expect("acked");
    eprintln!("{} of {} writes acknowledged", acked.len(), tried.load(Ordering::Relaxed));
    assert_eq!(tried.load(Ordering::Relaxed), 200);
    let live = c.running();
    eventually(Duration::from_secs(20), "survivors converge", || converged(&c, &live));
    assert_present(&c, &live, &acked, "at the end");
}

#[test]
fn a_replica_stopped_through_compaction_rejoins_by_snapshot() {
    let c = Cluster::start(&Loopback, &[1, 2, 3], &[1, 2, 3], TEST_CONFIG);
    let (leader, _) = c.wait_leader(Duration::from_secs(5));
    let stopped = c.replicas.keys().copied().find(|id| *id != leader).expect("a follower");
    c.kill(stopped);
    let before = c.status(leader).expect("leader status").last_log_index.unwrap_or(0);
    // Every block is an entry; with snapshot_logs = 40 and keep_logs = 5 the leader snapshots and
    // purges past what the stopped replica has.
    eventually(Duration::from_secs(60), "the leader compacts past the stopped replica", || {
        c.status(leader).is_ok_and(|s| s.purged.is_some_and(|p| p > before + 10))
    });
    c.start_replica(stopped);
    eventually(Duration::from_secs(30), "the replica installs a snapshot", || {
        c.status(stopped).is_ok_and(|s| s.snapshots_installed >= 1)
    });
    // The latest write, then a linearizable read on the rejoined replica itself (no redirect:
    // wallets are served by any replica through the leader's read index).
    let fresh = Keypair::generate();
    c.submit_applied(&[leader], &c.wallet(), Tx::Transfer { to: fresh.public(), amount: 7 * FLUX }).expect("write");
    let wallet: model::api::WalletView =
        c.get(stopped, &format!("/v1/wallets/{}", fresh.public())).expect("linearizable read on the rejoined replica");
    assert_eq!(wallet.balance, 7 * FLUX);
    let s = c.status(stopped).expect("status");
    assert_eq!(s.role, "follower", "{s:?}");
}

#[test]
fn three_to_five_and_back_to_three_while_writes_continue() {
    let c = Cluster::start(&Loopback, &[1, 2, 3, 4, 5], &[1, 2, 3], TEST_CONFIG);
    let hash = c.upload_module();
    let ws = writers(&c, 2);
    let acked = Mutex::new(Vec::new());
    let tried = AtomicUsize::new(0);
    let ok = |out: std::process::Output, what: &str| {
        assert!(out.status.success(), "{what}: {}{}", text(&out.stderr), c.logs());
    };
    std::thread::scope(|s| {
        let _stop = c.stop_on_panic();
        for (t, w) in ws.iter().enumerate() {
            let (c, hash, acked, tried) = (&c, &hash, &acked, &tried);
            s.spawn(move || write_loop(c, w, t, 40, hash, acked, tried));
        }
        // A second init, through a replica that is not a member yet, must not split off a
        // second shard from replicas that already belong to one.
        let out = c.fluxctl_at(&c.replicas[&4].url, &["shard", "init", REGION]);
        assert!(
            !out.status.success() && text(&out.stderr).contains("already belongs"),
            "second init: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        // A learner URL with a path is refused before anything is added.
        let bad = format!("{}/v1/shards/eu/identity?x=", c.replicas[&4].url);
        let out = c.fluxctl(&["shard", "add-learner", REGION, "--id", "4", "--url", &bad]);
        assert!(!out.status.success(), "a learner URL with a path was accepted");
        for id in [4u64, 5] {
            let url = c.replicas[&id].url.clone();
            ok(c.fluxctl(&["shard", "add-learner", REGION, "--id", &id.to_string(), "--url", &url]), "add-learner");
            ok(c.fluxctl(&["shard", "promote", REGION, "--id", &id.to_string()]), "promote");
        }
        let members: model::api::ShardView =
            serde_json::from_slice(&c.fluxctl(&["--output", "json", "shard", "members", REGION]).stdout)
                .expect("members json");
        assert_eq!(members.members.iter().filter(|m| m.voter).count(), 5, "{members:?}");
        // Back to three: remove two of the first three, the leader among them if it is one.
        let (leader, _) = c.wait_leader(Duration::from_secs(5));
        let mut gone: Vec<u64> = [1u64, 2, 3].into_iter().filter(|id| *id == leader).collect();
        gone.extend([1u64, 2, 3].into_iter().filter(|id| *id != leader));
        gone.truncate(2);
        for id in &gone {
            ok(c.fluxctl(&["shard", "remove", REGION, "--id", &id.to_string()]), "remove");
        }
        let view: model::api::ShardView =
            serde_json::from_slice(&c.fluxctl(&["--output", "json", "shard", "members", REGION]).stdout)
                .expect("members json");
        let voters: Vec<u64> = view.members.iter().filter(|m| m.voter).map(|m| m.id).collect();
        assert_eq!(voters.len(), 3, "{view:?}");
        assert!(gone.iter().all(|g| !voters.contains(g)), "{view:?}");
    });
    let acked = acked.into_inner().expect("acked");
    eprintln!("{} of {} writes acknowledged during the membership changes", acked.len(), tried.load(Ordering::Relaxed));
    assert!(acked.len() >= 40, "too few writes got through: {}", acked.len());
    let view: model::api::ShardView =
        serde_json::from_slice(&c.fluxctl(&["--output", "json", "shard", "members", REGION]).stdout).expect("json");
    let voters: Vec<u64> = view.members.iter().map(|m| m.id).collect();
    eventually(Duration::from_secs(20), "the final members converge", || converged(&c, &voters));
    assert_present(&c, &voters, &acked, "after 3 -> 5 -> 3");
}

#[test]
fn a_forged_raft_call_is_refused_and_changes_nothing() {
    let c = Cluster::start(&Loopback, &[1, 2, 3], &[1, 2, 3], TEST_CONFIG);
    c.wait_leader(Duration::from_secs(5));
    // No blocks while we compare logs.
    c.chain.freeze();
    std::thread::sleep(Duration::from_millis(500));
    let before: Vec<_> = [1u64, 2, 3].iter().map(|id| c.status(*id).expect("status")).collect();
    let http = reqwest::blocking::Client::new();
    // Well-formed Raft calls from "replica 9" with a far higher term: without the check they
    // would depose the leader and append a forged empty block.
    let forged_block = model::chain::Block::new(1, String::new(), 0, None, vec![]);
    let entry = openraft::Entry::<control_plane::TypeConfig> {
        log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(999, 9), 1),
        payload: openraft::EntryPayload::Normal(model::command::Command::ApplyBlock(forged_block)),
    };
    let forged_append = serde_json::to_value(openraft::raft::AppendEntriesRequest::<control_plane::TypeConfig> {
        vote: openraft::Vote::new_committed(999, 9),
        prev_log_id: None,
        entries: vec![entry],
        leader_commit: Some(openraft::LogId::new(openraft::CommittedLeaderId::new(999, 9), 1)),
    })
    .expect("json");
    let forged_vote = serde_json::to_value(openraft::raft::VoteRequest::<u64> {
        vote: openraft::Vote::new(999, 9),
        last_log_id: None,
    })
    .expect("json");
    let impostor = Keypair::generate();
    for r in c.replicas.values() {
        for (rpc, body) in [("append", &forged_append), ("vote", &forged_vote)] {
            let url = format!("{}/raft/eu/{rpc}", r.url);
            // Unsigned.
            let resp = http.post(&url).json(body).send().expect("answer");
            assert_eq!(resp.status(), 401, "unsigned {rpc} to replica {}", r.id);
            // Signed by a key that is not a member's, claiming to be member 1.
            let bytes = serde_json::to_vec(body).expect("json");
            let resp = signed_raft_call(&http, &url, rpc, 1, r.id, &impostor, 1, bytes).send().expect("answer");
            assert_eq!(resp.status(), 401, "impostor {rpc} to replica {}", r.id);
        }
    }
    let after: Vec<_> = [1u64, 2, 3].iter().map(|id| c.status(*id).expect("status")).collect();
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(
            (b.term, b.last_log_index, b.committed),
            (a.term, a.last_log_index, a.committed),
            "replica {}",
            a.id
        );
    }
    c.chain.thaw();
}

/// A Raft call to `url` signed with `key` as replica `from` to replica `to`, call number
/// `sequence`, carrying `body`.
#[allow(clippy::too_many_arguments)]
fn signed_raft_call(
    http: &reqwest::blocking::Client,
    url: &str,
    rpc: &str,
    from: u64,
    to: u64,
    key: &Keypair,
    sequence: u64,
    body: Vec<u8>,
) -> reqwest::blocking::RequestBuilder {
    let admin = control_plane::auth::AdminToken::new(TOKEN).expect("token");
    let call = control_plane::auth::SignedCall::sign(REGION, rpc, from, to, sequence, &body, key, &admin);
    http.post(url)
        .header("content-type", "application/json")
        .header(control_plane::auth::REPLICA_ID, from.to_string())
        .header(control_plane::auth::REPLICA_KEY, call.key.0.as_str())
        .header(control_plane::auth::TIMESTAMP, call.timestamp_ms.to_string())
        .header(control_plane::auth::SEQUENCE, sequence.to_string())
        .header(control_plane::auth::BODY_DIGEST, call.body_digest.as_str())
        .header(control_plane::auth::SIGNATURE, call.signature.as_str())
        .body(body)
}

/// A member's signed call, sent twice, is taken once; a body other than the signed one, or
/// over its kind's limit, is refused.
#[test]
fn a_replayed_or_altered_raft_call_is_refused() {
    let c = Cluster::start(&Loopback, &[1], &[1], TEST_CONFIG);
    c.wait_leader(Duration::from_secs(5));
    let r = &c.replicas[&1];
    let key = Keypair::from_secret_hex(&std::fs::read_to_string(r.data_dir.join("replica.key")).expect("replica key"))
        .expect("key");
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    let url = format!("{}/raft/{REGION}/read-index", r.url);
    let sequence = 42;
    let call = |body: &[u8]| signed_raft_call(&http, &url, "read-index", 1, 1, &key, sequence, body.to_vec());
    let first = call(b"{}").send().expect("answer");
    assert_eq!(first.status(), 200, "{}", first.text().unwrap_or_default());
    let replay = call(b"{}").send().expect("answer");
    assert_eq!(replay.status(), 401);
    let why = replay.text().unwrap_or_default();
    assert!(why.contains("replay"), "{why}");

    // The signed digest is of another body.
    let mut altered = call(b"{}").build().expect("request");
    *altered.body_mut() = Some(b"{\"x\":1}".to_vec().into());
    let headers = altered.headers_mut();
    headers.insert(control_plane::auth::SEQUENCE, "43".parse().expect("header"));
    let resp = http.execute(altered).expect("answer");
    assert_eq!(resp.status(), 401, "the sequence is signed too");
    let swapped = signed_raft_call(&http, &url, "read-index", 1, 1, &key, 44, b"{}".to_vec())
        .body(b"{\"x\":1}".to_vec())
        .send()
        .expect("answer");
    assert_eq!(swapped.status(), 401);
    let why = swapped.text().unwrap_or_default();
    assert!(why.contains("does not hash"), "{why}");

    // A vote is small; a member's oversized one is refused before it is read.
    let vote_url = format!("{}/raft/{REGION}/vote", r.url);
    let big = vec![b' '; 1 << 20];
    let resp = signed_raft_call(&http, &vote_url, "vote", 1, 1, &key, 45, big).send().expect("answer");
    assert_eq!(resp.status(), 413);
}

/// Twenty strangers posting 60 MB bodies at once are refused from their headers: the replica
/// reads none of it, and its memory stays where it was.
#[test]
fn unsigned_large_raft_posts_cost_the_replica_no_memory() {
    let c = Cluster::start(&Loopback, &[1], &[1], TEST_CONFIG);
    c.wait_leader(Duration::from_secs(5));
    let r = &c.replicas[&1];
    let rss = || r.proc.lock().expect("proc").as_ref().map_or(0, |p| p.rss_bytes());
    std::thread::sleep(Duration::from_secs(1));
    let before = rss();
    assert!(before > 0, "the replica's RSS is readable");
    let url = format!("{}/raft/{REGION}/append", r.url);
    let body = std::sync::Arc::new(vec![b'x'; 60 << 20]);
    let answers: Vec<Result<u16, String>> = std::thread::scope(|s| {
        let posts: Vec<_> = (0..20)
            .map(|_| {
                let (url, body) = (url.clone(), body.clone());
                s.spawn(move || {
                    let http =
                        reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
                    http.post(&url)
                        .header("content-type", "application/json")
                        .body(body.to_vec())
                        .send()
                        .map(|resp| resp.status().as_u16())
                        .map_err(|e| e.to_string())
                })
            })
            .collect();
        posts.into_iter().map(|p| p.join().expect("thread")).collect()
    });
    // The replica answers from the headers and closes; a client still sending may see the
    // close instead of the answer.
    assert!(answers.iter().all(|a| matches!(a, Ok(401) | Err(_))), "{answers:?}");
    assert!(answers.iter().any(|a| matches!(a, Ok(401))), "{answers:?}");
    std::thread::sleep(Duration::from_secs(1));
    let after = rss();
    assert!(after < before + (50 << 20), "RSS went from {} MB to {} MB", before >> 20, after >> 20);
    // Still serving.
    c.wait_leader(Duration::from_secs(5));
}

#[test]
fn a_replica_pointed_at_another_chain_refuses_it_naming_both_genesis_hashes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).expect("token");
    let start_chain = |name: &str| {
        let addr = format!("127.0.0.1:{}", free_port("127.0.0.1"));
        let data = dir.path().join(name);
        let p = Proc::spawn(
            name,
            fluxplane(),
            &strings(&["chain", "--listen", &addr, "--block-time", "100ms", "--data-dir", &path_str(&data)]),
            dir.path().join(format!("{name}.log")),
        );
        eventually(Duration::from_secs(30), "chain up", || {
            reqwest::blocking::get(format!("http://{addr}/v1/chain/tip")).is_ok()
        });
        let tip: model::api::ChainTip =
            reqwest::blocking::get(format!("http://{addr}/v1/chain/tip")).expect("tip").json().expect("json");
        (p, format!("http://{addr}"), tip.genesis_hash)
    };
    let (_a, a_url, a_genesis) = start_chain("chain-a");
    let (_b, b_url, b_genesis) = start_chain("chain-b");
    assert_ne!(a_genesis, b_genesis);
    let listen = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let replica = |chain_url: &str, log: &str| {
        Proc::spawn(
            log,
            fluxplane(),
            &strings(&[
                "control",
                "--region",
                "eu",
                "--id",
                "1",
                "--listen",
                &listen,
                "--chain",
                chain_url,
                "--data-dir",
                &path_str(&dir.path().join("c1")),
                "--admin-token-file",
                &path_str(&token),
            ]),
            dir.path().join(format!("{log}.log")),
        )
    };
    // A lone replica initializes itself and follows chain A.
    let mut first = replica(&a_url, "first");
    let http = reqwest::blocking::Client::new();
    eventually(Duration::from_secs(30), "the replica follows chain A", || {
        http.get(format!("http://{listen}/v1/shards/eu/replica"))
            .header("x-fluxplane-admin-token", TOKEN)
            .send()
            .ok()
            .and_then(|r| r.json::<model::api::ReplicaStatus>().ok())
            .is_some_and(|s| s.chain_height.is_some_and(|h| h >= 3))
    });
    assert!(first.terminate(Duration::from_secs(15)).is_some(), "replica did not stop on SIGTERM");
    // Restarted against chain B, it refuses to start and names both genesis hashes.
    let mut second = replica(&b_url, "second");
    let status = second.wait_exit(Duration::from_secs(30)).expect("the replica exits");
    assert!(!status.success());
    let out = second.output();
    assert!(out.contains(&a_genesis) && out.contains(&b_genesis), "{out}");
}

#[test]
fn a_leader_on_sigterm_hands_off_and_exits_cleanly() {
    let c = Cluster::start(&Loopback, &[1, 2, 3], &[1, 2, 3], TEST_CONFIG);
    let (old, term) = c.wait_leader(Duration::from_secs(5));
    let started = Instant::now();
    let status = c.terminate(old, Duration::from_secs(15)).expect("the leader exits on SIGTERM");
    assert!(status.success(), "exit status {status:?}\n{}", c.logs());
    let (new, new_term) = c.wait_leader(Duration::from_secs(5));
    assert!(new != old && new_term > term);
    let log = std::fs::read_to_string(c.dir.path().join(format!("c{old}.log"))).unwrap_or_default();
    assert!(log.contains("handed leadership of eu to replica"), "{log}");
    eprintln!("drained leader {old} in {} ms; replica {new} leads", started.elapsed().as_millis());
    // The shard goes on taking writes.
    let fresh = Keypair::generate();
    c.submit_applied(&c.running(), &c.wallet(), Tx::Transfer { to: fresh.public(), amount: FLUX }).expect("write");
}

#[test]
fn the_api_cannot_be_held_open_by_slow_clients() {
    use std::io::{Read, Write};
    let config = format!("{TEST_CONFIG}[http]\nheader_read_timeout = \"1s\"\nbody_timeout = \"1s\"\n");
    let c = Cluster::start(&Loopback, &[1], &[1], &config);
    let addr = c.replicas[&1].addr.clone();
    // Many connections that never finish their request head are all closed.
    let mut partial: Vec<std::net::TcpStream> = (0..500)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&addr).expect("connect");
            s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Slow: ").expect("write");
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(2500));
    for s in &mut partial {
        s.set_read_timeout(Some(Duration::from_millis(500))).expect("timeout");
        let mut buf = [0u8; 256];
        // EOF or a reset is closed; a read that times out means the server still holds it.
        let closed = loop {
            match s.read(&mut buf) {
                Ok(0) => break true,
                Ok(_) => continue,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    break false;
                }
                Err(_) => break true,
            }
        };
        assert!(closed, "a connection with a partial request head is still open");
    }
    // A body that never arrives gets a 408 with the error code, not a hang.
    let mut s = std::net::TcpStream::connect(&addr).expect("connect");
    s.write_all(
        b"POST /v1/transactions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{",
    )
    .expect("write");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let started = Instant::now();
    let mut answer = vec![0u8; 1024];
    let n = s.read(&mut answer).expect("an answer");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408") && answer.contains("\"timeout\""), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // And the replica still serves.
    c.status(1).expect("still serving");
}

#[test]
fn an_uploaded_module_outlives_the_replica_that_took_it() {
    let c = Cluster::start(&Loopback, &[1, 2, 3], &[1, 2, 3], TEST_CONFIG);
    c.wait_leader(Duration::from_secs(5));
    let wasm = std::fs::read(crate::util::repo().join("examples/hello/hello.wasm")).expect("hello.wasm");
    let hash = blake3::hash(&wasm).to_hex().to_string();
    let http = reqwest::blocking::Client::new();
    let payment = model::chain::BlobPayment { hash: hash.clone(), size: wasm.len() as u64 };
    c.submit_applied(&[1, 2, 3], &c.wallet(), Tx::BlobUpload { blobs: vec![payment] }).expect("paid");
    let resp = signed_upload(&http, &c.replicas[&1].url, &c.wallet(), &wasm).send().expect("upload");
    assert!(resp.status().is_success(), "upload: {}", resp.status());
    let holds = |id: u64| {
        http.get(format!("{}/v1/blobs/{hash}?local=true", c.replicas[&id].url))
            .send()
            .is_ok_and(|r| r.status().is_success() && r.bytes().is_ok_and(|b| b.as_ref() == wasm.as_slice()))
    };
    // Acknowledged only once a majority holds it: losing the replica that took it loses nothing.
    let holders = [1u64, 2, 3].into_iter().filter(|id| holds(*id)).count();
    assert!(holders >= 2, "only {holders} replica(s) hold the module when the upload is acknowledged");
    c.kill(1);
    eventually(Duration::from_secs(10), "both survivors hold the module", || holds(2) && holds(3));
}
