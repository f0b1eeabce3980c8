//! The WASM runtime of a node: one wasmtime [`Engine`](wasmtime::Engine) whose flags are set
//! here and nowhere else, a cache of compiled components keyed by content hash, and an HTTP
//! server per instance that runs a wasi:http component once per request with a memory limit,
//! a deadline and a share of CPU time. Guests run on the engine's own threads, fewer than the
//! machine's cores, so that no guest can starve the node's heartbeats.
//!
//! A guest that loops past its deadline gets a 504 for that request; one that traps (for
//! example by running out of its memory limit) gets a 502. The node keeps serving either way.
//! A guest's stdout and stderr go to its instance's bounded log buffer.
//!
//! [`WasmRuntime`] is this crate behind the `runtime` contract; the agent uses nothing else.
//! wasmtime's types stay inside. Depends on `model` and `runtime`.

mod cache;
mod engine;
mod output;
mod runtime_impl;
mod serve;

pub use cache::ComponentCache;
pub use engine::{EngineConfig, WasmEngine};
pub use runtime_impl::WasmRuntime;
// wasmtime's types (`ProxyPre`, stores) stay in this crate: only the `runtime` contract and
// the engine's setup are public.
pub(crate) use serve::{InstanceLimits, InstanceServer};

#[cfg(test)]
mod tests;
