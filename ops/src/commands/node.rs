//! `fluxctl node`.

use clap::Subcommand;
use client::Client;
use comfy_table::Table;

use super::{Cli, Output, print_json};

/// Node verbs.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes with liveness and free capacity.
    List,
    /// Place nothing new on a node; what it runs stays (admin).
    Cordon {
        /// Node id.
        node: String,
    },
    /// Undo a cordon (admin).
    Uncordon {
        /// Node id.
        node: String,
    },
}

pub(super) async fn run(cli: &Cli, api: &Client, cmd: &NodeCommand) -> anyhow::Result<()> {
    match cmd {
        NodeCommand::List => list(cli, api).await,
        NodeCommand::Cordon { node } => cordon(api, node, true).await,
        NodeCommand::Uncordon { node } => cordon(api, node, false).await,
    }
}

async fn list(cli: &Cli, api: &Client) -> anyhow::Result<()> {
    let nodes = api.nodes().await?;
    if cli.output == Output::Json {
        return print_json(&nodes);
    }
    let mut t = Table::new();
    t.set_header(["node", "region", "tier", "up", "runs", "last beat", "instances", "free cpu", "free ram"]);
    for n in &nodes {
        let up = match (n.up, n.cordoned) {
            (true, false) => "yes",
            (true, true) => "cordoned",
            (false, _) => "NO",
        };
        t.add_row([
            n.id.clone(),
            n.region.clone(),
            n.tier.to_string(),
            up.into(),
            capabilities(n),
            n.last_heartbeat_ms_ago.map_or("never".into(), |ms| format!("{ms} ms ago")),
            n.instances.to_string(),
            format!("{:.1}", n.free.cpu_tenths as f64 / 10.0),
            format!("{} MB", n.free.ram_mb),
        ]);
    }
    println!("{t}");
    Ok(())
}

/// What a node runs: `wasm, oci`, with a capability it cannot use now marked and explained
/// (`oci: NO (the Docker engine does not answer: ...)`).
fn capabilities(n: &model::api::NodeView) -> String {
    let each: Vec<String> = n
        .capabilities
        .iter()
        .map(|c| match n.unavailable.get(c) {
            Some(why) => format!("{c}: NO ({why})"),
            None => c.to_string(),
        })
        .collect();
    each.join(", ")
}

async fn cordon(api: &Client, node: &str, cordoned: bool) -> anyhow::Result<()> {
    // Cordons live in the node's region's shard.
    let nodes = api.nodes().await?;
    let region = nodes
        .iter()
        .find(|n| n.id == node)
        .map(|n| n.region.clone())
        .ok_or_else(|| anyhow::anyhow!("no node `{node}`; see `fluxctl node list`"))?;
    api.region(&region).await?.cordon(node, cordoned).await?;
    eprintln!("{} {node}", if cordoned { "cordoned" } else { "uncordoned" });
    Ok(())
}
