//! The RegionSupervisor: keeps one NodeActor per node and one AppActor per app of its region's
//! shard, restarts any child that fails or is killed, and tells each app when something it
//! depends on changed (see `control_plane::touched`). A sweep reconciles every app in turn at a
//! bounded rate, as a backstop for anything the changes miss.

use std::collections::HashMap;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chain::SharedChainSource;
use control_plane::Shard;
use control_plane::touched::Cause;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::watch;

use crate::Fatal;
use crate::app_actor::{AppActor, AppMsg};
use crate::chain_actor::ChainActor;
use crate::node_actor::{NodeActor, NodeMsg};

/// How often the sweep takes its next apps.
const SWEEP_TICK: Duration = Duration::from_secs(1);
/// The sweep aims to reconcile every app once in this many ticks (30 s) ...
const SWEEP_TICKS: usize = 30;
/// ... but takes at most this many apps a tick, so its cost stays bounded (a few ms a second
/// at 25,000 apps); past 30,000 apps a sweep takes longer than 30 s.
const SWEEP_MAX_PER_TICK: usize = 1000;

/// Messages to a RegionSupervisor.
#[derive(Debug)]
pub enum SupervisorMsg {
    /// The shard's state changed: match children to it if nodes or apps came or went, and
    /// reconcile the apps the change touched.
    Sync,
    /// Reconcile the sweep's next apps.
    Sweep,
    /// The leader's grace ended: reconcile every app (leases and silent nodes are judged now).
    Settled,
}

