//! Opening redb stores so that a damaged file is an error, not a crash.

use std::path::Path;

/// Runs `open`, which opens and first reads the redb store at `path` (`what` names it: "chain
/// store", "shard store"), so that a damaged file is a clean error naming it. redb panics on
/// some corruptions instead of returning an error; the panic is caught here and its message
/// kept out of the output while the store opens.
pub fn open_guarded<T>(path: &Path, what: &str, open: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(open));
    std::panic::set_hook(hook);
    match result {
        Ok(opened) => opened,
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unreadable".into());
            anyhow::bail!(
                "{what} {} is damaged ({why}): move it aside, then restore it (a shard replica catches up from its \
                 peers when started afresh; a chain store from a copy)",
                path.display()
            )
        }
    }
}
