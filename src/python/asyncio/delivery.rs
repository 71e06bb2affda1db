//! Delivery: finished calls go into the queue of their event loop's [`Dispatcher`]; the
//! worker that finds the queue empty wakes the loop (a byte in the dispatcher's wake pipe,
//! or `call_soon_threadsafe` where the loop cannot watch a pipe), and the loop completes the
//! whole batch at once.

use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use crate::core::module::lock;

/// Makes, on the loop's thread, the value (or exception) of a finished call.
pub(super) type Outcome = Box<dyn FnOnce(Python<'_>) -> PyResult<Py<PyAny>> + Send>;

/// A finished call: its future and what to complete it with.
pub(super) struct Delivery {
    pub(super) future: Py<PyAny>,
    pub(super) outcome: Outcome,
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
pub(super) struct Dispatcher {
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
    pub(super) fn deliver(me: &Py<Dispatcher>, d: Delivery) {
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
pub(super) fn dispatcher(
    py: Python<'_>,
    event_loop: &Bound<'_, PyAny>,
) -> PyResult<Py<Dispatcher>> {
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
