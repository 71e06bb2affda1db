//! Key families and named curves: what `CKA_KEY_TYPE` and `CKA_EC_PARAMS` say, the sizes
//! cryptography reports, and the public point as tokens store it.

use crate::core::error::{Error, Result};
use crate::core::mechanism::encoding::{der_tlv, hex};

/// Key families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    Ec,
    Edwards,
    /// ML-DSA (FIPS 204), `CKK_ML_DSA`.
    MlDsa,
    /// SLH-DSA (FIPS 205), `CKK_SLH_DSA`: the low-level signer only.
    SlhDsa,
}

impl KeyKind {
    pub fn name(self) -> &'static str {
        match self {
            KeyKind::Rsa => "RSA",
            KeyKind::Ec => "EC",
            KeyKind::Edwards => "EC_EDWARDS",
            KeyKind::MlDsa => "ML_DSA",
            KeyKind::SlhDsa => "SLH_DSA",
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