/// The registered name of a child: `<region>/chain`, `<region>/node/<id>`, `<region>/app/<name>`.
pub fn actor_name(region: &str, kind: &str, id: Option<&str>) -> String {
    match id {
        Some(id) => format!("{region}/{kind}/{id}"),
        None => format!("{region}/{kind}"),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Child {
    Chain,
    Node(String),
    App(String),
}

/// The supervisor actor.
pub struct RegionSupervisor;

/// Its state.
pub struct SupervisorState {
    shard: Arc<Shard>,
    chain: SharedChainSource,
    fatal: Fatal,
    children: HashMap<Child, ActorCell>,
    /// Per app: set while a Reconcile is queued, so that a burst of changes queues one.
    queued: HashMap<String, Arc<AtomicBool>>,
    /// Set while a Sync is queued, for the same reason.
    sync_queued: Arc<AtomicBool>,
    /// Whether the children were matched to the state once.
    matched: bool,
    /// The last app the sweep reached, and when the sweep began.
    sweep: (Option<String>, std::time::Instant),
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl SupervisorState {
    async fn spawn(&mut self, myself: &ActorRef<SupervisorMsg>, child: Child) -> Result<(), ActorProcessingErr> {
        let region = self.shard.region.clone();
        let sup = myself.get_cell();
        let cell = match &child {
            Child::Chain => {
                let name = actor_name(&region, "chain", None);
                let args = (self.shard.clone(), self.chain.clone(), self.fatal.clone());
                Actor::spawn_linked(Some(name), ChainActor, args, sup).await?.0.get_cell()
            }
            Child::Node(id) => {
                let name = actor_name(&region, "node", Some(id));
                Actor::spawn_linked(Some(name), NodeActor, (self.shard.clone(), id.clone()), sup).await?.0.get_cell()
            }
            Child::App(app) => {
                let name = actor_name(&region, "app", Some(app));
                let queued = self.queued.entry(app.clone()).or_default().clone();
                // A restarted actor starts with a reconcile of its own.
                queued.store(true, Ordering::Relaxed);
                let args = (self.shard.clone(), app.clone(), queued);
                Actor::spawn_linked(Some(name), AppActor, args, sup).await?.0.get_cell()
            }
        };
        self.children.insert(child, cell);
        Ok(())
    }

    /// Matches children to the state (when nodes or apps came or went), then reconciles the apps
    /// the changes touched.
    async fn sync(&mut self, myself: &ActorRef<SupervisorMsg>) -> Result<(), ActorProcessingErr> {
        let mut touched = self.shard.take_touched();
        if touched.members_changed() || !self.matched {
            self.match_children(myself).await?;
            self.matched = true;
        }
        for node in touched.take_reported() {
            if let Some(cell) = self.children.get(&Child::Node(node)) {
                let _ = cell.send_message(NodeMsg::Check);
            }
        }
        if touched.is_empty() {
            return Ok(());
        }
        let apps = self.shard.read(|s| touched.resolve(s));
        for (app, cause) in apps {
            self.reconcile(&app, cause);
        }
        Ok(())
    }

    /// Queues a reconcile of `app`, unless one is queued already.
    fn reconcile(&self, app: &str, cause: Cause) {
        if let Some(queued) = self.queued.get(app)
            && let Some(cell) = self.children.get(&Child::App(app.to_string()))
            && !queued.swap(true, Ordering::Relaxed)
        {
            let _ = cell.send_message(AppMsg::Reconcile(cause));
        }
    }

    /// Reconciles the next apps in name order after the last one the sweep reached.
    fn sweep(&mut self) {
        let (from, _) = &self.sweep;
        let (mut apps, total) = self.shard.read(|s| {
            let total = s.chain.apps.len();
            let take = total.div_ceil(SWEEP_TICKS).clamp(1, SWEEP_MAX_PER_TICK);
            let after = from.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
            let apps: Vec<String> =
                s.chain.apps.range::<str, _>((after, Bound::Unbounded)).take(take).map(|(a, _)| a.clone()).collect();
            (apps, (total, take))
        });
        for app in &apps {
            self.reconcile(app, Cause::Sweep);
        }
        let (_, take) = total;
        if apps.len() < take {
            let (_, began) = std::mem::replace(&mut self.sweep, (None, std::time::Instant::now()));
            self.shard.loop_stats().count_sweep(began.elapsed().as_millis() as u64);
        } else {
            self.sweep.0 = apps.pop();
        }
    }

    /// Reconciles every app.
    fn reconcile_all(&self, cause: Cause) {
        let apps: Vec<String> = self.shard.read(|s| s.chain.apps.keys().cloned().collect());
        for app in &apps {
            self.reconcile(app, cause);
        }
    }

    async fn match_children(&mut self, myself: &ActorRef<SupervisorMsg>) -> Result<(), ActorProcessingErr> {
        let (nodes, apps): (Vec<String>, Vec<String>) = self.shard.read(|s| {
            (s.region_nodes().map(|n| n.start.node_id.clone()).collect(), s.chain.apps.keys().cloned().collect())
        });
        let wanted: Vec<Child> =
            nodes.into_iter().map(Child::Node).chain(apps.into_iter().map(Child::App)).chain([Child::Chain]).collect();
        for child in &wanted {
            if !self.children.contains_key(child) {
                self.spawn(myself, child.clone()).await?;
            }
        }
        let wanted: std::collections::HashSet<&Child> = wanted.iter().collect();
        let gone: Vec<Child> = self.children.keys().filter(|c| !wanted.contains(c)).cloned().collect();
        for child in gone {
            if let Some(cell) = self.children.remove(&child) {
                cell.stop(Some("removed from the chain".into()));
            }
            if let Child::App(app) = &child {
                self.queued.remove(app);
            }
        }
        Ok(())
    }
}

impl Actor for RegionSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = (Arc<Shard>, SharedChainSource, Fatal);

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        (shard, chain, fatal): Self::Arguments,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let sync_queued = Arc::new(AtomicBool::new(false));
        let mut changes = shard.subscribe();
        let (me, queued) = (myself.clone(), sync_queued.clone());
        let watcher = tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                if !queued.swap(true, Ordering::Relaxed) && me.cast(SupervisorMsg::Sync).is_err() {
                    return;
                }
            }
        });
        let me = myself.clone();
        let sweeper = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(SWEEP_TICK);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                if me.cast(SupervisorMsg::Sweep).is_err() {
                    return;
                }
            }
        });
        let mut tasks = vec![watcher, sweeper];
        if !shard.past_leader_grace() {
            let (me, grace) = (myself.clone(), shard.leader_grace());
            let wait = grace.saturating_sub(shard.leading_for().unwrap_or_default());
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                let _ = me.cast(SupervisorMsg::Settled);
            }));
        }
        // What changed while this replica followed is moot: every app reconciles as it starts.
        let _ = shard.take_touched();
        sync_queued.store(true, Ordering::Relaxed);
        myself.cast(SupervisorMsg::Sync)?;
        Ok(SupervisorState {
            shard,
            chain,
            fatal,
            children: HashMap::new(),
            queued: HashMap::new(),
            sync_queued,
            matched: false,
            sweep: (None, std::time::Instant::now()),
            tasks,
        })
    }

    async fn post_stop(
        &self,
        _: ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        for t in &state.tasks {
            t.abort();
        }
        for cell in state.children.values() {
            cell.stop(None);
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Sync => {
                // Cleared before reading the state: a change from here on queues another Sync.
                state.sync_queued.store(false, Ordering::Relaxed);
                state.sync(&myself).await
            }
            SupervisorMsg::Sweep => {
                state.sweep();
                Ok(())
            }
            SupervisorMsg::Settled => {
                state.reconcile_all(Cause::Timer);
                Ok(())
            }
        }
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, format!("failed: {err}")),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, format!("terminated: {}", reason.unwrap_or_default()))
            }
            _ => return Ok(()),
        };
        // Only a child we still want is restarted; one we stopped on purpose is already gone
        // from the map.
        let child = state.children.iter().find(|(_, c)| c.get_id() == cell.get_id()).map(|(k, _)| k.clone());
        if let Some(child) = child {
            tracing::warn!(region = %state.shard.region, ?child, "child {why}; restarting it from the shard's state");
            state.children.remove(&child);
            state.spawn(&myself, child).await?;
        }
        Ok(())
    }
}

