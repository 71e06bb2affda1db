//! The core's log sink, forwarding to `logging.getLogger("hsmkey")`. Each event takes the GIL
//! for its own short moment.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use crate::core::log::{self, Level};

static LOGGER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Connects the core's events to Python's logging (at module import).
pub fn install() {
    log::set_sink(forward);
}

/// Logs `message` at `level` to the `hsmkey` logger; silently does nothing while the
/// interpreter is not available (start-up, shutdown).
fn forward(level: Level, message: &str) {
    let level = level as u32;
    let _ = Python::try_attach(|py| -> PyResult<()> {
        let logger = LOGGER.get_or_try_init(py, || -> PyResult<Py<PyAny>> {
            Ok(py
                .import("logging")?
                .call_method1("getLogger", ("hsmkey",))?
                .unbind())
        })?;
        let logger = logger.bind(py);
        if logger.call_method1("isEnabledFor", (level,))?.is_truthy()? {
            logger.call_method1("log", (level, message))?;
        }
        Ok(())
    });
}
