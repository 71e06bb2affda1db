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
//!
//! The secret is read with one raw `C_GetAttributeValue` into zeroizing memory (cryptoki's
//! reader would leave copies in buffers it frees unwiped); only where the module's function
//! list does not reach cryptoki's instance (p11-kit-client) is cryptoki's reader used.
//! The peer's point is checked in software first (uncompressed, the key's curve, on the
//! curve): the token never sees a point that is not a valid public key, so no token has to be
//! trusted to reject invalid-curve or small-subgroup points itself.

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
use crate::core::mechanism::{Curve, KeyKind, MechanismSet};
use crate::core::raw::RawFunctions;

/// Checks the peer's public point in software: the uncompressed SEC1 encoding
/// (`04 || x || y`) of a point on `curve` (coordinates below the field prime, the curve
/// equation holds; the identity has no such encoding). The curves hsmkey does ECDH on all have
/// cofactor 1, so such a point generates the whole group: no small-subgroup point passes.
pub fn check_peer_point(curve: Curve, point: &[u8]) -> Result<()> {
    if point.len() != curve.public_len() || point.first() != Some(&0x04) {
        return Err(Error::value(format!(
            "the peer key must be an uncompressed {} point ({} bytes)",
            curve.name(),
            curve.public_len()
        )));
    }
    let on_curve = match curve {
        Curve::P256 => p256::PublicKey::from_sec1_bytes(point).is_ok(),
        Curve::P384 => p384::PublicKey::from_sec1_bytes(point).is_ok(),
        Curve::P521 => p521::PublicKey::from_sec1_bytes(point).is_ok(),
        Curve::Secp256k1 => k256::PublicKey::from_sec1_bytes(point).is_ok(),
        Curve::Ed25519 | Curve::Ed448 => false,
    };
    if !on_curve {
        return Err(Error::value(format!(
            "the peer key is not a point on {}: refused before the token sees it (an \
             invalid-curve point can leak the private key through a token that does not check)",
            curve.name()
        )));
    }
    Ok(())
}

