//! JOSE signature algorithms (RFC 7518, RFC 8037, RFC 9864, RFC 9964): the scheme each names and the
//! key it needs.

use crate::core::error::{Error, Result};
use crate::core::mechanism::{Curve, HashAlg, KeyKind, MlDsa, MlDsaContext, Scheme};

/// What a JOSE algorithm needs of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    Rsa,
    Curve(Curve),
    Edwards,
    MlDsa(MlDsa),
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
        let mldsa = || Scheme::MlDsa {
            deterministic: false,
            context: MlDsaContext::EMPTY,
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
            // RFC 9964: pure ML-DSA, hedged, empty context.
            "ML-DSA-44" => ("ML-DSA-44", mldsa(), Needs::MlDsa(MlDsa::P44)),
            "ML-DSA-65" => ("ML-DSA-65", mldsa(), Needs::MlDsa(MlDsa::P65)),
            "ML-DSA-87" => ("ML-DSA-87", mldsa(), Needs::MlDsa(MlDsa::P87)),
            other => {
                return Err(Error::mechanism(format!(
                    "unknown JOSE signature algorithm {other:?} (hsmkey signs RS256/384/512, \
                     PS256/384/512, ES256/384/512, ES256K, EdDSA and ML-DSA-44/65/87)"
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
        self.check_key_set(kind, curve, None, key_desc)
    }

    /// [`check_key`](Self::check_key) for keys with a parameter set (ML-DSA).
    pub fn check_key_set(
        &self,
        kind: KeyKind,
        curve: Option<Curve>,
        set: Option<MlDsa>,
        key_desc: impl FnOnce() -> String,
    ) -> Result<()> {
        let ok = match self.needs {
            Needs::Rsa => kind == KeyKind::Rsa,
            Needs::Curve(c) => curve == Some(c) && (kind == KeyKind::Edwards) == c.is_edwards(),
            Needs::Edwards => kind == KeyKind::Edwards,
            Needs::MlDsa(p) => kind == KeyKind::MlDsa && set == Some(p),
        };
        if ok {
            return Ok(());
        }
        let wanted = match self.needs {
            Needs::Rsa => "an RSA key".to_string(),
            Needs::Curve(c) if c.is_edwards() => format!("an {} key", c.name()),
            Needs::Curve(c) => format!("an EC key on {}", c.name()),
            Needs::Edwards => "an Ed25519 or Ed448 key".to_string(),
            Needs::MlDsa(p) => format!("an {} key", p.name()),
        };
        Err(Error::mechanism(format!(
            "algorithm {} needs {wanted}, but {}",
            self.name,
            key_desc()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
