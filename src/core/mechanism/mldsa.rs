//! ML-DSA (FIPS 204): the parameter sets, their sizes, and pure ML-DSA signatures with
//! `CKM_ML_DSA` (PKCS#11 3.2). The token signs the whole message in one `C_Sign` (no local
//! hashing). With no parameters the signature is hedged with an empty context (what JOSE,
//! RFC 9964, and X.509 use); `CK_SIGN_ADDITIONAL_CONTEXT` carries a context string and
//! `CKH_DETERMINISTIC_REQUIRED` for the deterministic variant.

use cryptoki::mechanism::dsa::{HedgeType, SignAdditionalContext};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{MlDsaParameterSetType, ParameterSetType};

use crate::core::error::{Error, Result};
use crate::core::mechanism::{require, MechanismSet, Prepared};

/// The ML-DSA parameter sets (`CKA_PARAMETER_SET`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MlDsa {
    P44,
    P65,
    P87,
}

impl MlDsa {
    pub const ALL: [MlDsa; 3] = [MlDsa::P44, MlDsa::P65, MlDsa::P87];

    /// The FIPS 204 (and JOSE, RFC 9964) name.
    pub fn name(self) -> &'static str {
        match self {
            MlDsa::P44 => "ML-DSA-44",
            MlDsa::P65 => "ML-DSA-65",
            MlDsa::P87 => "ML-DSA-87",
        }
    }

    /// Bytes of the encoded public key (FIPS 204 table 2).
    pub fn public_len(self) -> usize {
        match self {
            MlDsa::P44 => 1312,
            MlDsa::P65 => 1952,
            MlDsa::P87 => 2592,
        }
    }

    /// Bytes of a signature (FIPS 204 table 2).
    pub fn signature_len(self) -> usize {
        match self {
            MlDsa::P44 => 2420,
            MlDsa::P65 => 3309,
            MlDsa::P87 => 4627,
        }
    }

    /// By the names users write: "ML-DSA-65", "mldsa65", "ML_DSA_65", "65".
    pub fn parse(name: &str) -> Result<Self> {
        let n = name.to_ascii_lowercase().replace(['-', '_'], "");
        let n = n.strip_prefix("mldsa").unwrap_or(&n);
        match n {
            "44" => Ok(MlDsa::P44),
            "65" => Ok(MlDsa::P65),
            "87" => Ok(MlDsa::P87),
            _ => Err(Error::value(format!(
                "unknown ML-DSA parameter set {name:?} (ML-DSA-44, ML-DSA-65 or ML-DSA-87)"
            ))),
        }
    }

    pub fn parameter_set(self) -> ParameterSetType {
        ParameterSetType::from(match self {
            MlDsa::P44 => MlDsaParameterSetType::ML_DSA_44,
            MlDsa::P65 => MlDsaParameterSetType::ML_DSA_65,
            MlDsa::P87 => MlDsaParameterSetType::ML_DSA_87,
        })
    }

    pub fn from_parameter_set(value: ParameterSetType) -> Result<Self> {
        let v = MlDsaParameterSetType::from(value);
        MlDsa::ALL
            .into_iter()
            .find(|p| MlDsaParameterSetType::from(p.parameter_set()) == v)
            .ok_or_else(|| {
                Error::mechanism(format!(
                    "unknown ML-DSA parameter set (CKA_PARAMETER_SET {value})"
                ))
            })
    }
}

/// An ML-DSA context string (FIPS 204: at most 255 bytes), kept inline so that a `Scheme`
/// stays `Copy`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Context {
    len: u8,
    bytes: [u8; 255],
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Context({} bytes)", self.len)
    }
}

impl Context {
    pub const EMPTY: Context = Context {
        len: 0,
        bytes: [0; 255],
    };

