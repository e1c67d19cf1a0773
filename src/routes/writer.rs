//! The only task that changes the table: admin edits and reloads from disk queue here and are
//! applied one batch at a time. Edits waiting behind a save are combined into the next batch
//! (group commit): one copy of the table, one atomic save, one swap, then every caller is
//! answered. A batch that cannot be saved changes nothing, in memory or on disk.
//!
//! With `--store redis://...` the same task keeps the table in the shared store instead
//! ([`super::shared`]): a batch is applied to the table in force and written to Redis with a
//! version check (retried on top of a newer table when another replica wrote first); changes
//! made through other replicas come in as the change their notice carries ([`super::delta`]),
//! then as syncs of the whole table. The routes file is then only read, at start-up
//! while the store does not answer.

use std::hash::Hasher;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::shared::{Expect, Redis, StoreError, Written};
use super::store::RouteStore;
use super::{Gate, RouteTable, ValidateOptions};
use crate::file_watch::{stat, Stat};
use crate::metrics::{Metrics, StoreOp};

/// Most edits combined into one save.
const MAX_BATCH: usize = 4096;

/// One admin change to the table. Values are validated before they are queued.
#[derive(Clone, Debug)]
pub enum Edit {
    AgentGate {
        agent_id: String,
        gate: Option<Gate>,
    },
    NumberGate {
        number: String,
        gate: Option<Gate>,
    },
    NumberAgent {
        number: String,
        agent_id: Option<String>,
    },
    /// Sets or removes a check set; removing one a gate names is refused.
    CheckSet {
        name: String,
        checks: Option<std::sync::Arc<[super::Check]>>,
    },
    /// 0 to [`super::MAX_CONTEXT_WAIT_MS`].
    AgentContextWait {
        agent_id: String,
        wait_ms: u32,
    },
}

/// Why the routes file could not be loaded at start-up.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("invalid routes file {path}: {first}{more}", first = .source.problems.first().map_or("", String::as_str), more = more_problems(.source))]
    Invalid { path: String, source: super::RoutesError },
    #[error("cannot read routes file {path}: {source}")]
    Read { path: String, source: std::io::Error },
}

fn more_problems(e: &super::RoutesError) -> String {
    match e.problems.len() {
        0 | 1 => String::new(),
        n => format!(" (and {} more; run `callgate check` to list them)", n - 1),
    }
}