/// ECDH: the shared secret (the x coordinate) with the peer's public point (uncompressed).
/// `leftover` is set when the derived object could not be destroyed (the caller must then
/// close the session), also when this returns an error.
pub fn ecdh(
    session: &Session,
    handle: ObjectHandle,
    info: &KeyInfo,
    token: &dyn MechanismSet,
    raw: Option<&RawFunctions>,
    peer_point: &[u8],
    leftover: &Cell<bool>,
) -> Result<Zeroizing<Vec<u8>>> {
    let Some(curve) = info
        .curve
        .filter(|c| info.kind == KeyKind::Ec && !c.is_edwards())
    else {
        return Err(Error::mechanism(format!(
            "ECDH needs an EC key on a Weierstrass curve, but {}",
            info.describe()
        )));
    };
    check_peer_point(curve, peer_point)?;
    if !token.has(MechanismType::ECDH1_DERIVE) {
        return Err(Error::mechanism(
            "the token does not offer CKM_ECDH1_DERIVE",
        ));
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
    let value = read_secret(session, derived, raw, field);
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
    let secret = value?;
    if secret.len() != field {
        return Err(Error::mechanism(format!(
            "the token derived {} bytes of ECDH secret, not {field}",
            secret.len()
        )));
    }
    Ok(secret)
}

/// The derived secret's CKA_VALUE (`field` bytes expected), in zeroizing memory.
fn read_secret(
    session: &Session,
    derived: ObjectHandle,
    raw: Option<&RawFunctions>,
    field: usize,
) -> Result<Zeroizing<Vec<u8>>> {
    if let Some(raw) = raw.filter(|r| r.reaches(session)) {
        return raw
            .secret_attribute(session, derived, cryptoki_sys::CKA_VALUE, field)
            .context("reading the ECDH shared secret");
    }
    // A module whose function list is not cryptoki's instance: cryptoki's reader (its own
    // buffers are not wiped; the returned value is).
    for a in session
        .get_attributes(derived, &[AttributeType::Value])
        .context("reading the ECDH shared secret")?
    {
        if let Attribute::Value(v) = a {
            return Ok(Zeroizing::new(v));
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
            let raw = token.module.raw.as_ref();
            ecdh(
                session,
                handle,
                &entry.info,
                token,
                raw,
                peer_point,
                &leftover,
            )
        });
        if leftover.get() {
            pool.discard_session(lease, "a derived ECDH secret could not be destroyed");
        }
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .filter_map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
            .collect()
    }

    const P256_G: &str = "046b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296\
                          4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5";
    const K256_G: &str = "0479be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798\
                          483ada7726a3c4655da4fbfc0e1108a8fd17b448a68554199c47d08ffb10d4b8";

    const P384_G: &str = "04aa87ca22be8b05378eb1c71ef320ad746e1d3b628ba79b9859f741e082542a38\
                          5502f25dbf55296c3a545e3872760ab73617de4a96262c6f5d9e98bf9292dc29f8\
                          f41dbd289a147ce9da3113b5f0b8c00a60b1ce1d7e819d7a431d7c90ea0e5f";
    const P521_G: &str = "0400c6858e06b70404e9cd9e3ecb662395b4429c648139053fb521f828af606b4d\
                          3dbaa14b5e77efe75928fe1dc127a2ffa8de3348b3c1856a429bf97e7e31c2e5bd\
                          66011839296a789a3bc0045c8a5fb42c7d1bd998f54449579b446817afbd17273e\
                          662c97ee72995ef42640c550b9013fad0761353c7086a272c24088be94769fd16650";

    #[test]
    fn points_on_the_curve_pass() {
        assert!(check_peer_point(Curve::P256, &unhex(P256_G)).is_ok());
        assert!(check_peer_point(Curve::Secp256k1, &unhex(K256_G)).is_ok());
        assert!(check_peer_point(Curve::P384, &unhex(P384_G)).is_ok());
        assert!(check_peer_point(Curve::P521, &unhex(P521_G)).is_ok());
    }

    #[test]
    fn off_curve_points_are_refused_on_every_curve() {
        for (curve, g) in [
            (Curve::P256, P256_G),
            (Curve::P384, P384_G),
            (Curve::P521, P521_G),
            (Curve::Secp256k1, K256_G),
        ] {
            let mut p = unhex(g);
            assert_eq!(p.len(), curve.public_len(), "{}", curve.name());
            let last = p.len() - 1;
            p[last] ^= 1;
            assert!(check_peer_point(curve, &p).is_err(), "{}", curve.name());
            let mut zero = vec![0u8; curve.public_len()];
            zero[0] = 4;
            assert!(check_peer_point(curve, &zero).is_err(), "{}", curve.name());
        }
        // Edwards curves have no ECDH here.
        assert!(check_peer_point(Curve::Ed25519, &[0u8; 32]).is_err());
    }

    #[test]
    fn invalid_points_are_refused() {
        let g = unhex(P256_G);
        let mut off = g.clone();
        off[64] ^= 1; // y changed: off the curve
        let zeros = {
            let mut z = vec![0u8; 65];
            z[0] = 4;
            z
        };
        let mut big = vec![0xffu8; 65]; // coordinates above the field prime
        big[0] = 4;
        for (what, p) in [
            ("off the curve", off),
            ("all zero", zeros),
            ("not reduced", big),
            ("compressed", g[..33].to_vec()),
            ("too short", g[..64].to_vec()),
            ("P-256 point for secp256k1", g.clone()),
        ] {
            let curve = if what.contains("secp256k1") {
                Curve::Secp256k1
            } else {
                Curve::P256
            };
            let err = check_peer_point(curve, &p).err();
            assert!(err.is_some(), "{what}");
            assert_eq!(
                err.map(|e| e.kind),
                Some(crate::core::error::Kind::Value),
                "{what}"
            );
        }
        // The secp256k1 generator is not on P-256.
        assert!(check_peer_point(Curve::P256, &unhex(K256_G)).is_err());
    }
}
