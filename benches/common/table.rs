//! The benches' routes table (same shape, same content in each): every agent with an https
//! gate, 90% of numbers on an agent only, 10% with their own gate. Included with `#[path]`, as
//! each bench is its own crate.
#![allow(dead_code)]

use std::fmt::Write as _;

#[derive(Clone, Copy)]
pub struct Shape {
    pub numbers: u64,
    pub agents: u64,
}

pub fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Number `i`: `+1555` and 7 digits (`+15550000001` for 1), so shapes up to 10M numbers.
pub fn number(i: u64) -> String {
    format!("+1555{i:07}")
}

pub fn token(seed: u64) -> String {
    format!("{:016x}{:016x}", splitmix(seed), splitmix(seed ^ 0x5bd1_e995))
}

/// A realistic routes file, pretty-printed one entry a line: every agent with an https gate
/// (`https://api.example.com/precall/agent_N?token=...`, some with `timeout_ms` or
/// `on_failure`); 90% of numbers assigned to an agent only, 10% with their own gate (half of
/// those with an agent as well; some with `timeout_ms`, some with `on_failure: reject`).
/// `changed` moves that number to the next agent: the one-change rewrite of the reload.
pub fn routes_file(shape: Shape, changed: Option<u64>) -> Vec<u8> {
    let mut s = String::with_capacity((shape.agents * 130 + shape.numbers * 60) as usize);
    s.push_str("{\n  \"agents\": {\n");
    for a in 0..shape.agents {
        let _ = write!(s, "    \"agent_{a}\": {{\"gate\": {{\"url\": \"https://api.example.com/precall/agent_{a}?token={}\"", token(a));
        if a % 10 == 3 {
            s.push_str(", \"timeout_ms\": 3000");
        }
        if a % 50 == 7 {
            s.push_str(", \"on_failure\": \"reject\"");
        }
        s.push_str("}}");
        s.push_str(if a + 1 < shape.agents { ",\n" } else { "\n" });
    }
    s.push_str("  },\n  \"numbers\": {\n");
    for i in 0..shape.numbers {
        let mut agent = i % shape.agents;
        if changed == Some(i) {
            agent = (agent + 1) % shape.agents;
        }
        let n = number(i);
        if i % 10 == 9 {
            let _ = write!(s, "    \"{n}\": {{");
            if i % 20 != 19 {
                let _ = write!(s, "\"agent_id\": \"agent_{agent}\", ");
            }
            let _ = write!(
                s,
                "\"gate\": {{\"url\": \"https://gates.example.net/precall/numbers/{i}?token={}\"",
                token(!i)
            );
            if i % 30 == 9 {
                s.push_str(", \"timeout_ms\": 2000");
            }
            if i % 70 == 49 {
                s.push_str(", \"on_failure\": \"reject\"");
            }
            s.push_str("}}");
        } else {
            let _ = write!(s, "    \"{n}\": {{\"agent_id\": \"agent_{agent}\"}}");
        }
        s.push_str(if i + 1 < shape.numbers { ",\n" } else { "\n" });
    }
    s.push_str("  }\n}\n");
    s.into_bytes()
}
