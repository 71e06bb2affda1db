//! The per-key secret behind PKCS#1 v1.5 implicit rejection.
//!
//! OpenSSL keys its synthetic messages with `SHA256(d)`. The token never shows `d`, so hsmkey
//! asks the token for a value only the private key can compute and that no caller of hsmkey's
//! API can ask for: the raw RSA decryption `s = X^d mod n` of a fixed, key-specific value
//! `X = 00 || MGF1-SHA256("hsmkey/rsa-implicit-rejection/v1" || n)` (`CKM_RSA_X_509`), or,
//! where the key refuses raw RSA, its `CKM_RSA_PKCS` signature over a fixed 32-byte value that
//! is not a DigestInfo (so no RS256 signature is ever that value). The HMAC key is
//! `SHA256(domain || s)`.
//!
//! Why a secret from the token and not one drawn at random per process: the synthetic message
//! must be the same for the same ciphertext *everywhere* the key is used. A random secret
//! differs between the workers of a pre-fork server, between replicas and across restarts,
//! and the same bad ciphertext sent twice would then decrypt to different bytes, while a good
//! one always decrypts to the same: that difference is the oracle implicit rejection removes.
//! A token-derived secret is the same in every process, costs one private-key operation per
//! key per process (cached in zeroizing memory here, keyed by token and public key), and is
//! computed before the first decryption whatever the ciphertext is, so it is no oracle.
//! When the key allows neither raw RSA nor signing, the only secret left is one drawn per
//! process, which brings back the oracle across processes (workers, replicas, restarts):
//! PKCS#1 v1.5 decryption with such a key is refused ([`no_secret_error`]) unless the caller
//! opts in (`allow_process_secret=True`, for a key that only ever one process uses), and the
//! log says so once.
//!
//! The one ciphertext whose raw decryption *is* `s` (`X`, or the signature block) always gets
//! the synthetic message (see `reject`), so `s` does not come back through the v1.5 path;
//! what remains is what every implicit-rejection scheme leaves to a caller who sees
//! plaintexts: from blinded queries one learns as much about `s` as about any plaintext.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use super::ct;
use crate::core::error::{Error, Result};
use crate::core::key::KeyInfo;
use crate::core::log;
use crate::core::module::lock;
use crate::core::token::TokenState;

const DOMAIN: &[u8] = b"hsmkey/rsa-implicit-rejection/v1";
/// Derived keys kept at most (a process rarely decrypts with more than a handful of keys).
const CACHE_MAX: usize = 1024;

/// How the secret was made (so the docs and tests can tell).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Raw RSA decryption of `X` in the token; the key decrypts v1.5 through raw RSA too.
    Raw,
    /// A `CKM_RSA_PKCS` signature in the token; the key refuses raw RSA, so the token removes
    /// the v1.5 padding itself.
    Signature,
    /// Neither was allowed: a secret drawn once per process (used only on the caller's
    /// opt-in).
    Process,
}

/// The HMAC key of a key's synthetic messages.
pub struct RejectionKey {
    key: Zeroizing<[u8; 32]>,
    pub source: Source,
    /// The ciphertext whose raw decryption is the secret (public).
    input: Vec<u8>,
}

impl RejectionKey {
    pub fn hmac_key(&self) -> &[u8; 32] {
        &self.key
    }
    /// True for the one ciphertext that must always be rejected (compared in variable time:
    /// both sides are public).
    pub fn is_derivation_input(&self, ciphertext: &[u8]) -> bool {
        self.input == ciphertext
    }
}

impl std::fmt::Debug for RejectionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RejectionKey({:?}, <hidden>)", self.source)
    }
}

type Cache = Mutex<HashMap<[u8; 32], Arc<RejectionKey>>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The modulus as exactly `k` big-endian bytes.
pub fn modulus_bytes(info: &KeyInfo, k: usize) -> Option<Vec<u8>> {
    let n = info.modulus.as_deref()?;
    let start = n.iter().position(|b| *b != 0).unwrap_or(n.len());
    ct::right_align(&n[start..], k).map(|v| v.to_vec())
}

