//! Secrets crossing from Python: copied straight into zeroizing memory, and the temporary
//! Python objects hsmkey itself made for them wiped before they are freed.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};
use zeroize::{Zeroize, Zeroizing};

/// The UTF-8 bytes of `text` in zeroizing memory. The encoding goes through a bytes object
/// made here (never a `String` or a cached UTF-8 buffer of the str), which is wiped once
/// copied. The caller's str itself is Python's: hsmkey cannot wipe it.
pub fn utf8(text: &Bound<'_, PyString>) -> PyResult<Zeroizing<Vec<u8>>> {
    let encoded = text.encode_utf8()?;
    Ok(take(&encoded))
}

/// A copy of `bytes` in zeroizing memory, then the bytes object wiped if nothing else can
/// see it (see [`wipe`]).
pub fn take(bytes: &Bound<'_, PyBytes>) -> Zeroizing<Vec<u8>> {
    take_owned(bytes, 0)
}

/// Like [`take`], for a bytes object that `owners` containers (a dict being read) also hold.
pub fn take_owned(bytes: &Bound<'_, PyBytes>, owners: isize) -> Zeroizing<Vec<u8>> {
    let copy = Zeroizing::new(bytes.as_bytes().to_vec());
    wipe(bytes, owners);
    copy
}

/// Overwrites the contents of a bytes object with zeros, if it has at most `owners`
/// references besides the one `bytes` holds (so no other code can read it) and is not one of
/// CPython's shared empty or one-byte objects. Used only on objects made for hsmkey (an
/// encoding, the components of a key being imported) right before they are dropped.
pub fn wipe(bytes: &Bound<'_, PyBytes>, owners: isize) {
    let len = bytes.as_bytes().len();
    // SAFETY: `bytes` is a live object (borrowed for this call); reading its reference count
    // has no other requirement.
    let refs = unsafe { pyo3::ffi::Py_REFCNT(bytes.as_ptr()) };
    if len < 2 || refs > owners + 1 {
        return;
    }
    let data = bytes.as_bytes().as_ptr().cast_mut();
    // SAFETY: `data` points to the `len` bytes of the object's buffer, which stays alive
    // while `bytes` is borrowed. Only hsmkey and the owners it names hold the object (checked
    // above), and it is about to be freed: no Python code reads it again, and its cached
    // hash is never computed for these objects. The empty and one-byte objects that CPython
    // shares are excluded by the length check.
    unsafe { std::slice::from_raw_parts_mut(data, len) }.zeroize();
}
