//! Criterion micro-benchmarks of the pure parts of a call's hot path: Twilio form parsing, route
//! lookup in a 1,000,000-number table (against naive baselines), gate-answer parsing, TwiML
//! rendering, the table's load time, and X-Twilio-Signature checks.
//!
//! `cargo bench --bench hot_path` (all), or e.g. `cargo bench --bench hot_path -- resolve`.
//! Every input is built outside the measured loops.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use base64::Engine as _;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use hmac::{Hmac, Mac};

use callgate::gate::{parse_answer, GateDecision};
use callgate::routes::{RouteTable, Source, ValidateOptions};
use callgate::webhook::signature::{sign_with_shared_key, sign_with_token, SignedBody, Verifier};
use callgate::webhook::twilio::{parse_form, CallParams};
use callgate::webhook::twiml::reject_busy;

const INBOUND_RINGING: &[u8] = include_bytes!("../fixtures/twilio/inbound-ringing.form");

const NUMBERS: u64 = 1_000_000;
const AGENTS: u64 = 100_000;
/// One number in this many has its own gate; the rest use their agent's.
const OWN_GATE_EVERY: u64 = 50;
/// Keys looked up per measured batch, drawn at random so the table does not sit in cache.
const LOOKUPS: usize = 4096;

fn number(i: u64) -> String {
    format!("+4477{:08}", i)
}

fn agent(i: u64) -> String {
    format!("agent_{:016x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// A routes file with [`NUMBERS`] numbers spread over [`AGENTS`] agents, each agent with a gate
/// and one number in [`OWN_GATE_EVERY`] with its own gate too.
fn routes_json() -> String {
    let mut s = String::with_capacity(120 * (NUMBERS + AGENTS) as usize);
    s.push_str("{\"agents\":{");
    for a in 0..AGENTS {
        if a > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            "\"{}\":{{\"gate\":{{\"url\":\"https://gate{a}.example.com/precall?token=t{a}\"}}}}",
            agent(a)
        ));
    }
    s.push_str("},\"numbers\":{");
    for n in 0..NUMBERS {
        if n > 0 {
            s.push(',');
        }
        let id = agent(n % AGENTS);
        if n % OWN_GATE_EVERY == 0 {
            s.push_str(&format!(
                "\"{}\":{{\"agent_id\":\"{id}\",\"gate\":{{\"url\":\"https://own.example.com/n{n}\",\"timeout_ms\":2000}}}}",
                number(n)
            ));
        } else {
            s.push_str(&format!("\"{}\":{{\"agent_id\":\"{id}\"}}", number(n)));
        }
    }
    s.push_str("}}");
    s
}

/// Deterministic pseudo-random keys (xorshift), hits in the table.
fn random_numbers(count: usize, seed: u64) -> Vec<String> {
    let mut x = seed;
    (0..count)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            number(x % NUMBERS)
        })
        .collect()
}

/// The naive baseline: what a first version might do, strings keyed by SipHash.
struct NaiveTable {
    agents: HashMap<String, Option<String>>,
    numbers: HashMap<String, (Option<String>, Option<String>)>,
}

impl NaiveTable {
    fn from_json(v: &serde_json::Value) -> NaiveTable {
        let gate_url = |entry: &serde_json::Value| {
            entry.get("gate").and_then(|g| g.get("url")).and_then(|u| u.as_str()).map(str::to_owned)
        };
        let agents = v["agents"].as_object().unwrap().iter().map(|(k, a)| (k.clone(), gate_url(a))).collect();
        let numbers = v["numbers"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, n)| (k.clone(), (n["agent_id"].as_str().map(str::to_owned), gate_url(n))))
            .collect();
        NaiveTable { agents, numbers }
    }

    /// Number's gate, else agent's gate, else none; the gate URL, as the real resolve gives a gate.
    fn resolve(&self, to: &str) -> Option<&str> {
        let (agent_id, gate) = self.numbers.get(to)?;
        if let Some(gate) = gate {
            return Some(gate);
        }
        self.agents.get(agent_id.as_deref()?)?.as_deref()
    }
}

/// The other naive baseline: look the number up in the parsed JSON document itself.
fn resolve_in_value<'a>(v: &'a serde_json::Value, to: &str) -> Option<&'a str> {
    let entry = v.get("numbers")?.get(to)?;
    if let Some(url) = entry.get("gate").and_then(|g| g.get("url")).and_then(|u| u.as_str()) {
        return Some(url);
    }
    let agent_id = entry.get("agent_id")?.as_str()?;
    v.get("agents")?.get(agent_id)?.get("gate")?.get("url")?.as_str()
}

