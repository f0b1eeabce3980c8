//! The replicated state of one regional shard, and the pure function that applies commands.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::OnceLock;

use model::capacity::RegionReport;
use model::chain::ChainState;
use model::command::{Command, CommandResult, Placement};
use model::domains::{DomainCheck, DomainWinner};
use model::event::{Event, EventKind};
use model::tier::Resources;

use crate::scheduler::{Capacity, NodeCounts, count_nodes, is_open};
use crate::touched::{Cause, Touched};
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
    /// Nodes each app avoids until a time (ms since the epoch), after failing its instance.
    #[serde(default)]
    pub avoid: BTreeMap<AppName, BTreeMap<NodeId, u64>>,
    /// The newest [`MAX_EVENTS`] events, oldest first.
    #[serde(default)]
    pub events: VecDeque<Event>,
    /// The seq the next event gets.
    #[serde(default)]
    pub next_event: u64,
    /// The other regions' capacity, as last reported (see `model::capacity`); a region with no
    /// report counts as whole.
    #[serde(default)]
    pub region_reports: BTreeMap<String, RegionReport>,
    /// The key this region's secrets are sealed to (see "Secrets" in `docs/architecture.md`);
    /// made by the first leader asked for it.
    #[serde(default)]
    pub secrets_key: Option<model::sealed::BoxKeypair>,
    /// Each app's secrets for this region, sealed to `secrets_key`; never on chain.
    #[serde(default)]
    pub secrets: BTreeMap<AppName, AppSecrets>,
    /// What the leader's DNS lookups last found for each claim on a custom domain: domain ->
    /// app -> check. Only checks of claims the chain holds now are kept.
    #[serde(default)]
    pub domains: BTreeMap<String, BTreeMap<AppName, DomainCheck>>,
    /// Lookups derived from the fields above, never stored: built on first use (so also after
    /// a state is loaded or installed from a snapshot) and kept up to date by [`Self::apply`],
    /// their only writer. Code that sets fields directly (tests, benchmarks) does so before the
    /// first lookup.
    #[serde(skip)]
    index: OnceLock<Index>,
    /// What applied commands changed, for the control loop; taken after each batch of entries
    /// ([`Self::take_touched`]). Never stored: a loaded or installed state counts as all changed.
    #[serde(skip)]
    touched: Touched,
}

/// Most secrets one app holds in a region.
pub const MAX_APP_SECRETS: usize = 32;

/// One app's secrets in a region.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AppSecrets {
    /// The signing time of the newest update (ms since the epoch): an update must be newer.
    pub version: u64,
    /// The chain height when they were last set: an app registered after it (the name removed
    /// and taken again) is another app, and does not get them.
    pub version_height: u64,
    /// By name, sealed to the region's key.
    pub values: BTreeMap<String, model::sealed::SealedValue>,
}

/// What the control loop looks up per node, so that it never walks every placement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Index {
    /// This region's nodes.
    region_nodes: BTreeSet<NodeId>,
    /// The apps placed on each node.
    apps_on: HashMap<NodeId, BTreeSet<AppName>>,
    /// The resources placed on each node.
    used: HashMap<NodeId, Resources>,
    /// Every region's nodes, counted for quotas.
    eligible: NodeCounts,
    /// Every region's open nodes as this shard sees them (see [`Capacity::open`]).
    open: NodeCounts,
    /// This region's open nodes, emptiest first (most free memory, then cpu, then by id): new
    /// instances are placed by walking it from the front.
    by_free: BTreeSet<FreeKey>,
}

/// A node's place in [`Index::by_free`].
type FreeKey = (Reverse<u32>, Reverse<u32>, NodeId);

impl Index {
    /// The index of `state`, computed from scratch.
    pub fn build(state: &ShardState) -> Index {
        let (eligible, open) =
            count_nodes(&state.chain, &state.region, &state.down, &state.cordoned, &state.region_reports);
        let mut index = Index {
            eligible,
            open,
            region_nodes: state
                .chain
                .nodes
                .values()
                .filter(|n| n.start.region == state.region)
                .map(|n| n.start.node_id.clone())
                .collect(),
            ..Default::default()
        };
        for (app, nodes) in &state.placements {
            for node in nodes.keys() {
                index.add(state, app, node);
            }
        }
        let open: Vec<FreeKey> = index
            .region_nodes
            .iter()
            .filter(|id| state.open_here(id))
            .filter_map(|id| index.free_key(state, id))
            .collect();
        index.by_free.extend(open);
        index
    }

