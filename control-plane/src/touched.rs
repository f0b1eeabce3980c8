//! What changed, for the event-driven control loop: the state machine notes which apps each
//! applied command may have changed the decision of, the leader's soft state adds nodes that
//! started beating again, and the supervisor reconciles only those apps. A bounded background
//! sweep catches anything this misses, and [`LoopStats`] counts both, so a sweep that finds
//! work shows up as a gap here.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use model::{AppName, NodeId};

use crate::state::ShardState;

/// Why an app is reconciled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cause {
    /// Its actor started (a new leader, a new app, a restarted actor).
    Start,
    /// Its spec was registered or updated on chain.
    Spec,
    /// One of its instances failed to start.
    Instance,
    /// A node that holds one of its instances went down, came up or started beating again.
    Node,
    /// Capacity it may use changed: room freed in a region where it is short, or a region's
    /// spill inputs (open nodes, shortages, reachability) changed, or the region's nodes did.
    Capacity,
    /// A deadline it set passed: a placement lease, an avoidance, the leader's grace, a retry.
    Timer,
    /// The background sweep reached it.
    Sweep,
}

impl Cause {
    /// Every cause, in order.
    pub const ALL: [Cause; 7] =
        [Cause::Start, Cause::Spec, Cause::Instance, Cause::Node, Cause::Capacity, Cause::Timer, Cause::Sweep];

    /// Its name in the API and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Start => "start",
            Cause::Spec => "spec",
            Cause::Instance => "instance",
            Cause::Node => "node",
            Cause::Capacity => "capacity",
            Cause::Timer => "timer",
            Cause::Sweep => "sweep",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Changes noted since the loop last looked. Cheap to note (no lookups beyond what the command
/// already did); turned into a list of apps by [`Touched::resolve`] against the state of the
/// moment, so an app is judged on what is true when it is reconciled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    /// Apps named directly, with the first cause noted.
    apps: BTreeMap<AppName, Cause>,
    /// Nodes that started beating again (soft state): their apps, and apps with a shortfall.
    fresh_nodes: BTreeSet<NodeId>,
    /// Nodes whose agent reported something new or that started beating again: their
    /// NodeActors look (to declare them up, or to record instances that started or failed).
    reported: BTreeSet<NodeId>,
    /// Room opened in this region: every app with a shortfall here.
    freed: bool,
    /// Regions whose spare room (open nodes) changed: every app that some *other* region
    /// reports short, since its deficit may now go elsewhere (all apps while a region is
    /// unreachable, since each is short there by its whole quota).
    spare_changed: BTreeSet<String>,
    /// Every app: the region's nodes changed (so every quota may), or the state was replaced.
    all: Option<Cause>,
    /// The sets of nodes or apps changed: the supervisor matches its children again.
    members: bool,
}

impl Touched {
    /// Notes `app`, keeping an earlier cause.
    pub fn app(&mut self, app: &str, cause: Cause) {
        if !self.apps.contains_key(app) {
            self.apps.insert(app.to_string(), cause);
        }
    }

    /// Notes a node that started beating again.
    pub fn fresh_node(&mut self, node: &str) {
        self.fresh_nodes.insert(node.to_string());
        self.reported.insert(node.to_string());
    }

    /// Notes a node whose agent reported something new.
    pub fn reported(&mut self, node: &str) {
        self.reported.insert(node.to_string());
    }

    /// Takes the nodes whose NodeActors should look.
    pub fn take_reported(&mut self) -> BTreeSet<NodeId> {
        std::mem::take(&mut self.reported)
    }

    /// Notes that room opened in this region.
    pub fn freed(&mut self) {
        self.freed = true;
    }

    /// Notes that `region`'s spare room changed.
    pub fn spare_changed(&mut self, region: &str) {
        if !self.spare_changed.contains(region) {
            self.spare_changed.insert(region.to_string());
        }
    }

    /// Notes that every app needs a look.
    pub fn all(&mut self, cause: Cause) {
        self.all.get_or_insert(cause);
    }

    /// Notes that nodes or apps came or went.
    pub fn members(&mut self) {
        self.members = true;
    }

    /// Whether nodes or apps came or went.
    pub fn members_changed(&self) -> bool {
        self.members
    }

