//! JOSE algorithms and cryptography's paddings mapped to PKCS#11 mechanisms; local hashing
//! where the token has only the raw mechanism; curve and point encodings.

use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use sha2::Digest;

use crate::error::{Error, Result};

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

    fn digest_mechanism(self) -> MechanismType {
        match self {
            HashAlg::Sha1 => MechanismType::SHA1,
            HashAlg::Sha224 => MechanismType::SHA224,
            HashAlg::Sha256 => MechanismType::SHA256,
            HashAlg::Sha384 => MechanismType::SHA384,
            HashAlg::Sha512 => MechanismType::SHA512,
        }
    }

    fn mgf1(self) -> PkcsMgfType {
        match self {
            HashAlg::Sha1 => PkcsMgfType::MGF1_SHA1,
            HashAlg::Sha224 => PkcsMgfType::MGF1_SHA224,
            HashAlg::Sha256 => PkcsMgfType::MGF1_SHA256,
            HashAlg::Sha384 => PkcsMgfType::MGF1_SHA384,
            HashAlg::Sha512 => PkcsMgfType::MGF1_SHA512,
        }
    }

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

/// Key families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    Ec,
    Edwards,
}

impl KeyKind {
    pub fn name(self) -> &'static str {
        match self {
            KeyKind::Rsa => "RSA",
            KeyKind::Ec => "EC",
            KeyKind::Edwards => "EC_EDWARDS",
        }
    }
}

/// Named curves hsmkey knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    P256,
    P384,
    P521,
    Secp256k1,
    Ed25519,
    Ed448,
}

impl Curve {
    pub fn name(self) -> &'static str {
        match self {
            Curve::P256 => "P-256",
            Curve::P384 => "P-384",
            Curve::P521 => "P-521",
            Curve::Secp256k1 => "secp256k1",
            Curve::Ed25519 => "Ed25519",
            Curve::Ed448 => "Ed448",
        }
    }

    /// Bits of the group order (the key size cryptography reports).
    pub fn bits(self) -> usize {
        match self {
            Curve::P256 | Curve::Secp256k1 => 256,
            Curve::P384 => 384,
            Curve::P521 => 521,
            Curve::Ed25519 => 255,
            Curve::Ed448 => 448,
        }
    }

    /// Length of the public key: an uncompressed point for Weierstrass curves, the raw key for
    /// Edwards curves.
    pub fn public_len(self) -> usize {
        match self {
            Curve::P256 | Curve::Secp256k1 => 65,
            Curve::P384 => 97,
            Curve::P521 => 133,
            Curve::Ed25519 => 32,
            Curve::Ed448 => 57,
        }
    }

    pub fn is_edwards(self) -> bool {
        matches!(self, Curve::Ed25519 | Curve::Ed448)
    }

    /// `CKA_EC_PARAMS` for key generation: the DER OID of the curve.
    pub fn ec_params(self) -> &'static [u8] {
        match self {
            Curve::P256 => &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
            Curve::P384 => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22],
            Curve::P521 => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23],
            Curve::Secp256k1 => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a],
            Curve::Ed25519 => &[0x06, 0x03, 0x2b, 0x65, 0x70],
            Curve::Ed448 => &[0x06, 0x03, 0x2b, 0x65, 0x71],
        }
    }

    /// A curve by the names users write (JOSE, cryptography, OpenSSL).
    pub fn parse(name: &str) -> Result<Self> {
        Ok(
            match name.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
                "p256" | "secp256r1" | "prime256v1" => Curve::P256,
                "p384" | "secp384r1" => Curve::P384,
                "p521" | "secp521r1" => Curve::P521,
                "secp256k1" => Curve::Secp256k1,
                "ed25519" | "edwards25519" => Curve::Ed25519,
                "ed448" | "edwards448" => Curve::Ed448,
                _ => {
                    return Err(Error::value(format!(
                        "unknown curve {name:?} (P-256, P-384, P-521, secp256k1, Ed25519 or Ed448)"
                    )))
                }
            },
        )
    }

    /// Parses `CKA_EC_PARAMS`: a DER OID, or (PKCS#11 3.0, OpenSC for Edwards keys) a
    /// PrintableString curve name.
    pub fn from_ec_params(params: &[u8]) -> Result<Self> {
        const OIDS: &[(&[u8], Curve)] = &[
            (
                &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
                Curve::P256,
            ),
            (&[0x2b, 0x81, 0x04, 0x00, 0x22], Curve::P384),
            (&[0x2b, 0x81, 0x04, 0x00, 0x23], Curve::P521),
            (&[0x2b, 0x81, 0x04, 0x00, 0x0a], Curve::Secp256k1),
            (&[0x2b, 0x65, 0x70], Curve::Ed25519),
            (&[0x2b, 0x65, 0x71], Curve::Ed448),
        ];
        const NAMES: &[(&str, Curve)] = &[
            ("edwards25519", Curve::Ed25519),
            ("edwards448", Curve::Ed448),
            ("prime256v1", Curve::P256),
            ("secp256r1", Curve::P256),
            ("secp384r1", Curve::P384),
            ("secp521r1", Curve::P521),
            ("secp256k1", Curve::Secp256k1),
        ];
        let unknown =
            || Error::mechanism(format!("unsupported curve (CKA_EC_PARAMS {})", hex(params)));
        let (tag, body) = der_tlv(params).ok_or_else(unknown)?;
        match tag {
            0x06 => OIDS
                .iter()
                .find(|(oid, _)| *oid == body)
                .map(|(_, c)| *c)
                .ok_or_else(unknown),
            0x13 | 0x0c => {
                let name = std::str::from_utf8(body).map_err(|_| unknown())?;
                NAMES
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, c)| *c)
                    .ok_or_else(unknown)
            }
            _ => Err(unknown()),
        }
    }

    /// `CKA_EC_POINT` comes DER-wrapped in an OCTET STRING on most tokens and bare on some:
    /// accept both, deciding by the length the curve requires.
    pub fn unwrap_point(self, raw: &[u8]) -> Result<Vec<u8>> {
        let want = self.public_len();
        if raw.len() == want && (self.is_edwards() || raw.first() == Some(&0x04)) {
            return Ok(raw.to_vec());
        }
        if let Some((0x04, body)) = der_tlv(raw) {
            if body.len() == want {
                return Ok(body.to_vec());
            }
        }
        Err(Error::mechanism(format!(
            "CKA_EC_POINT of a {} key has an unexpected encoding ({} bytes)",
            self.name(),
            raw.len()
        )))
    }
}

