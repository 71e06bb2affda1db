//! Private-key operations other than signing: RSA decryption (PKCS#1 v1.5, OAEP, raw) here,
//! OAEP unpadding in software (`oaep`), ECDH key agreement (`ecdh`).

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::rsa::{PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;

use crate::core::error::{Context, Error, Result};
use crate::core::key::KeyInfo;
use crate::core::mechanism::{HashAlg, KeyKind, MechanismSet};

mod ecdh;
pub mod oaep;

pub use ecdh::ecdh;

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
                    hash.digest_mechanism(),
                    mgf_hash.mgf1(),
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