    /// Whether nothing was noted.
    pub fn is_empty(&self) -> bool {
        *self == Touched::default()
    }

    /// Adds what `other` noted.
    pub fn merge(&mut self, other: Touched) {
        for (app, cause) in other.apps {
            self.apps.entry(app).or_insert(cause);
        }
        self.fresh_nodes.extend(other.fresh_nodes);
        self.reported.extend(other.reported);
        self.freed |= other.freed;
        self.spare_changed.extend(other.spare_changed);
        if let Some(cause) = other.all {
            self.all(cause);
        }
        self.members |= other.members;
    }

    /// The apps to reconcile, each with its cause, as `s` now stands. Apps no longer
    /// registered are left out.
    pub fn resolve(self, s: &ShardState) -> BTreeMap<AppName, Cause> {
        if let Some(cause) = self.all {
            return s
                .chain
                .apps
                .keys()
                .map(|app| (app.clone(), self.apps.get(app).copied().unwrap_or(cause)))
                .collect();
        }
        let mut apps = self.apps;
        let mut add = |app: &str, cause: Cause| {
            if !apps.contains_key(app) {
                apps.insert(app.to_string(), cause);
            }
        };
        for node in &self.fresh_nodes {
            for p in s.placements_on(node) {
                add(&p.app, Cause::Node);
            }
        }
        if self.freed || !self.fresh_nodes.is_empty() {
            for app in s.shortfall.keys() {
                add(app, Cause::Capacity);
            }
        }
        if !self.spare_changed.is_empty() {
            if s.region_reports.values().any(|r| !r.reachable) {
                for app in s.chain.apps.keys() {
                    add(app, Cause::Capacity);
                }
            } else {
                // A region's own deficit goes to the others: its own spare room is not part of it.
                for (region, report) in &s.region_reports {
                    if self.spare_changed.iter().any(|changed| changed != region) {
                        for app in report.short.keys() {
                            add(app, Cause::Capacity);
                        }
                    }
                }
            }
        }
        apps.retain(|app, _| s.chain.apps.contains_key(app));
        apps
    }
}

/// Reconciles the loop keeps a record of, newest last.
const RECENT: usize = 4096;

/// What the control loop did, counted by the loop itself: reconciles per cause, how many of
/// them changed something, and the sweep's progress. Cumulative since the process started.
#[derive(Debug, Default)]
pub struct LoopStats {
    reconciles: [AtomicU64; Cause::ALL.len()],
    changed: [AtomicU64; Cause::ALL.len()],
    sweeps: AtomicU64,
    last_sweep_ms: AtomicU64,
    recent: Mutex<Recent>,
}

/// The newest reconciles, each numbered.
#[derive(Debug, Default)]
struct Recent {
    next: u64,
    entries: VecDeque<Reconciled>,
}

/// One reconcile the loop ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconciled {
    /// Its number: 1 for the first since the process started.
    pub seq: u64,
    /// Why it ran.
    pub cause: Cause,
    /// The app.
    pub app: AppName,
    /// Whether it committed a change.
    pub changed: bool,
}

/// One cause's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CauseCount {
    /// Reconciles run.
    pub reconciles: u64,
    /// Reconciles that committed a change.
    pub changed: u64,
}

impl LoopStats {
    /// Counts one reconcile of `app`.
    pub fn count(&self, cause: Cause, app: &str, changed: bool) {
        self.reconciles[cause.index()].fetch_add(1, Ordering::Relaxed);
        if changed {
            self.changed[cause.index()].fetch_add(1, Ordering::Relaxed);
        }
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.next += 1;
        let seq = recent.next;
        if recent.entries.len() == RECENT {
            recent.entries.pop_front();
        }
        recent.entries.push_back(Reconciled { seq, cause, app: app.to_string(), changed });
    }

    /// Counts a finished sweep over every app, which took `ms`.
    pub fn count_sweep(&self, ms: u64) {
        self.sweeps.fetch_add(1, Ordering::Relaxed);
        self.last_sweep_ms.store(ms, Ordering::Relaxed);
    }