/// `X`: a value below `n` (its first byte is 0) that depends only on the public key.
fn derivation_input(n: &[u8], k: usize) -> Vec<u8> {
    let mut x = vec![0u8; k];
    for (i, chunk) in x[1..].chunks_mut(32).enumerate() {
        let mut h = Sha256::new();
        h.update(DOMAIN);
        h.update(n);
        h.update((i as u32).to_be_bytes());
        chunk.copy_from_slice(&h.finalize()[..chunk.len()]);
    }
    x
}

/// The data signed where raw RSA is refused: 32 bytes, not a DigestInfo.
fn signed_value(n: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(b"/signature");
    h.update(n);
    h.finalize().to_vec()
}

/// The PKCS#1 v1.5 signature block `00 01 FF.. 00 data` (what the token raises to `d`).
fn signature_block(data: &[u8], k: usize) -> Vec<u8> {
    let mut block = vec![0xffu8; k];
    block[0] = 0;
    block[1] = 1;
    let at = k.saturating_sub(data.len() + 1);
    block[at] = 0;
    block[at + 1..].copy_from_slice(data);
    block
}

/// An init error that means "this key or token does not do that mechanism" (the same for
/// every ciphertext).
pub fn refused(err: &CkError, init: Function) -> bool {
    matches!(
        err,
        CkError::Pkcs11(
            RvError::MechanismInvalid
                | RvError::MechanismParamInvalid
                | RvError::KeyFunctionNotPermitted
                | RvError::KeyTypeInconsistent
                | RvError::FunctionNotSupported,
            f,
        ) if std::mem::discriminant(f) == std::mem::discriminant(&init)
    )
}

/// Errors that say the session, its login or the token went away (not that the key refuses
/// the mechanism): never worked around, the caller heals them.
fn lost(err: &CkError) -> bool {
    matches!(
        err,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent
                | RvError::UserNotLoggedIn
                | RvError::CryptokiNotInitialized
                | RvError::ObjectHandleInvalid
                | RvError::KeyHandleInvalid,
            _
        )
    )
}

fn finish(secret: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update([1u8]);
    h.update(secret);
    let mut digest = h.finalize();
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&digest);
    digest[..].zeroize();
    key
}

fn process_secret() -> &'static Zeroizing<[u8; 32]> {
    static SECRET: OnceLock<Zeroizing<[u8; 32]>> = OnceLock::new();
    SECRET.get_or_init(|| {
        let mut s = Zeroizing::new([0u8; 32]);
        if getrandom::fill(s.as_mut()).is_err() {
            use std::hash::{BuildHasher, Hasher};
            for chunk in s.chunks_mut(8) {
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_u64(chunk.len() as u64);
                chunk.copy_from_slice(&h.finish().to_le_bytes()[..chunk.len()]);
            }
        }
        s
    })
}

/// The error of a PKCS#1 v1.5 decryption with a key that allows neither raw RSA nor signing,
/// without the opt-in: names what the key lacks and the ways out.
pub fn no_secret_error(info: &KeyInfo) -> Error {
    Error::mechanism(format!(
        "{} allows neither raw RSA decryption (CKM_RSA_X_509 in CKA_ALLOWED_MECHANISMS) nor \
         signing (CKA_SIGN with CKM_RSA_PKCS), so hsmkey cannot derive the secret of its \
         PKCS#1 v1.5 implicit rejection from the key; a secret drawn per process would give a \
         bad ciphertext different plaintexts in different processes (a padding oracle across \
         workers). Allow one of them on the key, use RSA-OAEP, or pass \
         allow_process_secret=True if only one process ever decrypts with this key",
        info.describe()
    ))
}

/// The rejection key of `handle` (an RSA key of `k`-byte modulus `n`), from the cache or
/// derived now in the token.
pub fn get(
    session: &Session,
    handle: ObjectHandle,
    info: &KeyInfo,
    token: &TokenState,
    n: &[u8],
    k: usize,
) -> Result<Arc<RejectionKey>> {
    let id = {
        let mut h = Sha256::new();
        h.update(DOMAIN);
        for part in [token.serial.as_bytes(), token.label.as_bytes(), n] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        h.update(info.public_exponent.as_deref().unwrap_or_default());
        let mut id = [0u8; 32];
        id.copy_from_slice(&h.finalize());
        id
    };
    if let Some(found) = lock(cache()).get(&id) {
        return Ok(found.clone());
    }
    let derived = Arc::new(derive(session, handle, info, token, n, k)?);
    let mut all = lock(cache());
    if all.len() >= CACHE_MAX {
        all.clear();
    }
    // Two threads may derive at once: both got the same value; keep the first.
    Ok(all.entry(id).or_insert(derived).clone())
}

