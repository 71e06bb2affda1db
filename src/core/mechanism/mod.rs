//! Signature schemes mapped to PKCS#11 mechanisms, one file per key family (`rsa`, `ec`,
//! `eddsa`, `mldsa`), with what they share: hashes (`hash`), curves and key kinds (`curve`), JOSE
//! algorithm names (`jose`) and the secret-free encodings (`encoding`).
//!
//! To add a mechanism: give its family's `prepare_*` the new case (and `Scheme` a variant if
//! it signs differently), and add its JOSE name to `jose`.

use cryptoki::mechanism::{Mechanism, MechanismType};

use crate::core::error::{Error, Result};

mod curve;
mod ec;
mod eddsa;
pub mod encoding;
mod hash;
mod jose;
mod mldsa;
mod rsa;
mod slhdsa;

pub use curve::{Curve, KeyKind};
pub use encoding::{der_tlv, ecdsa_der, hex};
pub use hash::HashAlg;
pub use jose::{JoseAlg, Needs};
pub use mldsa::{public_from_spki, Context as MlDsaContext, MlDsa};
pub use slhdsa::SlhDsa;

/// What to sign, independent of the token.
///
/// `Copy`, with an ML-DSA context inline (256 bytes): copying it costs nanoseconds beside a
/// token signature, and keeps every path allocation-free.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    RsaPkcs {
        hash: HashAlg,
        prehashed: bool,
    },
    RsaPss {
        hash: HashAlg,
        salt: usize,
        prehashed: bool,
    },
    Ecdsa {
        hash: HashAlg,
        prehashed: bool,
    },
    EdDsa,
    /// Pure ML-DSA (FIPS 204): hedged unless `deterministic`, with a context string.
    MlDsa {
        deterministic: bool,
        context: MlDsaContext,
    },
    /// Pure SLH-DSA (FIPS 205), like ML-DSA.
    SlhDsa {
        deterministic: bool,
        context: MlDsaContext,
    },
}

/// Checks that a scheme fits a key family (the low-level `sign_raw` path).
pub fn check_scheme_key(
    scheme: &Scheme,
    kind: KeyKind,
    key_desc: impl FnOnce() -> String,
) -> Result<()> {
    let ok = match scheme {
        Scheme::RsaPkcs { .. } | Scheme::RsaPss { .. } => kind == KeyKind::Rsa,
        Scheme::Ecdsa { .. } => kind == KeyKind::Ec,
        Scheme::EdDsa => kind == KeyKind::Edwards,
        Scheme::MlDsa { .. } => kind == KeyKind::MlDsa,
        Scheme::SlhDsa { .. } => kind == KeyKind::SlhDsa,
    };
    if ok {
        Ok(())
    } else {
        Err(Error::mechanism(format!(
            "{} signatures need a different key type: {}",
            scheme_name(scheme),
            key_desc()
        )))
    }
}

fn scheme_name(scheme: &Scheme) -> &'static str {
    match scheme {
        Scheme::RsaPkcs { .. } => "RSA PKCS#1 v1.5",
        Scheme::RsaPss { .. } => "RSA-PSS",
        Scheme::Ecdsa { .. } => "ECDSA",
        Scheme::EdDsa => "EdDSA",
        Scheme::MlDsa { .. } => "ML-DSA",
        Scheme::SlhDsa { .. } => "SLH-DSA",
    }
}

/// The mechanisms a token offers, as far as signing cares.
pub trait MechanismSet {
    fn has(&self, mechanism: MechanismType) -> bool;
    /// How errors name the token ("token \"x\" (serial y)").
    fn describe(&self) -> String {
        "the token".to_string()
    }
}

/// A scheme made concrete for one token: the mechanism to pass and the bytes to sign.
pub struct Prepared<'a> {
    pub mechanism: Mechanism<'a>,
    /// `None`: sign the caller's data as given.
    pub data: Option<Vec<u8>>,
}

