//! Is the private key found again (after a stale handle, a re-login, a refresh or an expired
//! cache entry) the key a key object was made with? Compared by CKA_UNIQUE_ID where the token
//! has it, else by the public key: RSA's modulus and exponent, the point the private object
//! carries, or, where it carries none (SoftHSM2's EC and Edwards keys), a probe signature made
//! with the found handle and verified against the old public key in software.

use cryptoki::object::{KeyType, ObjectHandle};
use cryptoki::session::Session;

use super::public::{own_attributes, probe};
use super::verify::{probe_scheme, verify};
use super::{KeyInfo, KeyQuery, Signer};
use crate::core::error::{Error, Kind, Result};
use crate::core::mechanism::KeyKind;

/// The answer of [`same_key`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    Same,
    Different,
    /// Only a signature by the key can tell (EC and Edwards keys that do not carry their
    /// point), and the caller asked to prove it with the signature it is about to make.
    Unproven,
}

/// Whether `handle` is the private key whose public half `info` holds. With `defer_probe`,
/// a key that only a signature can prove is `Unproven` instead of probed (the caller
/// verifies the signature it makes next: no extra PKCS#11 call).
pub fn same_key(
    session: &Session,
    handle: ObjectHandle,
    info: &KeyInfo,
    signer: Signer<'_>,
    defer_probe: bool,
) -> Result<Identity> {
    let own = own_attributes(session, handle)?;
    let answer = |same: bool| {
        Ok(if same {
            Identity::Same
        } else {
            Identity::Different
        })
    };
    if let (Some(old), Some(new)) = (&info.unique_id, &own.unique_id) {
        if old == new {
            return Ok(Identity::Same);
        }
    }
    let kind = match own.kind {
        Some(KeyType::RSA) => KeyKind::Rsa,
        Some(KeyType::EC) => KeyKind::Ec,
        Some(KeyType::EC_EDWARDS) => KeyKind::Edwards,
        Some(KeyType::ML_DSA) => KeyKind::MlDsa,
        Some(KeyType::SLH_DSA) => KeyKind::SlhDsa,
        _ => return Ok(Identity::Different),
    };
    if kind != info.kind {
        return Ok(Identity::Different);
    }
    match kind {
        KeyKind::Rsa => answer(own.modulus == info.modulus && own.exponent == info.public_exponent),
        KeyKind::Ec | KeyKind::Edwards => {
            let Some(curve) = info.curve else {
                return Ok(Identity::Different);
            };
            let same_curve = own
                .params
                .as_deref()
                .and_then(|p| crate::core::mechanism::Curve::from_ec_params(p).ok())
                == Some(curve);
            if !same_curve {
                return Ok(Identity::Different);
            }
            if let Some(point) = own.own_point(curve).ok().flatten() {
                return answer(Some(point) == info.ec_point);
            }
            if defer_probe {
                return Ok(Identity::Unproven);
            }
            let (message, sig) = probe(session, handle, info, signer)?;
            answer(verify(info, &probe_scheme(info), &message, &sig)?)
        }
        // SLH-DSA: only the private object's own public key tells (no software verifier).
        KeyKind::SlhDsa => {
            let own_public = info
                .slh_set
                .and_then(|set| super::public::slh_public_from_spki(own.spki.as_deref(), set));
            answer(own_public.is_some() && own_public == info.public_value)
        }
        KeyKind::MlDsa => {
            let Some(set) = info.param_set else {
                return Ok(Identity::Different);
            };
            if super::public::parameter_set(session, handle).ok().flatten() != Some(set) {
                return Ok(Identity::Different);
            }
            if let Some(public) = own
                .spki
                .as_deref()
                .and_then(|s| crate::core::mechanism::public_from_spki(s, set))
            {
                return answer(Some(public) == info.public_value);
            }
            let (message, sig) = probe(session, handle, info, signer)?;
            answer(verify(info, &probe_scheme(info), &message, &sig)?)
        }
    }
}

/// The error a key object raises once the key under its label or id is another key.
pub fn changed_error(query: &KeyQuery, token: &str) -> Error {
    Error::new(
        Kind::KeyChanged,
        format!(
            "the private key with {} on {token} is not the key this object was made with any \
             more (it was deleted and replaced: its public key differs); nothing was signed or \
             decrypted with it. Load the key again (HSMJWK.from_hsm / find_key) to use the new \
             key, and publish its new public key",
            query.describe()
        ),
    )
}
