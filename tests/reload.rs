//! Hot reload of the routes file (SPEC §3): every way a file changes, every way a bad file is
//! refused, and calls flowing while a large table is swapped.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

const TO: &str = "+447700900123";

fn routes(agent: &str) -> String {
    json!({"numbers": {TO: {"agent_id": agent}}}).to_string()
}

async fn agent_of(cg: &Callgate) -> Value {
    cg.table().await["numbers"][TO]["agent_id"].clone()
}

async fn becomes(cg: &Callgate, agent: &str) {
    eventually(Duration::from_secs(5), || async { agent_of(cg).await == agent }).await;
}

/// Waits long enough for a reload to have happened (debounce plus polls), then checks the
/// table is still `agent`.
async fn stays(cg: &Callgate, agent: &str) {
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(agent_of(cg).await, agent);
}

async fn start() -> (Callgate, Stub) {
    let engine = Stub::start(Reply::json("")).await;
    let cg = Callgate::spawn(&routes("agent_v1"), &engine.url("")).await;
    assert_eq!(agent_of(&cg).await, "agent_v1");
    (cg, engine)
}

#[tokio::test]
async fn an_edit_in_place_is_picked_up() {
    let (cg, _engine) = start().await;
    std::fs::write(&cg.routes, routes("agent_v2")).unwrap();
    becomes(&cg, "agent_v2").await;
}

#[tokio::test]
async fn a_rename_over_the_file_is_picked_up() {
    let (cg, _engine) = start().await;
    let temp = cg.dir.path().join("routes.json.new");
    std::fs::write(&temp, routes("agent_v2")).unwrap();
    std::fs::rename(&temp, &cg.routes).unwrap();
    becomes(&cg, "agent_v2").await;
}

#[tokio::test]
async fn delete_then_recreate_keeps_serving_then_reloads() {
    let (cg, _engine) = start().await;
    std::fs::remove_file(&cg.routes).unwrap();
    stays(&cg, "agent_v1").await;
    std::fs::write(&cg.routes, routes("agent_v3")).unwrap();
    becomes(&cg, "agent_v3").await;
}

/// Lays out a directory the way kubelet mounts a ConfigMap: `routes.json -> ..data/routes.json`,
/// `..data -> ..<timestamp>/`.
fn configmap_version(dir: &Path, version: &str, content: &str) {
    let versioned = dir.join(format!("..{version}"));
    std::fs::create_dir(&versioned).unwrap();
    std::fs::write(versioned.join("routes.json"), content).unwrap();
    let temp_link = dir.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..{version}"), &temp_link).unwrap();
    std::fs::rename(&temp_link, dir.join("..data")).unwrap();
}

#[tokio::test]
async fn a_configmap_data_swap_is_picked_up() {
    let engine = Stub::start(Reply::json("")).await;
    let dir = tempfile::tempdir().unwrap();
    configmap_version(dir.path(), "2026_11_23_10_00_00.1", &routes("agent_v1"));
    let path = dir.path().join("routes.json");
    std::os::unix::fs::symlink("..data/routes.json", &path).unwrap();
    let cg = Callgate::spawn_with("{}", &engine.url(""), |s| s.routes = path.clone()).await;
    assert_eq!(agent_of(&cg).await, "agent_v1");

    configmap_version(dir.path(), "2026_11_23_10_05_00.2", &routes("agent_v2"));
    std::fs::remove_dir_all(dir.path().join("..2026_11_23_10_00_00.1")).unwrap();
    becomes(&cg, "agent_v2").await;
}