/// Why an edit was not applied. Either way nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("the routes file is read-only; change it where it is managed (ConfigMap, GitOps)")]
    ReadOnly(#[source] std::io::Error),
    #[error("the routes file could not be saved")]
    Unsaved(#[source] std::io::Error),
    #[error("the routes writer has stopped")]
    Stopped,
    #[error("the shared store does not answer; calls go on with the last table")]
    StoreUnavailable,
    #[error("the shared store is empty while this replica holds a table (a Redis restarted without its data?); load it with `callgate store import`")]
    StoreEmpty,
    /// The edit names a check set the table does not have.
    #[error("no check set named {0:?}")]
    NoCheckSet(String),
    /// The check set is named by a gate.
    #[error("check set {0:?} is in use by a gate; point the gate elsewhere first")]
    InUse(String),
}

enum Job {
    Edit(Box<Edit>, oneshot::Sender<Result<bool, WriteError>>),
    Reload(oneshot::Sender<()>),
    Sync(oneshot::Sender<()>),
    Notice(Vec<u8>, oneshot::Sender<()>),
}

/// A handle to the writer task; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writer task. Its first job is the initial load of the routes file into
    /// `store`; the returned receiver says how that went. Edits sent meanwhile wait for it.
    /// With `shared`, the table is kept in the shared store, and the first load waits for the
    /// store unless the routes file exists.
    pub fn start(
        store: Arc<RouteStore>,
        path: PathBuf,
        options: ValidateOptions,
        metrics: &'static Metrics,
        shared: Option<Redis>,
    ) -> (Writer, oneshot::Receiver<Result<(), LoadError>>) {
        let (jobs, queue) = mpsc::channel(MAX_BATCH);
        let (loaded, first_load) = oneshot::channel();
        let shared = shared.map(|redis| {
            metrics.set_store_up(false);
            Shared { redis, version: None, empty: false, up: false }
        });
        let task = Task { store, path, options, metrics, content: None, stat: None, shared, applied: None };
        tokio::spawn(async move {
            let mut task = task;
            let result = match task.shared {
                Some(_) => task.initial_load_shared().await,
                None => task.initial_load().await,
            };
            let failed = result.is_err();
            let _ = loaded.send(result);
            if !failed {
                task.run(queue).await;
            }
        });
        (Writer { jobs }, first_load)
    }

    /// Applies `edit`, saved to disk before this returns; `Ok(true)` if it replaced or removed
    /// something that was set.
    pub async fn edit(&self, edit: Edit) -> Result<bool, WriteError> {
        let (done, answer) = oneshot::channel();
        self.jobs.send(Job::Edit(Box::new(edit), done)).await.map_err(|_| WriteError::Stopped)?;
        answer.await.map_err(|_| WriteError::Stopped)?
    }

    /// Re-reads the routes file and swaps in its table if it changed and is valid.
    pub async fn reload(&self) {
        let (done, answer) = oneshot::channel();
        if self.jobs.send(Job::Reload(done)).await.is_ok() {
            let _ = answer.await;
        }
    }

    /// Puts in force the change a shared store's notice carries ([`super::delta`]), when it was
    /// made on top of the table in force; the whole table is read by the [`Writer::sync`] that
    /// follows.
    pub async fn notice(&self, notice: Vec<u8>) {
        let (done, answer) = oneshot::channel();
        if self.jobs.send(Job::Notice(notice, done)).await.is_ok() {
            let _ = answer.await;
        }
    }

    /// Compares the shared store's version with the table in force, and takes in the store's
    /// table if it changed.
    pub async fn sync(&self) {
        let (done, answer) = oneshot::channel();
        if self.jobs.send(Job::Sync(done)).await.is_ok() {
            let _ = answer.await;
        }
    }
}

/// The writer's view of the shared store.
struct Shared {
    redis: Redis,
    /// The store's version of the table in force; `None` while the table did not come from
    /// the store (the routes file, or a store empty from the start).
    version: Option<i64>,
    /// The store was found empty while this replica held a non-empty table: table writes are
    /// refused until a table is imported.
    empty: bool,
    /// The last store operation succeeded.
    up: bool,
}

/// Whether a missing routes file is a failed reload (the watcher saw it go) or nothing to take
/// in (an admin write is about to create it).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Missing {
    IsAnError,
    IsFine,
}

struct Task {
    store: Arc<RouteStore>,
    path: PathBuf,
    options: ValidateOptions,
    metrics: &'static Metrics,
    /// Fingerprint of the file content the table in force was loaded from or saved as.
    content: Option<Fingerprint>,
    /// The file's metadata when it was last read or written here: unchanged metadata means no
    /// hand edit to take in before a save.
    stat: Option<Stat>,
    /// `--store redis://...`: the table lives there, and the routes file is never written.
    shared: Option<Shared>,
    /// The version whose change (only) is in force, until the whole table is read.
    applied: Option<i64>,
}

impl Task {
    /// Loads the routes file at start-up: a missing file is an empty table, with a warning.
    async fn initial_load(&mut self) -> Result<(), LoadError> {
        let path = self.path.clone();
        let options = self.options;
        let loaded = tokio::task::spawn_blocking(move || read_table(&path, &options, None))
            .await
            .expect("the load task does not panic");
        let (table, content) = match loaded {
            Ok(Read::Parsed(Ok(table), content)) => (table, Some(content)),
            Ok(Read::Parsed(Err(source), _)) => {
                return Err(LoadError::Invalid { path: self.path.display().to_string(), source })
            }
            Ok(Read::Unchanged) => unreachable!("nothing to compare with at start-up"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(path = %self.path.display(), "routes file not found; starting with an empty table");
                (RouteTable::empty(), None)
            }
            Err(source) => return Err(LoadError::Read { path: self.path.display().to_string(), source }),
        };
        self.stat = stat(&self.path);
        tracing::info!(agents = table.agent_count(), numbers = table.number_count(), "routes loaded");
        self.metrics.record_reload(true);
        self.install(table, content);
        Ok(())
    }

