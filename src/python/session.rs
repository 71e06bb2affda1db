//! `Session`: a session borrowed from a pool, as a context manager.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyType};

use crate::core::bound_key::Binding;
use crate::core::key::KeyQuery;
use crate::core::keygen::{Import, KeySpec};
use crate::core::pool::{Lease, Pool};
use crate::core::session::SessionSlot;
use crate::python::args::{key_query, opt_bytes, opt_count};
use crate::python::asyncio::Gate;
use crate::python::gil::{detach, detach_interruptible};
use crate::python::key::PyKey;
use crate::python::secrets;

/// What `hsmkey._import.key_components` returns: key type, curve, attribute values.
type ImportedParts<'py> = (String, Option<String>, Bound<'py, PyDict>);

/// A PKCS#11 session lent by a pool. Use it as a context manager (``with pool.session() as
/// session:``); keys loaded from it are valid until the block ends.
#[pyclass(name = "Session", module = "hsmkey._hsmkey", frozen)]
pub struct PySession {
    pub slot: Arc<SessionSlot>,
    rw: bool,
}

impl PySession {
    pub fn new(pool: Arc<Pool>, rw: bool, lease: Option<Lease>) -> Self {
        PySession {
            slot: Arc::new(SessionSlot::new(pool, lease)),
            rw,
        }
    }

    /// Gives the session back. On an open pool that is bookkeeping, done with the GIL held;
    /// what may block (an operation still running on it, a closed pool's calls) is not.
    fn give_back(&self, py: Python<'_>) {
        match self.slot.close_now() {
            Ok(None) => {}
            Ok(Some(calls)) => detach(py, move || calls.run()),
            Err(()) => self.close(py),
        }
    }

    fn open(&self, py: Python<'_>) -> PyResult<()> {
        let (slot, rw) = (self.slot.clone(), self.rw);
        detach_interruptible(py, move |interrupt| slot.open(rw, interrupt))
    }

    /// `(closed, borrowed)`, read without the GIL: the slot's lock may be held by a thread
    /// that is itself waiting for the GIL.
    fn status(&self, py: Python<'_>) -> (bool, bool) {
        let slot = &self.slot;
        py.detach(|| slot.status())
    }
}

#[pymethods]
impl PySession {
    /// True for a read-write session.
    #[getter]
    fn rw(&self) -> bool {
        self.rw
    }

    /// True once the session went back to its pool.
    #[getter]
    fn closed(&self, py: Python<'_>) -> bool {
        self.status(py).0
    }

