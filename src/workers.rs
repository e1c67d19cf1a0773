//! The call workers: one thread per CPU, each with its own single-threaded runtime, accepting
//! from the shared public listener and serving its connections from start to end.
//!
//! A call is a chain of short steps (read the webhook, ask the gate, forward to the engine,
//! answer) with a wait for a socket between each. On a work-stealing runtime each of those
//! wake-ups may land on another thread, and at a few thousand calls per second most of the CPU
//! goes to threads parking and waking one another. Here a call never leaves the thread that
//! accepted its connection, and each worker has its own gate and engine connection pools (see
//! [`PerWorker`]), so a pooled connection's task runs beside the request that uses it.

use std::cell::Cell;
use std::num::NonZeroUsize;

thread_local! {
    /// This thread's worker index; 0 on threads that are not call workers.
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The number of call workers when none is configured: the CPUs this process may use, which
/// counts its cgroup's CPU limit and its affinity mask.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

/// One `T` per call worker, each used only from its own worker's thread (the first also from
/// any thread that is not a call worker, though nothing in callgate does that).
pub struct PerWorker<T>(Box<[T]>);

impl<T> PerWorker<T> {
    pub fn new(workers: usize, make: impl FnMut() -> T) -> PerWorker<T> {
        PerWorker(std::iter::repeat_with(make).take(workers.max(1)).collect())
    }

    /// This worker's `T`.
    pub fn get(&self) -> &T {
        &self.0[index() % self.0.len()]
    }

    /// How many there are: one per worker.
    pub fn count(&self) -> usize {
        self.0.len()
    }
}

/// The calling thread's worker index (0 on a thread that is not a call worker).
pub fn index() -> usize {
    INDEX.with(Cell::get)
}

/// Starts call worker `index` on a thread of its own, running `serve` on a single-threaded
/// runtime until it completes; then every task still on that runtime is dropped, and its
/// blocking work is given a second to finish.
pub fn spawn<F, Fut>(index: usize, serve: F) -> std::thread::JoinHandle<()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    std::thread::Builder::new()
        .name(format!("callgate-w{index}"))
        .spawn(move || {
            INDEX.with(|i| i.set(index));
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a worker's runtime starts");
            runtime.block_on(serve());
            // A gate's DNS lookup still under way on this runtime's blocking pool must not hold
            // up the exit.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
        })
        .expect("a worker thread starts")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_worker_gets_its_own_value() {
        let per = std::sync::Arc::new(PerWorker::new(3, {
            let mut n = 0;
            move || {
                n += 1;
                n
            }
        }));
        assert_eq!(*per.get(), 1, "threads that are not workers use the first");
        let seen: Vec<usize> = (0..3)
            .map(|i| {
                let per = std::sync::Arc::clone(&per);
                let (tx, rx) = std::sync::mpsc::channel();
                spawn(i, move || async move { tx.send(*per.get()).unwrap() }).join().unwrap();
                rx.recv().unwrap()
            })
            .collect();
        assert_eq!(seen, [1, 2, 3]);
    }
}