    /// Puts `table` in force, read from or saved as `content`; the replaced one is freed off
    /// the async runtime.
    fn install(&mut self, table: RouteTable, content: Option<Fingerprint>) {
        self.metrics.record_table(table.agent_count(), table.number_count());
        retire(self.store.publish(table));
        self.content = content;
    }

    async fn run(mut self, mut queue: mpsc::Receiver<Job>) {
        while let Some(first) = queue.recv().await {
            let mut edits = Vec::new();
            let mut reloads = Vec::new();
            let mut syncs = Vec::new();
            let mut notices = Vec::new();
            let mut next = Some(first);
            while let Some(job) = next.take() {
                match job {
                    Job::Edit(edit, done) => edits.push((*edit, done)),
                    Job::Reload(done) => reloads.push(done),
                    Job::Sync(done) => syncs.push(done),
                    Job::Notice(notice, done) => notices.push((notice, done)),
                }
                if edits.len() < MAX_BATCH {
                    next = queue.try_recv().ok();
                }
            }
            if !reloads.is_empty() {
                self.reload(Missing::IsAnError).await;
                for done in reloads {
                    let _ = done.send(());
                }
            }
            for (notice, done) in notices {
                self.take_notice(&notice).await;
                let _ = done.send(());
            }
            if !syncs.is_empty() {
                self.sync().await;
                for done in syncs {
                    let _ = done.send(());
                }
            }
            if !edits.is_empty() {
                if self.shared.is_some() {
                    self.apply_shared(edits).await;
                } else {
                    self.apply(edits).await;
                }
            }
        }
    }

    async fn apply(&mut self, jobs: Vec<(Edit, oneshot::Sender<Result<bool, WriteError>>)>) {
        // A hand edit the watcher has not reported yet is taken in first, so the save below does
        // not write over it: the file's change, then these edits on top.
        self.reload(Missing::IsFine).await;
        let (edits, waiting): (Vec<Edit>, Vec<_>) = jobs.into_iter().unzip();
        let current = self.store.load_full();
        let path = self.path.clone();
        // Copying a large table and writing it out are blocking work: keep them off the
        // runtime, which answers probes and the admin API meanwhile.
        let saved = tokio::task::spawn_blocking(move || {
            let mut table = RouteTable::clone(&current);
            drop(current);
            let had: Vec<Result<bool, WriteError>> =
                edits.into_iter().map(|edit| apply_one(&mut table, edit)).collect();
            save(&path, &table, sync_dir).map(|saved| (table, saved, had))
        })
        .await
        .expect("the save task does not panic");
        match saved {
            Ok((table, saved, had)) => {
                if let Some(e) = saved.unsynced {
                    // The rename happened: the new file is what a restart reads, so the edits
                    // are in force and answered as done; only their durability is in doubt.
                    tracing::warn!(
                        path = %self.path.display(),
                        error = %e,
                        "admin write saved, but its directory could not be synced; it may not survive a power loss"
                    );
                }
                self.stat = stat(&self.path);
                self.install(table, Some(saved.content));
                for (had, done) in had.into_iter().zip(waiting) {
                    self.metrics.record_admin_write(had.is_ok());
                    let _ = done.send(had);
                }
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "admin write not saved; nothing changed");
                let read_only = is_read_only(&e);
                for done in waiting {
                    self.metrics.record_admin_write(false);
                    let err = std::io::Error::new(e.kind(), e.to_string());
                    let _ = done.send(Err(if read_only {
                        WriteError::ReadOnly(err)
                    } else {
                        WriteError::Unsaved(err)
                    }));
                }
            }
        }
    }

    async fn reload(&mut self, missing: Missing) {
        if self.shared.is_some() {
            // The table comes from the shared store; the file is read at start-up only.
            return;
        }
        // The file callgate itself last read or wrote, untouched since: nothing to read (the
        // watcher reports callgate's own saves too).
        if self.stat.is_some() && stat(&self.path) == self.stat {
            return;
        }
        let path = self.path.clone();
        let options = self.options;
        let previous = self.content;
        let outcome = tokio::task::spawn_blocking(move || read_table(&path, &options, previous))
            .await
            .expect("the reload task does not panic");
        self.stat = stat(&self.path);
        let reason = match outcome {
            Ok(Read::Unchanged) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && missing == Missing::IsFine => return,
            Ok(Read::Parsed(Ok(table), content)) => {
                tracing::info!(
                    path = %self.path.display(),
                    agents = table.agent_count(),
                    numbers = table.number_count(),
                    "routes reloaded"
                );
                self.metrics.record_reload(true);
                self.install(table, Some(content));
                return;
            }
            Ok(Read::Parsed(Err(e), _)) => e.to_string(),
            Err(e) => format!("cannot read: {e}"),
        };
        tracing::error!(path = %self.path.display(), %reason, "routes reload failed; the last good table keeps serving");
        self.metrics.record_reload(false);
        // The file no longer says what is in force: when good content comes back, even the
        // same as before, it is loaded (and counted) again.
        self.content = None;
    }
}