    /// A private key, valid while this session is open.
    #[pyo3(signature = (*, key_label=None, key_id=None))]
    fn find_key(
        &self,
        py: Python<'_>,
        key_label: Option<&Bound<'_, PyAny>>,
        key_id: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyKey> {
        let query: KeyQuery = key_query(key_label, key_id)?;
        // A key found before in this login epoch, in a block that is open: no PKCS#11 call,
        // no session needed (an `async with` block borrows none for it), no GIL-free section.
        if self.slot.entered() {
            if let Some(entry) = self.slot.pool.cached_key(&query) {
                return Ok(PyKey::new(
                    self.slot.pool.clone(),
                    Binding::Session(self.slot.clone()),
                    entry,
                ));
            }
        }
        let slot = self.slot.clone();
        let entry = detach(py, move || {
            slot.with_lease(|lease| slot.pool.find_key(lease, &query))
        })?;
        Ok(PyKey::new(
            self.slot.pool.clone(),
            Binding::Session(self.slot.clone()),
            entry,
        ))
    }

    /// Generates a key pair in the token (read-write sessions only). The private key is
    /// sensitive and not extractable. ``key_type``: ``"RSA"`` (``bits``, default 2048),
    /// ``"EC"`` (``curve``: P-256, P-384, P-521, secp256k1), ``"Ed25519"``, ``"Ed448"``,
    /// ``"ML-DSA-44"``, ``"ML-DSA-65"`` or ``"ML-DSA-87"`` (the public key gets CKA_VERIFY).
    /// ``key_id`` (CKA_ID) defaults to 16 random bytes.
    #[pyo3(signature = (key_type, *, label, key_id=None, bits=None, curve=None))]
    fn generate_key_pair(
        &self,
        py: Python<'_>,
        key_type: &str,
        label: &str,
        key_id: Option<&Bound<'_, PyAny>>,
        bits: Option<&Bound<'_, PyAny>>,
        curve: Option<&str>,
    ) -> PyResult<PyKey> {
        let key_id = opt_bytes("key_id", key_id)?;
        let bits = opt_count("bits", bits, 0..=1 << 20)?;
        let spec = KeySpec::new(key_type, bits, curve, label.to_owned(), key_id)?;
        let slot = self.slot.clone();
        let entry = detach(py, move || {
            slot.with_lease(|lease| slot.pool.generate_key(lease, &spec))
        })?;
        Ok(PyKey::new(
            self.slot.pool.clone(),
            Binding::Session(self.slot.clone()),
            entry,
        ))
    }

    /// Stores a pyca/cryptography private key (RSA, EC, Ed25519, Ed448) in the token as a
    /// sensitive, non-extractable key object, with its public key beside it (read-write
    /// sessions only): the way to move keys from PEM files into an HSM. RSA keys below 2048
    /// bits or with a public exponent below 65537 raise ``ValueError`` unless
    /// ``allow_weak=True``.
    #[pyo3(signature = (key, *, label, key_id=None, allow_weak=false))]
    fn import_private_key(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        label: &str,
        key_id: Option<&Bound<'_, PyAny>>,
        allow_weak: bool,
    ) -> PyResult<PyKey> {
        let key_id = opt_bytes("key_id", key_id)?;
        let (key_type, curve, parts): ImportedParts = py
            .import("hsmkey._import")?
            .call_method1("key_components", (key, allow_weak))?
            .extract()?;
        // Each value is copied into zeroizing memory and its bytes object (made for this
        // import, held by `parts` alone) wiped.
        let mut components = Vec::with_capacity(parts.len());
        for (name, value) in parts.iter() {
            let value = value.cast_into::<PyBytes>()?;
            components.push((name.extract::<String>()?, secrets::take_owned(&value, 1)));
        }
        drop(parts);
        // (The size given to KeySpec only matters for generation; imports keep theirs.)
        let spec = KeySpec::new(&key_type, None, curve.as_deref(), label.to_owned(), key_id)?;
        let import = Import {
            kind: spec.kind,
            curve: spec.curve,
            param_set: spec.param_set,
            label: spec.label,
            id: spec.id,
            components,
        };
        let slot = self.slot.clone();
        let entry = detach(py, move || {
            slot.with_lease(|lease| slot.pool.import_key(lease, &import))
        })?;
        Ok(PyKey::new(
            self.slot.pool.clone(),
            Binding::Session(self.slot.clone()),
            entry,
        ))
    }

    /// Every private key in the token that hsmkey can use (RSA, EC, Edwards).
    fn list_keys(&self, py: Python<'_>) -> PyResult<Vec<PyKey>> {
        let slot = self.slot.clone();
        let entries = detach(py, move || {
            slot.with_lease(|lease| slot.pool.list_keys(lease))
        })?;
        Ok(entries
            .into_iter()
            .map(|e| {
                PyKey::new(
                    self.slot.pool.clone(),
                    Binding::Session(self.slot.clone()),
                    e,
                )
            })
            .collect())
    }

    /// Deletes the private key, public key and certificate objects with this label and/or
    /// id (read-write sessions only); returns how many objects were deleted.
    #[pyo3(signature = (*, key_label=None, key_id=None))]
    fn delete_key(
        &self,
        py: Python<'_>,
        key_label: Option<&Bound<'_, PyAny>>,
        key_id: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<usize> {
        let query: KeyQuery = key_query(key_label, key_id)?;
        let slot = self.slot.clone();
        Ok(detach(py, move || {
            slot.with_lease(|lease| slot.pool.delete_key(lease, &query))
        })?)
    }

    /// Returns the session to its pool. Calling it again does nothing.
    fn close(&self, py: Python<'_>) {
        let slot = self.slot.clone();
        detach(py, move || slot.close());
    }

    /// ``async with pool.session() as session:`` on a warm pool is entered at once, with no
    /// session borrowed: each call of the block that needs the session borrows it (waiting
    /// without blocking the loop) and gives it back when it ends. On a pool not connected
    /// yet, it connects on a worker thread; a task cancelled while it waits leaves nothing
    /// borrowed.
    fn __aenter__<'py>(slf: Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let me = slf.clone().into_any().unbind();
        let slot = slf.get().slot.clone();
        let rw = slf.get().rw;
        let pool = slot.pool.clone();
        // No PKCS#11 call, no worker, no future on a connected pool; bookkeeping only (the
        // locks it takes are never held by a thread that waits for the GIL).
        if slot.enter_per_call(rw) {
            return crate::python::asyncio::ready(py, slf.into_any());
        }
        let fut = crate::python::asyncio::spawn(
            py,
            Gate::Pool(&pool),
            move |interrupt| slot.enter_connecting(rw, interrupt),
            move |_, ()| Ok(me),
        )?;
        crate::python::asyncio::close_when_cancelled(&fut, slf.into_any().unbind())?;
        Ok(fut)
    }

    #[pyo3(signature = (exc_type, exc, tb))]
    fn __aexit__<'py>(
        &self,
        py: Python<'py>,
        exc_type: Option<&Bound<'_, PyType>>,
        exc: Option<&Bound<'_, PyAny>>,
        tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let _ = (exc_type, exc, tb);
        let slot = self.slot.clone();
        if !slot.pool.is_closed() {
            // Leaving a block on an open pool makes no PKCS#11 call and never waits (a call
            // still running gives its session back itself): done here, at once.
            self.give_back(py);
            let done = false.into_pyobject(py)?.to_owned().into_any();
            return crate::python::asyncio::ready(py, done);
        }
        // A closed pool closes the session (and may log out): on a worker thread.
        crate::python::asyncio::spawn(
            py,
            Gate::Free,
            move |_| {
                slot.close();
                Ok(())
            },
            |py, ()| Ok(false.into_pyobject(py)?.to_owned().into_any().unbind()),
        )
    }

    fn __enter__(slf: Bound<'_, Self>) -> PyResult<Bound<'_, Self>> {
        let me = slf.get();
        // A warm idle session is bookkeeping to take (no PKCS#11 call, no wait): taken with
        // the GIL held, which saves the GIL hand-off that threads pay for each release.
        if !me.slot.take_idle(me.rw) {
            me.open(slf.py())?;
        }
        Ok(slf)
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
        self.give_back(py);
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let state = match self.status(py) {
            (true, _) => "closed",
            (false, true) => "open",
            (false, false) => "not entered",
        };
        format!(
            "<Session {} on {} {}>",
            if self.rw { "rw" } else { "ro" },
            self.slot.pool.describe(),
            state
        )
    }
}

/// Opens a session now (the long-lived form).
pub fn open_now(py: Python<'_>, pool: Arc<Pool>, rw: bool) -> PyResult<PySession> {
    let session = PySession::new(pool, rw, None);
    session.open(py)?;
    Ok(session)
}