fn form(c: &mut Criterion) {
    let mut g = c.benchmark_group("form");
    g.throughput(Throughput::Bytes(INBOUND_RINGING.len() as u64));
    g.bench_function("parse_inbound_ringing", |b| {
        b.iter(|| {
            let params = parse_form(black_box(INBOUND_RINGING)).unwrap();
            let call = CallParams::from_params(&params);
            black_box((call.is_inbound_ringing(), call.to.map(str::len)))
        })
    });
    g.finish();
}

fn resolve(c: &mut Criterion) {
    let json = routes_json();
    let opts = ValidateOptions::default();
    let table = RouteTable::parse(json.as_bytes(), &opts).expect("generated routes are valid");
    assert_eq!(table.number_count(), NUMBERS as usize);
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    let naive = NaiveTable::from_json(&value);
    drop(json);

    let hits = random_numbers(LOOKUPS, 0x2545_f491_4f6c_dd1d);
    // Numbers in E.164 form that are not in the table, and addresses that are not numbers.
    let misses: Vec<String> = (0..LOOKUPS as u64).map(|i| format!("+1555{:07}", i)).collect();
    let sips: Vec<String> = (0..LOOKUPS).map(|i| format!("sip:user{i}@example.com")).collect();
    // Sanity: every structure agrees on every hit before anything is timed.
    for to in &hits {
        let r = table.resolve(to);
        assert!(matches!(r.source, Source::Number | Source::Agent));
        assert_eq!(r.gate.map(|g| g.url()), naive.resolve(to));
        assert_eq!(naive.resolve(to), resolve_in_value(&value, to));
    }

    let mut g = c.benchmark_group("resolve_1m");
    g.throughput(Throughput::Elements(LOOKUPS as u64));
    g.bench_function("callgate_hit", |b| {
        b.iter(|| hits.iter().filter(|to| table.resolve(black_box(to)).gate.is_some()).count())
    });
    g.bench_function("callgate_miss", |b| {
        b.iter(|| misses.iter().filter(|to| table.resolve(black_box(to)).gate.is_some()).count())
    });
    g.bench_function("callgate_sip", |b| {
        b.iter(|| sips.iter().filter(|to| table.resolve(black_box(to)).gate.is_some()).count())
    });
    // The two halves of a hit that resolves through the agent: the number, then its agent.
    let agent_ids: Vec<String> = hits.iter().map(|to| table.number_agent(to).unwrap().to_string()).collect();
    g.bench_function("callgate_number_half", |b| {
        b.iter(|| hits.iter().filter(|to| table.number_agent(black_box(to)).is_some()).count())
    });
    g.bench_function("callgate_agent_half", |b| {
        b.iter(|| agent_ids.iter().filter(|id| table.agent_gate(black_box(id)).is_some()).count())
    });
    g.bench_function("baseline_hashmap_string_hit", |b| {
        b.iter(|| hits.iter().filter(|to| naive.resolve(black_box(to)).is_some()).count())
    });
    g.bench_function("baseline_hashmap_string_miss", |b| {
        b.iter(|| misses.iter().filter(|to| naive.resolve(black_box(to)).is_some()).count())
    });
    g.bench_function("baseline_json_value_hit", |b| {
        b.iter(|| hits.iter().filter(|to| resolve_in_value(&value, black_box(to)).is_some()).count())
    });
    g.finish();
}