    /// Where `node` sorts in [`Index::by_free`] with its usage now.
    fn free_key(&self, state: &ShardState, node: &str) -> Option<FreeKey> {
        let record = state.chain.nodes.get(node)?;
        let free = record.resources().saturating_sub(&self.used.get(node).copied().unwrap_or_default());
        Some((Reverse(free.ram_mb), Reverse(free.cpu_tenths), node.to_string()))
    }

    /// Changes `node`'s usage with `change`, keeping its place in `by_free`.
    fn requeue(&mut self, state: &ShardState, node: &str, change: impl FnOnce(&mut Index)) {
        let listed = self.free_key(state, node).is_some_and(|key| self.by_free.remove(&key));
        change(self);
        if listed && let Some(key) = self.free_key(state, node) {
            self.by_free.insert(key);
        }
    }

    fn add(&mut self, state: &ShardState, app: &str, node: &str) {
        self.apps_on.entry(node.to_string()).or_default().insert(app.to_string());
        if let Some(record) = state.chain.apps.get(app) {
            let need = record.spec.instance_resources();
            self.requeue(state, node, |index| {
                let used = index.used.entry(node.to_string()).or_default();
                *used = used.add(&need);
            });
        }
    }

    /// Counts `node` open or not, as `state` now says.
    fn reopen(&mut self, state: &ShardState, node: &str, was_open: bool) {
        let Some(record) = state.chain.nodes.get(node) else { return };
        let open = is_open(record, &state.region, &state.down, &state.cordoned, &state.region_reports);
        let here = record.start.region == state.region;
        match (was_open, open) {
            (false, true) => {
                self.open.add(record);
                if here && let Some(key) = self.free_key(state, node) {
                    self.by_free.insert(key);
                }
            }
            (true, false) => {
                self.open.remove(record);
                if here && let Some(key) = self.free_key(state, node) {
                    self.by_free.remove(&key);
                }
            }
            _ => {}
        }
    }

    /// Counts the open nodes of `region` again from its report.
    fn recount(&mut self, state: &ShardState, region: &str) {
        self.open.clear(region);
        for n in state.chain.nodes.values().filter(|n| n.start.region == region) {
            if is_open(n, &state.region, &state.down, &state.cordoned, &state.region_reports) {
                self.open.add(n);
            }
        }
    }

    fn remove(&mut self, state: &ShardState, app: &str, node: &str) {
        if let Some(apps) = self.apps_on.get_mut(node) {
            apps.remove(app);
            if apps.is_empty() {
                self.apps_on.remove(node);
            }
        }
        if let Some(record) = state.chain.apps.get(app) {
            let need = record.spec.instance_resources();
            self.requeue(state, node, |index| {
                if let Some(used) = index.used.get_mut(node) {
                    *used = used.saturating_sub(&need);
                    if *used == Resources::default() {
                        index.used.remove(node);
                    }
                }
            });
        }
    }
}

/// Events a shard keeps; older ones are dropped.
pub const MAX_EVENTS: usize = 10_000;

impl ShardState {
    /// An empty state for `region`.
    pub fn new(region: &str) -> Self {
        Self { region: region.to_string(), ..Default::default() }
    }

