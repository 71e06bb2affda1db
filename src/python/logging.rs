//! The core's log sink, forwarding to `logging.getLogger("hsmkey")`.
//!
//! The core logs where things happen, which is often while it holds one of its locks (a
//! session's, a token's login). Taking the GIL there could deadlock against a Python thread
//! that holds the GIL and waits for that lock, so the sink never takes the GIL: it queues the
//! event, and the bindings hand the queue to Python's logging each time they hold the GIL
//! anyway: when a GIL-free section returns (`gil::detach`), in the Ctrl-C check of a wait,
//! and when an asyncio result is delivered.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use crate::core::log::{self, Level};
use crate::core::module::lock;

/// Events kept for Python at most; past that the oldest are dropped (and counted).
const MAX_PENDING: usize = 10_000;

struct Pending {
    events: Vec<(Level, String)>,
    dropped: u64,
}

static PENDING: Mutex<Pending> = Mutex::new(Pending {
    events: Vec::new(),
    dropped: 0,
});
static HAS_PENDING: AtomicBool = AtomicBool::new(false);

static LOGGER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Connects the core's events to Python's logging (at module import).
pub fn install() {
    log::set_sink(queue);
}

fn queue(level: Level, message: &str) {
    {
        let mut pending = lock(&PENDING);
        if pending.events.len() >= MAX_PENDING {
            pending.events.remove(0);
            pending.dropped += 1;
        }
        pending.events.push((level, message.to_string()));
    }
    HAS_PENDING.store(true, Ordering::Release);
}

/// Hands the queued events to the `hsmkey` logger. Cheap when there are none (one atomic
/// load): called after every GIL-free section.
pub fn flush(py: Python<'_>) {
    if !HAS_PENDING.swap(false, Ordering::AcqRel) {
        return;
    }
    let (events, dropped) = {
        let mut pending = lock(&PENDING);
        (
            std::mem::take(&mut pending.events),
            std::mem::take(&mut pending.dropped),
        )
    };
    let _ = deliver(py, events, dropped);
}

fn deliver(py: Python<'_>, events: Vec<(Level, String)>, dropped: u64) -> PyResult<()> {
    let logger = LOGGER.get_or_try_init(py, || -> PyResult<Py<PyAny>> {
        Ok(py
            .import("logging")?
            .call_method1("getLogger", ("hsmkey",))?
            .unbind())
    })?;
    let logger = logger.bind(py);
    if dropped > 0 {
        let level = Level::Warning as u32;
        let message = format!("{dropped} hsmkey log events were dropped (too many queued)");
        logger.call_method1("log", (level, message))?;
    }
    for (level, message) in events {
        let level = level as u32;
        if logger.call_method1("isEnabledFor", (level,))?.is_truthy()? {
            logger.call_method1("log", (level, message))?;
        }
    }
    Ok(())
}
