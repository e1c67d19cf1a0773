//! The release `callgate` binary as a child process, shared by the benches (each bench is its
//! own crate, so this file is included with `#[path]`): finding or building it, reading its
//! `/proc` status, and stopping it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime};

/// `$CARGO_TARGET_DIR/release/callgate` (else `target/release/callgate`), built with
/// `cargo build --release` if it is not there; a warning if it is older than `src/`. `bench`
/// names the caller in messages.
pub fn release_binary(bench: &str) -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| manifest.join("target"));
    let bin = target.join("release").join("callgate");
    if !bin.exists() {
        eprintln!("{bench}: {} not found; running cargo build --release --bin callgate", bin.display());
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "--bin", "callgate"])
            .current_dir(manifest)
            .status()
            .expect("cargo runs");
        assert!(status.success(), "cargo build --release failed");
    }
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
    if let (Some(built), Some(source)) = (built, newest_mtime(&manifest.join("src"))) {
        if source > built {
            eprintln!("{bench}: WARNING {} is older than src/; run cargo build --release", bin.display());
        }
    }
    bin
}

fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let m = entry.metadata().ok()?;
        let t = if m.is_dir() { newest_mtime(&entry.path()) } else { m.modified().ok() };
        newest = newest.max(t);
    }
    newest
}

/// `/proc/PID/status` read once; the returned function gives a field's number (`"VmRSS:"` in
/// KiB, `"Threads:"`), 0 if absent.
pub fn proc_status(pid: u32) -> impl Fn(&str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    move |name| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

/// SIGTERM, then SIGKILL if the child has not exited within `grace`.
pub fn terminate(child: &mut Child, grace: Duration) {
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}
