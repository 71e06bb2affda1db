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

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyBytes;

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

// -- lanes -----------------------------------------------------------------------------------

/// Where an asynchronous call lines up before it takes a worker thread.
pub enum Gate<'a> {
    /// The pool's lane, `max_sessions` wide (the call borrows a session from the pool).
    Pool(&'a Arc<Pool>),
    /// The session's lane, one wide (the call works on a session lent to a block).
    Session(&'a Arc<SessionSlot>),
    /// No lane (the call borrows nothing and returns quickly).
    Free,
}

/// A call waiting in a lane (type-erased [`Job`]).
trait Waiting: Send {
    fn run(self: Box<Self>);
    fn fail(self: Box<Self>, err: Error);
    fn is_cancelled(&self) -> bool;
    fn deadline(&self) -> Instant;
}

struct LaneState {
    running: usize,
    /// In arrival order, so in deadline order too (one pool, one `acquire_timeout`).
    queue: VecDeque<Box<dyn Waiting>>,
    /// A timer fails calls that wait past their deadline; at most one per lane.
    timer: bool,
}

struct Lane {
    width: usize,
    /// Weak: a lane must not keep its pool alive (the last reference closes a pool). Calls in
    /// the lane hold it strongly while they wait.
    pool: Weak<Pool>,
    state: Mutex<LaneState>,
}

impl Lane {
    fn new(width: usize, pool: &Arc<Pool>) -> Lane {
        Lane {
            width: width.max(1),
            pool: Arc::downgrade(pool),
            state: Mutex::new(LaneState {
                running: 0,
                queue: VecDeque::new(),
                timer: false,
            }),
        }
    }

    /// Runs `job` now on a worker thread if the lane has room, else lines it up.
    fn submit(self: &Arc<Self>, job: Box<dyn Waiting>) {
        let mut st = lock(&self.state);
        if st.running < self.width {
            st.running += 1;
            drop(st);
            let lane = self.clone();
            pyo3_async_runtimes::tokio::get_runtime().spawn_blocking(move || lane.work(job));
            return;
        }
        st.queue.push_back(job);
        if !std::mem::replace(&mut st.timer, true) {
            drop(st);
            let lane = self.clone();
            pyo3_async_runtimes::tokio::get_runtime().spawn(async move { lane.expire().await });
        }
    }

    /// The error of a call whose `acquire_timeout` ran out while it waited in the lane.
    fn timed_out(&self) -> Error {
        match self.pool.upgrade() {
            Some(pool) => pool.timed_out(true),
            None => Error::new(Kind::PoolClosed, "the pool is gone"),
        }
    }

    /// A worker thread of the lane: runs `job`, then whatever waits, until nothing does.
    fn work(&self, mut job: Box<dyn Waiting>) {
        loop {
            job.run();
            let mut st = lock(&self.state);
            loop {
                match st.queue.pop_front() {
                    None => {
                        st.running -= 1;
                        return;
                    }
                    Some(next) if next.is_cancelled() => drop(next),
                    Some(next) if Instant::now() >= next.deadline() => {
                        drop(st);
                        next.fail(self.timed_out());
                        st = lock(&self.state);
                    }
                    Some(next) => {
                        job = next;
                        break;
                    }
                }
            }
        }
    }

    /// The lane's timer: fails the calls that waited past their deadline, sleeping until the
    /// next one's; ends when nothing waits.
    async fn expire(self: Arc<Self>) {
        loop {
            let now = Instant::now();
            let mut expired = Vec::new();
            let next = {
                let mut st = lock(&self.state);
                while let Some(front) = st.queue.front() {
                    if !front.is_cancelled() && front.deadline() > now {
                        break;
                    }
                    if let Some(job) = st.queue.pop_front() {
                        if !job.is_cancelled() {
                            expired.push(job);
                        }
                    }
                }
                let next = st.queue.front().map(|j| j.deadline());
                if next.is_none() {
                    st.timer = false;
                }
                next
            };
            for job in expired {
                job.fail(self.timed_out());
            }
            match next {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => return,
            }
        }
    }
}

/// A lane per live owner, found by the owner's address and checked by its weak reference
/// (an address reused by a new owner gets a new lane).
struct Lanes<T> {
    map: BTreeMap<usize, (Weak<T>, Arc<Lane>)>,
    /// Dead entries are swept when the map grows past this.
    sweep_at: usize,
}

impl<T> Lanes<T> {
    const fn new() -> Self {
        Lanes {
            map: BTreeMap::new(),
            sweep_at: 64,
        }
    }

    fn get(&mut self, owner: &Arc<T>, make: impl FnOnce() -> Lane) -> Arc<Lane> {
        let key = Arc::as_ptr(owner) as usize;
        if let Some((weak, lane)) = self.map.get(&key) {
            if weak.upgrade().is_some_and(|o| Arc::ptr_eq(&o, owner)) {
                return lane.clone();
            }
        }
        if self.map.len() >= self.sweep_at {
            self.map.retain(|_, (weak, _)| weak.strong_count() > 0);
            self.sweep_at = (self.map.len() * 2).max(64);
        }
        let lane = Arc::new(make());
        self.map.insert(key, (Arc::downgrade(owner), lane.clone()));
        lane
    }
}

static POOL_LANES: Mutex<Lanes<Pool>> = Mutex::new(Lanes::new());
static SESSION_LANES: Mutex<Lanes<SessionSlot>> = Mutex::new(Lanes::new());

impl Gate<'_> {
    /// The lane to line up in, and the pool whose `acquire_timeout` bounds the wait.
    fn lane(&self) -> Option<(Arc<Lane>, Arc<Pool>)> {
        match self {
            Gate::Pool(pool) => Some((
                lock(&POOL_LANES).get(pool, || Lane::new(pool.cfg.max_sessions, pool)),
                Arc::clone(pool),
            )),
            Gate::Session(slot) => Some((
                lock(&SESSION_LANES).get(slot, || Lane::new(1, &slot.pool)),
                slot.pool.clone(),
            )),
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

/// The self-pipe of a dispatcher: a worker writes a byte (no GIL needed), the loop, which
/// watches the read end (`loop.add_reader`), drains the queue.
#[cfg(unix)]
struct WakePipe {
    read: libc::c_int,
    write: libc::c_int,
}

#[cfg(unix)]
impl WakePipe {
    fn new() -> std::io::Result<WakePipe> {
        let mut fds: [libc::c_int; 2] = [-1, -1];
        // SAFETY: `fds` has room for the two descriptors pipe() writes.
        if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let pipe = WakePipe {
            read: fds[0],
            write: fds[1],
        };
        for fd in fds {
            // SAFETY: fcntl on descriptors this function just made and owns.
            let ok = unsafe {
                let flags = libc::fcntl(fd, libc::F_GETFL);
                flags >= 0
                    && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
                    && libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) == 0
            };
            if !ok {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(pipe)
    }

    /// Makes the read end readable (a full pipe already is: then nothing is written).
    fn wake(&self) {
        let byte = 1u8;
        // SAFETY: writes one byte from a live local to a descriptor we own (non-blocking).
        let _ = unsafe { libc::write(self.write, (&byte as *const u8).cast(), 1) };
    }

    /// Empties the pipe (non-blocking reads until there is nothing more).
    fn drain(&self) {
        let mut buf = [0u8; 256];
        loop {
            // SAFETY: reads into a live local buffer of that length, from a descriptor we own.
            let n = unsafe { libc::read(self.read, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 || (n as usize) < buf.len() {
                return;
            }
        }
    }
}

#[cfg(unix)]
impl Drop for WakePipe {
    fn drop(&mut self) {
        // SAFETY: the descriptors are ours and closed once, here.
        unsafe {
            libc::close(self.read);
            libc::close(self.write);
        }
    }
}

/// No pipes to watch where there is no Unix: the loop is woken with `call_soon_threadsafe`.
#[cfg(not(unix))]
struct WakePipe {
    read: i32,
}

#[cfg(not(unix))]
impl WakePipe {
    fn new() -> std::io::Result<WakePipe> {
        Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
    }

    fn wake(&self) {}

    fn drain(&self) {}
}

/// The results waiting for one event loop. Called by the loop (its reader callback on the
/// wake pipe, or through `call_soon_threadsafe` where the loop cannot watch a pipe) it
/// completes all of them.
#[pyclass(name = "_Dispatcher", module = "hsmkey._hsmkey", frozen)]
struct Dispatcher {
    queue: Mutex<Queue>,
    /// A weak reference to the loop (the dispatcher lives in a WeakKeyDictionary by loop).
    event_loop: Py<PyAny>,
    /// None: the loop has no `add_reader` (Windows' proactor loop); wake it with
    /// `call_soon_threadsafe`, which takes the GIL.
    pipe: Option<WakePipe>,
}

#[pymethods]
impl Dispatcher {
    fn __call__(&self, py: Python<'_>) {
        // What the workers logged (they never take the GIL) goes to Python's logging here.
        crate::python::logging::flush(py);
        // The pipe first: a worker that finds the queue taken wakes the loop again.
        if let Some(pipe) = &self.pipe {
            pipe.drain();
        }
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
        if let Some(pipe) = &this.pipe {
            pipe.wake();
            return;
        }
        // Nothing to deliver to once the interpreter is finalizing.
        let _ = Python::try_attach(|py| {
            crate::python::logging::flush(py);
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

/// The dispatcher of `event_loop`, made on first use (with a wake pipe the loop watches, if
/// it can).
fn dispatcher(py: Python<'_>, event_loop: &Bound<'_, PyAny>) -> PyResult<Py<Dispatcher>> {
    // The last loop this thread asked for (one loop per thread is the rule): no dictionary
    // lookup. Its weak reference tells whether it is still that loop.
    thread_local! {
        static LAST: std::cell::RefCell<Option<Py<Dispatcher>>> =
            const { std::cell::RefCell::new(None) };
    }
    let cached = LAST.with(|last| {
        last.borrow().as_ref().and_then(|d| {
            let alive = d.get().event_loop.call0(py).ok()?;
            alive.is(event_loop).then(|| d.clone_ref(py))
        })
    });
    if let Some(d) = cached {
        return Ok(d);
    }
    let found = dispatcher_by_loop(py, event_loop)?;
    LAST.with(|last| *last.borrow_mut() = Some(found.clone_ref(py)));
    Ok(found)
}

fn dispatcher_by_loop(py: Python<'_>, event_loop: &Bound<'_, PyAny>) -> PyResult<Py<Dispatcher>> {
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
    let pipe = WakePipe::new().ok();
    let read_fd = pipe.as_ref().map(|p| p.read);
    let made = Py::new(
        py,
        Dispatcher {
            queue: Mutex::new(Queue::default()),
            event_loop: weak.unbind(),
            pipe,
        },
    )?;
    if let Some(fd) = read_fd {
        if event_loop
            .call_method1("add_reader", (fd, made.clone_ref(py)))
            .is_err()
        {
            // No add_reader here: a dispatcher that wakes the loop with call_soon_threadsafe.
            let fallback = Py::new(
                py,
                Dispatcher {
                    queue: Mutex::new(Queue::default()),
                    event_loop: py
                        .import("weakref")?
                        .getattr("ref")?
                        .call1((event_loop,))?
                        .unbind(),
                    pipe: None,
                },
            )?;
            by_loop.set_item(event_loop, fallback.clone_ref(py))?;
            return Ok(fallback);
        }
    }
    by_loop.set_item(event_loop, made.clone_ref(py))?;
    Ok(made)
}

// -- cancellation ------------------------------------------------------------------------------

/// What `hsmkey._aio.Future.cancel` calls: a call still waiting in its lane is dropped, and
/// one waiting for a session stops waiting (nothing gets borrowed). Set on the future itself
/// rather than added as a done-callback: a callback would cost the loop one more step per call.
#[pyclass(name = "_Canceller", module = "hsmkey._hsmkey", frozen)]
struct Canceller {
    cancelled: Arc<AtomicBool>,
}

#[pymethods]
impl Canceller {
    fn __call__(&self) {
        self.cancelled.store(true, Ordering::Release);
    }
}

/// An awaitable that is done from the start: awaiting it returns `value` at once (no future,
/// no step of the loop).
#[pyclass(name = "_Ready", module = "hsmkey._hsmkey")]
struct Ready {
    value: Option<Py<PyAny>>,
}

#[pymethods]
impl Ready {
    fn __await__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&mut self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let value = self.value.take().unwrap_or_else(|| py.None());
        Err(pyo3::exceptions::PyStopIteration::new_err((value,)))
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

/// One asynchronous call: the work, where its result goes, and how it gets stopped.
struct Job<W, C> {
    work: W,
    convert: C,
    dispatcher: Py<Dispatcher>,
    future: Py<PyAny>,
    cancelled: Arc<AtomicBool>,
    /// When `acquire_timeout` runs out (for calls in a lane), and the pool it is for.
    deadline: Option<(Instant, Arc<Pool>)>,
    in_flight: InFlight,
}

impl<T, W, C> Waiting for Job<W, C>
where
    T: Send + 'static,
    W: FnOnce(&dyn Fn() -> Result<()>) -> Result<T> + Send + 'static,
    C: FnOnce(Python<'_>, T) -> PyResult<Py<PyAny>> + Send + 'static,
{
    /// Runs the work (on a worker thread) and delivers the result.
    fn run(self: Box<Self>) {
        if self.is_cancelled() {
            return; // nothing borrowed, nobody waiting for the result
        }
        let job = *self;
        let (flag, deadline) = (&job.cancelled, &job.deadline);
        let interrupt = || -> Result<()> {
            if flag.load(Ordering::Acquire) {
                return Err(cancelled_error());
            }
            match deadline {
                Some((at, pool)) if Instant::now() >= *at => Err(pool.timed_out(false)),
                _ => Ok(()),
            }
        };
        let result = (job.work)(&interrupt);
        deliver(
            job.dispatcher,
            job.future,
            result,
            job.convert,
            job.in_flight,
        );
    }

    /// Delivers `err` instead of running the work.
    fn fail(self: Box<Self>, err: Error) {
        let job = *self;
        let result: Result<T> = Err(err);
        deliver(
            job.dispatcher,
            job.future,
            result,
            job.convert,
            job.in_flight,
        );
    }

    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    fn deadline(&self) -> Instant {
        match &self.deadline {
            Some((at, _)) => *at,
            None => Instant::now(),
        }
    }
}

/// Returns an asyncio future of the running loop, completed with `convert(work(interrupt))`.
/// `work` runs on a worker thread once `gate`'s lane has room for it; `interrupt` (for
/// `Pool::acquire`) fails once the task is cancelled or `acquire_timeout` has passed since
/// the call.
pub fn spawn<'py, T: Send + 'static>(
    py: Python<'py>,
    gate: Gate<'_>,
    work: impl FnOnce(&dyn Fn() -> Result<()>) -> Result<T> + Send + 'static,
    convert: impl FnOnce(Python<'_>, T) -> PyResult<Py<PyAny>> + Send + 'static,
) -> PyResult<Bound<'py, PyAny>> {
    let event_loop = get_running_loop(py)?;
    let cancelled = Arc::new(AtomicBool::new(false));
    let fut = new_future(
        py,
        &event_loop,
        Canceller {
            cancelled: cancelled.clone(),
        },
    )?;
    let lane = gate.lane();
    let job = Box::new(Job {
        work,
        convert,
        dispatcher: dispatcher(py, &event_loop)?,
        future: fut.clone().unbind(),
        cancelled: cancelled.clone(),
        deadline: lane
            .as_ref()
            .map(|(_, pool)| (Instant::now() + pool.cfg.acquire_timeout, pool.clone())),
        in_flight: InFlight::new(),
    });
    match lane {
        Some((lane, _)) => lane.submit(job),
        None => {
            pyo3_async_runtimes::tokio::get_runtime().spawn_blocking(move || job.run());
        }
    }
    Ok(fut)
}

fn deliver<T: Send + 'static>(
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
    Ok(Bound::new(
        py,
        Ready {
            value: Some(value.unbind()),
        },
    )?
    .into_any())
}

/// A future of `event_loop` (``hsmkey._aio.Future``) whose `cancel()` calls `canceller`.
fn new_future<'py>(
    py: Python<'py>,
    event_loop: &Bound<'py, PyAny>,
    canceller: Canceller,
) -> PyResult<Bound<'py, PyAny>> {
    static NEW: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let new = NEW
        .get_or_try_init(py, || aio(py)?.getattr("new_future").map(Bound::unbind))?
        .bind(py);
    new.call1((event_loop, Py::new(py, canceller)?))
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
