//! The ractor supervision tree that drives each regional shard:
//!
//! ```text
//! RegionSupervisor(region)
//! ├── ChainActor          follows the chain source, commits each block through Raft in order
//! ├── NodeActor(node)…    watches the node's heartbeats, commits liveness changes
//! └── AppActor(app)…      reconciles the app's placements in the region against its quota
//! ```
//!
//! Actors hold no state of their own worth keeping: a restarted child re-reads everything from
//! the shard, so the supervisor simply re-spawns a child that failed or was killed. The tree runs
//! only on the shard's leader ([`lead`]). Depends on `model`, `chain` and `control-plane`.

mod app_actor;
mod chain_actor;
mod node_actor;
mod supervisor;

pub use app_actor::AppMsg;
pub use chain_actor::ChainMsg;
pub use node_actor::NodeMsg;
pub use supervisor::{RegionSupervisor, SupervisorMsg, actor_name, lead, start_region};

/// Where an actor reports an error that must stop the role (a chain with another genesis):
/// the first message raised wins, and the role's fatal future resolves with it.
#[derive(Clone)]
pub struct Fatal(std::sync::Arc<tokio::sync::watch::Sender<Option<String>>>);

impl Default for Fatal {
    fn default() -> Self {
        Self(std::sync::Arc::new(tokio::sync::watch::channel(None).0))
    }
}

impl Fatal {
    /// Reports `message`, unless something was reported before.
    pub fn raise(&self, message: String) {
        self.0.send_if_modified(|m| {
            if m.is_none() {
                *m = Some(message);
                true
            } else {
                false
            }
        });
    }

    /// Resolves with the first reported message.
    pub async fn wait(&self) -> String {
        let mut rx = self.0.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(m) => m.clone().unwrap_or_default(),
            Err(_) => "the fatal channel closed".into(),
        }
    }
}

#[cfg(test)]
mod tests;
