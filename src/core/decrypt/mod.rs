//! Private-key operations other than signing: RSA decryption (PKCS#1 v1.5 with implicit
//! rejection, OAEP, raw) here, the padding in software (`pkcs1v15`, `oaep`, over the
//! constant-time helpers of `ct`), the per-key secret of synthetic messages (`rejection`),
//! ECDH key agreement (`ecdh`).
//!
//! Nothing here may be an oracle: for PKCS#1 v1.5 a bad ciphertext decrypts (to a synthetic
//! message) with the same PKCS#11 calls as a good one; for OAEP every failure is one error,
//! with the same calls. A failed `C_Decrypt` ends the operation and leaves the session as it
//! was, so its failures (in any words but "session, login or token gone", see
//! `is_data_error`) become errors without a return code: the pool neither asks the session
//! about its health nor replaces it (which would be one more signal, and churn).
//! Every intermediate secret (raw RSA result, encoded block, seed, masks, plaintext) is in a
//! zeroizing buffer.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::rsa::{PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use subtle::Choice;
use zeroize::Zeroizing;

use crate::core::error::{Error, Kind, Result};
use crate::core::key::KeyInfo;
use crate::core::mechanism::{HashAlg, KeyKind, MechanismSet};
use crate::core::module::lock;
use crate::core::token::TokenState;

pub mod ct;
mod ecdh;
mod label_probe;
pub mod oaep;
pub mod pkcs1v15;
pub mod rejection;

pub use ecdh::{ecdh, ecdh_blocking};

/// How to decrypt.
#[derive(Debug, Clone)]
pub enum Decryption {
    /// PKCS#1 v1.5 with implicit rejection: never fails on bad padding.
    /// `allow_process_secret`: decrypt even with a key from which no implicit-rejection secret
    /// can be derived (neither raw RSA nor signing allowed); refused otherwise (see
    /// `rejection`).
    Pkcs1v15 { allow_process_secret: bool },
    Oaep {
        hash: HashAlg,
        mgf_hash: HashAlg,
        label: Vec<u8>,
    },
    /// Raw RSA (`c^d mod n`): a private-key oracle; the bindings let it through only on an
    /// explicit opt-in.
    Raw,
}

/// The one error of every failed OAEP decryption, whatever failed (token or software).
pub fn decryption_failed() -> Error {
    Error::new(
        Kind::General,
        "decryption failed: wrong key, hash or label, or a corrupted ciphertext",
    )
}

/// `C_Decrypt` failed: the step that reads the ciphertext, so its answer may depend on it
/// (SoftHSM2 says `CKR_GENERAL_ERROR`, kryoptic `CKR_DEVICE_ERROR` for a bad OAEP block). Every
/// code there is "the data", whatever it is called, except those that say the session, its
/// login or the token is gone (`rejection::lost`: no token answers them for a ciphertext).
/// A code that healing would act on (device error, general error) must not get there: the
/// pool would ask the session about its health (`C_GetSessionInfo`) and replace it for a bad
/// ciphertext only, an oracle in the call sequence and the stats. A session lost between
/// `C_DecryptInit` and `C_Decrypt` that the token reports otherwise is found at the next
/// operation's `C_*Init`, whose answer does not depend on any ciphertext.
fn is_data_error(err: &CkError) -> bool {
    matches!(err, CkError::Pkcs11(_, Function::Decrypt)) && !rejection::lost(err)
}

/// A decryption's cryptoki error: data errors become the uniform [`decryption_failed`]
/// (no return code, so nothing heals or replaces the session); anything else (session lost,
/// logged out, device gone) keeps its code for the pool's recovery.
fn decrypt_error(err: CkError, what: &str) -> Error {
    if is_data_error(&err) {
        decryption_failed()
    } else {
        Error::from_cryptoki(err, what)
    }
}

/// Decrypts `data` with an RSA private key; the plaintext in zeroizing memory.
pub fn decrypt(
    session: &Session,
    handle: ObjectHandle,
    info: &KeyInfo,
    token: &TokenState,
    how: &Decryption,
    data: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
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
    let n = rejection::modulus_bytes(info, k);
    // Public values both: checked in software, before the token sees the ciphertext.
    if let Some(n) = &n {
        if data >= n.as_slice() {
            return Err(Error::value(
                "the ciphertext is not smaller than the RSA modulus: it was not made with this key",
            ));
        }
    }
    match how {
        Decryption::Pkcs1v15 {
            allow_process_secret,
        } => {
            let n = n.ok_or_else(|| {
                Error::mechanism(format!(
                    "{} has no readable modulus (CKA_MODULUS)",
                    info.describe()
                ))
            })?;
            let key = rejection::get(session, handle, info, token, &n, k)?;
            if key.source == rejection::Source::Process && !allow_process_secret {
                // Before any decryption, whatever the ciphertext: no oracle.
                return Err(rejection::no_secret_error(info));
            }
            pkcs1v15_decrypt(session, token, handle, &key, data, k)
        }
        Decryption::Raw => raw(session, token, handle, data, k),
        Decryption::Oaep {
            hash,
            mgf_hash,
            label,
        } => oaep_decrypt(
            session,
            handle,
            token,
            n.as_deref(),
            info.public_exponent.as_deref(),
            *hash,
            *mgf_hash,
            label,
            data,
            k,
        ),
    }
}

