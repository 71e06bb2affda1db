//! Whether a token's own `CKM_RSA_PKCS_OAEP` honours the label (`pSourceData`).
//!
//! Where the key allows raw RSA, hsmkey removes OAEP padding itself and checks the label. A
//! key that allows only `CKM_RSA_PKCS_OAEP` leaves the label to the token, and some tokens
//! ignore it (SoftHSM2 decrypts with the empty label whatever it is given): a ciphertext made
//! for another label, or for none, would decrypt. So before the first labelled decryption on
//! such a key, hsmkey asks the token once per token and parameter set (cached for the
//! process), with ciphertexts it made itself for the key's public key:
//!
//! 1. made without a label, decrypted with a label: a token that honours labels fails;
//! 2. made with the label, decrypted with it: it must give the message back (a token that
//!    ignores labels fails here, so success proves the label was used).
//!
//! A token that fails either is refused labelled OAEP decryption (`HSMMechanismError`). The
//! probe uses no caller data and runs before the caller's ciphertext whatever it is, so it
//! tells nothing about that ciphertext (no oracle); the unlabelled path never probes.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use num_bigint::BigUint;

use super::{ct, decrypt_error, is_data_error, oaep, token_oaep};
use crate::core::error::{Error, Result};
use crate::core::mechanism::HashAlg;
use crate::core::module::lock;
use crate::core::token::TokenState;

const PROBE_LABEL: &[u8] = b"hsmkey/oaep-label-probe/v1";
const PROBE_MESSAGE: &[u8] = b"hsmkey label probe";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Labels {
    Honoured,
    Ignored,
}

type Cache = Mutex<HashMap<(String, String, HashAlg, HashAlg), Labels>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// `Ok` if the token's OAEP with these hashes honours labels (probed once per token and
/// hashes); the refusal otherwise.
#[allow(clippy::too_many_arguments)]
pub fn require_labels(
    session: &Session,
    handle: ObjectHandle,
    token: &TokenState,
    n: Option<&[u8]>,
    e: Option<&[u8]>,
    hash: HashAlg,
    mgf_hash: HashAlg,
    k: usize,
) -> Result<()> {
    let id = (token.serial.clone(), token.label.clone(), hash, mgf_hash);
    let known = lock(cache()).get(&id).copied();
    let labels = match known {
        Some(labels) => labels,
        None => {
            let labels = probe(session, handle, n, e, hash, mgf_hash, k)?;
            lock(cache()).insert(id, labels);
            labels
        }
    };
    match labels {
        Labels::Honoured => Ok(()),
        Labels::Ignored => Err(Error::mechanism(format!(
            "token {:?}'s CKM_RSA_PKCS_OAEP ignores the OAEP label (checked once with a \
             ciphertext of hsmkey's own), and this key refuses raw RSA (CKM_RSA_X_509), with \
             which hsmkey would check the label itself: labelled RSA-OAEP decryption is \
             refused rather than return a plaintext under a label that was not the one used. \
             Allow CKM_RSA_X_509 on the key, or decrypt without a label",
            token.label
        ))),
    }
}

fn is_device_fault(err: &CkError) -> bool {
    matches!(
        err,
        CkError::Pkcs11(
            RvError::DeviceError | RvError::DeviceMemory | RvError::HostMemory,
            _
        )
    )
}

/// `m^e mod n` as `k` bytes (public values only).
fn rsa_public(n: &[u8], e: &[u8], m: &[u8], k: usize) -> Option<Vec<u8>> {
    let n = BigUint::from_bytes_be(n);
    let c = BigUint::from_bytes_be(m).modpow(&BigUint::from_bytes_be(e), &n);
    ct::right_align(&c.to_bytes_be(), k).map(|c| c.to_vec())
}

fn encrypt(
    n: &[u8],
    e: &[u8],
    hash: HashAlg,
    mgf_hash: HashAlg,
    label: &[u8],
    k: usize,
) -> Result<Vec<u8>> {
    let mut seed = vec![0x5au8; hash.len()];
    // A fresh seed where the OS gives one; a fixed one would do too (nothing here is secret).
    let _ = getrandom::fill(&mut seed);
    let em = oaep::encode(hash, mgf_hash, label, PROBE_MESSAGE, k, &seed)
        .ok_or_else(super::decryption_failed)?;
    rsa_public(n, e, &em, k).ok_or_else(super::decryption_failed)
}

fn probe(
    session: &Session,
    handle: ObjectHandle,
    n: Option<&[u8]>,
    e: Option<&[u8]>,
    hash: HashAlg,
    mgf_hash: HashAlg,
    k: usize,
) -> Result<Labels> {
    let (Some(n), Some(e)) = (n, e) else {
        return Err(Error::mechanism(
            "labelled RSA-OAEP needs the key's public modulus and exponent (to check once that \
             the token honours labels), and the key shows neither",
        ));
    };
    let what = "checking whether the token's RSA-OAEP honours labels";
    let unlabelled = encrypt(n, e, hash, mgf_hash, b"", k)?;
    match token_oaep(session, handle, hash, mgf_hash, PROBE_LABEL, &unlabelled) {
        Ok(_) => return Ok(Labels::Ignored),
        // Refused by C_Decrypt, in whatever words (kryoptic: CKR_DEVICE_ERROR): step 2
        // decides, and fails again if the token is really unwell.
        Err(CkError::Pkcs11(_, Function::Decrypt)) => {}
        Err(err) => return Err(decrypt_error(err, what)),
    }
    let labelled = encrypt(n, e, hash, mgf_hash, PROBE_LABEL, k)?;
    match token_oaep(session, handle, hash, mgf_hash, PROBE_LABEL, &labelled) {
        Ok(m) if m.as_slice() == PROBE_MESSAGE => Ok(Labels::Honoured),
        Ok(_) => Ok(Labels::Ignored),
        // Cached: only a refusal of the block itself says "ignored". A device or memory error
        // on hsmkey's own ciphertext (no caller data, so no oracle) keeps its code, for the
        // pool's healing, and the probe runs again next time.
        Err(err) if is_data_error(&err) && !is_device_fault(&err) => Ok(Labels::Ignored),
        Err(err) => Err(Error::from_cryptoki(err, what)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsa_public_is_modpow() {
        // 4^3 mod 13 = 12, 2 bytes wide.
        assert_eq!(rsa_public(&[13], &[3], &[4], 2), Some(vec![0, 12]));
    }
}
