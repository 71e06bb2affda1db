//! One signature with a private key.

use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;

use super::KeyInfo;
use crate::core::error::{Context, Result};
use crate::core::mechanism::{prepare, MechanismSet, Scheme};
use crate::core::raw::RawFunctions;

/// One signature: `C_SignInit` + `C_Sign` (after any local hashing the scheme needs): two
/// calls through `raw`, the module's function list, with a buffer of the signature's size
/// (cryptoki's `Session::sign`, used without it, asks for the size in a third call).
pub fn sign(
    session: &Session,
    handle: ObjectHandle,
    scheme: &Scheme,
    info: &KeyInfo,
    token: &dyn MechanismSet,
    raw: Option<&RawFunctions>,
    data: &[u8],
) -> Result<Vec<u8>> {
    let prepared = prepare(scheme, data, info.bits, token)?;
    let input = prepared.data.as_deref().unwrap_or(data);
    match raw.filter(|r| r.reaches(session)) {
        Some(raw) => raw.sign(
            session,
            &prepared.mechanism,
            handle,
            input,
            info.max_signature_len(),
        ),
        None => session.sign(&prepared.mechanism, handle, input),
    }
    .context("signing")
}

/// Room for any signature of a key of `bits`: RSA needs bits/8 bytes, ECDSA r || s and
/// EdDSA R || S twice the field (Ed448: 114 bytes for 448 or 456 bits); a little more is
/// harmless (the module reports the length it wrote).
pub fn max_signature_len(bits: usize) -> usize {
    2 * bits.div_ceil(8) + 16
}

#[cfg(test)]
mod tests {
    use super::max_signature_len;

    #[test]
    fn signature_buffers_are_large_enough() {
        assert!(max_signature_len(2048) >= 256);
        assert!(max_signature_len(256) >= 64); // P-256, Ed25519
        assert!(max_signature_len(521) >= 132); // P-521
        assert!(max_signature_len(448) >= 114); // Ed448
    }
}
