//! The one place the table in force changes: an atomic swap of a whole, validated snapshot.
//! Readers never wait; a request reads one snapshot for its whole life.

use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};

use super::RouteTable;

/// The routing table in force.
pub struct RouteStore {
    current: ArcSwap<RouteTable>,
}

impl RouteStore {
    pub fn new(table: RouteTable) -> RouteStore {
        RouteStore { current: ArcSwap::from_pointee(table) }
    }

    /// A snapshot for a short, synchronous read. Do not hold it across an await.
    pub fn load(&self) -> Guard<Arc<RouteTable>> {
        self.current.load()
    }

    /// The table in force, to keep across an await or hand to another thread.
    pub fn load_full(&self) -> Arc<RouteTable> {
        self.current.load_full()
    }

    /// Publishes `table` whole; calls already under way keep the snapshot they took. Returns
    /// the table it replaced, so the caller can choose where a large one is freed.
    #[must_use = "freeing a large table is blocking work: drop it off the async runtime"]
    pub fn publish(&self, table: RouteTable) -> Arc<RouteTable> {
        self.current.swap(Arc::new(table))
    }
}
