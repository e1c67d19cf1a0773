//! The events outbox on disk: a redb database under `--state-dir`, one row per pending event
//! (its delivery id and body, and its schedule). Blocking I/O: called from the blocking pool.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use redb::{Database, ReadableTable, TableDefinition};

/// key → (webhook_delivery_id, body). Keys grow with each event, so the first key is the oldest.
const BODIES: TableDefinition<u64, (&str, &[u8])> = TableDefinition::new("bodies");

/// key → (attempts made, next attempt at, in Unix milliseconds).
const SCHEDULE: TableDefinition<u64, (u32, u64)> = TableDefinition::new("schedule");

/// The database file's name inside `--state-dir`.
pub const FILE_NAME: &str = "events.redb";

/// Why the outbox could not be opened, written or read.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("cannot create {dir}: {source}")]
    Dir { dir: PathBuf, source: std::io::Error },
    #[error("events outbox: {0}")]
    Store(Box<redb::Error>),
}

/// A redb error of any kind, boxed (redb's are large).
fn store(e: impl Into<redb::Error>) -> OutboxError {
    OutboxError::Store(Box::new(e.into()))
}

/// One pending event's schedule, as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    pub key: u64,
    pub attempts: u32,
    pub next_at: u64,
}

/// One change to the outbox; a batch of them is written in one transaction.
#[derive(Debug)]
pub enum Change {
    Insert { key: u64, delivery_id: String, body: Bytes, next_at: u64 },
    Reschedule(Row),
    Remove(u64),
}

pub struct Outbox {
    db: Database,
}

impl Outbox {
    /// Opens (creating) the outbox in `dir` and returns every pending event's schedule, oldest
    /// first. A body without a schedule or a schedule without a body (never written by callgate,
    /// but possible after a hand edit) is removed.
    pub fn open(dir: &Path) -> Result<(Outbox, Vec<Row>), OutboxError> {
        std::fs::create_dir_all(dir).map_err(|source| OutboxError::Dir { dir: dir.to_owned(), source })?;
        let db = Database::create(dir.join(FILE_NAME)).map_err(store)?;
        let rows = Self::load(&db)?;
        Ok((Outbox { db }, rows))
    }

    fn load(db: &Database) -> Result<Vec<Row>, OutboxError> {
        let txn = db.begin_write().map_err(store)?;
        let rows = {
            let mut bodies = txn.open_table(BODIES).map_err(store)?;
            let mut schedule = txn.open_table(SCHEDULE).map_err(store)?;
            let mut rows = Vec::new();
            for entry in schedule.iter().map_err(store)? {
                let (key, value) = entry.map_err(store)?;
                let (attempts, next_at) = value.value();
                rows.push(Row { key: key.value(), attempts, next_at });
            }
            let mut orphans = Vec::new();
            let mut at = 0;
            for entry in bodies.iter().map_err(store)? {
                let key = entry.map_err(store)?.0.value();
                while at < rows.len() && rows[at].key < key {
                    at += 1;
                }
                if rows.get(at).is_none_or(|r| r.key != key) {
                    orphans.push(key);
                }
            }
            let mut kept = Vec::with_capacity(rows.len());
            for row in rows {
                if bodies.get(row.key).map_err(store)?.is_some() {
                    kept.push(row);
                } else {
                    schedule.remove(row.key).map_err(store)?;
                }
            }
            for key in orphans {
                bodies.remove(key).map_err(store)?;
            }
            kept
        };
        txn.commit().map_err(store)?;
        Ok(rows)
    }

    /// Writes `changes` in one transaction, durable when this returns.
    pub fn apply(&self, changes: &[Change]) -> Result<(), OutboxError> {
        let txn = self.db.begin_write().map_err(store)?;
        {
            let mut bodies = txn.open_table(BODIES).map_err(store)?;
            let mut schedule = txn.open_table(SCHEDULE).map_err(store)?;
            for change in changes {
                match change {
                    Change::Insert { key, delivery_id, body, next_at } => {
                        bodies.insert(key, (delivery_id.as_str(), &body[..])).map_err(store)?;
                        schedule.insert(key, (0, *next_at)).map_err(store)?;
                    }
                    Change::Reschedule(row) => {
                        schedule.insert(row.key, (row.attempts, row.next_at)).map_err(store)?;
                    }
                    Change::Remove(key) => {
                        bodies.remove(key).map_err(store)?;
                        schedule.remove(key).map_err(store)?;
                    }
                }
            }
        }
        txn.commit().map_err(store)?;
        Ok(())
    }

    /// The delivery id and body of each of `keys` (`None` for a key not in the outbox).
    pub fn read(&self, keys: &[u64]) -> Result<Vec<Option<(String, Bytes)>>, OutboxError> {
        let txn = self.db.begin_read().map_err(store)?;
        let bodies = txn.open_table(BODIES).map_err(store)?;
        keys.iter()
            .map(|key| {
                let found = bodies.get(key).map_err(store)?;
                Ok(found.map(|v| {
                    let (id, body) = v.value();
                    (id.to_owned(), Bytes::copy_from_slice(body))
                }))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_survive_a_reopen_and_removed_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let (outbox, rows) = Outbox::open(dir.path()).unwrap();
        assert!(rows.is_empty());
        let insert = |key| Change::Insert {
            key,
            delivery_id: format!("whd_{key}"),
            body: Bytes::from(format!("{{\"n\":{key}}}")),
            next_at: 1_000 + key,
        };
        outbox.apply(&[insert(1), insert(2), insert(3)]).unwrap();
        outbox
            .apply(&[Change::Remove(2), Change::Reschedule(Row { key: 3, attempts: 2, next_at: 9_000 })])
            .unwrap();
        drop(outbox);
        let (outbox, rows) = Outbox::open(dir.path()).unwrap();
        assert_eq!(
            rows,
            [Row { key: 1, attempts: 0, next_at: 1_001 }, Row { key: 3, attempts: 2, next_at: 9_000 }]
        );
        let read = outbox.read(&[3, 2]).unwrap();
        assert_eq!(read[0], Some(("whd_3".to_owned(), Bytes::from_static(b"{\"n\":3}"))));
        assert_eq!(read[1], None);
    }

    #[test]
    fn a_state_dir_under_a_file_cannot_be_opened() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let err = Outbox::open(&file.join("sub")).err().expect("no directory under a file");
        assert!(matches!(err, OutboxError::Dir { .. }), "{err}");
    }
}