/// An ECDSA signature `r || s` (two equal halves) as the DER `ECDSA-Sig-Value` that
/// pyca/cryptography's keys return: `SEQUENCE { INTEGER r, INTEGER s }`.
pub fn ecdsa_der(raw: &[u8]) -> Vec<u8> {
    fn integer(out: &mut Vec<u8>, be: &[u8]) {
        let zeros = be.iter().take_while(|b| **b == 0).count();
        let digits = if zeros == be.len() {
            &[0u8][..]
        } else {
            &be[zeros..]
        };
        let pad = digits[0] & 0x80 != 0;
        out.push(0x02);
        push_len(out, digits.len() + usize::from(pad));
        if pad {
            out.push(0);
        }
        out.extend_from_slice(digits);
    }
    fn push_len(out: &mut Vec<u8>, n: usize) {
        if n < 0x80 {
            out.push(n as u8);
        } else {
            out.extend([0x81, n as u8]);
        }
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    let mut body = Vec::with_capacity(raw.len() + 8);
    integer(&mut body, r);
    integer(&mut body, s);
    let mut out = Vec::with_capacity(body.len() + 3);
    out.push(0x30);
    push_len(&mut out, body.len());
    out.extend(body);
    out
}

/// One DER TLV that spans the whole input: (tag, contents).
pub fn der_tlv(data: &[u8]) -> Option<(u8, &[u8])> {
    let (&tag, rest) = data.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[n..])
    };
    if rest.len() != len {
        return None;
    }
    Some((tag, rest))
}

pub fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

/// What to sign, independent of the token.
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
}

/// What a JOSE algorithm needs of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    Rsa,
    Curve(Curve),
    Edwards,
}

/// A JOSE signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoseAlg {
    pub name: &'static str,
    pub scheme: Scheme,
    pub needs: Needs,
}

impl JoseAlg {
    pub fn parse(name: &str) -> Result<Self> {
        use HashAlg::*;
        let rsa = |hash| Scheme::RsaPkcs {
            hash,
            prehashed: false,
        };
        let pss = |hash: HashAlg| Scheme::RsaPss {
            hash,
            salt: hash.len(),
            prehashed: false,
        };
        let ec = |hash| Scheme::Ecdsa {
            hash,
            prehashed: false,
        };
        let (name, scheme, needs) = match name {
            "RS256" => ("RS256", rsa(Sha256), Needs::Rsa),
            "RS384" => ("RS384", rsa(Sha384), Needs::Rsa),
            "RS512" => ("RS512", rsa(Sha512), Needs::Rsa),
            "PS256" => ("PS256", pss(Sha256), Needs::Rsa),
            "PS384" => ("PS384", pss(Sha384), Needs::Rsa),
            "PS512" => ("PS512", pss(Sha512), Needs::Rsa),
            "ES256" => ("ES256", ec(Sha256), Needs::Curve(Curve::P256)),
            "ES384" => ("ES384", ec(Sha384), Needs::Curve(Curve::P384)),
            "ES512" => ("ES512", ec(Sha512), Needs::Curve(Curve::P521)),
            "ES256K" => ("ES256K", ec(Sha256), Needs::Curve(Curve::Secp256k1)),
            "EdDSA" => ("EdDSA", Scheme::EdDsa, Needs::Edwards),
            // The fully specified names (RFC 9864) name the curve too.
            "Ed25519" => ("Ed25519", Scheme::EdDsa, Needs::Curve(Curve::Ed25519)),
            "Ed448" => ("Ed448", Scheme::EdDsa, Needs::Curve(Curve::Ed448)),
            other => {
                return Err(Error::mechanism(format!(
                    "unknown JOSE signature algorithm {other:?} (hsmkey signs RS256/384/512, \
                     PS256/384/512, ES256/384/512, ES256K and EdDSA)"
                )))
            }
        };
        Ok(JoseAlg {
            name,
            scheme,
            needs,
        })
    }

