//! The control loop at scale, in process: the reconcile path (`control_plane::reconcile::decide`
//! and `ShardState::apply`) of three regional shards over synthetic nodes and apps, without
//! actors, Raft or I/O, so the figures are an upper bound for the real loop. Prints the time to
//! place every instance (placements/s), and the cost of one steady-state reconcile of every
//! app.
//!
//! `cargo run --release -p bench-scale -- --nodes 15000 --apps 25000`

use std::time::Instant;

use control_plane::reconcile::{Judgement, Liveness, decide};
use control_plane::state::ShardState;

/// Every node beats.
struct AllFresh;

impl Liveness for AllFresh {
    fn is_fresh(&self, _: &str) -> bool {
        true
    }
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name} takes a number, not `{v}`")))
        .unwrap_or(default)
}

fn main() {
    let (nodes, apps) = (arg("--nodes", 1_500), arg("--apps", 2_500));
    let chain = control_plane::synthetic::cloud(nodes, apps);
    let mut shards: Vec<ShardState> = chain
        .regions
        .iter()
        .map(|r| {
            let mut shard = ShardState::new(&r.name);
            shard.chain = chain.clone();
            shard
        })
        .collect();
    let names: Vec<String> = chain.apps.keys().cloned().collect();
    let judgement = Judgement { now_ms: 1, lease_ms: 10_000, settled: true };

    let started = Instant::now();
    for shard in &mut shards {
        for app in &names {
            if let Some(cmd) = decide(shard, app, &AllFresh, judgement) {
                shard.apply(&cmd);
            }
        }
    }
    let place_s = started.elapsed().as_secs_f64();
    let placed: usize = shards.iter().map(|s| s.placements.values().map(|p| p.len()).sum::<usize>()).sum();

    let started = Instant::now();
    let mut changes = 0;
    for shard in &shards {
        for app in &names {
            changes += usize::from(decide(shard, app, &AllFresh, judgement).is_some());
        }
    }
    let steady_s = started.elapsed().as_secs_f64();
    println!("{nodes} nodes, {apps} apps of 4 instances: {placed} placed in {place_s:.2} s");
    println!("one reconcile of every app at steady state: {steady_s:.2} s ({changes} changes)");
    println!(
        "placements_per_s={:.0} steady_reconcile_all_s={steady_s:.3} target_placements_per_s=20000",
        placed as f64 / place_s
    );
}
