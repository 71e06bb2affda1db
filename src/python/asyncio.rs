//! asyncio support: PKCS#11 work runs on the blocking threads of pyo3-async-runtimes' tokio
//! runtime, never on the event loop; results come back through `loop.call_soon_threadsafe`.
//!
//! hsmkey completes the asyncio futures itself rather than through `future_into_py`: a
//! worker that delivers a result must never be inside a GIL-released section when the
//! interpreter finalizes (CPython then ends the thread with `pthread_exit`, which aborts the
//! process when Rust frames are on the stack: seen with `future_into_py` when `asyncio.run`
//! returned while a worker was still in `call_soon_threadsafe`). So every delivery is counted,
//! and the `atexit` handler waits for the count to reach zero before finalization starts.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyBytes;

use crate::core::error::Result;
use crate::core::module::lock;

/// Threads that run PKCS#11 work for asyncio callers: `HSMKEY_ASYNC_THREADS`, or the number
/// of CPUs. More threads than cores buys nothing from a token that computes in this process
/// (SoftHSM2) and takes CPU from the event loop; a network HSM, where each call mostly
/// waits, wants more (e.g. 4 x the pool size).
pub fn configure_runtime() {
    let threads = std::env::var("HSMKEY_ASYNC_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        });
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder
        .worker_threads(1)
        .max_blocking_threads(threads)
        .thread_name("hsmkey-async")
        .enable_all();
    pyo3_async_runtimes::tokio::init(builder);
}

static IN_FLIGHT: Mutex<usize> = Mutex::new(0);
static SETTLED: Condvar = Condvar::new();

/// Waits (without the GIL) until no asyncio result is being delivered, at most `timeout`.
pub fn wait_idle(timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut n = lock(&IN_FLIGHT);
    while *n > 0 {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        n = match SETTLED.wait_timeout(n, deadline - now) {
            Ok((g, _)) => g,
            Err(p) => p.into_inner().0,
        };
    }
}

fn aio(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    static AIO: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    Ok(AIO
        .get_or_try_init(py, || py.import("hsmkey._aio").map(Bound::unbind))?
        .bind(py))
}

/// Returns an asyncio future of the running loop, completed with `convert(work())`, where
/// `work` runs on a blocking worker thread.
pub fn spawn<'py, T: Send + 'static>(
    py: Python<'py>,
    work: impl FnOnce() -> Result<T> + Send + 'static,
    convert: impl FnOnce(Python<'_>, T) -> PyResult<Py<PyAny>> + Send + 'static,
) -> PyResult<Bound<'py, PyAny>> {
    let event_loop = py.import("asyncio")?.call_method0("get_running_loop")?;
    let fut = event_loop.call_method0("create_future")?;
    let resolve = aio(py)?.getattr("resolve")?.unbind();
    let (event_loop, target) = (event_loop.unbind(), fut.clone().unbind());
    *lock(&IN_FLIGHT) += 1;
    pyo3_async_runtimes::tokio::get_runtime().spawn_blocking(move || {
        let result = work();
        // Nothing to deliver to once the interpreter is finalizing.
        let _ = Python::try_attach(|py| {
            crate::python::logging::flush(py);
            let (ok, value) = match result.map_err(PyErr::from).and_then(|v| convert(py, v)) {
                Ok(v) => (true, v),
                Err(e) => (false, e.into_value(py).into_any()),
            };
            // A closed loop (the caller gave up) is not an error of ours.
            let _ =
                event_loop.call_method1(py, "call_soon_threadsafe", (resolve, target, ok, value));
        });
        let mut n = lock(&IN_FLIGHT);
        *n -= 1;
        SETTLED.notify_all();
    });
    Ok(fut)
}

/// An awaitable of the bytes `work` makes.
pub fn spawn_bytes<'py>(
    py: Python<'py>,
    work: impl FnOnce() -> Result<Vec<u8>> + Send + 'static,
) -> PyResult<Bound<'py, PyAny>> {
    spawn(py, work, |py, out| {
        Ok(PyBytes::new(py, &out).into_any().unbind())
    })
}

/// Adds the done-callback that returns a session whose `__aenter__` was cancelled.
pub fn close_when_cancelled(fut: &Bound<'_, PyAny>, session: Py<PyAny>) -> PyResult<()> {
    let py = fut.py();
    let callback = py
        .import("functools")?
        .getattr("partial")?
        .call1((aio(py)?.getattr("close_if_cancelled")?, session))?;
    fut.call_method1("add_done_callback", (callback,))?;
    Ok(())
}
