//! A fixed pool of threads for the hot path's CPU-heavy crypto (X-Wing encapsulation and
//! decapsulation, unsealing a tenant key: 30-50 µs each), so it never runs on an executor thread
//! that drives other requests' I/O and the audit writer.
//!
//! Why not tokio's blocking pool: it grows a thread per concurrent job (up to 512) and every job
//! wakes a sleeping thread, so each request paid two thread hand-offs, which on a 2-core machine
//! cost as much CPU as the crypto itself (docs/PERFORMANCE.md). This pool has one thread per core;
//! a thread that finishes a job takes the next one without sleeping, so under load a request
//! costs one queue push and one wake-up of the task that waits for the result.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard};
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// The process's pool, started on first use with one thread per available core.
static POOL: LazyLock<CryptoPool> = LazyLock::new(|| {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    CryptoPool::start(threads)
});

/// Run `work` on the crypto pool and wait for its result without blocking the executor.
pub async fn run<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, CryptoTaskFailed> {
    POOL.run(work).await
}

/// The job did not return: it panicked, or the pool has no thread to run it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CryptoTaskFailed;

impl std::fmt::Display for CryptoTaskFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("crypto task failed")
    }
}

impl std::error::Error for CryptoTaskFailed {}

/// Threads taking jobs from one queue.
pub struct CryptoPool {
    shared: Arc<Shared>,
    threads: usize,
}

struct Shared {
    queue: Mutex<Queue>,
    job_ready: Condvar,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Threads waiting on `job_ready`: a push wakes one only if there is one to wake.
    idle: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Jobs run outside the lock and their panics are caught, so a poisoned lock can only
        // come from a panic in this module's few lines; the queue is still consistent.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl CryptoPool {
    /// Start `threads` threads (at least one). Threads that cannot be spawned are logged and
    /// skipped; with none, every job fails with [`CryptoTaskFailed`].
    pub fn start(threads: usize) -> CryptoPool {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            job_ready: Condvar::new(),
        });
        let mut started = 0;
        for i in 0..threads.max(1) {
            let s = shared.clone();
            match std::thread::Builder::new()
                .name(format!("pqkms-crypto-{i}"))
                .spawn(move || work_loop(&s))
            {
                Ok(_) => started += 1,
                Err(e) => tracing::error!(error = %e, "cannot start a crypto thread"),
            }
        }
        CryptoPool {
            shared,
            threads: started,
        }
    }

    /// Run `work` on one of the pool's threads and wait for its result.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, CryptoTaskFailed> {
        if self.threads == 0 {
            return Err(CryptoTaskFailed);
        }
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            // A request that is gone (timed out, client hung up) while its job queued gets no
            // work done for it: under overload the queue drains instead of growing.
            if done.is_closed() {
                return;
            }
            let _ = done.send(work());
        });
        let wake = {
            let mut queue = self.shared.lock();
            queue.jobs.push_back(job);
            queue.idle > 0
        };
        if wake {
            self.shared.job_ready.notify_one();
        }
        // A job that panicked dropped `done` unsent.
        result.await.map_err(|_| CryptoTaskFailed)
    }
}

fn work_loop(shared: &Shared) {
    loop {
        let job = {
            let mut queue = shared.lock();
            loop {
                if let Some(job) = queue.jobs.pop_front() {
                    break job;
                }
                queue.idle += 1;
                queue = shared
                    .job_ready
                    .wait(queue)
                    .unwrap_or_else(|p| p.into_inner());
                queue.idle -= 1;
            }
        };
        // A panicking job fails its own request only; the thread goes on.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_concurrent_jobs_and_returns_each_its_own_result() {
        let pool = Arc::new(CryptoPool::start(2));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..256u64 {
            let pool = pool.clone();
            tasks.spawn(async move { (i, pool.run(move || i * i).await) });
        }
        let mut seen = 0;
        while let Some(joined) = tasks.join_next().await {
            let (i, result) = joined.expect("task");
            assert_eq!(result, Ok(i * i));
            seen += 1;
        }
        assert_eq!(seen, 256);
    }

    #[tokio::test]
    async fn a_panicking_job_fails_alone_and_the_pool_goes_on() {
        let pool = CryptoPool::start(1);
        let failed = pool.run(|| -> u8 { panic!("job panics") }).await;
        assert_eq!(failed, Err(CryptoTaskFailed));
        // The one thread survived the panic and runs the next job.
        assert_eq!(pool.run(|| 7u8).await, Ok(7));
    }

    #[tokio::test]
    async fn a_job_whose_waiter_is_gone_is_skipped() {
        let pool = Arc::new(CryptoPool::start(1));
        // Hold the one thread until the second job is queued and abandoned.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (started, running) = oneshot::channel::<()>();
        let p = pool.clone();
        let first = tokio::spawn(async move {
            p.run(move || {
                let _ = started.send(());
                held.recv().is_ok()
            })
            .await
        });
        running.await.expect("first job started");
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ran.clone();
        let abandoned = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            pool.run(move || flag.store(true, std::sync::atomic::Ordering::SeqCst)),
        )
        .await;
        assert!(abandoned.is_err(), "the second job cannot have run yet");
        release.send(()).expect("first job waits");
        assert_eq!(first.await.expect("task"), Ok(true));
        // Jobs run in order: once a later one ran, the abandoned one was taken and skipped.
        assert_eq!(pool.run(|| 1u8).await, Ok(1));
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[tokio::test]
    async fn jobs_run_off_the_calling_thread() {
        let pool = CryptoPool::start(1);
        let name = pool
            .run(|| std::thread::current().name().map(str::to_owned))
            .await;
        assert_eq!(name, Ok(Some("pqkms-crypto-0".to_owned())));
    }
}