    /// Why `update` may not be stored, if it may not: it must be for this region, signed by the
    /// app's owner on chain, and newer than what is stored. Deterministic, so every replica
    /// decides alike; the API checks the same (and that the values open) before proposing.
    /// The error is an API code and a message.
    pub fn check_secrets(&self, update: &model::api::SecretsUpdate) -> Result<(), (&'static str, String)> {
        if update.region != self.region {
            return Err((
                "wrong_region",
                format!("secrets for region {} sent to region {}", update.region, self.region),
            ));
        }
        let app = self
            .chain
            .apps
            .get(&update.app)
            .ok_or_else(|| ("not_found", format!("app `{}` is not registered", update.app)))?;
        if app.owner != update.owner {
            return Err((
                "forbidden",
                format!("only the owner of `{}` may set its secrets (owner {})", update.app, app.owner),
            ));
        }
        update.verify().map_err(|e| ("bad_signature", format!("the update's signature: {e}")))?;
        if update.values.is_empty() && update.unset.is_empty() {
            return Err(("invalid_secret", "the update sets and removes nothing".into()));
        }
        if let Some(bad) = update.values.keys().chain(&update.unset).find(|n| !model::spec::is_env_name(n)) {
            return Err((
                "invalid_secret",
                format!(
                    "secret name `{bad}` must match [A-Za-z_][A-Za-z0-9_]*: the guest reads it as an environment variable"
                ),
            ));
        }
        let stored = self.secrets.get(&update.app);
        let names: BTreeSet<&String> = stored
            .into_iter()
            .flat_map(|v| v.values.keys())
            .filter(|n| !update.unset.contains(n))
            .chain(update.values.keys())
            .collect();
        if names.len() > MAX_APP_SECRETS {
            return Err((
                "invalid_secret",
                format!("`{}` would hold {} secrets; at most {MAX_APP_SECRETS}", update.app, names.len()),
            ));
        }
        if let Some(stored) = self.secrets.get(&update.app)
            && update.at_ms <= stored.version
        {
            return Err((
                "conflict",
                format!(
                    "an update signed at {} is not newer than the stored secrets of `{}` ({}); sign it again",
                    update.at_ms, update.app, stored.version
                ),
            ));
        }
        Ok(())
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
                let (apps_before, nodes_before) = (self.chain.apps.len(), self.chain.nodes.len());
                self.chain.apply_block(block);
                // Nodes, apps and their specs may have changed: rebuilt on next use.
                self.index = OnceLock::new();
                self.touch_block(block.height, apps_before, nodes_before);
                // Apps that left the chain (removed or expired) lose their placements at once.
                let chain = &self.chain;
                self.placements.retain(|app, _| chain.apps.contains_key(app));
                self.shortfall.retain(|app, _| chain.apps.contains_key(app));
                // A name registered again (by anyone) starts with no secrets.
                self.secrets
                    .retain(|app, s| chain.apps.get(app).is_some_and(|a| a.registered_height <= s.version_height));
                // Expiry removes apps without a transaction, which the count shows.
                if block.txs.iter().any(|t| t.tx.app_name().is_some()) || self.chain.apps.len() != apps_before {
                    self.forget_stale_domain_checks();
                }
                CommandResult::Applied
            }
            Command::Reconcile { app, place, remove, shortfall, at_ms, why } => {
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
                let mut events = Vec::new();
                let mut index = self.index.take();
                let entry = self.placements.entry(app.clone()).or_default();
                let (mut removed, mut added) = (Vec::new(), Vec::new());
                for node in remove {
                    if entry.remove(node).is_none() {
                        continue;
                    }
                    removed.push(node);
                    let instance = format!("{app}@{node}");
                    let removal = why.get(node);
                    let reason = removal.map_or_else(|| "no longer wanted".to_string(), |r| r.reason.clone());
                    if let Some(r) = removal.filter(|r| r.avoid_ms > 0) {
                        self.avoid.entry(app.clone()).or_default().insert(node.clone(), at_ms + r.avoid_ms);
                    }
                    events.push(if place.is_empty() {
                        EventKind::InstanceStopped { instance, node: node.clone(), reason }
                    } else {
                        EventKind::InstanceReplaced { instance, node: node.clone(), reason }
                    });
                }
                let reason = if remove.is_empty() { "placed" } else { "replacement" };
                for p in place {
                    let placed = Placement { placed_at_ms: *at_ms, started_at_ms: None, failed: None, ..p.clone() };
                    events.push(EventKind::InstancePlaced {
                        instance: placed.instance_id(),
                        node: placed.node.clone(),
                        reason: reason.into(),
                    });
                    if entry.insert(p.node.clone(), placed).is_none() {
                        added.push(&p.node);
                    }
                }
                if entry.is_empty() {
                    self.placements.remove(app);
                }
                if let Some(index) = index.as_mut() {
                    for node in removed {
                        index.remove(self, app, node);
                    }
                    for node in added {
                        index.add(self, app, node);
                    }
                }
                if let Some(index) = index {
                    let _ = self.index.set(index);
                }
                // The app's own decision was whole; what it freed on an open node may let a
                // short app place. Room on a down or cordoned node takes nothing: while a region
                // dies, every removal would otherwise send every short app round again.
                if remove.iter().any(|node| self.open_here(node)) {
                    self.touched.freed();
                }
                if let Some(avoided) = self.avoid.get_mut(app) {
                    avoided.retain(|_, until| *until > *at_ms);
                    if avoided.is_empty() {
                        self.avoid.remove(app);
                    }
                }
                match shortfall {
                    Some(why) => self.shortfall.insert(app.clone(), why.clone()),
                    None => self.shortfall.remove(app),
                };
                self.record(*at_ms, events);
                CommandResult::Applied
            }
            Command::Record { at_ms, events } => {
                // Instance observations also mark their placement; one that is already marked
                // (a leader that observed it twice) is not recorded again.
                let fresh: Vec<EventKind> = events.iter().filter(|e| self.observe(*at_ms, e)).cloned().collect();
                for event in &fresh {
                    if let EventKind::InstanceFailed { instance, .. } = event {
                        let app = instance.split_once('@').map_or(instance.as_str(), |(a, _)| a);
                        self.touched.app(app, Cause::Instance);
                    }
                }
                if fresh.is_empty() {
                    return CommandResult::Skipped { reason: "recorded already".into() };
                }
                self.record(*at_ms, fresh);
                CommandResult::Applied
            }
            Command::SetSecretsKey { key } => {
                if self.secrets_key.is_some() {
                    return CommandResult::Skipped { reason: "the region has its secrets key already".into() };
                }
                self.secrets_key = Some(key.clone());
                CommandResult::Applied
            }
            Command::PutSecrets { update } => match self.check_secrets(update) {
                Err((_, reason)) => CommandResult::Rejected { reason },
                Ok(()) => {
                    let height = self.chain.height.unwrap_or(0);
                    let stored = self.secrets.entry(update.app.clone()).or_default();
                    stored.version = update.at_ms;
                    stored.version_height = height;
                    stored.values.retain(|name, _| !update.unset.contains(name));
                    stored.values.extend(update.values.clone());
                    CommandResult::Applied
                }
            },
            Command::SetDomainChecks { checks } => {
                let mut changed = false;
                for check in checks {
                    if !self.holds_claim(check) {
                        continue;
                    }
                    let stored = self.domains.entry(check.domain.clone()).or_default();
                    if stored.get(&check.app) != Some(check) {
                        stored.insert(check.app.clone(), check.clone());
                        changed = true;
                    }
                }
                if changed {
                    CommandResult::Applied
                } else {
                    CommandResult::Skipped { reason: "no verdict changed".into() }
                }
            }
            Command::SetCordon { node, cordoned } => {
                if self.chain.nodes.get(node).is_none_or(|n| n.start.region != self.region) {
                    return CommandResult::Rejected {
                        reason: format!("node `{node}` is not in region {}", self.region),
                    };
                }
                let was_open = self.open_here(node);
                let changed = if *cordoned { self.cordoned.insert(node.clone()) } else { self.cordoned.remove(node) };
                if changed {
                    self.reindex(|index, state| index.reopen(state, node, was_open));
                    if !*cordoned {
                        self.touched.freed();
                    }
                    self.touched.spare_changed(&self.region);
                    CommandResult::Applied
                } else {
                    CommandResult::Skipped {
                        reason: format!("node `{node}` already {}", if *cordoned { "cordoned" } else { "uncordoned" }),
                    }
                }
            }
            Command::SetLiveness { node, up, at_ms } => {
                let was_open = self.open_here(node);
                let changed = if *up { self.down.remove(node) } else { self.down.insert(node.clone()) };
                if changed {
                    self.reindex(|index, state| index.reopen(state, node, was_open));
                    // Down: its instances move. Up: it has room for short apps.
                    let apps: Vec<AppName> = self.placements_on(node).map(|p| p.app.clone()).collect();
                    for app in apps {
                        self.touched.app(&app, Cause::Node);
                    }
                    if *up {
                        self.touched.freed();
                    }
                    self.touched.spare_changed(&self.region);
                    let node = node.clone();
                    self.record(
                        *at_ms,
                        vec![if *up { EventKind::NodeUp { node } } else { EventKind::NodeDown { node } }],
                    );
                    CommandResult::Applied
                } else {
                    CommandResult::Skipped {
                        reason: format!("node `{node}` already {}", if *up { "up" } else { "down" }),
                    }
                }
            }
            Command::SetRegionReport { region, report, at_ms } => {
                if *region == self.region || !self.chain.regions.iter().any(|r| r.name == *region) {
                    return CommandResult::Rejected { reason: format!("`{region}` is not another region") };
                }
                if self.region_reports.get(region).is_some_and(|r| r.same(report)) {
                    return CommandResult::Skipped { reason: format!("region {region} reported the same") };
                }
                let event = EventKind::RegionCapacity {
                    peer: region.clone(),
                    reachable: report.reachable,
                    open_nodes: report.open.len(),
                    short_apps: report.short.len(),
                };
                let old = self.region_reports.insert(region.clone(), report.clone());
                match &old {
                    Some(old) if old.reachable == report.reachable => {
                        // Only apps whose shortage there changed; and if its open nodes
                        // changed, apps short elsewhere, whose deficits it may take.
                        let apps = old.short.keys().chain(report.short.keys());
                        for app in apps.filter(|app| old.short.get(*app) != report.short.get(*app)) {
                            self.touched.app(app, Cause::Capacity);
                        }
                        if old.open != report.open {
                            self.touched.spare_changed(region);
                        }
                    }
                    _ => self.touched.all(Cause::Capacity),
                }
                self.reindex(|index, state| index.recount(state, region));
                self.record(*at_ms, vec![event]);
                CommandResult::Applied
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

    /// Notes what a block changed: apps registered or updated at `height`; apps removed or
    /// expired (their actors stop); nodes that joined, which change every app's quota.
    fn touch_block(&mut self, height: u64, apps_before: usize, nodes_before: usize) {
        let mut registered = 0;
        for (name, app) in &self.chain.apps {
            if app.registered_height == height || app.updated_height == height {
                self.touched.app(name, Cause::Spec);
                registered += usize::from(app.registered_height == height);
            }
        }
        if self.chain.nodes.len() != nodes_before {
            self.touched.all(Cause::Capacity);
            self.touched.members();
        }
        if registered > 0 || apps_before + registered != self.chain.apps.len() {
            self.touched.members();
        }
    }

    /// Whether the chain holds the claim `check` is about: the app claims the domain since the
    /// same height, and has the same owner.
    pub fn holds_claim(&self, check: &DomainCheck) -> bool {
        self.chain.apps.get(&check.app).is_some_and(|a| {
            a.owner == check.owner && a.claims().any(|(d, since)| d == check.domain && since == check.since)
        })
    }

    /// Drops the checks of claims the chain no longer holds (an app removed, a domain dropped,
    /// a name registered again).
    pub(crate) fn forget_stale_domain_checks(&mut self) {
        let mut domains = std::mem::take(&mut self.domains);
        for checks in domains.values_mut() {
            checks.retain(|_, c| self.holds_claim(c));
        }
        domains.retain(|_, checks| !checks.is_empty());
        self.domains = domains;
    }

    /// The check of `app`'s claim on `domain`, if one was committed.
    pub fn domain_check(&self, domain: &str, app: &str) -> Option<&DomainCheck> {
        self.domains.get(domain).and_then(|checks| checks.get(app))
    }

    /// The claim `domain` is served for: the oldest verified one (see `model::domains`).
    pub fn domain_winner(&self, domain: &str) -> Option<DomainWinner> {
        let checks = self.domains.get(domain)?;
        model::domains::winner(checks.values().map(|c| (&c.app, c.since, c.verified)))
    }

    /// Where each of `app`'s custom domains stands.
    pub fn domain_views(&self, app: &str) -> Vec<model::domains::DomainView> {
        use model::domains::{DomainState, DomainView, txt_name};
        let Some(record) = self.chain.apps.get(app) else { return Vec::new() };
        record
            .claims()
            .map(|(domain, since)| {
                let check = self.domain_check(&domain, app).filter(|c| c.since == since && c.owner == record.owner);
                let winner = self.domain_winner(&domain);
                let state = match (check, &winner) {
                    (None, _) => DomainState::Unchecked,
                    (Some(c), _) if !c.verified => DomainState::Pending,
                    (Some(_), Some(w)) if w.app != app => DomainState::Outranked,
                    (Some(_), _) => DomainState::Serving,
                };
                DomainView {
                    record: txt_name(&domain),
                    value: record.owner.0.clone(),
                    state,
                    since,
                    served_by: winner.map(|w| w.app).filter(|w| w != app),
                    message: check.and_then(|c| c.message.clone()),
                    domain,
                }
            })
            .collect()
    }

    /// What applied commands changed since the last call.
    pub fn take_touched(&mut self) -> Touched {
        std::mem::take(&mut self.touched)
    }

    /// Appends events to the log, dropping the oldest past [`MAX_EVENTS`].
    fn record(&mut self, at_ms: u64, events: Vec<EventKind>) {
        for kind in events {
            self.next_event = self.next_event.max(1);
            self.events.push_back(Event { seq: self.next_event, at_ms, kind });
            self.next_event += 1;
        }
        while self.events.len() > MAX_EVENTS {
            self.events.pop_front();
        }
    }

    /// Marks an instance's placement for an observed start or failure; whether the event is new.
    fn observe(&mut self, at_ms: u64, event: &EventKind) -> bool {
        match event {
            EventKind::InstanceStarted { instance, node } => self.placement_mut(instance, node).is_some_and(|p| {
                let new = p.started_at_ms.is_none();
                if new {
                    p.started_at_ms = Some(at_ms);
                    p.failed = None;
                }
                new
            }),
            EventKind::InstanceFailed { instance, node, reason } => {
                self.placement_mut(instance, node).is_some_and(|p| {
                    let new = p.failed.is_none() && p.started_at_ms.is_none();
                    if new {
                        p.failed = Some(reason.clone());
                    }
                    new
                })
            }
            _ => true,
        }
    }

    fn placement_mut(&mut self, instance: &str, node: &str) -> Option<&mut Placement> {
        let app = instance.split_once('@').map_or(instance, |(a, _)| a);
        self.placements.get_mut(app).and_then(|p| p.get_mut(node))
    }

    /// Every region's capacity as this shard knows it, for [`crate::scheduler::spill_quota`].
    pub fn capacity(&self) -> Capacity<'_> {
        let index = self.index();
        Capacity {
            region: &self.region,
            regions: &self.chain.regions,
            eligible: &index.eligible,
            open: &index.open,
            reports: &self.region_reports,
        }
    }