/// One decryption in the token: `C_DecryptInit` and one `C_Decrypt` into a buffer of the
/// modulus' size `k` (no plaintext is longer), through the module's function list: two round
/// trips. cryptoki's `Session::decrypt` (which asks for the length first: three) where the
/// list does not reach the session's instance.
fn token_decrypt(
    session: &Session,
    token: &TokenState,
    mechanism: &Mechanism,
    handle: ObjectHandle,
    data: &[u8],
    k: usize,
) -> std::result::Result<Zeroizing<Vec<u8>>, CkError> {
    match token.module.raw.as_ref().filter(|r| r.reaches(session)) {
        Some(raw) => raw.decrypt(session, mechanism, handle, data, k),
        None => session.decrypt(mechanism, handle, data).map(Zeroizing::new),
    }
}

/// Raw RSA in the token, right-aligned in a `k`-byte zeroizing buffer.
fn raw(
    session: &Session,
    token: &TokenState,
    handle: ObjectHandle,
    data: &[u8],
    k: usize,
) -> Result<Zeroizing<Vec<u8>>> {
    let out = token_decrypt(session, token, &Mechanism::RsaX509, handle, data, k)
        .map_err(|e| decrypt_error(e, "decrypting (raw RSA)"))?;
    ct::right_align(&out, k)
        .ok_or_else(|| Error::mechanism("the token's raw RSA result is longer than the modulus"))
}

/// `key`: the key's rejection secret, got before the decryption whatever the ciphertext
/// (derived once per key and process).
fn pkcs1v15_decrypt(
    session: &Session,
    token: &TokenState,
    handle: ObjectHandle,
    key: &rejection::RejectionKey,
    data: &[u8],
    k: usize,
) -> Result<Zeroizing<Vec<u8>>> {
    let reject = Choice::from(u8::from(key.is_derivation_input(data)));
    let em = match key.source {
        rejection::Source::Raw => raw(session, token, handle, data, k)?,
        // The key refuses raw RSA: the token removes the padding, and its verdict (returned
        // or refused) is folded into the same constant-time decoding.
        rejection::Source::Signature | rejection::Source::Process => {
            match token_decrypt(session, token, &Mechanism::RsaPkcs, handle, data, k) {
                Ok(m) => pkcs1v15::reencode(Some(&m), k),
                Err(e) if is_data_error(&e) => pkcs1v15::reencode(None, k),
                Err(e) => return Err(Error::from_cryptoki(e, "decrypting (RSA PKCS#1 v1.5)")),
            }
        }
    };
    let kdk = pkcs1v15::kdk(key.hmac_key(), data);
    pkcs1v15::decode(&em, &kdk, reject)
}

/// Token OAEP parameter sets (token, key, hashes) whose `C_DecryptInit` was refused: asked
/// once per process, then hsmkey goes straight to raw RSA + software OAEP.
type Refused = Mutex<HashSet<(String, String, Vec<u8>, HashAlg, HashAlg)>>;

fn oaep_refused() -> &'static Refused {
    static REFUSED: OnceLock<Refused> = OnceLock::new();
    REFUSED.get_or_init(|| Mutex::new(HashSet::new()))
}

fn token_oaep(
    session: &Session,
    handle: ObjectHandle,
    hash: HashAlg,
    mgf_hash: HashAlg,
    label: &[u8],
    data: &[u8],
) -> std::result::Result<Zeroizing<Vec<u8>>, CkError> {
    let params = PkcsOaepParams::new(
        hash.digest_mechanism(),
        mgf_hash.mgf1(),
        if label.is_empty() {
            PkcsOaepSource::empty()
        } else {
            PkcsOaepSource::data_specified(label)
        },
    );
    session
        .decrypt(&Mechanism::RsaPkcsOaep(params), handle, data)
        .map(Zeroizing::new)
}

/// The token's OAEP in two round trips ([`token_decrypt`]): the decryptions themselves
/// (`token_oaep` stays cryptoki's, for the label probe).
#[allow(clippy::too_many_arguments)]
fn token_oaep_sized(
    session: &Session,
    token: &TokenState,
    handle: ObjectHandle,
    hash: HashAlg,
    mgf_hash: HashAlg,
    label: &[u8],
    data: &[u8],
    k: usize,
) -> std::result::Result<Zeroizing<Vec<u8>>, CkError> {
    let params = PkcsOaepParams::new(
        hash.digest_mechanism(),
        mgf_hash.mgf1(),
        if label.is_empty() {
            PkcsOaepSource::empty()
        } else {
            PkcsOaepSource::data_specified(label)
        },
    );
    token_decrypt(
        session,
        token,
        &Mechanism::RsaPkcsOaep(params),
        handle,
        data,
        k,
    )
}

