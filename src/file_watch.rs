//! A file watched for change: the routes file and the credentials file are both followed this
//! way. The file's directory is watched (so edits in place, renames over it and Kubernetes
//! `..data` symlink swaps are all seen), a burst of events settles before it counts, and the
//! file's metadata is polled as a safety net for events that never come (network filesystems,
//! a watcher that could not start).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::Notify;

/// Quiet time after the last filesystem event before a change counts: a burst (write, chmod,
/// rename, symlink swap) counts once.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// The longest a burst may postpone a change: a directory that never falls quiet (a busy
/// neighbour file) still has its changes seen within the SPEC's second.
const MAX_DEBOUNCE: Duration = Duration::from_millis(300);

/// How often the file's metadata is compared, in case an event was missed.
const POLL: Duration = Duration::from_millis(500);

/// One watched file. Dropping it stops the directory watch.
pub struct FileWatch {
    path: PathBuf,
    dirty: Arc<Notify>,
    seen: Option<Stat>,
    poll: tokio::time::Interval,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl FileWatch {
    /// Starts watching `path`'s directory; `what` names the file in the warning logged when the
    /// directory cannot be watched (the poll still runs). Call inside a tokio runtime.
    pub fn new(path: PathBuf, what: &'static str) -> FileWatch {
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
                tracing::warn!(file = what, dir = %dir.display(), error = %e, "cannot watch the directory; polling only");
                None
            }
        };
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        FileWatch { seen: stat(&path), path, dirty, poll, _watcher: watcher }
    }

    /// Returns once the file may have changed since the last return (or since `new`): a burst of
    /// events in its directory has settled, or the poll found its identity, size or
    /// modification time changed. The caller reads the file and decides whether its content did.
    pub async fn changed(&mut self) {
        loop {
            let polled = tokio::select! {
                _ = self.dirty.notified() => {
                    // Let the burst settle: every further event restarts the quiet time, up to a limit.
                    let limit = tokio::time::Instant::now() + MAX_DEBOUNCE;
                    while tokio::time::Instant::now() < limit
                        && tokio::time::timeout(DEBOUNCE, self.dirty.notified()).await.is_ok()
                    {}
                    false
                }
                _ = self.poll.tick() => true,
            };
            let now = stat(&self.path);
            if polled && now == self.seen {
                continue;
            }
            self.seen = now;
            return;
        }
    }
}

/// Whether an event can mean new content. Opening and reading a file are events too, and
/// callgate's own reads of the file would otherwise set off a reload after every reload.
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