    /// The other regions, each with its published replicas' URLs (from the chain's region
    /// directory; empty while none is published).
    pub fn other_regions(&self) -> Vec<(String, Vec<String>)> {
        self.chain
            .regions
            .iter()
            .filter(|r| r.name != self.region)
            .map(|r| {
                let urls = self.chain.directory.get(&r.name).map(|d| d.values().cloned().collect()).unwrap_or_default();
                (r.name.clone(), urls)
            })
            .collect()
    }

    /// Updates the index in place with `f`, if it is built (else it is built on first use).
    fn reindex(&mut self, f: impl FnOnce(&mut Index, &ShardState)) {
        if let Some(mut index) = self.index.take() {
            f(&mut index, self);
            let _ = self.index.set(index);
        }
    }

    /// Whether `node` is one of this region's open nodes (up and not cordoned).
    fn open_here(&self, node: &str) -> bool {
        self.chain
            .nodes
            .get(node)
            .is_some_and(|n| is_open(n, &self.region, &self.down, &self.cordoned, &self.region_reports))
    }

    /// This region's open nodes (up and not cordoned), emptiest first: most free memory, then
    /// cpu, then by id.
    pub fn open_by_free(&self) -> impl Iterator<Item = &model::chain::NodeRecord> {
        self.index().by_free.iter().filter_map(|(_, _, id)| self.chain.nodes.get(id))
    }

