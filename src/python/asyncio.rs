//! asyncio support: PKCS#11 work runs on worker threads (the blocking threads of
//! pyo3-async-runtimes' tokio runtime), never on the event loop; results go back to the loop
//! in batches.
//!
//! Worker threads follow what the pools can use. An asynchronous call first waits for its
//! turn without a thread (a tokio semaphore, no GIL): a call that borrows a session from a
//! pool waits for one of `max_sessions` turns of that pool, a call on a session lent to an
//! `async with` block waits for that session's one turn. Only then does it take a worker
//! thread, so a pool keeps at most `max_sessions` threads busy (plus one per session lent to
//! a block), however many tasks await it; a network HSM, where each call mostly waits, gets
//! as many calls in flight as it has sessions. `HSMKEY_ASYNC_THREADS` caps the threads of
//! the whole process (default [`DEFAULT_MAX_THREADS`]); idle threads end after 10 s.
//! A wait for a turn counts against `acquire_timeout`, like a wait for a session.
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

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyBytes;
use tokio::sync::Semaphore;

use crate::core::error::{Error, Kind, Result};
use crate::core::module::lock;
use crate::core::pool::Pool;
use crate::core::session::SessionSlot;

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

// -- turns -----------------------------------------------------------------------------------

/// What an asynchronous call waits for before it takes a worker thread.
pub enum Gate<'a> {
    /// One of the pool's `max_sessions` turns (the call borrows a session from the pool).
    Pool(&'a Arc<Pool>),
    /// The session's one turn (the call works on a session lent to a block).
    Session(&'a Arc<SessionSlot>),
    /// No wait (the call borrows nothing and returns quickly).
    Free,
}

/// A semaphore per live owner, found by the owner's address and checked by its weak
/// reference (an address reused by a new owner gets a new semaphore).
struct Turns<T> {
    map: BTreeMap<usize, (Weak<T>, Arc<Semaphore>)>,
    /// Dead entries are swept when the map grows past this.
    sweep_at: usize,
}

impl<T> Turns<T> {
    const fn new() -> Self {
        Turns {
            map: BTreeMap::new(),
            sweep_at: 64,
        }
    }

    fn get(&mut self, owner: &Arc<T>, permits: usize) -> Arc<Semaphore> {
        let key = Arc::as_ptr(owner) as usize;
        if let Some((weak, sem)) = self.map.get(&key) {
            if weak.upgrade().is_some_and(|o| Arc::ptr_eq(&o, owner)) {
                return sem.clone();
            }
        }
        if self.map.len() >= self.sweep_at {
            self.map.retain(|_, (weak, _)| weak.strong_count() > 0);
            self.sweep_at = (self.map.len() * 2).max(64);
        }
        let sem = Arc::new(Semaphore::new(permits.clamp(1, Semaphore::MAX_PERMITS)));
        self.map.insert(key, (Arc::downgrade(owner), sem.clone()));
        sem
    }
}

static POOL_TURNS: Mutex<Turns<Pool>> = Mutex::new(Turns::new());
static SESSION_TURNS: Mutex<Turns<SessionSlot>> = Mutex::new(Turns::new());

impl Gate<'_> {
    /// The semaphore to wait on, and the pool whose `acquire_timeout` bounds the wait.
    fn turns(&self) -> Option<(Arc<Semaphore>, Arc<Pool>)> {
        match self {
            Gate::Pool(pool) => Some((
                lock(&POOL_TURNS).get(pool, pool.cfg.max_sessions),
                Arc::clone(pool),
            )),
            Gate::Session(slot) => Some((lock(&SESSION_TURNS).get(slot, 1), slot.pool.clone())),
            Gate::Free => None,
        }
    }
}

// -- calls in flight (for interpreter exit) ----------------------------------------------------

static IN_FLIGHT: Mutex<usize> = Mutex::new(0);
static SETTLED: Condvar = Condvar::new();

/// Waits (without the GIL) until no asynchronous call is in flight, at most `timeout`.
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

/// One call in flight, counted from `spawn` until its result is in its loop's queue (or the
/// call was dropped).
struct InFlight;

impl InFlight {
    fn new() -> Self {
        *lock(&IN_FLIGHT) += 1;
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut n = lock(&IN_FLIGHT);
        *n = n.saturating_sub(1);
        SETTLED.notify_all();
    }
}

// -- delivery ----------------------------------------------------------------------------------