fn gate_answer(c: &mut Criterion) {
    let mut g = c.benchmark_group("gate_answer");
    let cases: [(&str, &[u8]); 4] = [
        ("accept", br#"{"action":"accept"}"#),
        ("reject_reason", br#"{"action":"reject","reason":"no credit left on this account"}"#),
        (
            "accept_extra_fields",
            br#"{"ok":true,"account":{"id":"acc_123","plan":"pro"},"action":"accept","ttl":30}"#,
        ),
        ("malformed", br#"{"action":"REJECT"}"#),
    ];
    for (name, body) in cases {
        g.bench_function(name, |b| b.iter(|| parse_answer(black_box(body))));
    }
    g.finish();
    assert!(matches!(parse_answer(cases[0].1), GateDecision::Accept(_)));
}

fn twiml(c: &mut Criterion) {
    c.bench_function("twiml/reject_busy", |b| b.iter(|| black_box(reject_busy())));
}

/// X-Twilio-Signature checks on the inbound-ringing form, as callgate runs them with
/// `--public-url`: one token; the second of two tokens (rotation); a wrong signature (every
/// token and URL variant tried); a SharedKey (HMAC-SHA256). The baseline is the least any check
/// costs: parse, sort, concatenate, one HMAC-SHA1, base64.
fn signature(c: &mut Criterion) {
    let url = "https://callgate.example.com/twilio/voice";
    let (token, old_token) = ("12345678901234567890123456789012", "abcdefabcdefabcdefabcdefabcdefab");
    let params = parse_form(INBOUND_RINGING).unwrap();
    let pairs: Vec<(&str, &str)> = params.iter().map(|(n, v)| (n.as_ref(), v.as_ref())).collect();
    let good = sign_with_token(token, url, &pairs);
    let shared = sign_with_shared_key("shared-secret-0123456789", url, &pairs);
    let settings: &[u8] = b"key=KEY1,algorithm=HMAC_SHA256";
    let one = Verifier::new(vec![token.into()], vec![]);
    let rotated = Verifier::new(vec![old_token.into(), token.into()], vec![]);
    let keyed = Verifier::new(vec![], vec![("KEY1".into(), "shared-secret-0123456789".into())]);
    let bad = "AAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    assert_eq!(one.verify(url, SignedBody::Form(&params), Some(good.as_bytes()), None), Ok(()));
    assert_eq!(rotated.verify(url, SignedBody::Form(&params), Some(good.as_bytes()), None), Ok(()));
    assert_eq!(keyed.verify(url, SignedBody::Form(&params), Some(shared.as_bytes()), Some(settings)), Ok(()));
    assert!(one.verify(url, SignedBody::Form(&params), Some(bad.as_bytes()), None).is_err());

    let mut g = c.benchmark_group("signature");
    g.bench_function("verify_one_token", |b| {
        b.iter(|| one.verify(black_box(url), SignedBody::Form(&params), Some(good.as_bytes()), None))
    });
    g.bench_function("verify_second_of_two_tokens", |b| {
        b.iter(|| rotated.verify(black_box(url), SignedBody::Form(&params), Some(good.as_bytes()), None))
    });
    g.bench_function("verify_invalid", |b| {
        b.iter(|| one.verify(black_box(url), SignedBody::Form(&params), Some(bad.as_bytes()), None))
    });
    g.bench_function("verify_shared_key_sha256", |b| {
        b.iter(|| {
            keyed.verify(black_box(url), SignedBody::Form(&params), Some(shared.as_bytes()), Some(settings))
        })
    });
    g.bench_function("parse_and_verify_one_token", |b| {
        b.iter(|| {
            let params = parse_form(black_box(INBOUND_RINGING)).unwrap();
            one.verify(url, SignedBody::Form(&params), Some(good.as_bytes()), None)
        })
    });
    g.bench_function("baseline_parse_sort_hmac_sha1", |b| {
        b.iter(|| {
            let params = parse_form(black_box(INBOUND_RINGING)).unwrap();
            let mut sorted: Vec<(&str, &str)> =
                params.iter().map(|(n, v)| (n.as_ref(), v.as_ref())).collect();
            sorted.sort_unstable();
            let mut mac = Hmac::<sha1::Sha1>::new_from_slice(token.as_bytes()).unwrap();
            mac.update(url.as_bytes());
            for (n, v) in sorted {
                mac.update(n.as_bytes());
                mac.update(v.as_bytes());
            }
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        })
    });
    g.finish();
}

fn table_load(c: &mut Criterion) {
    let json = routes_json();
    let opts = ValidateOptions::default();
    let mut g = c.benchmark_group("routes_load");
    g.sample_size(10).warm_up_time(Duration::from_millis(100)).measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(NUMBERS));
    g.bench_function("parse_1m_numbers_100k_agents", |b| {
        b.iter_batched(
            || (),
            |()| RouteTable::parse(black_box(json.as_bytes()), &opts).unwrap(),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    // Short enough for a 2-core machine shared with builds; override with --measurement-time.
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = form, signature, resolve, gate_answer, twiml, table_load
}
criterion_main!(benches);