    /// This region's base quota and every region's, for `spec`.
    pub fn quotas(&self, spec: &model::AppSpec) -> BTreeMap<String, u32> {
        crate::scheduler::region_quotas(spec, &self.chain.regions, &self.index().eligible)
    }

    /// The index, built now if it is not yet.
    pub fn index(&self) -> &Index {
        self.index.get_or_init(|| Index::build(self))
    }

    /// The nodes of this region, by id.
    pub fn region_nodes(&self) -> impl Iterator<Item = &model::chain::NodeRecord> {
        self.index().region_nodes.iter().filter_map(|id| self.chain.nodes.get(id))
    }

    /// Resources placed on `node` by every app.
    pub fn used_on(&self, node: &str) -> Resources {
        self.index().used.get(node).copied().unwrap_or_default()
    }

    /// Instances placed on `node`.
    pub fn placements_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Placement> + 'a {
        let apps = self.index().apps_on.get(node).into_iter().flatten();
        apps.filter_map(move |app| self.placements.get(app).and_then(|nodes| nodes.get(node)))
    }
}

#[cfg(test)]
mod tests {
    use model::command::Removal;

    use super::*;

    /// A state with genesis applied: the dev nodes, and one app `hello` registered.
    fn with_app() -> ShardState {
        let wallet = model::keys::Keypair::from_seed([3; 32]);
        let mut state = ShardState::new("eu");
        let genesis = chain::dev_genesis(&wallet, &chain::dev_nodes(), 0);
        assert_eq!(state.apply(&Command::ApplyBlock(genesis)), CommandResult::Applied);
        let spec = model::AppSpec::from_toml("name = \"hello\"\n[[component]]\nname = \"web\"\nwasm = \"x.wasm\"\n")
            .expect("spec");
        let record = model::chain::AppRecord {
            spec,
            owner: wallet.public(),
            registered_height: 0,
            updated_height: 0,
            expires_height: 1000,
            domains: Default::default(),
        };
        state.chain.apps.insert("hello".into(), record);
        state
    }