    pub fn new(context: &[u8]) -> Result<Self> {
        let len = u8::try_from(context.len()).map_err(|_| {
            Error::value(format!(
                "an ML-DSA context is at most 255 bytes, not {}",
                context.len()
            ))
        })?;
        let mut bytes = [0; 255];
        bytes[..context.len()].copy_from_slice(context);
        Ok(Context { len, bytes })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// `CKM_ML_DSA` with the hedging and context asked for. The mechanism borrows `context`:
/// it must outlive the `C_SignInit` the mechanism is passed to.
pub(super) fn prepare_mldsa<'a>(
    deterministic: bool,
    context: &'a Context,
    token: &dyn MechanismSet,
) -> Result<Prepared<'a>> {
    require(token, MechanismType::ML_DSA, "CKM_ML_DSA")?;
    let ctx = context.as_bytes();
    let params = match (deterministic, ctx.is_empty()) {
        // NULL parameters: hedged, empty context (the form every ML-DSA token takes).
        (false, true) => SignAdditionalContext::new(HedgeType::Preferred, None),
        (false, false) => SignAdditionalContext::new(HedgeType::Preferred, Some(ctx)),
        (true, true) => SignAdditionalContext::new(HedgeType::DeterministicRequired, None),
        (true, false) => SignAdditionalContext::new(HedgeType::DeterministicRequired, Some(ctx)),
    };
    Ok(Prepared {
        mechanism: Mechanism::MlDsa(params),
        data: None,
    })
}

/// The raw public key inside a DER SubjectPublicKeyInfo (`CKA_PUBLIC_KEY_INFO`): the
/// contents of its BIT STRING, if it has the length of `set`'s public keys.
pub fn public_from_spki(spki: &[u8], set: MlDsa) -> Option<Vec<u8>> {
    let (0x30, body, []) = split_tlv(spki)? else {
        return None;
    };
    let (0x30, _algorithm, rest) = split_tlv(body)? else {
        return None;
    };
    let (0x03, bits, []) = split_tlv(rest)? else {
        return None;
    };
    let (0, key) = bits.split_first()? else {
        return None;
    };
    (key.len() == set.public_len()).then(|| key.to_vec())
}

/// The first DER TLV of `der`: (tag, contents, what follows).
fn split_tlv(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    let (contents, after) = rest.split_at(len);
    Some((tag, contents, after))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::mechanism::tests::Only;

    #[test]
    fn parameter_sets_parse_and_round_trip() {
        for p in MlDsa::ALL {
            assert_eq!(MlDsa::parse(p.name()).ok(), Some(p));
            assert_eq!(MlDsa::from_parameter_set(p.parameter_set()).ok(), Some(p));
        }
        assert_eq!(MlDsa::parse("mldsa65").ok(), Some(MlDsa::P65));
        assert!(MlDsa::parse("ML-DSA-66").is_err());
    }

    #[test]
    fn contexts_are_at_most_255_bytes() {
        assert!(Context::new(&[1; 256]).is_err());
        let Ok(c) = Context::new(b"ctx") else {
            panic!("a short context")
        };
        assert_eq!(c.as_bytes(), b"ctx");
        assert_eq!(Context::EMPTY.as_bytes(), b"");
    }

    #[test]
    fn needs_ckm_ml_dsa() {
        let none = Only(vec![]);
        assert!(prepare_mldsa(false, &Context::EMPTY, &none).is_err());
        let token = Only(vec![MechanismType::ML_DSA]);
        let Ok(p) = prepare_mldsa(true, &Context::EMPTY, &token) else {
            panic!("prepares")
        };
        assert_eq!(p.mechanism.mechanism_type(), MechanismType::ML_DSA);
    }

    #[test]
    fn public_keys_from_spki() {
        // SEQUENCE { SEQUENCE { OID 2.16.840.1.101.3.4.3.17 }, BIT STRING { 0, key } }
        let key = vec![7u8; 1312];
        let oid = [
            0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03, 0x11,
        ];
        let mut alg = vec![0x30, oid.len() as u8];
        alg.extend_from_slice(&oid);
        let mut bits = vec![0x03, 0x82, 0x05, 0x21, 0x00];
        bits.extend_from_slice(&key);
        let mut body = alg.clone();
        body.extend_from_slice(&bits);
        let mut spki = vec![0x30, 0x82, (body.len() >> 8) as u8, body.len() as u8];
        spki.extend_from_slice(&body);
        assert_eq!(public_from_spki(&spki, MlDsa::P44), Some(key));
        assert_eq!(public_from_spki(&spki, MlDsa::P65), None);
        assert_eq!(public_from_spki(&[], MlDsa::P44), None);
    }
}
