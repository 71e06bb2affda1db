//! Python arguments into core values: checked types and ranges, `TypeError`/`ValueError` with
//! the argument's name.

use std::path::PathBuf;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::core::error::{Error, Kind, Result};
use crate::core::key::KeyQuery;
use crate::core::pool::DEFAULT_MAX_SESSIONS;
use crate::core::secret::Pin;
use crate::python::secrets;

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

pub fn value_error(msg: String) -> PyErr {
    Error::new(Kind::Value, msg).into()
}

/// `module_path=`: a str or os.PathLike.
pub fn path_arg(module_path: &Bound<'_, PyAny>) -> PyResult<PathBuf> {
    module_path.extract().map_err(|_| {
        PyErr::from(Error::new(
            Kind::Type,
            format!(
                "module_path must be a str or os.PathLike, not {}",
                type_name(module_path)
            ),
        ))
    })
}

pub fn seconds(name: &str, value: f64, allow_zero: bool) -> PyResult<Duration> {
    if value.is_nan() || value < 0.0 || (!allow_zero && value == 0.0) {
        return Err(value_error(format!(
            "{name} must be a {} number of seconds, not {value}",
            if allow_zero {
                "non-negative"
            } else {
                "positive"
            }
        )));
    }
    // Past a century means "never".
    Ok(Duration::try_from_secs_f64(value.min(3.2e9)).unwrap_or(Duration::from_secs(3_200_000_000)))
}

pub fn text_arg(name: &str, value: Option<&Bound<'_, PyAny>>) -> PyResult<Option<String>> {
    match value {
        None => Ok(None),
        Some(v) if v.is_none() => Ok(None),
        Some(v) => {
            let s = v.cast::<PyString>().map_err(|_| {
                PyErr::from(Error::new(
                    Kind::Type,
                    format!("{name} must be a str, not {}", type_name(v)),
                ))
            })?;
            let s = s.to_cow()?.into_owned();
            if s.contains('\0') {
                return Err(value_error(format!(
                    "{name} must not contain NUL characters"
                )));
            }
            Ok(Some(s))
        }
    }
}

/// `slot_id=`: None or a whole number that fits a CK_SLOT_ID.
pub fn slot_id_arg(slot_id: Option<&Bound<'_, PyAny>>) -> PyResult<Option<u64>> {
    Ok(match slot_id {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => {
            let id: i128 = v.extract().map_err(|_| {
                PyErr::from(Error::new(
                    Kind::Type,
                    format!("slot_id must be an int, not {}", type_name(v)),
                ))
            })?;
            Some(u64::try_from(id).map_err(|_| {
                value_error(format!("slot_id must be between 0 and 2**64-1, not {id}"))
            })?)
        }
    })
}

/// `user_pin=`: a str or bytes, taken into zeroizing memory at once; None for a token that
/// requires no login (a pool without a PIN on a token that does fails on first use, with
/// `HSMPinError`).
pub fn pin_arg(user_pin: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Pin>> {
    Ok(match user_pin {
        Some(p) if !p.is_none() => {
            let pin = if let Ok(s) = p.cast::<PyString>() {
                Pin::new(std::mem::take(&mut *secrets::utf8(s)?))
            } else if let Ok(b) = p.cast::<PyBytes>() {
                Pin::new(b.as_bytes().to_vec())
            } else {
                return Err(Error::new(
                    Kind::Type,
                    format!("user_pin must be a str or bytes, not {}", type_name(p)),
                )
                .into());
            };
            // An empty PIN would spend one of the token's PIN tries for nothing.
            if pin.is_empty() {
                return Err(Error::value(
                    "user_pin is empty; give the token's user PIN (an empty string is never \
                     sent to the token), or None for a token that requires no login",
                )
                .into());
            }
            Some(pin)
        }
        _ => None,
    })
}

/// `init_args=`: None, or the non-empty string passed as `C_Initialize`'s `pReserved`.
pub fn init_args_arg(init_args: Option<&Bound<'_, PyAny>>) -> PyResult<Option<String>> {
    let args = text_arg("init_args", init_args)?;
    if args.as_deref() == Some("") {
        return Err(value_error(
            "init_args is empty: pass None for a module that takes no C_Initialize arguments"
                .into(),
        ));
    }
    Ok(args)
}

/// `max_sessions=`: None (the default) or a whole number from 1 to 1,000,000.
pub fn max_sessions_arg(max_sessions: Option<&Bound<'_, PyAny>>) -> PyResult<usize> {
    Ok(match max_sessions {
        None => DEFAULT_MAX_SESSIONS,
        Some(v) if v.is_none() => DEFAULT_MAX_SESSIONS,
        Some(v) => {
            if v.cast::<pyo3::types::PyBool>().is_ok() {
                return Err(Error::new(Kind::Type, "max_sessions must be an int, not bool").into());
            }
            let n: i128 = v.extract().map_err(|_| {
                PyErr::from(Error::new(
                    Kind::Type,
                    format!("max_sessions must be an int, not {}", type_name(v)),
                ))
            })?;
            if !(1..=1_000_000).contains(&n) {
                return Err(value_error(format!(
                    "max_sessions must be between 1 and 1000000, not {n}"
                )));
            }
            n as usize
        }
    })
}

/// Checks `HSMKEY_ASYNC_THREADS` when the module is imported: a value that is not a whole
/// number of threads from 1 up is refused with a `ValueError` naming it, instead of being
/// ignored (the runtime reads the variable once, at import).
pub fn async_threads_env() -> PyResult<()> {
    let Some(raw) = std::env::var_os("HSMKEY_ASYNC_THREADS") else {
        return Ok(());
    };
    let text = raw.to_string_lossy();
    match text.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(()),
        _ if text.trim().is_empty() => Ok(()), // set but empty: as if unset
        _ => Err(value_error(format!(
            "HSMKEY_ASYNC_THREADS={text:?} is not a number of threads: set a whole number from \
             1 up (the most worker threads of asyncio calls) or unset it for the default"
        ))),
    }
}
