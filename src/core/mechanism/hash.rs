//! The hash functions signatures and OAEP use: names, lengths, local digests, the PKCS#1
//! `DigestInfo` prefixes and their PKCS#11 mechanism names.

use cryptoki::mechanism::rsa::PkcsMgfType;
use cryptoki::mechanism::MechanismType;
use sha2::Digest;

use crate::core::error::{Error, Result};

/// Hash functions a signature can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashAlg {
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl HashAlg {
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name.to_ascii_lowercase().replace('-', "").as_str() {
            "sha1" => HashAlg::Sha1,
            "sha224" => HashAlg::Sha224,
            "sha256" => HashAlg::Sha256,
            "sha384" => HashAlg::Sha384,
            "sha512" => HashAlg::Sha512,
            _ => {
                return Err(Error::mechanism(format!(
                    "hash {name:?} is not supported (use sha1, sha224, sha256, sha384 or sha512)"
                )))
            }
        })
    }

    /// Bytes of output (a digest is never empty, so no `is_empty`).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(self) -> usize {
        match self {
            HashAlg::Sha1 => 20,
            HashAlg::Sha224 => 28,
            HashAlg::Sha256 => 32,
            HashAlg::Sha384 => 48,
            HashAlg::Sha512 => 64,
        }
    }

    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            HashAlg::Sha1 => sha1::Sha1::digest(data).to_vec(),
            HashAlg::Sha224 => sha2::Sha224::digest(data).to_vec(),
            HashAlg::Sha256 => sha2::Sha256::digest(data).to_vec(),
            HashAlg::Sha384 => sha2::Sha384::digest(data).to_vec(),
            HashAlg::Sha512 => sha2::Sha512::digest(data).to_vec(),
        }
    }

    /// The DER `DigestInfo` prefix that PKCS#1 v1.5 puts before the digest.
    pub fn digest_info_prefix(self) -> &'static [u8] {
        match self {
            HashAlg::Sha1 => &[
                0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04,
                0x14,
            ],
            HashAlg::Sha224 => &[
                0x30, 0x2d, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x04, 0x05, 0x00, 0x04, 0x1c,
            ],
            HashAlg::Sha256 => &[
                0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x01, 0x05, 0x00, 0x04, 0x20,
            ],
            HashAlg::Sha384 => &[
                0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x02, 0x05, 0x00, 0x04, 0x30,
            ],
            HashAlg::Sha512 => &[
                0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x03, 0x05, 0x00, 0x04, 0x40,
            ],
        }
    }

    /// The `CKM_SHA*` digest mechanism (named in OAEP and PSS parameters).
    pub(crate) fn digest_mechanism(self) -> MechanismType {
        match self {
            HashAlg::Sha1 => MechanismType::SHA1,
            HashAlg::Sha224 => MechanismType::SHA224,
            HashAlg::Sha256 => MechanismType::SHA256,
            HashAlg::Sha384 => MechanismType::SHA384,
            HashAlg::Sha512 => MechanismType::SHA512,
        }
    }

    /// The MGF1 mask generation function with this hash.
    pub(crate) fn mgf1(self) -> PkcsMgfType {
        match self {
            HashAlg::Sha1 => PkcsMgfType::MGF1_SHA1,
            HashAlg::Sha224 => PkcsMgfType::MGF1_SHA224,
            HashAlg::Sha256 => PkcsMgfType::MGF1_SHA256,
            HashAlg::Sha384 => PkcsMgfType::MGF1_SHA384,
            HashAlg::Sha512 => PkcsMgfType::MGF1_SHA512,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_info_prefixes_end_with_the_digest_length() {
        for h in [
            HashAlg::Sha1,
            HashAlg::Sha224,
            HashAlg::Sha256,
            HashAlg::Sha384,
            HashAlg::Sha512,
        ] {
            let p = h.digest_info_prefix();
            assert_eq!(p[p.len() - 1] as usize, h.len());
            assert_eq!(p[1] as usize, p.len() - 2 + h.len());
            assert_eq!(h.digest(b"").len(), h.len());
        }
    }

    #[test]
    fn names_parse() {
        assert_eq!(HashAlg::parse("SHA-256").ok(), Some(HashAlg::Sha256));
        assert!(HashAlg::parse("md5").is_err());
    }
}
