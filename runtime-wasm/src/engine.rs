//! The engine and its one set of flags, and the thread pool guests run on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances; a request deadline is counted in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Most instances alive at once on this node (pooling slots).
    pub max_instances: u32,
    /// Largest linear memory any guest may have; per-app limits are lower (from `ram`).
    pub max_memory_bytes: usize,
    /// Threads that run guests. Fewer than the machine's cores, so that guests never take the
    /// cores the node's own work (heartbeats, control) runs on.
    pub guest_threads: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self { max_instances: 256, max_memory_bytes: 512 << 20, guest_threads: cores.saturating_sub(1).max(1) }
    }
}

/// A shared engine with its epoch ticker and its guest threads.
#[derive(Clone)]
pub struct WasmEngine {
    engine: Engine,
    stop: Arc<AtomicBool>,
    guests: Arc<GuestPool>,
}

/// The runtime guests run on, apart from the one the node's own tasks run on.
struct GuestPool {
    handle: tokio::runtime::Handle,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for GuestPool {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which is not allowed inside another runtime: let it go in
        // the background instead (its guests are being stopped anyway).
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl WasmEngine {
    /// Builds the engine and starts its ticker thread.
    pub fn new(config: &EngineConfig) -> anyhow::Result<Self> {
        let mut c = Config::new();
        c.wasm_component_model(true);
        // Deadlines come from epoch ticks, which cost far less than fuel metering.
        c.epoch_interruption(true);
        // Pooling: instantiation takes pre-reserved slots instead of mmap calls per request.
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(config.max_instances)
            .total_core_instances(config.max_instances * 2)
            .total_memories(config.max_instances * 2)
            .total_tables(config.max_instances * 2)
            .total_stacks(config.max_instances)
            .max_memory_size(config.max_memory_bytes);
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        // Reserve only what the largest guest may use, so the pool fits in the address space.
        c.memory_reservation(config.max_memory_bytes as u64);
        let engine = Engine::new(&c)?;
        let guests = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.guest_threads.max(1))
            .thread_name("wasm-guest")
            .enable_all()
            .build()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (ticker_engine, ticker_stop) = (engine.clone(), stop.clone());
        std::thread::Builder::new().name("wasm-epoch".into()).spawn(move || {
            while !ticker_stop.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                ticker_engine.increment_epoch();
            }
        })?;
        let guests = Arc::new(GuestPool { handle: guests.handle().clone(), runtime: Some(guests) });
        Ok(Self { engine, stop, guests })
    }

    /// Where guests run.
    pub fn guests(&self) -> &tokio::runtime::Handle {
        &self.guests.handle
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Stops the ticker thread.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