/// The shared store (`--store redis://...`).
impl Task {
    fn shared(&mut self) -> &mut Shared {
        self.shared.as_mut().expect("called in shared mode only")
    }

    /// The first table: the store's; while the store does not answer, the routes file if it
    /// exists (invalid: a start-up error, as in file mode), else nothing until the store
    /// answers (`/readyz` stays 503 meanwhile).
    async fn initial_load_shared(&mut self) -> Result<(), LoadError> {
        let mut tried_file = false;
        let mut backoff = std::time::Duration::from_millis(100);
        loop {
            match self.shared().redis.fetch().await {
                Ok(None) => {
                    self.store_answers();
                    tracing::info!(store = %self.shared().redis.shown(), "the shared store is empty; starting with an empty table");
                    self.metrics.record_reload(true);
                    self.install(RouteTable::empty(), None);
                    return Ok(());
                }
                Ok(Some((version, doc))) => {
                    self.store_answers();
                    match parse_doc(doc, self.options).await {
                        Ok(table) => {
                            tracing::info!(
                                store = %self.shared().redis.shown(),
                                version,
                                agents = table.agent_count(),
                                numbers = table.number_count(),
                                "routes loaded from the shared store"
                            );
                            self.metrics.record_reload(true);
                            self.install(table, None);
                            self.shared().version = Some(version);
                            return Ok(());
                        }
                        Err(e) => {
                            tracing::error!(reason = %e, "the table in the shared store is invalid; not taken in");
                            self.metrics.record_reload(false);
                        }
                    }
                }
                Err(e) => self.store_fails(StoreOp::Read, &e),
            }
            if !tried_file {
                tried_file = true;
                let path = self.path.clone();
                let options = self.options;
                let read = tokio::task::spawn_blocking(move || read_table(&path, &options, None))
                    .await
                    .expect("the load task does not panic");
                match read {
                    Ok(Read::Parsed(Ok(table), _)) => {
                        tracing::warn!(
                            path = %self.path.display(),
                            agents = table.agent_count(),
                            numbers = table.number_count(),
                            "the shared store has no table for us yet; serving the routes file until it does"
                        );
                        self.metrics.record_reload(true);
                        self.install(table, None);
                        return Ok(());
                    }
                    Ok(Read::Parsed(Err(source), _)) => {
                        return Err(LoadError::Invalid { path: self.path.display().to_string(), source })
                    }
                    Ok(Read::Unchanged) => unreachable!("nothing to compare with at start-up"),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        tracing::warn!(
                            path = %self.path.display(),
                            "no routes file to serve meanwhile; not ready until the shared store answers"
                        );
                    }
                    Err(source) => {
                        return Err(LoadError::Read { path: self.path.display().to_string(), source })
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(std::time::Duration::from_secs(2));
        }
    }

    /// Applies a notice's change if it was made on top of the table in force. The version in
    /// force is left as it was: the sync that follows reads the whole table, so what is in force
    /// ends up the store's exactly, and a write never starts from a table built from a change.
    async fn take_notice(&mut self, notice: &[u8]) {
        let Some(shared) = &self.shared else { return };
        let Some(read) = super::delta::Notice::read(notice) else { return };
        let (Some(from), Some(change)) = (read.from, read.change) else { return };
        if shared.empty || shared.version != Some(from) || self.applied == Some(read.version) {
            return;
        }
        let current = self.store.load_full();
        let (change, options) = (change.to_vec(), self.options);
        let applied = tokio::task::spawn_blocking(move || super::delta::apply(&current, &change, &options))
            .await
            .expect("the change task does not panic");
        match applied {
            Some(table) => {
                tracing::info!(version = read.version, "routes change taken from the shared store's notice");
                self.applied = Some(read.version);
                self.install(table, None);
            }
            None => tracing::warn!(
                version = read.version,
                "a routes change in the shared store's notice could not be applied; reading the whole table"
            ),
        }
    }

    /// Takes in the store's table if its version is not the one in force.
    async fn sync(&mut self) {
        if self.shared.is_none() {
            return;
        }
        let version = match self.shared().redis.version().await {
            Ok(v) => v,
            Err(e) => return self.store_fails(StoreOp::Read, &e),
        };
        self.store_answers();
        let held = self.shared().version;
        if version.is_some() && version == held {
            return;
        }
        let fetched = match version {
            None => None,
            Some(_) => match self.shared().redis.fetch().await {
                Ok(fetched) => fetched,
                Err(e) => return self.store_fails(StoreOp::Read, &e),
            },
        };
        let Some((version, doc)) = fetched else {
            return self.found_empty();
        };
        match parse_doc(doc, self.options).await {
            Ok(table) => {
                if std::mem::take(&mut self.shared().empty) {
                    tracing::info!("the shared store holds a table again; table writes are taken again");
                }
                tracing::info!(
                    version,
                    agents = table.agent_count(),
                    numbers = table.number_count(),
                    "routes changed in the shared store"
                );
                self.metrics.record_reload(true);
                self.install(table, None);
            }
            Err(e) => {
                tracing::error!(version, reason = %e, "the table in the shared store is invalid; the last table keeps serving");
                self.metrics.record_reload(false);
            }
        }
        // An invalid version is not read again; the next write replaces it.
        self.shared().version = Some(version);
    }

    /// The store holds no table. A store empty from the start is an empty table; a store found
    /// empty while this replica holds a table (a Redis restarted without its data) leaves the
    /// table in force, and table writes wait for `store import`.
    fn found_empty(&mut self) {
        let holds_table = {
            let table = self.store.load();
            table.agent_count() > 0 || table.number_count() > 0
        };
        let shared = self.shared();
        shared.version = None;
        if !holds_table || shared.empty {
            return;
        }
        shared.empty = true;
        tracing::error!(
            store = %shared.redis.shown(),
            "the shared store is empty while this replica holds a table (a Redis restarted without its data?); \
             keeping the last table; table writes answer 503 store_empty until `callgate store import`"
        );
        self.metrics.record_reload(false);
    }

    fn store_answers(&mut self) {
        let shared = self.shared();
        if !shared.up {
            tracing::info!(store = %shared.redis.shown(), "the shared store answers");
            shared.up = true;
        }
        self.metrics.set_store_up(true);
    }

    fn store_fails(&mut self, op: StoreOp, e: &StoreError) {
        self.metrics.record_store_error(op);
        self.metrics.set_store_up(false);
        let shared = self.shared();
        if shared.up {
            tracing::warn!(
                store = %shared.redis.shown(),
                error = %e,
                "the shared store does not answer; calls go on with the last table, table writes answer 503 store_unavailable"
            );
            shared.up = false;
        }
    }

    /// Applies a batch on top of the store's newest table and writes it with a version check:
    /// answered once Redis has it. Another replica writing first means a sync and another try.
    async fn apply_shared(&mut self, jobs: Vec<(Edit, oneshot::Sender<Result<bool, WriteError>>)>) {
        const MAX_TRIES: usize = 10;
        let (edits, waiting): (Vec<Edit>, Vec<_>) = jobs.into_iter().unzip();
        let mut tries = 0;
        let outcome = loop {
            tries += 1;
            self.sync().await;
            let shared = self.shared();
            if !shared.up {
                break Err(WriteError::StoreUnavailable);
            }
            if shared.empty {
                break Err(WriteError::StoreEmpty);
            }
            let expect = shared.version.map_or(Expect::Empty, Expect::Version);
            let current = self.store.load_full();
            let edits = edits.clone();
            let (table, doc, change, had) = tokio::task::spawn_blocking(move || {
                let mut table = RouteTable::clone(&current);
                drop(current);
                // An edit refused alone (a missing check set, one in use) changes nothing; the
                // rest of the batch is still written.
                let touched = super::delta::Touched::of(&edits);
                let had: Vec<Result<bool, WriteError>> =
                    edits.into_iter().map(|edit| apply_one(&mut table, edit)).collect();
                let doc = serde_json::to_vec(&table).expect("a table serialises");
                let change = super::delta::encode(&table, &touched);
                (table, doc, change, had)
            })
            .await
            .expect("the edit task does not panic");
            let written = self.shared().redis.write(expect, doc, change).await;
            // The document and the connection that carried it are gone: hand their pages back.
            let _ = tokio::task::spawn_blocking(release_memory).await;
            match written {
                Ok(Written::Done(version)) => {
                    self.store_answers();
                    self.install(table, None);
                    self.shared().version = Some(version);
                    break Ok(had);
                }
                Ok(Written::Conflict) if tries < MAX_TRIES => continue,
                Ok(Written::Conflict) => {
                    tracing::error!(
                        tries,
                        "admin write not stored: other replicas kept writing first; nothing changed"
                    );
                    break Err(WriteError::StoreUnavailable);
                }
                Err(e) => {
                    self.store_fails(StoreOp::Write, &e);
                    break Err(WriteError::StoreUnavailable);
                }
            }
        };
        match outcome {
            Ok(had) => {
                for (had, done) in had.into_iter().zip(waiting) {
                    self.metrics.record_admin_write(had.is_ok());
                    let _ = done.send(had);
                }
            }
            Err(e) => {
                for done in waiting {
                    self.metrics.record_admin_write(false);
                    let _ = done.send(Err(match e {
                        WriteError::StoreEmpty => WriteError::StoreEmpty,
                        _ => WriteError::StoreUnavailable,
                    }));
                }
            }
        }
    }
}

/// Parses a table read from the shared store, on the blocking pool.
async fn parse_doc(doc: Vec<u8>, options: ValidateOptions) -> Result<RouteTable, super::RoutesError> {
    tokio::task::spawn_blocking(move || {
        let parsed = RouteTable::parse(&doc, &options);
        drop(doc);
        release_memory();
        parsed
    })
    .await
    .expect("the parse task does not panic")
}

/// What reading the routes file found.
enum Read {
    /// The same content as `previous`: nothing to do.
    Unchanged,
    /// The content, parsed (or why not), and its fingerprint.
    Parsed(Result<RouteTable, super::RoutesError>, Fingerprint),
}

/// Reads and parses the routes file: blocking work, for the blocking pool. The file's bytes
/// are freed and handed back to the system before the table is returned.
fn read_table(
    path: &Path,
    options: &ValidateOptions,
    previous: Option<Fingerprint>,
) -> std::io::Result<Read> {
    let bytes = std::fs::read(path)?;
    let content = fingerprint(&bytes);
    if Some(content) == previous {
        return Ok(Read::Unchanged);
    }
    let parsed = RouteTable::parse(&bytes, options);
    drop(bytes);
    release_memory();
    Ok(Read::Parsed(parsed, content))
}

/// Frees a replaced table on the blocking pool: at a million numbers that is real work, and
/// the runtime answers probes and the admin API meanwhile.
fn retire(old: Arc<RouteTable>) {
    tokio::task::spawn_blocking(move || {
        drop(old);
        release_memory();
    });
}

/// Returns freed heap pages to the system. glibc keeps freed memory for reuse, and a replaced
/// million-number table, or the routes file read to build one, would otherwise stay resident.
fn release_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Applies one edit; `true` if it replaced or removed something that was set. An edit that
/// conflicts with the table (a gate naming a missing check set, a check set in use) changes
/// nothing and is refused alone.
fn apply_one(table: &mut RouteTable, edit: Edit) -> Result<bool, WriteError> {
    let gate_set = |gate: &Option<Gate>| match gate.as_ref().and_then(Gate::chain) {
        Some(super::Chain::Set(name)) => Some(name.clone()),
        _ => None,
    };
    match &edit {
        Edit::AgentGate { gate, .. } | Edit::NumberGate { gate, .. } => {
            if let Some(name) = gate_set(gate) {
                if table.check_set(&name).is_none() {
                    return Err(WriteError::NoCheckSet(name.to_string()));
                }
            }
        }
        Edit::CheckSet { name, checks: None } if table.check_set_in_use(name) => {
            return Err(WriteError::InUse(name.clone()));
        }
        _ => {}
    }
    let had = match edit {
        Edit::CheckSet { name, checks } => Ok(table.set_check_set(&name, checks)),
        Edit::AgentGate { agent_id, gate } => Ok(table.set_agent_gate(&agent_id, gate)),
        Edit::NumberGate { number, gate } => table.set_number_gate(&number, gate),
        Edit::NumberAgent { number, agent_id } => table.set_number_agent(&number, agent_id.as_deref()),
        Edit::AgentContextWait { agent_id, wait_ms } => Ok(table.set_agent_context_wait(&agent_id, wait_ms)),
    };
    // Values are validated before they are queued; a failure here is a bug, not bad input.
    Ok(had.expect("edits are validated before they are queued"))
}

/// What a file's content is known by: its length and a hash (not a security boundary: a
/// collision only skips one reload, and the periodic poll does not depend on it). Computed the
/// same way over a whole buffer or streamed in pieces.
type Fingerprint = (usize, u64);

fn fingerprint(bytes: &[u8]) -> Fingerprint {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    h.write(bytes);
    (bytes.len(), h.finish())
}

/// A writer that fingerprints what passes through it.
struct Fingerprinting<W> {
    inner: W,
    hasher: std::collections::hash_map::DefaultHasher,
    len: usize,
}

impl<W: Write> Write for Fingerprinting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.write(&buf[..n]);
        self.len += n;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Tables up to this many numbers are saved indented, for people who open the file; larger
/// ones compact, which halves the bytes to write at a million numbers.
const PRETTY_UP_TO: usize = 10_000;

/// A save that reached the routes file.
struct Saved {
    content: Fingerprint,
    /// The directory could not be synced after the rename: the new file is in place (and in
    /// force), but may not survive a power loss.
    unsynced: Option<std::io::Error>,
}

/// Syncs a directory, so that a rename in it survives a power loss.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// A temporary file name of this process's own: the pid alone is 1 in every container, and
/// replicas may share a volume.
fn temp_name(name: &str) -> String {
    use std::hash::BuildHasher;
    use std::sync::atomic::{AtomicU64, Ordering};
    static SAVES: AtomicU64 = AtomicU64::new(0);
    // Randomly keyed per process, so two processes with the same pid and clock differ.
    let nonce = std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now());
    let n = SAVES.fetch_add(1, Ordering::Relaxed);
    format!(".{name}.callgate-{}-{nonce:016x}-{n}.tmp", std::process::id())
}

/// Saves `table` atomically: a temporary file in the same directory, fsync, rename over the
/// routes file, fsync of the directory (`sync_dir`). The JSON is streamed to the file, not
/// built in memory. A routes file without write permission (0444: file-managed by intent) is
/// not replaced, even by root. On an error before the rename, our temporary file (and no
/// other) is removed and the routes file is as it was; after it, the save is reported done.
fn save(
    path: &Path,
    table: &RouteTable,
    sync_dir: fn(&Path) -> std::io::Result<()>,
) -> std::io::Result<Saved> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temp = dir.join(temp_name(&name));
    let metadata = std::fs::metadata(path);
    if let Ok(m) = &metadata {
        if m.permissions().readonly() {
            let e = "the routes file has no write permission (its mode says it is not to be changed here)";
            return Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, e));
        }
    }
    // The file may hold gate URLs with tokens: the copy keeps the original's permissions (0600
    // for a new file), never the umask's.
    let mode = metadata.map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777);
    let mut created = false;
    let written = (|| {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode.unwrap_or(0o600))
            .open(&temp)?;
        created = true;
        let mut out = Fingerprinting {
            inner: std::io::BufWriter::with_capacity(1 << 20, file),
            hasher: Default::default(),
            len: 0,
        };
        if table.number_count() <= PRETTY_UP_TO {
            serde_json::to_writer_pretty(&mut out, table)?;
        } else {
            serde_json::to_writer(&mut out, table)?;
        }
        out.write_all(b"\n")?;
        let content = (out.len, out.hasher.finish());
        let file = out.inner.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        Ok(content)
    })();
    match written {
        Ok(content) => Ok(Saved { content, unsynced: sync_dir(dir).err() }),
        Err(e) => {
            if created {
                let _ = std::fs::remove_file(&temp);
            }
            Err(e)
        }
    }
}