    /// Fails with `HSMMechanismError` naming both when the key cannot make this algorithm.
    /// `key_desc` is called only then (no message is built per signature).
    pub fn check_key(
        &self,
        kind: KeyKind,
        curve: Option<Curve>,
        key_desc: impl FnOnce() -> String,
    ) -> Result<()> {
        let ok = match self.needs {
            Needs::Rsa => kind == KeyKind::Rsa,
            Needs::Curve(c) => curve == Some(c) && (kind == KeyKind::Edwards) == c.is_edwards(),
            Needs::Edwards => kind == KeyKind::Edwards,
        };
        if ok {
            return Ok(());
        }
        let wanted = match self.needs {
            Needs::Rsa => "an RSA key".to_string(),
            Needs::Curve(c) if c.is_edwards() => format!("an {} key", c.name()),
            Needs::Curve(c) => format!("an EC key on {}", c.name()),
            Needs::Edwards => "an Ed25519 or Ed448 key".to_string(),
        };
        Err(Error::mechanism(format!(
            "algorithm {} needs {wanted}, but {}",
            self.name,
            key_desc()
        )))
    }
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
    }
}

/// The mechanisms a token offers, as far as signing cares.
pub trait MechanismSet {
    fn has(&self, mechanism: MechanismType) -> bool;
}

/// A scheme made concrete for one token: the mechanism to pass and the bytes to sign.
pub struct Prepared<'a> {
    pub mechanism: Mechanism<'a>,
    /// `None`: sign the caller's data as given.
    pub data: Option<Vec<u8>>,
}

