//! SLH-DSA (FIPS 205): the twelve parameter sets and pure SLH-DSA signatures with
//! `CKM_SLH_DSA` (PKCS#11 3.2), hedged unless deterministic, with a context string: the
//! low-level signer only (`Key.sign_raw("SLH_DSA", ...)`). JOSE has no SLH-DSA algorithm and
//! pyca/cryptography no SLH-DSA keys yet, and hsmkey has no software verifier for it: its
//! public key is taken only from the private object itself or the pair hsmkey just made.

use cryptoki::mechanism::dsa::{HedgeType, SignAdditionalContext};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{ParameterSetType, SlhDsaParameterSetType as P};

use crate::core::error::{Error, Result};
use crate::core::mechanism::{require, MechanismSet, MlDsaContext, Prepared};

/// An SLH-DSA parameter set (`CKA_PARAMETER_SET`): hash family, security category, small or
/// fast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlhDsa {
    name: &'static str,
    value: P,
    /// n: bytes of each public-key half (16, 24 or 32).
    n: usize,
    signature_len: usize,
}

const SETS: [SlhDsa; 12] = [
    SlhDsa::new("SLH-DSA-SHA2-128s", P::SHA2_128S, 16, 7856),
    SlhDsa::new("SLH-DSA-SHAKE-128s", P::SHAKE_128S, 16, 7856),
    SlhDsa::new("SLH-DSA-SHA2-128f", P::SHA2_128F, 16, 17088),
    SlhDsa::new("SLH-DSA-SHAKE-128f", P::SHAKE_128F, 16, 17088),
    SlhDsa::new("SLH-DSA-SHA2-192s", P::SHA2_192S, 24, 16224),
    SlhDsa::new("SLH-DSA-SHAKE-192s", P::SHAKE_192S, 24, 16224),
    SlhDsa::new("SLH-DSA-SHA2-192f", P::SHA2_192F, 24, 35664),
    SlhDsa::new("SLH-DSA-SHAKE-192f", P::SHAKE_192F, 24, 35664),
    SlhDsa::new("SLH-DSA-SHA2-256s", P::SHA2_256S, 32, 29792),
    SlhDsa::new("SLH-DSA-SHAKE-256s", P::SHAKE_256S, 32, 29792),
    SlhDsa::new("SLH-DSA-SHA2-256f", P::SHA2_256F, 32, 49856),
    SlhDsa::new("SLH-DSA-SHAKE-256f", P::SHAKE_256F, 32, 49856),
];

impl SlhDsa {
    const fn new(name: &'static str, value: P, n: usize, signature_len: usize) -> Self {
        SlhDsa {
            name,
            value,
            n,
            signature_len,
        }
    }

    /// The FIPS 205 name, e.g. "SLH-DSA-SHA2-128s".
    pub fn name(self) -> &'static str {
        self.name
    }

    /// Bytes of the public key (PK.seed || PK.root).
    pub fn public_len(self) -> usize {
        2 * self.n
    }

    pub fn signature_len(self) -> usize {
        self.signature_len
    }

    /// By name, case and separators ignored ("SLH-DSA-SHA2-128s", "slh_dsa_sha2_128s").
    pub fn parse(name: &str) -> Result<Self> {
        let squash = |s: &str| s.to_ascii_lowercase().replace(['-', '_'], "");
        SETS.into_iter()
            .find(|s| squash(s.name) == squash(name))
            .ok_or_else(|| {
                Error::value(format!(
                    "unknown SLH-DSA parameter set {name:?} (SLH-DSA-SHA2-128s ... \
                     SLH-DSA-SHAKE-256f)"
                ))
            })
    }

    pub fn parameter_set(self) -> ParameterSetType {
        ParameterSetType::from(self.value)
    }

    pub fn from_parameter_set(value: ParameterSetType) -> Result<Self> {
        let v = P::from(value);
        SETS.into_iter().find(|s| s.value == v).ok_or_else(|| {
            Error::mechanism(format!(
                "unknown SLH-DSA parameter set (CKA_PARAMETER_SET {value})"
            ))
        })
    }
}

/// `CKM_SLH_DSA` with the hedging and context asked for (the context lives in the scheme).
pub(super) fn prepare_slhdsa<'a>(
    deterministic: bool,
    context: &'a MlDsaContext,
    token: &dyn MechanismSet,
) -> Result<Prepared<'a>> {
    require(token, MechanismType::SLH_DSA, "CKM_SLH_DSA")?;
    let ctx = context.as_bytes();
    let hedge = if deterministic {
        HedgeType::DeterministicRequired
    } else {
        HedgeType::Preferred
    };
    let ctx = (!ctx.is_empty()).then_some(ctx);
    Ok(Prepared {
        mechanism: Mechanism::SlhDsa(SignAdditionalContext::new(hedge, ctx)),
        data: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_sets_parse_and_round_trip() {
        for s in SETS {
            assert_eq!(SlhDsa::parse(s.name()).ok(), Some(s));
            assert_eq!(SlhDsa::from_parameter_set(s.parameter_set()).ok(), Some(s));
        }
        assert_eq!(
            SlhDsa::parse("slh_dsa_sha2_128s")
                .map(|s| s.public_len())
                .ok(),
            Some(32)
        );
        assert!(SlhDsa::parse("SLH-DSA-SHA2-129s").is_err());
    }
}
