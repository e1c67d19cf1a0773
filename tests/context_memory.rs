//! Memory of a full context cache (issue 19): the real binary holds 100,000 pushed contexts of
//! 1 KiB each under 200 MiB resident. Slow (100,000 admin requests), so run on demand:
//!
//! `cargo test --test context_memory -- --ignored --nocapture`

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use support::*;

const CONTEXTS: usize = 100_000;
const CONTEXT_BYTES: usize = 1024;
const TASKS: usize = 16;

/// The process's resident set, from /proc/PID/status, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A push whose stored fields (all but agent id and number) are `CONTEXT_BYTES` of JSON.
fn body(i: usize) -> String {
    let mut fields = serde_json::json!({
        "customer_name": format!("Customer {i}"),
        "issue": "billing_error",
        "priority": "high",
        "notes": "",
    });
    let base = fields.to_string().len();
    fields["notes"] = serde_json::Value::String("n".repeat(CONTEXT_BYTES - base));
    assert_eq!(fields.to_string().len(), CONTEXT_BYTES);
    fields["agent_id"] = "agent_support".into();
    fields["phone_number"] = format!("+1415{i:07}").into();
    fields.to_string()
}

#[tokio::test]
#[ignore = "slow: 100,000 pushes; run with --ignored --nocapture"]
async fn a_full_cache_of_100k_one_kib_contexts_stays_under_200_mib() {
    // A TTL longer than the pushes take (a debug build on a shared machine is slow).
    let cg =
        Binary::spawn(r#"{"agents": {"agent_support": {}}}"#, "http://127.0.0.1:9", &["--context-ttl", "1h"]);
    let pid = cg.child.id();
    let before = rss_kib(pid);
    let admin = cg.admin;
    let client = Arc::new(client());
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let client = Arc::clone(&client);
            tokio::spawn(async move {
                for i in (t..CONTEXTS).step_by(TASKS) {
                    let request = Request::post(format!("http://{admin}/v1/context"))
                        .header("authorization", ADMIN_AUTH)
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(body(i))))
                        .unwrap();
                    let answer = send_with(&client, request).await.unwrap();
                    assert_eq!(answer.status, StatusCode::ACCEPTED);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let pushed_in = started.elapsed();
    assert_eq!(cg.metric("callgate_context_entries").await, CONTEXTS as f64);
    // Let the allocator settle (freed request buffers) before reading.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(pid);
    println!(
        "{CONTEXTS} contexts of {CONTEXT_BYTES} B: VmRSS {:.1} MiB before, {:.1} MiB after ({:.0} B per context); pushed in {pushed_in:.1?}",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        (after - before) as f64 * 1024.0 / CONTEXTS as f64,
    );
    assert!(after < 200 * 1024, "{after} KiB resident");
}
