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
//! the shard, so the supervisor simply re-spawns a child that failed or was killed. Depends on
//! `model`, `chain` and `control-plane`.

mod app_actor;
mod chain_actor;
mod node_actor;
mod supervisor;

pub use app_actor::AppMsg;
pub use chain_actor::ChainMsg;
pub use node_actor::NodeMsg;
pub use supervisor::{RegionSupervisor, SupervisorMsg, actor_name, start_region};

#[cfg(test)]
mod tests;