    /// The region's secrets key is set once; secrets need the owner, a newer version, and go
    /// when the name is registered again by another app.
    #[test]
    fn secrets_follow_the_owner_and_leave_with_the_app() {
        let mut state = with_app();
        let first = model::sealed::BoxKeypair::generate();
        assert_eq!(state.apply(&Command::SetSecretsKey { key: first.clone() }), CommandResult::Applied);
        let second = Command::SetSecretsKey { key: model::sealed::BoxKeypair::generate() };
        assert!(matches!(state.apply(&second), CommandResult::Skipped { .. }));
        assert_eq!(state.secrets_key.as_ref().map(|k| k.public_hex()), Some(first.public_hex()));

        let owner = model::keys::Keypair::from_seed([3; 32]);
        let sealed = model::sealed::seal(&first.public_hex(), b"ctx", b"v").expect("seal");
        let update = |at_ms, key: &model::keys::Keypair| {
            model::api::SecretsUpdate::sign(
                "hello",
                "eu",
                BTreeMap::from([("K".to_string(), sealed.clone())]),
                at_ms,
                key,
            )
        };
        let stranger = model::keys::Keypair::generate();
        assert_eq!(state.check_secrets(&update(5, &stranger)).map_err(|e| e.0), Err("forbidden"));
        assert_eq!(state.apply(&Command::PutSecrets { update: update(5, &owner) }), CommandResult::Applied);
        assert_eq!(state.check_secrets(&update(5, &owner)).map_err(|e| e.0), Err("conflict"), "a replay");
        assert_eq!(state.secrets["hello"].values.len(), 1);

        // Removed and registered again later: another app under the name, with no secrets.
        if let Some(app) = state.chain.apps.get_mut("hello") {
            app.registered_height = 1;
        }
        let block = model::chain::Block::new(1, state.chain.tip_hash.clone(), 1, None, vec![]);
        assert_eq!(state.apply(&Command::ApplyBlock(block)), CommandResult::Applied);
        assert!(state.secrets.is_empty());
    }