/// An init error that means "not these OAEP parameters" (SoftHSM2 answers
/// `CKR_ARGUMENTS_BAD` for SHA-256).
fn oaep_init_refused(err: &CkError) -> bool {
    rejection::refused(err, Function::DecryptInit)
        || matches!(
            err,
            CkError::Pkcs11(RvError::ArgumentsBad, Function::DecryptInit)
        )
}

/// OAEP: the token's own where it takes these parameters and no label is given (SoftHSM2
/// ignores labels, so a label means software unpadding wherever raw RSA is allowed); raw RSA
/// and software unpadding otherwise; with a label on a key that refuses raw RSA, the token's
/// OAEP only where it is known to honour labels (`label_probe`). Fallbacks happen only on `C_DecryptInit` refusals
/// (which do not depend on the ciphertext), never on `C_Decrypt` errors.
#[allow(clippy::too_many_arguments)]
fn oaep_decrypt(
    session: &Session,
    handle: ObjectHandle,
    token: &TokenState,
    n: Option<&[u8]>,
    exponent: Option<&[u8]>,
    hash: HashAlg,
    mgf_hash: HashAlg,
    label: &[u8],
    data: &[u8],
    k: usize,
) -> Result<Zeroizing<Vec<u8>>> {
    let has_raw = token.has(MechanismType::RSA_X_509);
    let has_oaep = token.has(MechanismType::RSA_PKCS_OAEP);
    let id = (
        token.serial.clone(),
        token.label.clone(),
        n.unwrap_or_default().to_vec(),
        hash,
        mgf_hash,
    );
    if has_oaep && label.is_empty() && !lock(oaep_refused()).contains(&id) {
        match token_oaep_sized(session, token, handle, hash, mgf_hash, label, data, k) {
            Ok(plain) => return Ok(plain),
            Err(e) if has_raw && oaep_init_refused(&e) => {
                lock(oaep_refused()).insert(id);
            }
            Err(e) => return Err(decrypt_error(e, "decrypting (RSA-OAEP)")),
        }
    }
    if has_raw {
        match token_decrypt(session, token, &Mechanism::RsaX509, handle, data, k) {
            Ok(out) => {
                let em = ct::right_align(&out, k).ok_or_else(|| {
                    Error::mechanism("the token's raw RSA result is longer than the modulus")
                })?;
                return oaep::decode(hash, mgf_hash, label, &em);
            }
            // The key refuses raw RSA: only the token's OAEP is left (with a label: only if
            // the token honours labels, see `label_probe`).
            Err(e) if has_oaep && rejection::refused(&e, Function::DecryptInit) => {}
            Err(e) => return Err(decrypt_error(e, "decrypting (raw RSA for OAEP)")),
        }
    }
    if has_oaep {
        if !label.is_empty() {
            label_probe::require_labels(session, handle, token, n, exponent, hash, mgf_hash, k)?;
        }
        return token_oaep_sized(session, token, handle, hash, mgf_hash, label, data, k)
            .map_err(|e| decrypt_error(e, "decrypting (RSA-OAEP)"));
    }
    Err(Error::mechanism(
        "the token offers neither CKM_RSA_PKCS_OAEP nor CKM_RSA_X_509",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_c_decrypt_failure_but_a_lost_session_is_the_data() {
        for rv in [
            RvError::DeviceError, // kryoptic, bad OAEP block
            RvError::GeneralError,
            RvError::EncryptedDataInvalid,
            RvError::FunctionFailed,
            RvError::DeviceMemory,
        ] {
            let err = CkError::Pkcs11(rv, Function::Decrypt);
            assert!(is_data_error(&err), "{rv:?}");
            let e = decrypt_error(err, "x");
            assert!(e.rv.is_none() && e.message == decryption_failed().message);
        }
        for rv in [
            RvError::SessionHandleInvalid,
            RvError::SessionClosed,
            RvError::UserNotLoggedIn,
            RvError::DeviceRemoved,
            RvError::TokenNotPresent,
        ] {
            let err = CkError::Pkcs11(rv, Function::Decrypt);
            assert!(!is_data_error(&err), "{rv:?}");
            assert!(decrypt_error(err, "x").rv.is_some(), "{rv:?}");
        }
        // C_DecryptInit reads no ciphertext: its codes are kept.
        let init = CkError::Pkcs11(RvError::DeviceError, Function::DecryptInit);
        assert!(!is_data_error(&init));
    }
}