/// Chooses the mechanism and does the secret-free part (hashing, DigestInfo) locally where
/// the token lacks a combined mechanism. `data` is the message, or the digest if prehashed.
/// The mechanism may borrow from `scheme` (an ML-DSA context string).
pub fn prepare<'a>(
    scheme: &'a Scheme,
    data: &[u8],
    key_bits: usize,
    token: &dyn MechanismSet,
) -> Result<Prepared<'a>> {
    match scheme {
        &Scheme::RsaPkcs { hash, prehashed } => rsa::prepare_pkcs1v15(hash, prehashed, data, token),
        &Scheme::RsaPss {
            hash,
            salt,
            prehashed,
        } => rsa::prepare_pss(hash, salt, prehashed, data, key_bits, token),
        &Scheme::Ecdsa { hash, prehashed } => ec::prepare_ecdsa(hash, prehashed, data, token),
        Scheme::EdDsa => eddsa::prepare_eddsa(token),
        // By reference: the mechanism points into this scheme's context.
        Scheme::MlDsa {
            deterministic,
            context,
        } => mldsa::prepare_mldsa(*deterministic, context, token),
        Scheme::SlhDsa {
            deterministic,
            context,
        } => slhdsa::prepare_slhdsa(*deterministic, context, token),
    }
}

pub(crate) fn require(token: &dyn MechanismSet, m: MechanismType, name: &str) -> Result<()> {
    if token.has(m) {
        Ok(())
    } else {
        Err(Error::mechanism(format!(
            "{} does not offer {name} (its mechanism list), and hsmkey has no way around it \
             for this key and algorithm",
            token.describe()
        )))
    }
}

pub(crate) fn digest_or_check(hash: HashAlg, prehashed: bool, data: &[u8]) -> Result<Vec<u8>> {
    if !prehashed {
        return Ok(hash.digest(data));
    }
    if data.len() != hash.len() {
        return Err(Error::value(format!(
            "a prehashed {hash:?} digest must be {} bytes, got {}",
            hash.len(),
            data.len()
        )));
    }
    Ok(data.to_vec())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A token that offers exactly these mechanisms.
    pub(crate) struct Only(pub Vec<MechanismType>);
    impl MechanismSet for Only {
        fn has(&self, m: MechanismType) -> bool {
            self.0.contains(&m)
        }
    }

    #[test]
    fn rsa_falls_back_to_local_digest_info() {
        let token = Only(vec![MechanismType::RSA_PKCS]);
        let scheme = Scheme::RsaPkcs {
            hash: HashAlg::Sha256,
            prehashed: false,
        };
        let Ok(p) = prepare(&scheme, b"abc", 2048, &token) else {
            panic!("prepares")
        };
        let data = p.data.unwrap_or_default();
        assert_eq!(data.len(), 19 + 32);
        assert_eq!(&data[..19], HashAlg::Sha256.digest_info_prefix());
        let combined = Only(vec![MechanismType::SHA256_RSA_PKCS]);
        let Ok(p) = prepare(&scheme, b"abc", 2048, &combined) else {
            panic!("prepares")
        };
        assert!(p.data.is_none());
    }

    #[test]
    fn ecdsa_hashes_locally_and_checks_prehashed_length() {
        let token = Only(vec![MechanismType::ECDSA]);
        let scheme = Scheme::Ecdsa {
            hash: HashAlg::Sha384,
            prehashed: false,
        };
        let Ok(p) = prepare(&scheme, b"abc", 384, &token) else {
            panic!("prepares")
        };
        assert_eq!(p.data.map(|d| d.len()), Some(48));
        let pre = Scheme::Ecdsa {
            hash: HashAlg::Sha256,
            prehashed: true,
        };
        assert!(prepare(&pre, &[0u8; 31], 256, &token).is_err());
        let none = Only(vec![]);
        assert!(prepare(&scheme, b"abc", 384, &none).is_err());
    }

    #[test]
    fn pss_salt_must_fit() {
        let token = Only(vec![MechanismType::RSA_PKCS_PSS]);
        let scheme = Scheme::RsaPss {
            hash: HashAlg::Sha512,
            salt: 200,
            prehashed: false,
        };
        assert!(prepare(&scheme, b"x", 2048, &token).is_err());
    }
}
