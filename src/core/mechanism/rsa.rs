//! RSA signatures: PKCS#1 v1.5 and PSS, with the token's combined hash-and-sign mechanism
//! where it has one, else the hash (and DigestInfo) made locally and the raw mechanism.

use cryptoki::mechanism::rsa::PkcsPssParams;
use cryptoki::mechanism::{Mechanism, MechanismType};

use crate::core::error::{Error, Result};
use crate::core::mechanism::{digest_or_check, require, HashAlg, MechanismSet, Prepared};

pub(super) fn prepare_pkcs1v15(
    hash: HashAlg,
    prehashed: bool,
    data: &[u8],
    token: &dyn MechanismSet,
) -> Result<Prepared<'static>> {
    if !prehashed && token.has(hash.rsa_pkcs_with_hash()) {
        return Ok(Prepared {
            mechanism: rsa_pkcs_mechanism(hash),
            data: None,
        });
    }
    require(token, MechanismType::RSA_PKCS, "CKM_RSA_PKCS")?;
    let digest = digest_or_check(hash, prehashed, data)?;
    let mut info = hash.digest_info_prefix().to_vec();
    info.extend_from_slice(&digest);
    Ok(Prepared {
        mechanism: Mechanism::RsaPkcs,
        data: Some(info),
    })
}

pub(super) fn prepare_pss(
    hash: HashAlg,
    salt: usize,
    prehashed: bool,
    data: &[u8],
    key_bits: usize,
    token: &dyn MechanismSet,
) -> Result<Prepared<'static>> {
    let key_bytes = key_bits.div_ceil(8);
    if salt + hash.len() + 2 > key_bytes {
        return Err(Error::value(format!(
            "PSS salt of {salt} bytes is too long for a {key_bits}-bit key with {hash:?}"
        )));
    }
    let params = PkcsPssParams {
        hash_alg: hash.digest_mechanism(),
        mgf: hash.mgf1(),
        s_len: (salt as u64).into(),
    };
    if let (false, Some(m)) = (prehashed, hash.rsa_pss_with_hash()) {
        if let (true, Some(mechanism)) = (token.has(m), rsa_pss_mechanism(hash, params)) {
            return Ok(Prepared {
                mechanism,
                data: None,
            });
        }
    }
    require(token, MechanismType::RSA_PKCS_PSS, "CKM_RSA_PKCS_PSS")?;
    let digest = digest_or_check(hash, prehashed, data)?;
    Ok(Prepared {
        mechanism: Mechanism::RsaPkcsPss(params),
        data: Some(digest),
    })
}

impl HashAlg {
    fn rsa_pkcs_with_hash(self) -> MechanismType {
        match self {
            HashAlg::Sha1 => MechanismType::SHA1_RSA_PKCS,
            HashAlg::Sha224 => MechanismType::SHA224_RSA_PKCS,
            HashAlg::Sha256 => MechanismType::SHA256_RSA_PKCS,
            HashAlg::Sha384 => MechanismType::SHA384_RSA_PKCS,
            HashAlg::Sha512 => MechanismType::SHA512_RSA_PKCS,
        }
    }

    /// The combined hash-and-PSS mechanism (cryptoki has none for SHA-224).
    fn rsa_pss_with_hash(self) -> Option<MechanismType> {
        match self {
            HashAlg::Sha1 => Some(MechanismType::SHA1_RSA_PKCS_PSS),
            HashAlg::Sha224 => None,
            HashAlg::Sha256 => Some(MechanismType::SHA256_RSA_PKCS_PSS),
            HashAlg::Sha384 => Some(MechanismType::SHA384_RSA_PKCS_PSS),
            HashAlg::Sha512 => Some(MechanismType::SHA512_RSA_PKCS_PSS),
        }
    }
}

fn rsa_pkcs_mechanism(hash: HashAlg) -> Mechanism<'static> {
    match hash {
        HashAlg::Sha1 => Mechanism::Sha1RsaPkcs,
        HashAlg::Sha224 => Mechanism::Sha224RsaPkcs,
        HashAlg::Sha256 => Mechanism::Sha256RsaPkcs,
        HashAlg::Sha384 => Mechanism::Sha384RsaPkcs,
        HashAlg::Sha512 => Mechanism::Sha512RsaPkcs,
    }
}

fn rsa_pss_mechanism(hash: HashAlg, params: PkcsPssParams) -> Option<Mechanism<'static>> {
    Some(match hash {
        HashAlg::Sha1 => Mechanism::Sha1RsaPkcsPss(params),
        HashAlg::Sha224 => return None,
        HashAlg::Sha256 => Mechanism::Sha256RsaPkcsPss(params),
        HashAlg::Sha384 => Mechanism::Sha384RsaPkcsPss(params),
        HashAlg::Sha512 => Mechanism::Sha512RsaPkcsPss(params),
    })
}