/// A file that cannot be written by design (read-only mount, immutable file, no write permission)
/// rather than by accident (full disk).
fn is_read_only(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(e.kind(), ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem)
        || e.raw_os_error() == Some(1) // EPERM: chattr +i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        RouteTable::parse(
            br#"{"numbers": {"+447700900123": {"agent_id": "a"}}}"#,
            &ValidateOptions::default(),
        )
        .unwrap()
    }

    fn broken_sync(_: &Path) -> std::io::Result<()> {
        Err(std::io::Error::other("EIO from the directory"))
    }

    /// Issue 18 item 11: a directory fsync that fails after the rename was reported as
    /// "nothing changed" while the file had changed; it is a save done, with a doubt.
    #[test]
    fn a_failed_directory_sync_after_the_rename_is_a_save_done() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.json");
        std::fs::write(&path, "{}").unwrap();
        let saved = save(&path, &table(), broken_sync).expect("the save happened");
        assert!(saved.unsynced.is_some());
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(fingerprint(&on_disk), saved.content);
        assert_eq!(RouteTable::parse(&on_disk, &ValidateOptions::default()).unwrap(), table());
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["routes.json"], "no temporary file left");
        assert!(save(&path, &table(), sync_dir).unwrap().unsynced.is_none());
    }

    #[test]
    fn temporary_names_differ_between_saves() {
        let names: std::collections::HashSet<_> = (0..100).map(|_| temp_name("routes.json")).collect();
        assert_eq!(names.len(), 100);
        assert!(names.iter().all(|n| n.starts_with(".routes.json.callgate-") && n.ends_with(".tmp")));
    }
}
