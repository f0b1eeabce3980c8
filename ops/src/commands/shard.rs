//! `fluxctl shard`: a region's Raft group. Every verb needs the admin token
//! (`FLUXCTL_ADMIN_TOKEN`).

use clap::Subcommand;
use client::Client;
use comfy_table::Table;
use model::api::ShardView;

use super::{Cli, Output, print_json};

/// Shard verbs; `REGION` names the shard.
#[derive(Debug, Subcommand)]
pub enum ShardCommand {
    /// Make the replicas listed in `--peers` of the replica at `--api` the shard's voters.
    Init {
        /// Region.
        region: String,
    },
    /// Voters and learners.
    Members {
        /// Region.
        region: String,
    },
    /// Each replica's role, term, commit and applied index, lag and last contact.
    Status {
        /// Region.
        region: String,
    },
    /// Add a replica as a learner; it catches up before this returns.
    AddLearner {
        /// Region.
        region: String,
        /// The new replica's Raft id.
        #[arg(long)]
        id: u64,
        /// The new replica's API URL.
        #[arg(long)]
        url: String,
    },
    /// Make a learner a voter (joint consensus).
    Promote {
        /// Region.
        region: String,
        /// Raft id.
        #[arg(long)]
        id: u64,
    },
    /// Remove a voter or learner (joint consensus).
    Remove {
        /// Region.
        region: String,
        /// Raft id.
        #[arg(long)]
        id: u64,
    },
    /// Hand leadership to another voter.
    TransferLeader {
        /// Region.
        region: String,
        /// Preferred new leader; any voter when not given.
        #[arg(long)]
        to: Option<u64>,
    },
}

impl ShardCommand {
    fn region(&self) -> &str {
        match self {
            ShardCommand::Init { region }
            | ShardCommand::Members { region }
            | ShardCommand::Status { region }
            | ShardCommand::AddLearner { region, .. }
            | ShardCommand::Promote { region, .. }
            | ShardCommand::Remove { region, .. }
            | ShardCommand::TransferLeader { region, .. } => region,
        }
    }
}

pub(super) async fn run(cli: &Cli, api: &Client, cmd: &ShardCommand) -> anyhow::Result<()> {
    anyhow::ensure!(
        cli.admin_token.is_some(),
        "shard commands need the admin token: set FLUXCTL_ADMIN_TOKEN (see --admin-token-file of fluxplane control)"
    );
    let region = cmd.region();
    // A shard that is not initialized yet holds no directory: then `--api` must name its replicas.
    let shard = match cmd {
        ShardCommand::Init { .. } => api.clone(),
        _ => match api.region(region).await {
            Ok(c) => c,
            Err(e) if e.is_not_found() => api.clone(),
            Err(e) => return Err(e.into()),
        },
    };
    let view = match cmd {
        ShardCommand::Init { .. } => shard.shard_init(region).await?,
        ShardCommand::Members { .. } | ShardCommand::Status { .. } => shard.shard(region).await?,
        ShardCommand::AddLearner { id, url, .. } => shard.shard_add_learner(region, *id, url).await?,
        ShardCommand::Promote { id, .. } => shard.shard_promote(region, *id).await?,
        ShardCommand::Remove { id, .. } => shard.shard_remove(region, *id).await?,
        ShardCommand::TransferLeader { to, .. } => shard.shard_transfer_leader(region, *to).await?,
    };
    if cli.output == Output::Json {
        return print_json(&view);
    }
    match cmd {
        ShardCommand::Status { .. } => print_status(&view),
        _ => print_members(&view),
    }
    Ok(())
}

fn print_members(view: &ShardView) {
    println!(
        "shard {}: leader {}, term {}",
        view.region,
        view.leader.map_or("none".into(), |l| l.to_string()),
        view.term
    );
    let mut t = Table::new();
    t.set_header(["id", "api", "member"]);
    for m in &view.members {
        let what = if Some(m.id) == view.leader {
            "voter, leader"
        } else if m.voter {
            "voter"
        } else {
            "learner"
        };
        t.add_row([m.id.to_string(), m.api.clone(), what.into()]);
    }
    println!("{t}");
}

fn print_status(view: &ShardView) {
    println!(
        "shard {}: leader {}, term {}",
        view.region,
        view.leader.map_or("none".into(), |l| l.to_string()),
        view.term
    );
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    let mut t = Table::new();
    t.set_header(["id", "api", "role", "term", "last log", "commit", "applied", "lag", "last contact", "snapshot"]);
    for r in &view.replicas {
        if let Some(e) = &r.error {
            t.add_row([r.id.to_string(), r.api.clone(), "unreachable".into(), e.clone()]);
            continue;
        }
        t.add_row([
            r.id.to_string(),
            r.api.clone(),
            r.role.clone(),
            r.term.to_string(),
            opt(r.last_log_index),
            opt(r.committed),
            opt(r.applied),
            opt(r.lag),
            r.last_contact_ms.map_or("-".into(), |ms| format!("{ms} ms ago")),
            opt(r.snapshot),
        ]);
    }
    println!("{t}");
    for r in &view.replicas {
        let Some(l) = &r.control_loop else { continue };
        let counts: Vec<String> = l
            .reconciles
            .iter()
            .filter(|(_, c)| c.ran > 0)
            .map(|(cause, c)| format!("{cause} {} ({} changed)", c.ran, c.changed))
            .collect();
        println!("control loop on {}: reconciles by cause: {}", r.id, counts.join(", "));
        if l.sweeps > 0 {
            println!("  {} full sweeps, the last in {:.1} s", l.sweeps, l.last_sweep_ms as f64 / 1000.0);
        }
    }
}
