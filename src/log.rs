//! Session events for `logging.getLogger("hsmkey")`. Events are rare (open, login, discard,
//! recovery), so each takes the GIL for its own short moment; none is logged on the signing
//! hot path.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

pub const DEBUG: u32 = 10;
pub const INFO: u32 = 20;
pub const WARNING: u32 = 30;

static LOGGER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Logs `message` at `level` to the `hsmkey` logger; silently does nothing while the
/// interpreter is not available (start-up, shutdown).
pub fn log(level: u32, message: &str) {
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
