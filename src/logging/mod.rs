//! Log output kept off the request path: a formatted line is appended to a shared buffer and a
//! writer thread flushes the buffer every [`FLUSH_INTERVAL`], so a call costs a short copy
//! under a lock, never a `write` and never a thread wake-up.
//!
//! tracing-appender's non-blocking writer wakes its thread for every line; at 2,000 calls/s that
//! wake-up, its `sched_yield`s and the futex calls on both sides were over a tenth of callgate's
//! CPU (measured with `perf`, see README "Performance"). Here the thread wakes at most once per
//! interval while lines arrive, early only when the buffer passes [`HIGH_WATER`], and sleeps
//! without a timer while nothing is logged.

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::MakeWriter;

mod json;
pub use json::JsonLines;

/// How long a line may wait in the buffer before it is written.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// A buffer this full is flushed at once, without waiting for the interval.
pub const HIGH_WATER: usize = 256 * 1024;
/// Lines beyond this are dropped (and counted) rather than letting a stalled stderr grow memory.
pub const MAX_BUFFERED: usize = 8 * 1024 * 1024;

/// The [`MakeWriter`] handed to `tracing_subscriber`; cheap to clone.
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

/// Stops the writer thread, after a last flush, when dropped: keep it alive for the process.
pub struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    /// The writer thread, for waking it; set as soon as it is spawned.
    thread: OnceLock<Thread>,
}

#[derive(Default)]
struct State {
    buffer: Vec<u8>,
    /// Lines dropped since the last write, for the notice that says so.
    dropped: u64,
    /// The writer thread is parked with no deadline: the next line must wake it.
    idle: bool,
    /// The writer thread has been woken early for a full buffer and not yet run.
    urged: bool,
    stop: bool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves only bytes behind; keep logging.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn wake(&self) {
        if let Some(thread) = self.thread.get() {
            thread.unpark();
        }
    }
}

/// Starts the writer thread, flushing to `out`.
pub fn writer<W: Write + Send + 'static>(out: W) -> (LogWriter, LogGuard) {
    let shared = Arc::new(Shared { state: Mutex::new(State::default()), thread: OnceLock::new() });
    let thread = std::thread::Builder::new()
        .name("callgate-log".into())
        .spawn({
            let shared = Arc::clone(&shared);
            move || flush_loop(&shared, out)
        })
        .expect("the log writer thread starts");
    shared.thread.set(thread.thread().clone()).expect("set once, here");
    (LogWriter { shared: Arc::clone(&shared) }, LogGuard { shared, thread: Some(thread) })
}

fn flush_loop<W: Write>(shared: &Shared, mut out: W) {
    let mut spare = Vec::new();
    loop {
        let (mut batch, stop, dropped) = {
            let mut state = shared.state();
            state.urged = false;
            if state.buffer.is_empty() && state.dropped == 0 {
                if state.stop {
                    return;
                }
                state.idle = true;
                drop(state);
                std::thread::park();
                continue;
            }
            let dropped = std::mem::take(&mut state.dropped);
            (std::mem::replace(&mut state.buffer, spare), state.stop, dropped)
        };
        if dropped > 0 {
            let _ = writeln!(batch, "callgate: {dropped} log lines dropped: stderr is not keeping up");
        }
        // A failed write (closed stderr) loses these lines and nothing else.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
        if batch.capacity() > HIGH_WATER * 2 {
            batch.shrink_to(HIGH_WATER);
        }
        spare = batch;
        // Let lines gather; a full buffer or the guard's drop cuts the wait short. Once stopping,
        // go round at once until what was logged meanwhile is written too.
        if !stop {
            std::thread::park_timeout(FLUSH_INTERVAL);
        }
    }
}

impl Write for &LogWriter {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let mut state = self.shared.state();
        if state.buffer.len() + line.len() > MAX_BUFFERED {
            state.dropped += 1;
            return Ok(line.len());
        }
        state.buffer.extend_from_slice(line);
        let wake = if state.idle {
            state.idle = false;
            true
        } else if state.buffer.len() >= HIGH_WATER && !state.urged {
            state.urged = true;
            true
        } else {
            false
        };
        drop(state);
        if wake {
            self.shared.wake();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = &'a LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

/// How long exiting waits for the last lines to be written: a stalled stderr must not keep a
/// stopping process alive.
const LAST_FLUSH_WAIT: Duration = Duration::from_secs(1);

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.state().stop = true;
        self.shared.wake();
        let Some(thread) = self.thread.take() else { return };
        let deadline = std::time::Instant::now() + LAST_FLUSH_WAIT;
        while !thread.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        if thread.is_finished() {
            let _ = thread.join();
        }
    }
}

/// Lets at most `per_second` occurrences of one kind of log line through each second and counts
/// the rest, so that a flood of bad requests cannot crowd the decision lines out of the buffer.
pub struct Throttle {
    per_second: u32,
    state: Mutex<ThrottleState>,
}