/// Makes, on the loop's thread, the value (or exception) of a finished call.
type Outcome = Box<dyn FnOnce(Python<'_>) -> PyResult<Py<PyAny>> + Send>;

/// A finished call: its future and what to complete it with.
struct Delivery {
    future: Py<PyAny>,
    outcome: Outcome,
}

#[derive(Default)]
struct Queue {
    items: Vec<Delivery>,
    /// A drain is scheduled on the loop (set by the worker that found the queue empty).
    scheduled: bool,
}

/// The results waiting for one event loop. Called (by the loop, through
/// `call_soon_threadsafe`) it completes all of them.
#[pyclass(name = "_Dispatcher", module = "hsmkey._hsmkey", frozen)]
struct Dispatcher {
    queue: Mutex<Queue>,
    /// A weak reference to the loop (the dispatcher lives in a WeakKeyDictionary by loop).
    event_loop: Py<PyAny>,
}

#[pymethods]
impl Dispatcher {
    fn __call__(&self, py: Python<'_>) {
        let items = {
            let mut q = lock(&self.queue);
            q.scheduled = false;
            std::mem::take(&mut q.items)
        };
        for d in items {
            complete(py, d);
        }
    }
}

/// Completes a future unless it was cancelled (or completed) meanwhile.
fn complete(py: Python<'_>, d: Delivery) {
    let fut = d.future.bind(py);
    if fut
        .call_method0("done")
        .and_then(|v| v.is_truthy())
        .unwrap_or(true)
    {
        return;
    }
    let _ = match (d.outcome)(py) {
        Ok(value) => fut.call_method1("set_result", (value,)),
        Err(e) => fut.call_method1("set_exception", (e.into_value(py),)),
    };
}

impl Dispatcher {
    /// Queues `d`; wakes the loop if nobody has yet. Called on a worker thread, without the GIL.
    fn deliver(me: &Py<Dispatcher>, d: Delivery) {
        let this = me.get();
        let wake = {
            let mut q = lock(&this.queue);
            q.items.push(d);
            !std::mem::replace(&mut q.scheduled, true)
        };
        if !wake {
            return;
        }
        // Nothing to deliver to once the interpreter is finalizing.
        let _ = Python::try_attach(|py| {
            let woke = this
                .event_loop
                .call0(py)
                .ok()
                .filter(|l| !l.is_none(py))
                .map(|l| l.call_method1(py, "call_soon_threadsafe", (me.clone_ref(py),)));
            if !matches!(woke, Some(Ok(_))) {
                // The loop is closed or gone (its caller gave up): drop what waited for it.
                let items = {
                    let mut q = lock(&this.queue);
                    q.scheduled = false;
                    std::mem::take(&mut q.items)
                };
                drop(items);
            }
        });
    }
}

/// The dispatcher of `event_loop`, made on first use.
fn dispatcher(py: Python<'_>, event_loop: &Bound<'_, PyAny>) -> PyResult<Py<Dispatcher>> {
    static BY_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let by_loop = BY_LOOP
        .get_or_try_init(py, || {
            py.import("weakref")?
                .call_method0("WeakKeyDictionary")
                .map(Bound::unbind)
        })?
        .bind(py);
    if let Ok(found) = by_loop
        .call_method1("get", (event_loop,))?
        .cast::<Dispatcher>()
    {
        return Ok(found.clone().unbind());
    }
    let weak = py.import("weakref")?.getattr("ref")?.call1((event_loop,))?;
    let made = Py::new(
        py,
        Dispatcher {
            queue: Mutex::new(Queue::default()),
            event_loop: weak.unbind(),
        },
    )?;
    by_loop.set_item(event_loop, made.clone_ref(py))?;
    Ok(made)
}

// -- cancellation ------------------------------------------------------------------------------

/// Done-callback of every future: when the future is cancelled, a call still waiting for its
/// turn is dropped, and one waiting for a session stops waiting (nothing gets borrowed).
#[pyclass(name = "_Canceller", module = "hsmkey._hsmkey", frozen)]
struct Canceller {
    cancelled: Arc<AtomicBool>,
    task: tokio::task::AbortHandle,
}

#[pymethods]
impl Canceller {
    fn __call__(&self, fut: &Bound<'_, PyAny>) -> PyResult<()> {
        if fut.call_method0("cancelled")?.is_truthy()? {
            self.cancelled.store(true, Ordering::Release);
            self.task.abort();
        }
        Ok(())
    }
}

fn cancelled_error() -> Error {
    Error::new(Kind::Session, "the asyncio task was cancelled")
}

// -- spawning ----------------------------------------------------------------------------------

fn get_running_loop(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    static GET: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    GET.get_or_try_init(py, || {
        py.import("asyncio")?
            .getattr("get_running_loop")
            .map(Bound::unbind)
    })?
    .bind(py)
    .call0()
}

/// Returns an asyncio future of the running loop, completed with `convert(work(interrupt))`.
/// `work` runs on a worker thread once `gate` gives it a turn; `interrupt` (for
/// `Pool::acquire`) fails once the task is cancelled or `acquire_timeout` has passed since
/// the call.
pub fn spawn<'py, T: Send + 'static>(
    py: Python<'py>,
    gate: Gate<'_>,
    work: impl FnOnce(&dyn Fn() -> Result<()>) -> Result<T> + Send + 'static,
    convert: impl FnOnce(Python<'_>, T) -> PyResult<Py<PyAny>> + Send + 'static,
) -> PyResult<Bound<'py, PyAny>> {
    let event_loop = get_running_loop(py)?;
    let fut = event_loop.call_method0("create_future")?;
    let dispatcher = dispatcher(py, &event_loop)?;
    let future = fut.clone().unbind();
    let turns = gate.turns();
    let cancelled = Arc::new(AtomicBool::new(false));
    let flag = cancelled.clone();
    let in_flight = InFlight::new();
    let start = Instant::now();
    let runtime = pyo3_async_runtimes::tokio::get_runtime();
    let task = runtime.spawn(async move {
        let (permit, pool) = match turns {
            None => (None, None),
            Some((sem, pool)) => {
                let timeout = pool.cfg.acquire_timeout;
                match tokio::time::timeout(timeout, sem.acquire_owned()).await {
                    Ok(Ok(permit)) => (Some(permit), Some(pool)),
                    // (The semaphores are never closed.)
                    Ok(Err(_)) | Err(_) => {
                        let err = pool.timed_out(true);
                        finish::<T>(dispatcher, future, Err(err), convert, in_flight);
                        return;
                    }
                }
            }
        };
        if flag.load(Ordering::Acquire) {
            return; // cancelled while waiting: nothing was borrowed, nothing to deliver
        }
        tokio::task::spawn_blocking(move || {
            let deadline = pool.as_ref().map(|p| (start + p.cfg.acquire_timeout, p));
            let interrupt = || -> Result<()> {
                if flag.load(Ordering::Acquire) {
                    return Err(cancelled_error());
                }
                match &deadline {
                    Some((at, pool)) if Instant::now() >= *at => Err(pool.timed_out(false)),
                    _ => Ok(()),
                }
            };
            let result = work(&interrupt);
            drop(permit);
            finish(dispatcher, future, result, convert, in_flight);
        });
    });
    let canceller = Canceller {
        cancelled,
        task: task.abort_handle(),
    };
    fut.call_method1("add_done_callback", (Py::new(py, canceller)?,))?;
    Ok(fut)
}

fn finish<T: Send + 'static>(
    dispatcher: Py<Dispatcher>,
    future: Py<PyAny>,
    result: Result<T>,
    convert: impl FnOnce(Python<'_>, T) -> PyResult<Py<PyAny>> + Send + 'static,
    in_flight: InFlight,
) {
    let outcome =
        Box::new(move |py: Python<'_>| result.map_err(PyErr::from).and_then(|v| convert(py, v)));
    Dispatcher::deliver(&dispatcher, Delivery { future, outcome });
    drop(in_flight);
}

/// An awaitable of the bytes `work` makes.
pub fn spawn_bytes<'py>(
    py: Python<'py>,
    gate: Gate<'_>,
    work: impl FnOnce(&dyn Fn() -> Result<()>) -> Result<Vec<u8>> + Send + 'static,
) -> PyResult<Bound<'py, PyAny>> {
    spawn(py, gate, work, |py, out| {
        Ok(PyBytes::new(py, &out).into_any().unbind())
    })
}

/// An awaitable that is already done, with `value` (for work that needs no worker thread).
pub fn ready<'py>(py: Python<'py>, value: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let fut = get_running_loop(py)?.call_method0("create_future")?;
    fut.call_method1("set_result", (value,))?;
    Ok(fut)
}

pub fn worker_error(message: &str) -> Error {
    Error::new(Kind::PoolClosed, message)
}

fn aio(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    static AIO: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    Ok(AIO
        .get_or_try_init(py, || py.import("hsmkey._aio").map(Bound::unbind))?
        .bind(py))
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
