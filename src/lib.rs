//! hsmkey: a PKCS#11 session pool and key operations in plain Rust (`core`), exposed to Python
//! as `hsmkey._hsmkey` by thin PyO3 bindings (`python`, behind the default `python` feature).
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod core;

#[cfg(feature = "python")]
mod python;

#[cfg(feature = "python")]
use pyo3::prelude::*;

/// The module `hsmkey._hsmkey`: registration only.
///
/// `gil_used = true`: a free-threaded CPython (3.13t, 3.14t) that imports this module turns
/// its GIL back on (with a RuntimeWarning), because nothing here has been proven safe without
/// it yet (docs/deployment.rst lists what a port needs).
#[cfg(feature = "python")]
#[pymodule(gil_used = true)]
fn _hsmkey(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    python::logging::install();
    python::args::async_threads_env()?;
    python::asyncio::configure_runtime();
    m.add("DEFAULT_MAX_SESSIONS", core::pool::DEFAULT_MAX_SESSIONS)?;
    m.add_class::<python::pool::PyPool>()?;
    m.add_class::<python::session::PySession>()?;
    m.add_class::<python::key::PyKey>()?;
    m.add_function(wrap_pyfunction!(python::pool::_close_all_pools, m)?)?;
    m.add_function(wrap_pyfunction!(python::pool::_forget_failed_logins, m)?)?;
    m.add_function(wrap_pyfunction!(python::tokens::list_tokens, m)?)?;
    m.add(
        "__all__",
        vec![
            "DEFAULT_MAX_SESSIONS",
            "Key",
            "Pool",
            "Session",
            "__version__",
            "_close_all_pools",
            "_forget_failed_logins",
            "list_tokens",
        ],
    )?;
    Ok(())
}
