//! asyncio support: PKCS#11 work runs on worker threads (the blocking threads of
//! pyo3-async-runtimes' tokio runtime), never on the event loop; results go back to the loop
//! in batches.
//!
//! Worker threads follow what the pools can use. Calls that borrow a session from a pool
//! line up in that pool's lane, which runs at most `max_sessions` of them at once; calls on a
//! session lent to an `async with` block line up in that session's lane (one at a time). A
//! lane takes a worker thread when it has a free place, and a worker that finishes a call
//! takes the next one waiting in its lane itself: under load no thread is woken per call, and
//! a waiting call holds no thread. So a pool keeps at most `max_sessions` threads busy (plus
//! one per session lent to a block), however many tasks await it, and a network HSM, where
//! each call mostly waits, gets as many calls in flight as the pool has sessions.
//! `HSMKEY_ASYNC_THREADS` caps the worker threads of the whole process (default
//! [`DEFAULT_MAX_THREADS`]); idle ones end after 10 s. The wait in a lane counts against
//! `acquire_timeout`, like a wait for a session: a call still waiting when it runs out fails
//! with `HSMPoolExhaustedError`.
//!
//! Results: a worker puts its result in the queue of the caller's event loop and wakes the
//! loop (`call_soon_threadsafe`, which needs the GIL) only when the queue was empty; the
//! loop takes the whole queue at once and completes the futures, making the Python objects
//! there. Under load, workers hardly ever wait for the GIL and the loop wakes once per batch.
//!
//! hsmkey completes the asyncio futures itself rather than through `future_into_py`: a
//! worker that delivers a result must never be inside a GIL-released section when the
//! interpreter finalizes (CPython then ends the thread with `pthread_exit`, which aborts the
//! process when Rust frames are on the stack: seen with `future_into_py` when `asyncio.run`
//! returned while a worker was still in `call_soon_threadsafe`). So every call in flight is
//! counted, and the `atexit` handler waits for the count to reach zero before finalization
//! starts.
//!
//! The files: `lanes` (where calls line up and which worker runs them), `dispatch` (a call
//! becomes a future and a job; cancellation), `delivery` (results back to the loop, in
//! batches), `inflight` (the count the `atexit` handler waits on).

mod delivery;
mod dispatch;
mod inflight;
mod lanes;

pub use dispatch::{close_when_cancelled, ready, spawn, spawn_bytes};
pub use inflight::wait_idle;
pub use lanes::Gate;

use std::time::Duration;

/// Worker threads of the process when `HSMKEY_ASYNC_THREADS` does not say: a bound, not a
/// target (each pool uses at most its `max_sessions`, plus one per session lent to a block).
pub const DEFAULT_MAX_THREADS: usize = 512;

/// Idle worker threads end after this long.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// The most worker threads of this process: `HSMKEY_ASYNC_THREADS` or [`DEFAULT_MAX_THREADS`].
pub fn max_threads() -> usize {
    std::env::var("HSMKEY_ASYNC_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_MAX_THREADS)
}

pub fn configure_runtime() {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder
        // The one async thread only hands out turns; the PKCS#11 work runs on blocking threads.
        .worker_threads(1)
        .max_blocking_threads(max_threads())
        .thread_keep_alive(KEEP_ALIVE)
        .thread_name("hsmkey-async")
        .enable_all();
    pyo3_async_runtimes::tokio::init(builder);
}
