//! `fluxctl events`: every region's event log, merged in time order.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use client::Client;
use model::event::Event;

use super::{Cli, Output};

/// Flags of `fluxctl events`.
#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Only this region's events.
    #[arg(long)]
    pub region: Option<String>,
    /// Keep printing events as they happen.
    #[arg(long)]
    pub follow: bool,
}

/// One region's log being read.
struct Cursor {
    client: Client,
    after: u64,
    /// Whether the last read failed (so a failure is reported once, not every poll).
    failing: bool,
}

pub(super) async fn run(cli: &Cli, api: &Client, args: &EventsArgs) -> anyhow::Result<()> {
    let regions = api.regions().await?;
    if let Some(r) = &args.region
        && !regions.iter().any(|v| &v.name == r)
    {
        let known: Vec<&str> = regions.iter().map(|v| v.name.as_str()).collect();
        anyhow::bail!("no region `{r}` on this chain (regions: {})", known.join(", "));
    }
    let mut cursors: BTreeMap<String, Cursor> = BTreeMap::new();
    for view in regions.iter().filter(|v| args.region.as_ref().is_none_or(|r| *r == v.name)) {
        if view.replicas.is_empty() {
            eprintln!("region {} has no control replica yet: its events are not shown", view.name);
            continue;
        }
        cursors.insert(view.name.clone(), Cursor { client: api.sibling(view.urls())?, after: 0, failing: false });
    }
    loop {
        let mut batch: Vec<(String, Event)> = Vec::new();
        let mut more = false;
        for (region, cursor) in cursors.iter_mut() {
            match cursor.client.events(region, cursor.after, Duration::ZERO).await {
                Ok(page) => {
                    if cursor.after > 0 && page.first_kept > cursor.after + 1 {
                        eprintln!(
                            "region {region}: events {}..{} were dropped before they were read",
                            cursor.after + 1,
                            page.first_kept - 1
                        );
                    }
                    cursor.failing = false;
                    more |= page.events.len() >= model::event::EVENTS_PAGE;
                    if let Some(last) = page.events.last() {
                        cursor.after = last.seq;
                    }
                    batch.extend(page.events.into_iter().map(|e| (region.clone(), e)));
                }
                Err(e) => {
                    if !cursor.failing {
                        eprintln!("region {region} unreachable, its events are missing for now: {e}");
                    }
                    cursor.failing = true;
                }
            }
        }
        batch.sort_by(|(ra, a), (rb, b)| (a.at_ms, ra, a.seq).cmp(&(b.at_ms, rb, b.seq)));
        for (region, event) in &batch {
            print(cli, region, event)?;
        }
        if more {
            continue;
        }
        if !args.follow {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn print(cli: &Cli, region: &str, event: &Event) -> anyhow::Result<()> {
    if cli.output == Output::Json {
        let mut value = serde_json::to_value(event)?;
        if let Some(map) = value.as_object_mut() {
            map.insert("region".into(), region.into());
        }
        println!("{}", serde_json::to_string(&value)?);
        return Ok(());
    }
    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(event.at_ms);
    println!(
        "{}  {region:<6} #{:<6} {:<19} {}",
        humantime::format_rfc3339_millis(at),
        event.seq,
        event.kind.name(),
        event.kind.details()
    );
    Ok(())
}
