//! hsmkey's Rust core: PKCS#11 modules, tokens, the session pool and key operations, exposed
//! to Python as `hsmkey._hsmkey`.
#![deny(clippy::undocumented_unsafe_blocks)]

mod decrypt;
mod error;
mod fork;
mod inventory;
mod key;
mod keygen;
mod log;
mod mechanism;
mod module;
mod oaep;
mod pool;
mod py_async;
mod py_key;
mod py_pool;
mod py_session;
mod py_util;
mod raw_list;
mod secret;
mod token;

use pyo3::prelude::*;

#[pymodule]
fn _hsmkey(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    py_async::configure_runtime();
    m.add("DEFAULT_MAX_SESSIONS", py_pool::DEFAULT_MAX_SESSIONS)?;
    m.add_class::<py_pool::PyPool>()?;
    m.add_class::<py_session::PySession>()?;
    m.add_class::<py_key::PyKey>()?;
    m.add_function(wrap_pyfunction!(py_pool::_close_all_pools, m)?)?;
    m.add_function(wrap_pyfunction!(py_pool::list_tokens, m)?)?;
    m.add(
        "__all__",
        vec![
            "DEFAULT_MAX_SESSIONS",
            "Key",
            "Pool",
            "Session",
            "__version__",
            "_close_all_pools",
            "list_tokens",
        ],
    )?;
    Ok(())
}