/// Chooses the mechanism and does the secret-free part (hashing, DigestInfo) locally where
/// the token lacks a combined mechanism. `data` is the message, or the digest if prehashed.
pub fn prepare(
    scheme: &Scheme,
    data: &[u8],
    key_bits: usize,
    token: &dyn MechanismSet,
) -> Result<Prepared<'static>> {
    match *scheme {
        Scheme::RsaPkcs { hash, prehashed } => {
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
        Scheme::RsaPss {
            hash,
            salt,
            prehashed,
        } => {
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
        Scheme::Ecdsa { hash, prehashed } => {
            require(token, MechanismType::ECDSA, "CKM_ECDSA")?;
            let digest = digest_or_check(hash, prehashed, data)?;
            Ok(Prepared {
                mechanism: Mechanism::Ecdsa,
                data: Some(digest),
            })
        }
        Scheme::EdDsa => {
            require(token, MechanismType::EDDSA, "CKM_EDDSA")?;
            Ok(Prepared {
                mechanism: Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                data: None,
            })
        }
    }
}

fn require(token: &dyn MechanismSet, m: MechanismType, name: &str) -> Result<()> {
    if token.has(m) {
        Ok(())
    } else {
        Err(Error::mechanism(format!("the token does not offer {name}")))
    }
}

fn digest_or_check(hash: HashAlg, prehashed: bool, data: &[u8]) -> Result<Vec<u8>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    struct Only(Vec<MechanismType>);
    impl MechanismSet for Only {
        fn has(&self, m: MechanismType) -> bool {
            self.0.contains(&m)
        }
    }

    #[test]
    fn curves_from_oids_and_names() {
        let p256 = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
        assert_eq!(Curve::from_ec_params(&p256).ok(), Some(Curve::P256));
        let ed_oid = [0x06, 0x03, 0x2b, 0x65, 0x70];
        assert_eq!(Curve::from_ec_params(&ed_oid).ok(), Some(Curve::Ed25519));
        let mut ed_name = vec![0x13, 0x0c];
        ed_name.extend_from_slice(b"edwards25519");
        assert_eq!(Curve::from_ec_params(&ed_name).ok(), Some(Curve::Ed25519));
        let mut ed448 = vec![0x13, 0x0a];
        ed448.extend_from_slice(b"edwards448");
        assert_eq!(Curve::from_ec_params(&ed448).ok(), Some(Curve::Ed448));
        assert!(Curve::from_ec_params(&[0x06, 0x01, 0x01]).is_err());
        assert!(Curve::from_ec_params(&[]).is_err());
    }

    #[test]
    fn generation_params_parse_back() {
        for c in [
            Curve::P256,
            Curve::P384,
            Curve::P521,
            Curve::Secp256k1,
            Curve::Ed25519,
            Curve::Ed448,
        ] {
            assert_eq!(Curve::from_ec_params(c.ec_params()).ok(), Some(c));
            assert_eq!(Curve::parse(c.name()).ok(), Some(c));
        }
        assert!(Curve::parse("P-192").is_err());
    }

    #[test]
    fn points_wrapped_or_bare() {
        let mut bare = vec![0x04];
        bare.extend(std::iter::repeat_n(0x3f, 64));
        assert_eq!(Curve::P256.unwrap_point(&bare).ok(), Some(bare.clone()));
        let mut wrapped = vec![0x04, 0x41];
        wrapped.extend_from_slice(&bare);
        assert_eq!(Curve::P256.unwrap_point(&wrapped).ok(), Some(bare.clone()));
        let ed = vec![7u8; 32];
        let mut ed_wrapped = vec![0x04, 0x20];
        ed_wrapped.extend_from_slice(&ed);
        assert_eq!(Curve::Ed25519.unwrap_point(&ed).ok(), Some(ed.clone()));
        assert_eq!(Curve::Ed25519.unwrap_point(&ed_wrapped).ok(), Some(ed));
        // P-521: the wrapped form needs a long-form length (133 > 127).
        let mut p521 = vec![0x04];
        p521.extend(std::iter::repeat_n(1u8, 132));
        let mut p521_wrapped = vec![0x04, 0x81, 0x85];
        p521_wrapped.extend_from_slice(&p521);
        assert_eq!(Curve::P521.unwrap_point(&p521_wrapped).ok(), Some(p521));
        assert!(Curve::P256.unwrap_point(&[0x04, 0x01]).is_err());
    }

    #[test]
    fn jose_algorithms_check_keys() {
        let es256 = JoseAlg::parse("ES256").ok();
        let es256 = es256.as_ref().map(|a| a.needs);
        assert_eq!(es256, Some(Needs::Curve(Curve::P256)));
        let Ok(alg) = JoseAlg::parse("ES384") else {
            panic!("ES384 parses")
        };
        let err = alg.check_key(KeyKind::Ec, Some(Curve::P256), || {
            "key 'k' is EC P-256".into()
        });
        let msg = err.err().map(|e| e.message).unwrap_or_default();
        assert!(msg.contains("ES384") && msg.contains("P-384") && msg.contains("P-256"));
        assert!(JoseAlg::parse("HS256").is_err());
        let Ok(ed448) = JoseAlg::parse("Ed448") else {
            panic!("Ed448 parses")
        };
        assert!(ed448
            .check_key(KeyKind::Edwards, Some(Curve::Ed25519), String::new)
            .is_err());
        assert!(ed448
            .check_key(KeyKind::Edwards, Some(Curve::Ed448), String::new)
            .is_ok());
        let Ok(eddsa) = JoseAlg::parse("EdDSA") else {
            panic!("EdDSA parses")
        };
        assert!(eddsa
            .check_key(KeyKind::Edwards, Some(Curve::Ed448), String::new)
            .is_ok());
        assert!(JoseAlg::parse("RS256")
            .map(|a| a.check_key(KeyKind::Rsa, None, String::new).is_ok())
            .unwrap_or(false));
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

    #[test]
    fn ecdsa_der_encodes_like_openssl() {
        // r with its high bit set gets a 0 byte; s with leading zeros loses them.
        let mut raw = vec![0x80u8; 32];
        raw.extend([0u8, 0, 0x01]);
        raw.extend(vec![0x11u8; 29]);
        let der = ecdsa_der(&raw);
        assert_eq!(&der[..5], &[0x30, 0x43, 0x02, 0x21, 0x00]);
        assert_eq!(&der[37..39], &[0x02, 0x1e]);
        assert_eq!(der.len(), 2 + 0x43);
        // P-521: the sequence needs a long-form length.
        let big = vec![0xffu8; 132];
        let der = ecdsa_der(&big);
        assert_eq!(&der[..3], &[0x30, 0x81, 0x8a]);
        assert_eq!(der_tlv(&der).map(|(t, b)| (t, b.len())), Some((0x30, 0x8a)));
    }

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
}