    fn placement(node: &str) -> Placement {
        Placement {
            app: "hello".into(),
            node: node.into(),
            region: "eu".into(),
            placed_at_ms: 0,
            started_at_ms: None,
            failed: None,
        }
    }

    #[test]
    fn placements_starts_failures_and_replacements_are_logged_in_order() {
        let mut state = with_app();
        let place = Command::Reconcile {
            app: "hello".into(),
            place: vec![placement("eu-1")],
            remove: vec![],
            shortfall: None,
            at_ms: 100,
            why: BTreeMap::new(),
        };
        assert_eq!(state.apply(&place), CommandResult::Applied);
        assert_eq!(state.placements["hello"]["eu-1"].placed_at_ms, 100);
        let failed = EventKind::InstanceFailed {
            instance: "hello@eu-1".into(),
            node: "eu-1".into(),
            reason: "fetching module".into(),
        };
        let record = Command::Record { at_ms: 200, events: vec![failed.clone()] };
        assert_eq!(state.apply(&record), CommandResult::Applied);
        // The same observation again is not logged twice.
        assert!(matches!(state.apply(&record), CommandResult::Skipped { .. }));
        assert_eq!(state.placements["hello"]["eu-1"].failed.as_deref(), Some("fetching module"));
        let replace = Command::Reconcile {
            app: "hello".into(),
            place: vec![placement("eu-2")],
            remove: vec!["eu-1".into()],
            shortfall: None,
            at_ms: 300,
            why: BTreeMap::from([("eu-1".to_string(), Removal { reason: "failed to start".into(), avoid_ms: 1000 })]),
        };
        assert_eq!(state.apply(&replace), CommandResult::Applied);
        assert_eq!(state.avoid["hello"]["eu-1"], 1300);
        let started = EventKind::InstanceStarted { instance: "hello@eu-2".into(), node: "eu-2".into() };
        state.apply(&Command::Record { at_ms: 400, events: vec![started] });
        assert_eq!(state.placements["hello"]["eu-2"].started_at_ms, Some(400));
        let down = Command::SetLiveness { node: "eu-2".into(), up: false, at_ms: 500 };
        state.apply(&down);
        let names: Vec<(u64, u64, &str)> = state.events.iter().map(|e| (e.seq, e.at_ms, e.kind.name())).collect();
        assert_eq!(
            names,
            vec![
                (1, 100, "instance_placed"),
                (2, 200, "instance_failed"),
                (3, 300, "instance_replaced"),
                (4, 300, "instance_placed"),
                (5, 400, "instance_started"),
                (6, 500, "node_down"),
            ]
        );
        // The avoidance ends with its time.
        let later = Command::Reconcile {
            app: "hello".into(),
            place: vec![],
            remove: vec![],
            shortfall: None,
            at_ms: 2000,
            why: BTreeMap::new(),
        };
        state.apply(&later);
        assert!(!state.avoid.contains_key("hello"));
    }

