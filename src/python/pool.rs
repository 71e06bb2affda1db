//! `Pool`: the Python face of the session pool (``hsmkey.SessionPool`` subclasses it).

use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyType};

use crate::core::bound_key::Binding;
use crate::core::module::check_path;
use crate::core::pool::{self, Pool, PoolConfig};
use crate::core::token::{PinPolicy, TokenCriteria};
use crate::python::args::{
    init_args_arg, key_query, max_sessions_arg, path_arg, pin_arg, seconds, slot_id_arg, text_arg,
    value_error,
};
use crate::python::gil::{detach, detach_interruptible};
use crate::python::key::PyKey;
use crate::python::session::{open_now, PySession};

/// A lazy pool of logged-in sessions on one token. The constructor checks its arguments and
/// makes no PKCS#11 call; the first use loads the module, finds the token and logs in.
#[pyclass(name = "Pool", module = "hsmkey._hsmkey", subclass, frozen)]
pub struct PyPool {
    pool: Arc<Pool>,
    module_path: String,
}

#[pymethods]
impl PyPool {
    #[new]
    #[pyo3(signature = (
        module_path,
        token_label=None,
        user_pin=None,
        *,
        token_serial=None,
        slot_id=None,
        max_sessions=None,
        acquire_timeout=30.0,
        max_idle=300.0,
        allow_final_pin_try=false,
        init_args=None,
        key_cache_ttl=60.0,
        verify_signatures=false,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        module_path: &Bound<'_, PyAny>,
        token_label: Option<&Bound<'_, PyAny>>,
        user_pin: Option<&Bound<'_, PyAny>>,
        token_serial: Option<&Bound<'_, PyAny>>,
        slot_id: Option<&Bound<'_, PyAny>>,
        max_sessions: Option<&Bound<'_, PyAny>>,
        acquire_timeout: f64,
        max_idle: Option<f64>,
        allow_final_pin_try: bool,
        init_args: Option<&Bound<'_, PyAny>>,
        key_cache_ttl: Option<f64>,
        verify_signatures: bool,
    ) -> PyResult<Self> {
        let path = path_arg(module_path)?;
        if path.as_os_str().is_empty() {
            return Err(value_error("module_path is empty".into()));
        }
        if path.to_string_lossy().contains('\0') {
            return Err(value_error(
                "module_path must not contain NUL characters".into(),
            ));
        }
        check_path(&path)?;
        let label = text_arg("token_label", token_label)?;
        let serial = text_arg("token_serial", token_serial)?;
        let slot_id = slot_id_arg(slot_id)?;
        if label.is_none() && serial.is_none() && slot_id.is_none() {
            return Err(value_error(
                "name the token: give token_label=, token_serial= or slot_id=".into(),
            ));
        }
        let pin = pin_arg(user_pin)?;
        let init_args = init_args_arg(init_args)?;
        let max_sessions = max_sessions_arg(max_sessions)?;
        let acquire_timeout = seconds("acquire_timeout", acquire_timeout, true)?;
        let max_idle = match max_idle {
            None => Duration::from_secs(3_200_000_000),
            Some(v) => seconds("max_idle", v, false)?,
        };
        let key_cache_ttl = match key_cache_ttl {
            None => Duration::from_secs(3_200_000_000),
            Some(v) => seconds("key_cache_ttl", v, true)?,
        };
        let pool = Arc::new(Pool::new(PoolConfig {
            module_path: path.clone(),
            criteria: TokenCriteria {
                label,
                serial,
                slot_id,
            },
            pin,
            init_args,
            max_sessions,
            acquire_timeout,
            max_idle,
            pin_policy: PinPolicy {
                allow_final_try: allow_final_pin_try,
            },
            key_cache_ttl,
            verify_signatures,
        }));
        pool::register(&pool);
        Ok(PyPool {
            pool,
            module_path: path.to_string_lossy().into_owned(),
        })
    }

    /// The PKCS#11 module path as given.
    #[getter]
    fn module_path(&self) -> &str {
        &self.module_path
    }

    /// The token label searched for.
    #[getter]
    fn token_label(&self) -> Option<String> {
        self.pool.cfg.criteria.label.clone()
    }

    /// The `C_Initialize` reserved string the module is initialized with, or None.
    #[getter]
    fn init_args(&self) -> Option<String> {
        self.pool.cfg.init_args.clone()
    }

    /// The most sessions lent out at once.
    #[getter]
    fn max_sessions(&self) -> usize {
        self.pool.cfg.max_sessions
    }

    /// True once `close()` was called.
    #[getter]
    fn closed(&self, py: Python<'_>) -> bool {
        let pool = &self.pool;
        py.detach(|| pool.is_closed())
    }

    /// A context manager that borrows a warm session on entry and returns it on exit.
    #[pyo3(signature = (rw=false))]
    fn session(&self, rw: bool) -> PySession {
        PySession::new(self.pool.clone(), rw, None)
    }

    /// Borrows a session now; return it with ``session.close()``.
    #[pyo3(signature = (rw=false))]
    fn open_session(&self, py: Python<'_>, rw: bool) -> PyResult<PySession> {
        open_now(py, self.pool.clone(), rw)
    }

    /// True if every signature is verified in software before it is returned.
    #[getter]
    fn verify_signatures(&self) -> bool {
        self.pool.cfg.verify_signatures
    }

    /// Seconds a key lookup by label or id is trusted before it is searched again.
    #[getter]
    fn key_cache_ttl(&self) -> f64 {
        self.pool.cfg.key_cache_ttl.as_secs_f64()
    }

    /// Forgets every cached key lookup: the next ``from_hsm``, ``find_key``, ``list_keys``
    /// or ``jwks()`` sees the token as it is now. No PKCS#11 call.
    fn refresh(&self, py: Python<'_>) {
        let pool = &self.pool;
        py.detach(|| pool.refresh());
    }

    /// Connects and logs in now, raising what the first block would raise.
    fn check(&self, py: Python<'_>) -> PyResult<()> {
        let pool = self.pool.clone();
        detach(py, move || pool.check())?;
        Ok(())
    }

    /// A pool-bound private key: every operation borrows a session from the pool, so the key
    /// can be kept and used from any thread.
    #[pyo3(signature = (*, key_label=None, key_id=None))]
    fn find_key(
        &self,
        py: Python<'_>,
        key_label: Option<&Bound<'_, PyAny>>,
        key_id: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyKey> {
        let query = key_query(key_label, key_id)?;
        let pool = self.pool.clone();
        let entry = detach_interruptible(py, move |interrupt| {
            let mut lease = pool.acquire(false, interrupt)?;
            let r = pool.find_key(&mut lease, &query);
            pool.release(lease);
            r
        })?;
        Ok(PyKey::new(self.pool.clone(), Binding::Pool, entry))
    }

    /// Every private key in the token that hsmkey can use, as pool-bound keys.
    fn list_keys(&self, py: Python<'_>) -> PyResult<Vec<PyKey>> {
        let pool = self.pool.clone();
        let entries = detach_interruptible(py, move |interrupt| {
            let mut lease = pool.acquire(false, interrupt)?;
            let r = pool.list_keys(&mut lease);
            pool.release(lease);
            r
        })?;
        Ok(entries
            .into_iter()
            .map(|e| PyKey::new(self.pool.clone(), Binding::Pool, e))
            .collect())
    }

    /// Counters: in_use, idle, created, reused, waits, timeouts, relogins, discarded,
    /// recoveries, logins, max_in_use, epoch.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let pool = &self.pool;
        let snap = py.detach(|| pool.snapshot());
        let d = PyDict::new(py);
        d.set_item("in_use", snap.in_use)?;
        d.set_item("idle", snap.idle)?;
        d.set_item("created", snap.stats.created)?;
        d.set_item("reused", snap.stats.reused)?;
        d.set_item("waits", snap.stats.waits)?;
        d.set_item("timeouts", snap.stats.timeouts)?;
        d.set_item("relogins", snap.stats.relogins)?;
        d.set_item("discarded", snap.stats.discarded)?;
        d.set_item("recoveries", snap.stats.recoveries)?;
        d.set_item("logins", snap.stats.logins)?;
        d.set_item("max_in_use", snap.stats.max_in_use)?;
        d.set_item("epoch", snap.epoch)?;
        Ok(d)
    }

    /// Closes idle sessions and releases this pool's share of the token login.
    fn close(&self, py: Python<'_>) {
        let pool = self.pool.clone();
        detach(py, move || pool.close());
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (exc_type, exc, tb))]
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: Option<&Bound<'_, PyType>>,
        exc: Option<&Bound<'_, PyAny>>,
        tb: Option<&Bound<'_, PyAny>>,
    ) {
        let _ = (exc_type, exc, tb);
        self.close(py);
    }

    fn __repr__(slf: &Bound<'_, Self>) -> String {
        let me = slf.get();
        // The pool's lock may be held by a thread that waits for the GIL: never wait for it
        // holding the GIL.
        let closed = slf.py().detach(|| me.pool.is_closed());
        let name = slf
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "Pool".into());
        format!(
            "<{name} module={:?} {}{}>",
            me.module_path,
            me.pool.describe(),
            if closed { " closed" } else { "" }
        )
    }
}

/// Closes every pool still alive: sessions closed, logins released. Registered with `atexit`
/// by the Python package, so that interpreter exit leaves nothing open on the token.
#[pyfunction]
pub fn _close_all_pools(py: Python<'_>) {
    detach(py, || {
        // Let asyncio results in delivery land first (see py_async).
        crate::python::asyncio::wait_idle(Duration::from_secs(10));
        pool::close_all_pools();
    });
}

/// Forgets the failed logins of this process (test suites that fake token failures only).
#[pyfunction]
pub fn _forget_failed_logins() {
    crate::core::token::forget_failed_logins();
}
