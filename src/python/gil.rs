//! GIL-free sections: every blocking PKCS#11 call runs inside one, and waits in them still
//! let Ctrl-C through.

use std::sync::Mutex;

use pyo3::prelude::*;

use crate::core::error::{Error, Kind, Result};
use crate::core::module::lock;
use crate::python::logging;

/// Runs `f` without the GIL. `f` gets an `interrupt` check to call while it waits: it takes
/// the GIL for a moment and fails if a signal handler raised (Ctrl-C); that exception is then
/// the one raised.
pub fn detach_interruptible<T: Send>(
    py: Python<'_>,
    f: impl FnOnce(&dyn Fn() -> Result<()>) -> Result<T> + Send,
) -> PyResult<T> {
    let raised: Mutex<Option<PyErr>> = Mutex::new(None);
    let result = py.detach(|| {
        let interrupt = || -> Result<()> {
            match Python::attach(|py| {
                logging::flush(py);
                py.check_signals()
            }) {
                Ok(()) => Ok(()),
                Err(e) => {
                    *lock(&raised) = Some(e);
                    Err(Error::new(Kind::Session, "interrupted"))
                }
            }
        };
        f(&interrupt)
    });
    logging::flush(py);
    if let Some(e) = lock(&raised).take() {
        return Err(e);
    }
    result.map_err(PyErr::from)
}

/// Runs `f` without the GIL, then hands Python the log events it queued.
pub fn detach<T: Send>(py: Python<'_>, f: impl FnOnce() -> T + Send) -> T {
    let out = py.detach(f);
    logging::flush(py);
    out
}
