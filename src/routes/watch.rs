//! Reload from disk: watch the routes file's directory (so edits in place, renames over it and
//! Kubernetes ConfigMap `..data` symlink swaps are all seen), debounce bursts, and poll the
//! file's metadata as a safety net. The writer does the reading, so reloads and admin writes
//! never interleave.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::Notify;

use super::writer::Writer;

/// Quiet time after the last filesystem event before reloading: a burst (write, chmod,
/// rename, symlink swap) reloads once.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// The longest a burst may postpone a reload: a directory that never falls quiet (a busy
/// neighbour file) still has its changes loaded within the SPEC's second.
pub const MAX_DEBOUNCE: Duration = Duration::from_millis(300);

/// How often the file's metadata is compared, in case an event was missed.
pub const POLL: Duration = Duration::from_millis(500);

/// Watches `path` until the returned guard is dropped.
pub fn start(path: PathBuf, writer: Writer) -> WatchGuard {
    let dirty = Arc::new(Notify::new());
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let watcher = {
        let dirty = Arc::clone(&dirty);
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok_and(|e| is_change(&e.kind)) {
                dirty.notify_one();
            }
        })
        .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|()| w))
    };
    let watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the routes directory; polling only");
            None
        }
    };
    let task = tokio::spawn(watch_loop(path, writer, dirty));
    WatchGuard { _watcher: watcher, task }
}

/// Stops watching when dropped.
pub struct WatchGuard {
    _watcher: Option<notify::RecommendedWatcher>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn watch_loop(path: PathBuf, writer: Writer, dirty: Arc<Notify>) {
    let mut seen = stat(&path);
    // A change made while the first table loaded, before this watcher started, is not missed.
    writer.reload().await;
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let polled = tokio::select! {
            _ = dirty.notified() => {
                // Let the burst settle: every further event restarts the quiet time, up to a limit.
                let limit = tokio::time::Instant::now() + MAX_DEBOUNCE;
                while tokio::time::Instant::now() < limit
                    && tokio::time::timeout(DEBOUNCE, dirty.notified()).await.is_ok()
                {}
                false
            }
            _ = poll.tick() => true,
        };
        let now = stat(&path);
        if polled && now == seen {
            continue;
        }
        seen = now;
        writer.reload().await;
    }
}

/// Whether an event can mean new content. Opening and reading a file are events too, and
/// callgate's own reads of the routes file would otherwise set off a reload after every reload.
fn is_change(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Any
        | EventKind::Create(_)
        | EventKind::Modify(_)
        | EventKind::Remove(_)
        | EventKind::Other => true,
    }
}

/// A file's identity, size and modification time.
pub type Stat = (u64, u64, u64, SystemTime);

/// What the poll compares: identity, size and modification time of the file the path leads
/// to (through symlinks), or nothing if it is gone.
pub fn stat(path: &Path) -> Option<Stat> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.len(), m.modified().ok()?))
}
