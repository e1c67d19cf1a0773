//! Gate host names resolved against a blackholed DNS server (issue 18 item 9): the real binary,
//! in a mount namespace whose /etc/resolv.conf names a stub server on loopback that never
//! answers. Calls fail open at their gate's deadline, and the lookups hold at most 16 threads
//! however many calls wait on them.

mod support;

use std::net::UdpSocket;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

/// The stub DNS server's address: a loopback address of its own, on the port glibc always asks.
const STUB: &str = "127.0.0.77:53";

fn threads(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Threads:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blackholed_resolver_holds_at_most_16_threads_and_calls_keep_their_deadline() {
    // Needs root (a UDP port under 1024, a private mount of /etc/resolv.conf), as CI has.
    let socket = UdpSocket::bind(STUB).expect("bind the stub DNS server (run as root)");
    let queries = Arc::new(AtomicUsize::new(0));
    {
        let queries = Arc::clone(&queries);
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while socket.recv_from(&mut buf).is_ok() {
                queries.fetch_add(1, Ordering::Relaxed); // and never answer
            }
        });
    }
    let dir = tempfile::tempdir().unwrap();
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 127.0.0.77\noptions timeout:30 attempts:1\n").unwrap();
    let resolv = resolv.to_str().unwrap().to_owned();

    const CALLS: usize = 60;
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let warm = Stub::start(Reply::json(r#"{"action":"accept"}"#)).await;
    let mut numbers = serde_json::Map::new();
    numbers.insert("+447700900999".into(), serde_json::json!({"gate": {"url": warm.url("/g")}}));
    for i in 0..CALLS {
        let gate = format!("http://gate-{i}.blackhole.test/g");
        numbers.insert(
            format!("+4477009{i:05}"),
            serde_json::json!({"gate": {"url": gate, "timeout_ms": 1000}}),
        );
    }
    let routes = serde_json::json!({ "numbers": numbers }).to_string();
    let script = r#"mount --make-rprivate / && mount --bind "$0" /etc/resolv.conf && exec "$@""#;
    let cg = Binary::start_via(
        &["unshare", "--mount", "sh", "-c", script, &resolv],
        &routes,
        &engine.url(""),
        &[],
    );
    cg.wait_for_log("callgate serving");
    let pid = cg.child.id();

    // A call through an IP-literal gate first, so that every thread a call needs exists.
    assert_eq!(post_form(&cg.url("/twilio/voice"), &ringing("+447700900999")).await.status, 200);
    let usual = threads(pid);

    let sampler = {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let most = Arc::new(AtomicUsize::new(0));
        let (s, m) = (Arc::clone(&stop), Arc::clone(&most));
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                m.fetch_max(threads(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        (stop, most, handle)
    };
    // Two waves: the second arrives while the first wave's lookups still hang.
    for wave in 0..2 {
        let calls: Vec<_> = (0..CALLS)
            .map(|i| {
                let url = cg.url("/twilio/voice");
                tokio::spawn(async move {
                    let started = Instant::now();
                    let answer = post_form(&url, &ringing(&format!("+4477009{i:05}"))).await;
                    (answer.status, started.elapsed())
                })
            })
            .collect();
        for call in calls {
            let (status, took) = call.await.unwrap();
            assert_eq!(status, 200, "wave {wave}: fails open to the engine");
            assert!(
                took < Duration::from_millis(2500),
                "wave {wave}: answered at the gate's 1 s deadline, took {took:?}"
            );
        }
    }
    let (stop, most, handle) = sampler;
    stop.store(true, Ordering::Relaxed);
    handle.join().unwrap();
    let most = most.load(Ordering::Relaxed);
    assert!(queries.load(Ordering::Relaxed) > 0, "the lookups reached the stub DNS server");
    assert!(most <= usual + 16, "{most} threads at most, {usual} usually: more than 16 lookups at once");
    assert_eq!(cg.metric("callgate_gate_failures_total{cause=\"timeout\"}").await, (2 * CALLS) as f64);
}
