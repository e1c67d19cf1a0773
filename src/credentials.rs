//! Secrets for check placeholders (`--credentials FILE`, SPEC §11): `{"cred_id": {"key":
//! "secret"}}`, hot-reloaded the way the routes file is (edits in place, renames, a Kubernetes
//! Secret's `..data` swap). An invalid file changes nothing and is counted. A secret is never in
//! a log line, a metric, an error or a `Debug` print.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher as _};
use rustc_hash::FxHashMap;
use serde_json::Value;

use crate::metrics::Metrics;

/// A secret value: printed as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Box<str>);

impl Secret {
    pub fn new(value: &str) -> Secret {
        Secret(value.into())
    }

    /// The value, for a request that needs it. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Credential id to its keys and secrets.
pub type CredentialMap = FxHashMap<Box<str>, FxHashMap<Box<str>, Secret>>;

/// Reads a credentials file. The error names the place and the problem, never a value.
pub fn parse(bytes: &[u8]) -> Result<CredentialMap, String> {
    let value: Value = serde_json::from_slice(bytes)
        // serde_json's syntax errors name a position, not the content.
        .map_err(|e| format!("not JSON (line {} column {})", e.line(), e.column()))?;
    let Value::Object(ids) = value else {
        return Err("expected an object {\"cred_id\": {\"key\": \"secret\"}}".into());
    };
    let mut map = CredentialMap::default();
    for (id, keys) in ids {
        let Value::Object(keys) = keys else {
            return Err(format!("{id:?}: expected an object of keys to secrets"));
        };
        let mut secrets = FxHashMap::default();
        for (key, secret) in keys {
            let Value::String(secret) = secret else {
                return Err(format!("{id:?}.{key:?}: expected a string"));
            };
            secrets.insert(key.into_boxed_str(), Secret(secret.into_boxed_str()));
        }
        map.insert(id.into_boxed_str(), secrets);
    }
    Ok(map)
}

/// The credentials in force.
#[derive(Default)]
pub struct Credentials {
    current: ArcSwap<CredentialMap>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("ids", &self.current.load().len()).finish()
    }
}

impl Credentials {
    pub fn new(map: CredentialMap) -> Credentials {
        Credentials { current: ArcSwap::from_pointee(map) }
    }

    /// A snapshot.
    pub fn load(&self) -> Arc<CredentialMap> {
        self.current.load_full()
    }

    /// Reads `path` and swaps its credentials in; on failure nothing changes (logged, counted).
    pub fn reload(&self, path: &Path, metrics: &Metrics) -> bool {
        let read =
            std::fs::read(path).map_err(|e| format!("cannot read: {}", e.kind())).and_then(|b| parse(&b));
        match read {
            Ok(map) => {
                tracing::info!(path = %path.display(), ids = map.len(), "credentials loaded");
                self.current.store(Arc::new(map));
                metrics.record_credentials_reload(true);
                true
            }
            Err(reason) => {
                tracing::error!(path = %path.display(), %reason, "credentials reload failed; the last good ones stay in force");
                metrics.record_credentials_reload(false);
                false
            }
        }
    }
}

/// How often the file is compared, besides filesystem events.
const POLL: Duration = Duration::from_millis(500);

/// Watches `path` (its directory, so renames and `..data` swaps are seen, and a poll) and
/// reloads on change, until the guard is dropped.
pub fn watch(path: PathBuf, credentials: Arc<Credentials>, metrics: &'static Metrics) -> WatchGuard {
    let dirty = Arc::new(tokio::sync::Notify::new());
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let watcher = {
        let dirty = Arc::clone(&dirty);
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
                dirty.notify_one();
            }
        })
        .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|()| w))
        .ok()
    };
    let task = tokio::spawn(async move {
        let mut seen = (crate::routes::watch::stat(&path), std::fs::read(&path).ok());
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = dirty.notified() => tokio::time::sleep(crate::routes::watch::DEBOUNCE).await,
                _ = poll.tick() => {}
            }
            let stat = crate::routes::watch::stat(&path);
            if stat == seen.0 && stat.is_some() {
                continue;
            }
            let bytes = std::fs::read(&path).ok();
            if bytes == seen.1 {
                seen.0 = stat;
                continue;
            }
            credentials.reload(&path, metrics);
            seen = (stat, bytes);
        }
    });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let map = parse(br#"{"cred_dnd": {"dnd_api_key": "S3CRET"}}"#).unwrap();
        assert_eq!(map["cred_dnd"]["dnd_api_key"].expose(), "S3CRET");
        assert!(!format!("{map:?}").contains("S3CRET"));
        for bad in
            [&br#"{"c": {"k": 5}}"#[..], br#"{"c": "S3CRET"}"#, b"[\"S3CRET\"]", b"{\"c\": {\"k\": \"S3CRET"]
        {
            let err = parse(bad).unwrap_err();
            assert!(!err.contains("S3CRET"), "{err}");
        }
    }
}