#[tokio::test]
async fn invalid_files_keep_the_last_good_table() {
    let engine = Stub::start(Reply::json("")).await;
    let cg =
        Callgate::spawn_with(&routes("agent_v1"), &engine.url(""), |s| s.allow_insecure_gates = false).await;
    for bad in [
        "{\"numbers\": {".to_owned(),
        String::new(),
        json!({"numbers": {"+44 7700": {"agent_id": "agent_bad"}}}).to_string(),
        json!({"numbers": {TO: {"agent_id": "agent_bad", "colour": "red"}}}).to_string(),
        json!({"numbers": {TO: {"agent_id": "agent_bad", "gate": {"url": "http://gate.example/p"}}}})
            .to_string(),
        format!(
            r#"{{"numbers": {{"{TO}": {{"agent_id": "agent_bad"}}, "{TO}": {{"agent_id": "agent_bad"}}}}}}"#
        ),
    ] {
        std::fs::write(&cg.routes, &bad).unwrap();
        stays(&cg, "agent_v1").await;
    }
    std::fs::write(&cg.routes, routes("agent_good")).unwrap();
    becomes(&cg, "agent_good").await;
}

/// A table of `n` numbers whose gated number `TO` points at `gate_url`.
fn big_table(n: usize, gate_url: &str, agent: &str) -> String {
    let mut numbers = many_numbers(n, agent);
    numbers.insert(TO.into(), json!({"gate": {"url": gate_url}, "agent_id": agent}));
    json!({"agents": {agent: {"gate": {"url": gate_url}}}, "numbers": numbers}).to_string()
}

#[tokio::test]
async fn calls_get_the_old_or_the_new_decision_while_a_large_table_reloads() {
    let engine = Stub::start(Reply::json("<Response/>").header("content-type", "text/xml")).await;
    let rejecting = Stub::start(Reply::json(r#"{"action":"reject"}"#)).await;
    let accepting = Stub::start(Reply::json(r#"{"action":"accept"}"#)).await;
    let old = big_table(200_000, &rejecting.url("/old"), "agent_old");
    let new = big_table(200_000, &accepting.url("/new"), "agent_new");
    let cg = Callgate::spawn(&old, &engine.url("")).await;

    let url = cg.url("/twilio/voice");
    let caller = tokio::spawn(async move {
        let (mut rejected, mut accepted) = (0, 0);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
        while tokio::time::Instant::now() < deadline {
            let answer = post_form(&url, &ringing(TO)).await;
            assert_eq!(answer.status, 200);
            if answer.body[..] == *GOLDEN_REJECT.trim_ascii_end() {
                assert_eq!(accepted, 0, "once the new table is in, the old one never comes back");
                rejected += 1;
            } else {
                assert_eq!(answer.text(), "<Response/>", "either decision, never anything else");
                accepted += 1;
            }
        }
        (rejected, accepted)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(&cg.routes, &new).unwrap();
    let (rejected, accepted) = caller.await.unwrap();
    assert!(
        rejected > 0 && accepted > 0,
        "calls flowed through the swap: {rejected} rejected, {accepted} accepted"
    );
    let decisions: Vec<_> = engine.seen().iter().map(|s| s.headers["x-callgate-decision"].clone()).collect();
    assert!(decisions.iter().all(|d| d == "accept"), "{decisions:?}");
    assert_eq!(rejecting.count() + accepting.count(), rejected + accepted, "one gate request per call");
}

/// Bytes the process has read through system calls so far.
fn bytes_read(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines().find_map(|l| l.strip_prefix("rchar: ")).unwrap().trim().parse().unwrap()
}

#[tokio::test]
async fn an_idle_callgate_does_not_keep_rereading_its_routes_file() {
    let engine = Stub::start(Reply::json("")).await;
    let routes = json!({"numbers": many_numbers(20_000, "agent_a")}).to_string();
    let cg = Binary::spawn(&routes, &engine.url(""), &[]);
    let path = cg.dir.path().join("routes.json");
    // A change, then reads of the file by others: neither may set off a loop of re-reads.
    std::fs::write(&path, routes.replace("agent_a", "agent_b")).unwrap();
    cg.wait_for_log("routes reloaded");
    for _ in 0..5 {
        let _ = std::fs::read(&path).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = bytes_read(cg.child.id());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let read = bytes_read(cg.child.id()) - before;
    assert!(read < routes.len() as u64, "read {read} bytes while idle (the file is {} bytes)", routes.len());
}
