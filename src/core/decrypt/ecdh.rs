//! ECDH key agreement in the token (`CKM_ECDH1_DERIVE`, no KDF): the shared secret for
//! JWE ECDH-ES and cryptography's `exchange()`.
//!
//! The API's job is to hand the raw shared secret `Z` to Python (cryptography's `exchange()`
//! returns it; jwcrypto, PyJWT and joserfc run JWE's Concat KDF and AES key wrap on it in
//! software; PKCS#11's KDFs are X9.63, not JWE's Concat KDF), so the derived object cannot be
//! CKA_SENSITIVE: it is created as a *session* object (CKA_TOKEN false, CKA_PRIVATE true:
//! visible only to this logged-in application), extractable, read once, destroyed at once.
//! If `C_DestroyObject` fails, the lease's session is closed and replaced (closing a session
//! destroys its session objects), so no secret object stays behind in a pooled session.

use std::cell::Cell;

use cryptoki::error::RvError;
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use zeroize::Zeroizing;

use crate::core::bound_key::KeyRef;
use crate::core::error::{Context, Error, Kind, Result};
use crate::core::key::KeyInfo;
use crate::core::log;
use crate::core::mechanism::{KeyKind, MechanismSet};

/// ECDH: the shared secret (the x coordinate) with the peer's public point (uncompressed).
/// `leftover` is set when the derived object could not be destroyed (the caller must then
/// close the session), also when this returns an error.
pub fn ecdh(
    session: &Session,
    handle: ObjectHandle,
    info: &KeyInfo,
    token: &dyn MechanismSet,
    peer_point: &[u8],
    leftover: &Cell<bool>,
) -> Result<Zeroizing<Vec<u8>>> {
    let Some(curve) = info.curve.filter(|_| info.kind == KeyKind::Ec) else {
        return Err(Error::mechanism(format!(
            "ECDH needs an EC key on a Weierstrass curve, but {}",
            info.describe()
        )));
    };
    if !token.has(MechanismType::ECDH1_DERIVE) {
        return Err(Error::mechanism(
            "the token does not offer CKM_ECDH1_DERIVE",
        ));
    }
    if peer_point.len() != curve.public_len() || peer_point.first() != Some(&0x04) {
        return Err(Error::value(format!(
            "the peer key must be an uncompressed {} point ({} bytes)",
            curve.name(),
            curve.public_len()
        )));
    }
    let field = (curve.public_len() - 1) / 2;
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
        Attribute::ValueLen((field as u64).into()),
    ];
    let mechanism = Mechanism::Ecdh1Derive(Ecdh1DeriveParams::new(EcKdf::null(), peer_point));
    let derived = session
        .derive_key(&mechanism, handle, &template)
        .map_err(|e| {
            let mut err = Error::from_cryptoki(e, "deriving an ECDH shared secret");
            if err.rv == Some(RvError::ArgumentsBad) {
                err.kind = Kind::Value;
            }
            err
        })?;
    let value = session.get_attributes(derived, &[AttributeType::Value]);
    if let Err(e) = session.destroy_object(derived) {
        leftover.set(true);
        log::log(
            log::WARNING,
            &format!(
                "could not destroy the derived ECDH secret ({e}); closing its session so that \
                 the secret dies with it"
            ),
        );
    }
    for a in value.context("reading the ECDH shared secret")? {
        if let Attribute::Value(v) = a {
            let secret = Zeroizing::new(v);
            if secret.len() != field {
                return Err(Error::mechanism(format!(
                    "the token derived {} bytes of ECDH secret, not {field}",
                    secret.len()
                )));
            }
            return Ok(secret);
        }
    }
    Err(Error::mechanism(
        "the token did not reveal the derived ECDH secret (CKA_VALUE)",
    ))
}

/// ECDH with the key's handle, with the pool's recovery; a session that may still hold the
/// derived secret (failed destroy) is closed and replaced before it goes back to the pool.
pub fn ecdh_blocking(
    key: &KeyRef,
    peer_point: &[u8],
    interrupt: &dyn Fn() -> Result<()>,
) -> Result<Zeroizing<Vec<u8>>> {
    let (pool, entry) = (&key.pool, &key.entry);
    key.with_lease(interrupt, |lease| {
        let leftover = Cell::new(false);
        let result = pool.run(lease, |session, token, refind| {
            let handle = pool.key_handle(session, token, entry, refind)?;
            ecdh(session, handle, &entry.info, token, peer_point, &leftover)
        });
        if leftover.get() {
            pool.discard_session(lease, "a derived ECDH secret could not be destroyed");
        }
        result
    })
}
