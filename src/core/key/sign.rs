//! One signature with a private key.

use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;

use super::KeyInfo;
use crate::core::error::{Context, Result};
use crate::core::mechanism::{prepare, MechanismSet, Scheme};

/// One signature: `C_SignInit` + `C_Sign` (after any local hashing the scheme needs).
pub fn sign(
    session: &Session,
    handle: ObjectHandle,
    scheme: &Scheme,
    info: &KeyInfo,
    token: &dyn MechanismSet,
    data: &[u8],
) -> Result<Vec<u8>> {
    let prepared = prepare(scheme, data, info.bits, token)?;
    let input = prepared.data.as_deref().unwrap_or(data);
    session
        .sign(&prepared.mechanism, handle, input)
        .context("signing")
}
