//! Host ports for instances, from the range the node registered on chain.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use model::chain::PortRange;

/// The node's instance ports, handed out from a cursor that moves on: a port just freed by a
/// stopped instance is taken last, so a gateway still routing to it reaches nothing rather
/// than another app.
#[derive(Debug, Clone)]
pub struct HostPorts {
    range: PortRange,
    next: Arc<AtomicUsize>,
}

impl HostPorts {
    /// The ports of `range`.
    pub fn new(range: PortRange) -> Self {
        Self { range, next: Arc::default() }
    }

    /// The range.
    pub fn range(&self) -> PortRange {
        self.range
    }

    /// Every port of the range once, starting after the last one handed out.
    pub fn candidates(&self) -> impl Iterator<Item = u16> + use<> {
        let ports: Vec<u16> = self.range.ports().collect();
        let from = self.next.fetch_add(1, Ordering::Relaxed) % ports.len().max(1);
        let (tail, head) = ports.split_at(from);
        let order: Vec<u16> = head.iter().chain(tail).copied().collect();
        order.into_iter()
    }
}
