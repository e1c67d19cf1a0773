//! Secrets for check placeholders (`--credentials FILE`, SPEC §11): `{"cred_id": {"key":
//! "secret"}}`, hot-reloaded the way the routes file is (edits in place, renames, a Kubernetes
//! Secret's `..data` swap). An invalid file changes nothing and is counted. A secret is never in
//! a log line, a metric, an error or a `Debug` print.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustc_hash::FxHashMap;
use serde_json::Value;

use crate::file_watch::FileWatch;
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

    /// Swaps in the credentials `read` from `path`; on failure nothing changes (logged, counted).
    pub fn reload(&self, path: &Path, read: &std::io::Result<Vec<u8>>, metrics: &Metrics) {
        let parsed = match read {
            Ok(bytes) => parse(bytes),
            Err(e) => Err(format!("cannot read: {}", e.kind())),
        };
        match parsed {
            Ok(map) => {
                tracing::info!(path = %path.display(), ids = map.len(), "credentials loaded");
                self.current.store(Arc::new(map));
                metrics.record_credentials_reload(true);
            }
            Err(reason) => {
                tracing::error!(path = %path.display(), %reason, "credentials reload failed; the last good ones stay in force");
                metrics.record_credentials_reload(false);
            }
        }
    }
}

/// Follows `path` with [`FileWatch`] and reloads when its content differs from `loaded` (the
/// bytes start-up read, if any) or from the last reload; spawn it and abort the task to stop.
/// A change of metadata alone (a `touch`, the same Secret written again) reloads nothing.
pub async fn follow(
    path: PathBuf,
    loaded: Option<Vec<u8>>,
    credentials: Arc<Credentials>,
    metrics: &'static Metrics,
) {
    let mut file = FileWatch::new(path.clone(), "credentials");
    let mut last = loaded;
    // Compared once before the first event, so a change made between start-up's read and this
    // watcher's start is not missed.
    loop {
        let read = std::fs::read(&path);
        if read.as_ref().ok() != last.as_ref() {
            credentials.reload(&path, &read, metrics);
            last = read.ok();
        }
        file.changed().await;
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
