//! Reload from disk: the routes file is followed by [`crate::file_watch::FileWatch`] and every
//! change it sees is a reload. The writer does the reading, so reloads and admin writes never
//! interleave.

use std::path::PathBuf;

use super::writer::Writer;
use crate::file_watch::FileWatch;

/// Follows `path`, reloading through `writer` on every change; spawn it and abort the task to
/// stop.
pub async fn follow(path: PathBuf, writer: Writer) {
    let mut file = FileWatch::new(path, "routes");
    // A change made while the first table loaded, before this watcher started, is not missed.
    writer.reload().await;
    loop {
        file.changed().await;
        writer.reload().await;
    }
}
