//! Markdown tables of the load bench's results.

use crate::client::RunResult;

/// One measured run.
pub struct Row {
    pub path: &'static str,
    pub target: &'static str,
    /// `open 2000/s` or `closed 32 conns`.
    pub load: String,
    pub result: RunResult,
    /// callgate's own `callgate_overhead_seconds` p99 over this run, in µs (bucket bound,
    /// interpolated), when the target was callgate.
    pub overhead_p99_us: Option<(f64, f64)>,
    /// CPU time the proxy (callgate, or nginx's master and workers) spent per call, in µs.
    pub cpu_us_per_call: Option<f64>,
    /// The median of the p99s of the run's slices, in ms: robust to a noise burst in one slice.
    pub slice_p99_median_ms: f64,
}

pub fn header(title: &str) {
    println!("\n### {title}\n");
}

pub fn runs(rows: &[Row]) {
    println!();
    println!(
        "| path | target | load | calls/s | p50 ms | p99 ms | p99.9 ms | max ms | errors | CPU µs/call | callgate_overhead p99 |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        let r = &row.result;
        println!(
            "| {} | {} | {} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} | {} |",
            row.path,
            row.target,
            row.load,
            r.calls_per_sec(),
            r.ms(0.5),
            r.ms(0.99),
            r.ms(0.999),
            r.hist.max() as f64 / 1e6,
            errors(r),
            row.cpu_us_per_call.map_or("".into(), |c| format!("{c:.0}")),
            row.overhead_p99_us.map_or("".into(), overhead),
        );
    }
}

pub fn errors(r: &RunResult) -> String {
    let mut s = r.errors.to_string();
    if r.unsent > 0 {
        s.push_str(&format!(" (+{} unsent)", r.unsent));
    }
    s
}

/// `≤ 100 µs (~62 µs)`: the bucket bound and the interpolated estimate.
pub fn overhead((bound, estimate): (f64, f64)) -> String {
    if bound.is_infinite() {
        return format!("> {:.0} µs", estimate);
    }
    format!("≤ {:.0} µs (~{:.0} µs)", bound, estimate)
}

/// Added latency at one rate: `through` minus `direct`, per path, at p50/p99/p99.9, and the
/// p99 as the median over slices (a noise burst on the machine spoils one slice, not all).
pub fn added(rows: &[Row], load: &str, through: &str) {
    println!();
    println!(
        "| path | {through} p50 / p99 / p99.9 ms | direct p50 / p99 / p99.9 ms | added p50 | added p99 | added p99.9 | added p99, median of slices |"
    );
    println!("|---|---|---|---:|---:|---:|---:|");
    for row in rows.iter().filter(|r| r.load == load && r.target == through) {
        let Some(direct) = rows.iter().find(|d| d.load == load && d.path == row.path && d.target == "direct")
        else {
            continue;
        };
        let (c, d) = (&row.result, &direct.result);
        println!(
            "| {} | {:.3} / {:.3} / {:.3} | {:.3} / {:.3} / {:.3} | {:+.3} ms | {:+.3} ms | {:+.3} ms | {:+.3} ms |",
            row.path,
            c.ms(0.5),
            c.ms(0.99),
            c.ms(0.999),
            d.ms(0.5),
            d.ms(0.99),
            d.ms(0.999),
            c.ms(0.5) - d.ms(0.5),
            c.ms(0.99) - d.ms(0.99),
            c.ms(0.999) - d.ms(0.999),
            row.slice_p99_median_ms - direct.slice_p99_median_ms,
        );
    }
}

/// Throughput and latency of two implementations side by side, with the ratio.
pub fn versus(rows: &[Row], a: &str, b: &str) {
    println!(
        "| load | path | {a} calls/s | {b} calls/s | {a}/{b} | {a} p99 ms | {b} p99 ms | {a} CPU µs/call | {b} CPU µs/call | errors |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows.iter().filter(|r| r.target == a) {
        let Some(other) = rows.iter().find(|o| o.load == row.load && o.path == row.path && o.target == b)
        else {
            continue;
        };
        let (x, y) = (&row.result, &other.result);
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.2}× | {:.3} | {:.3} | {} | {} | {} / {} |",
            row.load,
            row.path,
            x.calls_per_sec(),
            y.calls_per_sec(),
            x.calls_per_sec() / y.calls_per_sec().max(1e-9),
            x.ms(0.99),
            y.ms(0.99),
            row.cpu_us_per_call.map_or("".into(), |c| format!("{c:.0}")),
            other.cpu_us_per_call.map_or("".into(), |c| format!("{c:.0}")),
            errors(x),
            errors(y),
        );
    }
}
