//! ECDH key agreement in the token (`CKM_ECDH1_DERIVE`, no KDF): the shared secret for
//! JWE ECDH-ES and cryptography's `exchange()`.

use cryptoki::error::RvError;
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use crate::core::error::{Context, Error, Kind, Result};
use crate::core::key::KeyInfo;
use crate::core::mechanism::{KeyKind, MechanismSet};

/// ECDH: the shared secret (the x coordinate) with the peer's public point (uncompressed).
pub fn ecdh(
    session: &Session,
    handle: ObjectHandle,
    info: &KeyInfo,
    token: &dyn MechanismSet,
    peer_point: &[u8],
) -> Result<Vec<u8>> {
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
    let _ = session.destroy_object(derived);
    for a in value.context("reading the ECDH shared secret")? {
        if let Attribute::Value(v) = a {
            return Ok(v);
        }
    }
    Err(Error::mechanism(
        "the token did not reveal the derived ECDH secret (CKA_VALUE)",
    ))
}