fn derive(
    session: &Session,
    handle: ObjectHandle,
    info: &KeyInfo,
    token: &TokenState,
    n: &[u8],
    k: usize,
) -> Result<RejectionKey> {
    use crate::core::mechanism::MechanismSet;
    if token.has(MechanismType::RSA_X_509) {
        let x = derivation_input(n, k);
        match session.decrypt(&Mechanism::RsaX509, handle, &x) {
            Ok(out) => {
                let out = Zeroizing::new(out);
                let s = ct::right_align(&out, k).ok_or_else(|| {
                    Error::mechanism("the token's raw RSA result is longer than the modulus")
                })?;
                return Ok(RejectionKey {
                    key: finish(&s),
                    source: Source::Raw,
                    input: x,
                });
            }
            Err(e) if refused(&e, Function::DecryptInit) => {}
            // A session or login that is gone is healed by the caller, not worked around.
            Err(e) if lost(&e) => {
                return Err(Error::from_cryptoki(
                    e,
                    "deriving the key's implicit-rejection secret (raw RSA)",
                ))
            }
            // Any other failure, at C_DecryptInit or at C_Decrypt (kryoptic 1.5 accepts
            // CKM_RSA_X_509 at init and answers CKR_GENERAL_ERROR from C_Decrypt): the token
            // does not do raw RSA with this key; the signature derivation below may.
            Err(e) => log::log(
                log::INFO,
                &format!(
                    "{}: raw RSA failed ({e}); deriving the implicit-rejection secret from a \
                     signature instead",
                    info.describe()
                ),
            ),
        }
    }
    let data = signed_value(n);
    if k >= data.len() + super::pkcs1v15::MIN_BLOCK && token.has(MechanismType::RSA_PKCS) {
        match session.sign(&Mechanism::RsaPkcs, handle, &data) {
            Ok(sig) => {
                let sig = Zeroizing::new(sig);
                let s = ct::right_align(&sig, k).ok_or_else(|| {
                    Error::mechanism("the token's RSA signature is longer than the modulus")
                })?;
                return Ok(RejectionKey {
                    key: finish(&s),
                    source: Source::Signature,
                    input: signature_block(&data, k),
                });
            }
            Err(e) if refused(&e, Function::SignInit) => {}
            Err(e) => {
                return Err(Error::from_cryptoki(
                    e,
                    "deriving the key's implicit-rejection secret (RSA signature)",
                ))
            }
        }
    }
    log::log(
        log::WARNING,
        &format!(
            "{} allows neither raw RSA nor signing: PKCS#1 v1.5 decryption with it is refused \
             unless allow_process_secret=True, and then its synthetic messages use a secret of \
             this process, so they differ between processes",
            info.describe()
        ),
    );
    let mut seed = Zeroizing::new(Vec::with_capacity(32 + n.len()));
    seed.extend_from_slice(process_secret().as_ref());
    seed.extend_from_slice(n);
    Ok(RejectionKey {
        key: finish(&seed),
        source: Source::Process,
        input: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivation_input_is_below_the_modulus_and_fixed() {
        let n = [0x80u8; 64];
        let x = derivation_input(&n, 64);
        assert_eq!(x.len(), 64);
        assert_eq!(x[0], 0);
        assert_eq!(x, derivation_input(&n, 64));
        assert_ne!(x, derivation_input(&[0x81u8; 64], 64));
    }

    #[test]
    fn signature_block_is_pkcs1_type_1() {
        let b = signature_block(&[7u8; 32], 64);
        assert_eq!(&b[..2], &[0, 1]);
        assert!(b[2..31].iter().all(|x| *x == 0xff));
        assert_eq!(b[31], 0);
        assert_eq!(&b[32..], &[7u8; 32]);
    }

    #[test]
    fn debug_hides_the_secret() {
        let k = RejectionKey {
            key: Zeroizing::new([0x42u8; 32]),
            source: Source::Raw,
            input: vec![],
        };
        assert!(!format!("{k:?}").contains("42"));
    }
}