    /// `with_app`, plus apps `a0`..`a2` of different sizes and nodes `eu-3`..`eu-6`.
    fn with_apps() -> ShardState {
        let mut state = with_app();
        let template = state.chain.nodes["eu-1"].clone();
        for i in 3..=6 {
            let mut node = template.clone();
            node.start.node_id = format!("eu-{i}");
            state.chain.nodes.insert(node.start.node_id.clone(), node);
        }
        for (i, ram) in [64u32, 128, 256].into_iter().enumerate() {
            let mut record = state.chain.apps["hello"].clone();
            record.spec.name = format!("a{i}");
            record.spec.components[0].ram_mb = ram;
            state.chain.apps.insert(record.spec.name.clone(), record);
        }
        state
    }

    proptest::proptest! {
        /// Whatever the commands, the index the state machine keeps equals one built from
        /// scratch (an empty block in between makes it rebuild).
        #[test]
        fn the_index_always_equals_a_recomputation(
            ops in proptest::collection::vec((0u8..8, 0usize..3, 1usize..=6, 1usize..=6), 1..80),
        ) {
            let mut state = with_apps();
            // Built before the first command, so the commands update it in place.
            proptest::prop_assert_eq!(state.region_nodes().count(), 6);
            for (op, app, node, k) in ops {
                let (app, node, other) = (format!("a{app}"), format!("eu-{node}"), format!("eu-{k}"));
                let p = |n: &str| Placement { app: app.clone(), node: n.into(), ..placement(n) };
                let (place, remove) = match op {
                    0 => (vec![p(&node)], vec![]),
                    1 => (vec![], vec![node.clone()]),
                    2 => (vec![p(&other)], vec![node.clone()]),
                    3 => (vec![p(&node), p(&other)], vec![]),
                    5 => {
                        state.apply(&Command::SetLiveness { node: node.clone(), up: k % 2 == 0, at_ms: 1 });
                        (vec![], vec![])
                    }
                    6 => {
                        state.apply(&Command::SetCordon { node: node.clone(), cordoned: k % 2 == 0 });
                        (vec![], vec![])
                    }
                    7 => {
                        // Region na reports some of its nodes open, or is lost.
                        let open = ["na-1", "na-2"].iter().take(k % 3).map(|n| n.to_string()).collect();
                        let report = if k == 6 {
                            RegionReport::unreachable("gone".into())
                        } else {
                            RegionReport { reachable: true, open, ..Default::default() }
                        };
                        state.apply(&Command::SetRegionReport { region: "na".into(), report, at_ms: 1 });
                        (vec![], vec![])
                    }
                    _ => {
                        let (height, tip) = (state.chain.height.unwrap_or(0), state.chain.tip_hash.clone());
                        let block = model::chain::Block::new(height + 1, tip, height + 1, None, vec![]);
                        proptest::prop_assert_eq!(state.apply(&Command::ApplyBlock(block)), CommandResult::Applied);
                        (vec![], vec![])
                    }
                };
                if !place.is_empty() || !remove.is_empty() {
                    let at_ms = 1;
                    let cmd = Command::Reconcile { app, place, remove, shortfall: None, at_ms, why: BTreeMap::new() };
                    state.apply(&cmd);
                }
                proptest::prop_assert_eq!(state.index(), &Index::build(&state));
                let walked: usize = state.placements.values().map(|p| p.len()).sum();
                let indexed: usize = state.region_nodes().map(|n| state.placements_on(&n.start.node_id).count()).sum();
                proptest::prop_assert_eq!(walked, indexed);
            }
        }
    }

    #[test]
    fn the_log_keeps_the_newest_events() {
        let mut state = ShardState::new("eu");
        for i in 0..(MAX_EVENTS as u64 + 5) {
            let node = format!("n{i}");
            state.apply(&Command::SetLiveness { node, up: false, at_ms: i });
        }
        assert_eq!(state.events.len(), MAX_EVENTS);
        assert_eq!(state.events.front().map(|e| e.seq), Some(6));
        assert_eq!(state.next_event, MAX_EVENTS as u64 + 6);
    }

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
