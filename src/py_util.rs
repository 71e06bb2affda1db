//! Small helpers shared by the Python classes: argument checks and GIL-free sections that
//! still let Ctrl-C through.

use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::error::{Error, Kind, Result};
use crate::key::KeyQuery;
use crate::module::lock;

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
            match Python::attach(|py| py.check_signals()) {
                Ok(()) => Ok(()),
                Err(e) => {
                    *lock(&raised) = Some(e);
                    Err(Error::new(Kind::Session, "interrupted"))
                }
            }
        };
        f(&interrupt)
    });
    if let Some(e) = lock(&raised).take() {
        return Err(e);
    }
    result.map_err(PyErr::from)
}

/// Builds a key query from `key_label=` (str) and `key_id=` (bytes, or a hex str).
pub fn key_query(
    label: Option<&Bound<'_, PyAny>>,
    id: Option<&Bound<'_, PyAny>>,
) -> PyResult<KeyQuery> {
    let label = match label {
        None => None,
        Some(l) if l.is_none() => None,
        Some(l) => match l.cast::<PyString>() {
            Ok(s) => Some(s.to_cow()?.into_owned()),
            Err(_) => {
                return Err(Error::new(
                    Kind::Type,
                    format!("key_label must be a str, not {}", type_name(l)),
                )
                .into())
            }
        },
    };
    let id = match id {
        None => None,
        Some(i) if i.is_none() => None,
        Some(i) => {
            if let Ok(b) = i.cast::<PyBytes>() {
                Some(b.as_bytes().to_vec())
            } else if let Ok(s) = i.cast::<PyString>() {
                Some(parse_hex(&s.to_cow()?)?)
            } else {
                return Err(Error::new(
                    Kind::Type,
                    format!("key_id must be bytes (or a hex str), not {}", type_name(i)),
                )
                .into());
            }
        }
    };
    Ok(KeyQuery::new(label, id)?)
}

fn parse_hex(s: &str) -> Result<Vec<u8>> {
    let s = s.trim();
    if s.len() % 2 != 0 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::value(format!(
            "key_id {s:?} is not an even number of hex digits"
        )));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| Error::value(e.to_string())))
        .collect()
}

pub fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".to_string())
}

/// An optional whole number in `range`, for `name=`: `TypeError` for other types (bool
/// included), `ValueError` out of range (never `OverflowError`).
pub fn opt_count(
    name: &str,
    value: Option<&Bound<'_, PyAny>>,
    range: std::ops::RangeInclusive<i128>,
) -> PyResult<Option<usize>> {
    let Some(v) = value.filter(|v| !v.is_none()) else {
        return Ok(None);
    };
    if v.cast::<pyo3::types::PyBool>().is_ok() {
        return Err(Error::new(Kind::Type, format!("{name} must be an int, not bool")).into());
    }
    let n: i128 = v.extract().map_err(|_| {
        PyErr::from(Error::new(
            Kind::Type,
            format!("{name} must be an int, not {}", type_name(v)),
        ))
    })?;
    if !range.contains(&n) {
        return Err(Error::value(format!(
            "{name} must be between {} and {}, not {n}",
            range.start(),
            range.end()
        ))
        .into());
    }
    Ok(Some(n as usize))
}

/// An optional `bytes` argument (CKA_ID and the like): `TypeError` for anything else.
pub fn opt_bytes(name: &str, value: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Vec<u8>>> {
    let Some(v) = value.filter(|v| !v.is_none()) else {
        return Ok(None);
    };
    match v.cast::<PyBytes>() {
        Ok(b) => Ok(Some(b.as_bytes().to_vec())),
        Err(_) => Err(Error::new(
            Kind::Type,
            format!("{name} must be bytes, not {}", type_name(v)),
        )
        .into()),
    }
}
