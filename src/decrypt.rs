//! Private-key operations other than signing: RSA decryption (PKCS#1 v1.5, OAEP, raw) and
//! ECDH key agreement.

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use crate::error::{Context, Error, Kind, Result};
use crate::key::KeyInfo;
use crate::mechanism::{HashAlg, KeyKind, MechanismSet};
use crate::oaep;

/// How to decrypt.
#[derive(Debug, Clone)]
pub enum Decryption {
    Pkcs1v15,
    Oaep {
        hash: HashAlg,
        mgf_hash: HashAlg,
        label: Vec<u8>,
    },
    Raw,
}

fn mgf(hash: HashAlg) -> PkcsMgfType {
    match hash {
        HashAlg::Sha1 => PkcsMgfType::MGF1_SHA1,
        HashAlg::Sha224 => PkcsMgfType::MGF1_SHA224,
        HashAlg::Sha256 => PkcsMgfType::MGF1_SHA256,
        HashAlg::Sha384 => PkcsMgfType::MGF1_SHA384,
        HashAlg::Sha512 => PkcsMgfType::MGF1_SHA512,
    }
}

fn digest_mechanism(hash: HashAlg) -> MechanismType {
    match hash {
        HashAlg::Sha1 => MechanismType::SHA1,
        HashAlg::Sha224 => MechanismType::SHA224,
        HashAlg::Sha256 => MechanismType::SHA256,
        HashAlg::Sha384 => MechanismType::SHA384,
        HashAlg::Sha512 => MechanismType::SHA512,
    }
}

/// Decrypts `data` with an RSA private key.
pub fn decrypt(
    session: &Session,
    handle: ObjectHandle,
    info: &KeyInfo,
    token: &dyn MechanismSet,
    how: &Decryption,
    data: &[u8],
) -> Result<Vec<u8>> {
    if info.kind != KeyKind::Rsa {
        return Err(Error::mechanism(format!(
            "decryption needs an RSA key, but {}",
            info.describe()
        )));
    }
    let k = info.bits.div_ceil(8);
    if data.len() != k {
        return Err(Error::value(format!(
            "the ciphertext must be {k} bytes for a {}-bit key, not {}",
            info.bits,
            data.len()
        )));
    }
    match how {
        Decryption::Pkcs1v15 => session
            .decrypt(&Mechanism::RsaPkcs, handle, data)
            .context("decrypting (RSA PKCS#1 v1.5)"),
        Decryption::Raw => raw(session, handle, data, k),
        Decryption::Oaep {
            hash,
            mgf_hash,
            label,
        } => {
            if token.has(MechanismType::RSA_PKCS_OAEP) {
                let params = PkcsOaepParams::new(
                    digest_mechanism(*hash),
                    mgf(*mgf_hash),
                    if label.is_empty() {
                        PkcsOaepSource::empty()
                    } else {
                        PkcsOaepSource::data_specified(label)
                    },
                );
                match session.decrypt(&Mechanism::RsaPkcsOaep(params), handle, data) {
                    Ok(plain) => return Ok(plain),
                    // The token has OAEP, but not with these hashes (SoftHSM2: SHA-1 only)...
                    Err(CkError::Pkcs11(
                        RvError::ArgumentsBad
                        | RvError::MechanismParamInvalid
                        | RvError::MechanismInvalid,
                        _,
                    )) if token.has(MechanismType::RSA_X_509) => {}
                    // ... or not with a label (SoftHSM2 answers CKR_GENERAL_ERROR).
                    Err(CkError::Pkcs11(RvError::GeneralError | RvError::FunctionFailed, _))
                        if !label.is_empty() && token.has(MechanismType::RSA_X_509) => {}
                    Err(e) => return Err(Error::from_cryptoki(e, "decrypting (RSA-OAEP)")),
                }
            } else if !token.has(MechanismType::RSA_X_509) {
                return Err(Error::mechanism(
                    "the token offers neither CKM_RSA_PKCS_OAEP nor CKM_RSA_X_509",
                ));
            }
            let em = raw(session, handle, data, k)?;
            oaep::decode(*hash, *mgf_hash, label, &em)
        }
    }
}

fn raw(session: &Session, handle: ObjectHandle, data: &[u8], k: usize) -> Result<Vec<u8>> {
    let mut out = session
        .decrypt(&Mechanism::RsaX509, handle, data)
        .context("decrypting (raw RSA)")?;
    // Some tokens strip leading zero bytes: the block is always k bytes long.
    if out.len() < k {
        let mut padded = vec![0u8; k - out.len()];
        padded.append(&mut out);
        out = padded;
    }
    Ok(out)
}

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