    /// Counts per cause.
    pub fn by_cause(&self) -> BTreeMap<Cause, CauseCount> {
        Cause::ALL
            .iter()
            .map(|c| {
                let count = CauseCount {
                    reconciles: self.reconciles[c.index()].load(Ordering::Relaxed),
                    changed: self.changed[c.index()].load(Ordering::Relaxed),
                };
                (*c, count)
            })
            .collect()
    }

    /// Full sweeps finished, and how long the last one took (ms).
    pub fn sweeps(&self) -> (u64, u64) {
        (self.sweeps.load(Ordering::Relaxed), self.last_sweep_ms.load(Ordering::Relaxed))
    }

    /// The counts for the API, if the loop ever ran here.
    pub fn view(&self) -> Option<model::api::LoopView> {
        let by_cause = self.by_cause();
        if by_cause.values().all(|c| c.reconciles == 0) {
            return None;
        }
        let (sweeps, last_sweep_ms) = self.sweeps();
        let reconciles = by_cause
            .into_iter()
            .map(|(cause, c)| {
                (cause.as_str().to_string(), model::api::ReconcileCount { ran: c.reconciles, changed: c.changed })
            })
            .collect();
        Some(model::api::LoopView { reconciles, sweeps, last_sweep_ms })
    }

    /// The reconciles numbered after `seq` among the newest 4,096, oldest first.
    pub fn recent(&self, after: u64) -> Vec<Reconciled> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.entries.iter().filter(|r| r.seq > after).cloned().collect()
    }

    /// The number of the newest reconcile (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.recent.lock().unwrap_or_else(|e| e.into_inner()).next
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use model::capacity::{RegionReport, Shortage};
    use model::command::{Command, Placement};

    use super::*;

    /// A synthetic cloud seen from eu: app0 on eu-0, app1 on eu-3, app2 short of nodes.
    fn state() -> ShardState {
        let chain = crate::synthetic::cloud(6, 3);
        let mut s = ShardState::new("eu");
        s.chain = chain;
        for (app, node) in [("app0", "eu-0"), ("app1", "eu-3")] {
            let p = Placement {
                app: app.into(),
                node: node.into(),
                region: "eu".into(),
                placed_at_ms: 0,
                started_at_ms: None,
                failed: None,
            };
            let cmd = Command::Reconcile {
                app: app.into(),
                place: vec![p],
                remove: vec![],
                shortfall: None,
                at_ms: 0,
                why: BTreeMap::new(),
            };
            s.apply(&cmd);
        }
        s.shortfall.insert("app2".into(), "no room".into());
        s.take_touched();
        s
    }

    fn touched_by(s: &mut ShardState, cmd: Command) -> BTreeMap<AppName, Cause> {
        s.apply(&cmd);
        s.take_touched().resolve(s)
    }

    #[test]
    fn each_change_touches_the_apps_it_may_change() {
        let mut s = state();
        let apps = |list: &[(&str, Cause)]| list.iter().map(|(a, c)| (a.to_string(), *c)).collect();
        // A placement touches nothing more: the app's own decision was whole.
        assert!(s.take_touched().is_empty());
        let down = Command::SetLiveness { node: "eu-0".into(), up: false, at_ms: 1 };
        assert_eq!(touched_by(&mut s, down), apps(&[("app0", Cause::Node)]));
        // Up again: its apps, and the apps short of room.
        let up = Command::SetLiveness { node: "eu-0".into(), up: true, at_ms: 2 };
        assert_eq!(touched_by(&mut s, up), apps(&[("app0", Cause::Node), ("app2", Cause::Capacity)]));
        // A removal frees room for the short app.
        let remove = Command::Reconcile {
            app: "app1".into(),
            place: vec![],
            remove: vec!["eu-3".into()],
            shortfall: None,
            at_ms: 3,
            why: BTreeMap::new(),
        };
        assert_eq!(touched_by(&mut s, remove), apps(&[("app2", Cause::Capacity)]));
        // A removal from a down node frees nothing that could be used.
        let place_on_1 = Command::Reconcile {
            app: "app1".into(),
            place: vec![Placement {
                app: "app1".into(),
                node: "eu-1".into(),
                region: "eu".into(),
                placed_at_ms: 3,
                started_at_ms: None,
                failed: None,
            }],
            remove: vec![],
            shortfall: None,
            at_ms: 3,
            why: BTreeMap::new(),
        };
        assert!(touched_by(&mut s, place_on_1).is_empty());
        s.apply(&Command::SetLiveness { node: "eu-1".into(), up: false, at_ms: 3 });
        s.take_touched();
        let off_down = Command::Reconcile {
            app: "app1".into(),
            place: vec![],
            remove: vec!["eu-1".into()],
            shortfall: None,
            at_ms: 3,
            why: BTreeMap::new(),
        };
        assert!(touched_by(&mut s, off_down).is_empty());
        s.apply(&Command::SetLiveness { node: "eu-1".into(), up: true, at_ms: 3 });
        s.take_touched();
        // Cordoning frees nothing; with no region short, it touches nothing.
        assert!(touched_by(&mut s, Command::SetCordon { node: "eu-3".into(), cordoned: true }).is_empty());
        // A region reporting an app short touches that app; the first report of a region (or a
        // change in its reachability) touches every app.
        let report = |short: &[&str]| RegionReport {
            reachable: true,
            short: short.iter().map(|a| (a.to_string(), Shortage { unplaced: 1, unstarted: 1 })).collect(),
            ..Default::default()
        };
        let first = Command::SetRegionReport { region: "na".into(), report: report(&[]), at_ms: 4 };
        assert_eq!(touched_by(&mut s, first).len(), 3);
        let short = Command::SetRegionReport { region: "na".into(), report: report(&["app1"]), at_ms: 5 };
        assert_eq!(touched_by(&mut s, short), apps(&[("app1", Cause::Capacity)]));
        // na's open nodes change, its shortages do not: na's own deficit goes to other regions,
        // so no app needs a look (another region's deficit could have gone to na).
        let mut opened = report(&["app1"]);
        opened.open.insert("na-1".into());
        let opened = Command::SetRegionReport { region: "na".into(), report: opened, at_ms: 6 };
        assert!(touched_by(&mut s, opened).is_empty());
        // While app1 is short in na, a node change here may change its share of na's deficit.
        let down = Command::SetLiveness { node: "eu-3".into(), up: false, at_ms: 7 };
        assert_eq!(touched_by(&mut s, down), apps(&[("app1", Cause::Capacity)]));
        // A node beating again after silence (soft state): its apps and the short ones.
        let mut soft = Touched::default();
        soft.fresh_node("eu-0");
        assert_eq!(soft.resolve(&s), apps(&[("app0", Cause::Node), ("app2", Cause::Capacity)]));
    }

    #[test]
    fn a_block_touches_new_and_updated_apps_and_every_app_when_nodes_join() {
        let wallet = model::keys::Keypair::from_seed([3; 32]);
        let mut s = ShardState::new("eu");
        s.apply(&Command::ApplyBlock(chain::dev_genesis(&wallet, &chain::dev_nodes(), 0)));
        let genesis = s.take_touched();
        assert!(genesis.members_changed(), "nodes joined");
        let spec = |name: &str| {
            model::AppSpec::from_toml(&format!(
                "name = \"{name}\"\n[[component]]\nname = \"web\"\nwasm = \"blake3:{}\"\n",
                "ab".repeat(32)
            ))
            .expect("spec")
        };
        let register = |name: &str, nonce| {
            let spec = spec(name);
            let payment = model::price::app_price(&spec);
            model::chain::SignedTx::sign(model::chain::Tx::AppRegister { spec, payment }, nonce, &wallet)
        };
        let b1 = model::chain::Block::new(1, s.chain.tip_hash.clone(), 1, None, vec![register("a", 7)]);
        s.apply(&Command::ApplyBlock(b1));
        let touched = s.take_touched();
        assert!(touched.members_changed());
        assert_eq!(touched.resolve(&s), BTreeMap::from([("a".to_string(), Cause::Spec)]));
        // An empty block touches nothing.
        let b2 = model::chain::Block::new(2, s.chain.tip_hash.clone(), 2, None, vec![]);
        s.apply(&Command::ApplyBlock(b2));
        assert!(s.take_touched().is_empty());
    }
}
