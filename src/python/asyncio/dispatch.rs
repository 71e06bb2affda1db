//! Dispatch: an asynchronous call becomes an asyncio future of the running loop and a
//! [`Job`] that lines up in its lane (or runs at once on a worker thread), runs the work
//! there and hands the result to delivery; plus the cancellation hook and the awaitable that
//! is done from the start.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyBytes;

use super::delivery::{dispatcher, Delivery, Dispatcher};
use super::inflight::InFlight;
use super::lanes::{Gate, Waiting};
use crate::core::error::{Error, Kind, Result};
use crate::core::pool::Pool;

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
