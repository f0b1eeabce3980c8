//! The replicated state of one regional shard, and the pure function that applies commands.

use std::collections::{BTreeMap, BTreeSet};

use model::chain::ChainState;
use model::command::{Command, CommandResult, Placement};
use model::tier::Resources;
use model::{AppName, NodeId};
use serde::{Deserialize, Serialize};

/// Everything a shard agrees on through Raft.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShardState {
    /// The region this shard serves.
    pub region: String,
    /// The cached chain state (the cursor is `chain.height` / `chain.tip_hash`).
    pub chain: ChainState,
    /// Placements in this region: app -> node -> placement.
    pub placements: BTreeMap<AppName, BTreeMap<NodeId, Placement>>,
    /// Why an app has fewer instances here than its quota.
    pub shortfall: BTreeMap<AppName, String>,
    /// Nodes of this region that the leader declared down.
    pub down: BTreeSet<NodeId>,
    /// Nodes an operator cordoned: they keep their instances but get no new ones.
    #[serde(default)]
    pub cordoned: BTreeSet<NodeId>,
}

impl ShardState {
    /// An empty state for `region`.
    pub fn new(region: &str) -> Self {
        Self { region: region.to_string(), ..Default::default() }
    }

    /// Applies one committed command. Deterministic: every replica gets the same result.
    pub fn apply(&mut self, cmd: &Command) -> CommandResult {
        match cmd {
            Command::ApplyBlock(block) => {
                if self.chain.height.is_some_and(|h| block.height <= h) {
                    return CommandResult::Skipped { reason: format!("block {} applied already", block.height) };
                }
                // Checked here, on every replica alike, so that a block that is not the chain's (a
                // forged hash, a wrong parent) is refused deterministically and changes nothing.
                if let Err(e) = self.chain.check_block(block) {
                    return CommandResult::Rejected { reason: e.to_string() };
                }
                self.chain.apply_block(block);
                // Apps that left the chain (removed or expired) lose their placements at once.
                let chain = &self.chain;
                self.placements.retain(|app, _| chain.apps.contains_key(app));
                self.shortfall.retain(|app, _| chain.apps.contains_key(app));
                CommandResult::Applied
            }
            Command::Reconcile { app, place, remove, shortfall } => {
                if !self.chain.apps.contains_key(app) {
                    return CommandResult::Rejected { reason: format!("app `{app}` is not registered") };
                }
                for p in place {
                    let ok_node = self.chain.nodes.get(&p.node).is_some_and(|n| n.start.region == self.region);
                    if !ok_node || p.app != *app || p.region != self.region {
                        return CommandResult::Rejected {
                            reason: format!("node `{}` is not in region {}", p.node, self.region),
                        };
                    }
                }
                let entry = self.placements.entry(app.clone()).or_default();
                for node in remove {
                    entry.remove(node);
                }
                for p in place {
                    entry.insert(p.node.clone(), p.clone());
                }
                if entry.is_empty() {
                    self.placements.remove(app);
                }
                match shortfall {
                    Some(why) => self.shortfall.insert(app.clone(), why.clone()),
                    None => self.shortfall.remove(app),
                };
                CommandResult::Applied
            }
            Command::SetCordon { node, cordoned } => {
                if self.chain.nodes.get(node).is_none_or(|n| n.start.region != self.region) {
                    return CommandResult::Rejected {
                        reason: format!("node `{node}` is not in region {}", self.region),
                    };
                }
                let changed = if *cordoned { self.cordoned.insert(node.clone()) } else { self.cordoned.remove(node) };
                if changed {
                    CommandResult::Applied
                } else {
                    CommandResult::Skipped {
                        reason: format!("node `{node}` already {}", if *cordoned { "cordoned" } else { "uncordoned" }),
                    }
                }
            }
            Command::SetLiveness { node, up, .. } => {
                let changed = if *up { self.down.remove(node) } else { self.down.insert(node.clone()) };
                if changed {
                    CommandResult::Applied
                } else {
                    CommandResult::Skipped {
                        reason: format!("node `{node}` already {}", if *up { "up" } else { "down" }),
                    }
                }
            }
            Command::Batch { commands } => CommandResult::Batch {
                results: commands
                    .iter()
                    .map(|c| match c {
                        Command::Batch { .. } => CommandResult::Rejected { reason: "batches do not nest".into() },
                        c => self.apply(c),
                    })
                    .collect(),
            },
        }
    }

    /// The nodes of this region, by id.
    pub fn region_nodes(&self) -> impl Iterator<Item = &model::chain::NodeRecord> {
        self.chain.nodes.values().filter(|n| n.start.region == self.region)
    }

    /// Resources placed on `node` by every app.
    pub fn used_on(&self, node: &str) -> Resources {
        self.placements
            .iter()
            .filter(|(_, nodes)| nodes.contains_key(node))
            .filter_map(|(app, _)| self.chain.apps.get(app))
            .fold(Resources::default(), |acc, a| acc.add(&a.spec.instance_resources()))
    }

    /// Instances placed on `node`.
    pub fn placements_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Placement> + 'a {
        self.placements.values().filter_map(move |nodes| nodes.get(node))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_applies_in_order_and_does_not_nest() {
        let mut state = ShardState::new("eu");
        let down = Command::SetLiveness { node: "eu-1".into(), up: false, at_ms: 1 };
        let batch = Command::Batch { commands: vec![down.clone(), down, Command::Batch { commands: vec![] }] };
        let CommandResult::Batch { results } = state.apply(&batch) else { panic!("a batch answers a batch") };
        assert_eq!(results[0], CommandResult::Applied);
        assert!(matches!(results[1], CommandResult::Skipped { .. }), "{results:?}");
        assert!(matches!(results[2], CommandResult::Rejected { ref reason } if reason.contains("nest")), "{results:?}");
        assert!(state.down.contains("eu-1"));
    }
}