struct ThrottleState {
    window: Option<Instant>,
    in_window: u32,
    left_out: u64,
}

impl Throttle {
    pub const fn new(per_second: u32) -> Throttle {
        Throttle { per_second, state: Mutex::new(ThrottleState { window: None, in_window: 0, left_out: 0 }) }
    }

    /// `Some(lines left out since the last one let through)` when this line may be written.
    pub fn admit(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        if state.window.is_none_or(|w| now.duration_since(w) >= Duration::from_secs(1)) {
            state.window = Some(now);
            state.in_window = 0;
        }
        if state.in_window >= self.per_second {
            state.left_out += 1;
            return None;
        }
        state.in_window += 1;
        Some(std::mem::take(&mut state.left_out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A sink the test can read while the writer thread holds the other end.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn wait_for(sink: &Sink, expected: &str) -> Duration {
        let start = Instant::now();
        while sink.text() != expected {
            assert!(start.elapsed() < Duration::from_secs(5), "never written; have {:?}", sink.text());
            std::thread::sleep(Duration::from_millis(2));
        }
        start.elapsed()
    }

    #[test]
    fn lines_reach_the_output_in_order_without_a_flush_call() {
        let sink = Sink::default();
        let (writer, _guard) = super::writer(sink.clone());
        (&writer).write_all(b"one\n").unwrap();
        wait_for(&sink, "one\n");
        // The thread is now waiting out its interval or idle; both must still deliver.
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..250 {
                        (&writer).write_all(format!("{t}:{i}\n").as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let expected_lines = 1 + 4 * 250;
        let start = Instant::now();
        while sink.text().lines().count() < expected_lines {
            assert!(start.elapsed() < Duration::from_secs(5));
            std::thread::sleep(Duration::from_millis(2));
        }
        let text = sink.text();
        for t in 0..4 {
            let mine: Vec<&str> = text.lines().filter(|l| l.starts_with(&format!("{t}:"))).collect();
            let want: Vec<String> = (0..250).map(|i| format!("{t}:{i}")).collect();
            assert_eq!(mine, want, "writer {t}'s lines out of order or lost");
        }
    }

    #[test]
    fn an_idle_writer_wakes_for_the_next_line() {
        let sink = Sink::default();
        let (writer, _guard) = super::writer(sink.clone());
        (&writer).write_all(b"a\n").unwrap();
        wait_for(&sink, "a\n");
        // Well past the interval: the thread has found the buffer empty and parked for good.
        std::thread::sleep(FLUSH_INTERVAL * 3);
        (&writer).write_all(b"b\n").unwrap();
        let waited = wait_for(&sink, "a\nb\n");
        assert!(waited < Duration::from_secs(2), "idle wake-up took {waited:?}");
    }

    #[test]
    fn dropping_the_guard_flushes_what_is_buffered() {
        let sink = Sink::default();
        let (writer, guard) = super::writer(sink.clone());
        (&writer).write_all(b"first\n").unwrap();
        wait_for(&sink, "first\n");
        // Written during the interval's wait: only the guard's drop can deliver it now.
        (&writer).write_all(b"last\n").unwrap();
        drop(guard);
        assert_eq!(sink.text(), "first\nlast\n");
    }

    #[test]
    fn a_stalled_output_drops_lines_and_says_how_many() {
        /// Blocks every write until released.
        struct Stalled(Arc<(Mutex<bool>, std::sync::Condvar)>, Sink);
        impl Write for Stalled {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                let (open, cv) = &*self.0;
                let mut open = open.lock().unwrap();
                while !*open {
                    open = cv.wait(open).unwrap();
                }
                self.1.write(bytes)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let sink = Sink::default();
        let (writer, guard) = super::writer(Stalled(Arc::clone(&gate), sink.clone()));
        // The first line is taken by the thread, which then blocks writing it.
        (&writer).write_all(b"x\n").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let mut line = vec![b'y'; 1023];
        line.push(b'\n');
        let fits = MAX_BUFFERED / line.len();
        for _ in 0..fits + 10 {
            (&writer).write_all(&line).unwrap();
        }
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        drop(guard);
        let text = sink.text();
        // The writer thread was blocked throughout: exactly what fits was kept, the rest counted.
        assert_eq!(text.lines().filter(|l| l.starts_with('y')).count(), fits);
        assert!(text.contains("callgate: 10 log lines dropped: stderr is not keeping up"), "no drop notice");
    }

    #[test]
    fn a_stalled_output_does_not_hold_up_exit() {
        struct Stuck;
        impl Write for Stuck {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                // A reader that never drains: blocked for good, wake-ups or not.
                loop {
                    std::thread::park();
                }
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let (writer, guard) = super::writer(Stuck);
        (&writer).write_all(b"never written\n").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let start = Instant::now();
        drop(guard);
        assert!(start.elapsed() < LAST_FLUSH_WAIT * 3, "exit waited {:?}", start.elapsed());
    }
}