/// Starts the supervision tree of one region.
pub async fn start_region(
    shard: Arc<Shard>,
    chain: SharedChainSource,
    fatal: Fatal,
) -> anyhow::Result<(ActorRef<SupervisorMsg>, tokio::task::JoinHandle<()>)> {
    let name = actor_name(&shard.region, "supervisor", None);
    Ok(Actor::spawn(Some(name), RegionSupervisor, (shard, chain, fatal)).await?)
}

/// Runs the region's supervision tree while this replica leads, and stops it when leadership
/// moves away, so only the leader's actors act; followers learn everything through the log.
/// Returns when `shutdown` turns true, after stopping the tree.
pub async fn lead(shard: Arc<Shard>, chain: SharedChainSource, fatal: Fatal, mut shutdown: watch::Receiver<bool>) {
    let mut leading = shard.leading();
    let mut running: Option<(ActorRef<SupervisorMsg>, tokio::task::JoinHandle<()>)> = None;
    loop {
        let leads = leading.borrow_and_update().is_some() && !*shutdown.borrow();
        if leads && running.is_none() {
            match start_region(shard.clone(), chain.clone(), fatal.clone()).await {
                Ok(r) => {
                    running = Some(r);
                    record_leadership(&shard);
                }
                Err(e) => {
                    tracing::error!(region = %shard.region, "starting the actors: {e:#}; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        } else if !leads && let Some((sup, handle)) = running.take() {
            tracing::info!(region = %shard.region, "no longer leading: stopping the actors");
            sup.stop(Some("leadership moved".into()));
            let _ = tokio::time::timeout(Duration::from_secs(2), handle).await;
        }
        if *shutdown.borrow() {
            return;
        }
        tokio::select! {
            r = leading.changed() => if r.is_err() { return },
            _ = shutdown.changed() => {}
        }
    }
}

/// Records in the event log that this replica now leads (in the background: the first write of
/// a new leader may wait for the previous term's entries to commit).
fn record_leadership(shard: &Arc<Shard>) {
    let (Some(leader), term) = shard.leader_and_term() else { return };
    let shard = shard.clone();
    tokio::spawn(async move {
        let event = model::event::EventKind::LeaderChanged { leader, term };
        let cmd = model::command::Command::Record { at_ms: chain::now_ms(), events: vec![event] };
        if let Err(e) = shard.propose(cmd).await {
            tracing::warn!(region = %shard.region, "leader change not recorded in the event log: {e}");
        }
    });
}
