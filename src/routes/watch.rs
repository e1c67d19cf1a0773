//! Reload from disk: the routes file is followed by [`crate::file_watch::FileWatch`] and every
//! change it sees is a reload. The writer does the reading, so reloads and admin writes never
//! interleave.

use std::path::PathBuf;

use super::writer::Writer;
use crate::file_watch::FileWatch;

/// Watches `path` until the returned guard is dropped.
pub fn start(path: PathBuf, writer: Writer) -> WatchGuard {
    let mut file = FileWatch::new(path, "routes");
    let task = tokio::spawn(async move {
        // A change made while the first table loaded, before this watcher started, is not missed.
        writer.reload().await;
        loop {
            file.changed().await;
            writer.reload().await;
        }
    });
    WatchGuard { task }
}

/// Stops watching when dropped.
pub struct WatchGuard {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}
