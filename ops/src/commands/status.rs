//! `fluxctl status`.

use client::Client;
use comfy_table::Table;

use super::{Cli, Output, print_json, short};

pub(super) async fn run(cli: &Cli, api: &Client) -> anyhow::Result<()> {
    let s = api.status().await?;
    if cli.output == Output::Json {
        return print_json(&s);
    }
    println!("chain height {} ({})", s.chain_height, short(&s.chain_tip, 12));
    let mut t = Table::new();
    t.set_header(["region", "leader", "voters", "term", "applied", "nodes up", "placed", "healthy"]);
    for r in &s.regions {
        if let Some(why) = &r.unreachable {
            t.add_row([
                r.name.clone(),
                "unreachable".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                why.clone(),
            ]);
            continue;
        }
        let leader = match (r.leader, &r.leader_api) {
            (Some(id), Some(url)) => format!("{id} {url}"),
            (Some(id), None) => id.to_string(),
            (None, _) => "none".into(),
        };
        t.add_row([
            r.name.clone(),
            leader,
            r.voters.to_string(),
            r.term.to_string(),
            r.applied_height.map_or("-".into(), |h| h.to_string()),
            format!("{}/{}", r.nodes_up, r.nodes),
            r.instances_placed.to_string(),
            r.instances_healthy.to_string(),
        ]);
    }
    println!("{t}");
    Ok(())
}
