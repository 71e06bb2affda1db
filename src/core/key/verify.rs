//! Signatures checked in software against a public key: the proof that a public key belongs
//! to a private key in the token (a probe signature), and `verify_signatures=True` (every
//! signature checked before it is returned).
//!
//! One entry point, [`verify`], with one match per key family; a new family (ML-DSA) is one
//! more arm and one more function here. Everything is public data: nothing here needs to be
//! constant-time.

use num_bigint::BigUint;

use super::KeyInfo;
use crate::core::decrypt::oaep::mgf1;
use crate::core::error::{Error, Result};
use crate::core::mechanism::{Curve, HashAlg, KeyKind, MlDsa, MlDsaContext, Scheme};

/// True if `signature` (as the token returns it: r || s for ECDSA, R || S for EdDSA, the
/// big-endian integer for RSA) is a valid `scheme` signature of `data` (the message, or its
/// digest where the scheme says prehashed) by the key whose public half `info` holds.
pub fn verify(info: &KeyInfo, scheme: &Scheme, data: &[u8], signature: &[u8]) -> Result<bool> {
    match info.kind {
        KeyKind::Rsa => verify_rsa(info, scheme, data, signature),
        KeyKind::Ec => verify_ecdsa(info, scheme, data, signature),
        KeyKind::Edwards => verify_eddsa(info, scheme, data, signature),
        KeyKind::MlDsa => verify_mldsa(info, scheme, data, signature),
        KeyKind::SlhDsa => Err(Error::mechanism(format!(
            "hsmkey has no software verifier for SLH-DSA: {} cannot be checked",
            info.describe()
        ))),
    }
}

/// The scheme a probe signature uses for a key: the curve's own hash for ECDSA, PKCS#1 v1.5
/// with SHA-256 for RSA, pure EdDSA.
pub fn probe_scheme(info: &KeyInfo) -> Scheme {
    match (info.kind, info.curve) {
        (KeyKind::Rsa, _) => Scheme::RsaPkcs {
            hash: HashAlg::Sha256,
            prehashed: false,
        },
        (KeyKind::Edwards, _) => Scheme::EdDsa,
        // Hedged, empty context: the form every ML-DSA token makes.
        (KeyKind::MlDsa, _) => Scheme::MlDsa {
            deterministic: false,
            context: MlDsaContext::EMPTY,
        },
        (KeyKind::SlhDsa, _) => Scheme::SlhDsa {
            deterministic: false,
            context: MlDsaContext::EMPTY,
        },
        (KeyKind::Ec, curve) => Scheme::Ecdsa {
            hash: match curve {
                Some(Curve::P384) => HashAlg::Sha384,
                Some(Curve::P521) => HashAlg::Sha512,
                _ => HashAlg::Sha256,
            },
            prehashed: false,
        },
    }
}

fn mismatch(scheme: &Scheme, info: &KeyInfo) -> Error {
    Error::mechanism(format!(
        "cannot verify a {scheme:?} signature with {}",
        info.describe()
    ))
}

fn digest(hash: HashAlg, prehashed: bool, data: &[u8]) -> Result<Vec<u8>> {
    crate::core::mechanism::digest_or_check(hash, prehashed, data)
}

fn verify_ecdsa(info: &KeyInfo, scheme: &Scheme, data: &[u8], sig: &[u8]) -> Result<bool> {
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    let Scheme::Ecdsa { hash, prehashed } = *scheme else {
        return Err(mismatch(scheme, info));
    };
    let (Some(curve), Some(point)) = (info.curve, info.ec_point.as_deref()) else {
        return Err(mismatch(scheme, info));
    };
    let mut digest = digest(hash, prehashed, data)?;
    // The token treats a short digest as an integer; RustCrypto refuses digests shorter
    // than half the field, so give it the same integer at full width.
    let field = curve.bits().div_ceil(8);
    if digest.len() < field {
        let mut padded = vec![0u8; field - digest.len()];
        padded.extend_from_slice(&digest);
        digest = padded;
    }
    macro_rules! check {
        ($crate_:ident) => {{
            let (Ok(key), Ok(sig)) = (
                $crate_::ecdsa::VerifyingKey::from_sec1_bytes(point),
                $crate_::ecdsa::Signature::from_slice(sig),
            ) else {
                return Ok(false);
            };
            // A token's s may be either of the two valid values; k256 accepts the low one
            // only (BIP 62), and every curve accepts it.
            Ok(key.verify_prehash(&digest, &sig.normalize_s()).is_ok())
        }};
    }
    match curve {
        Curve::P256 => check!(p256),
        Curve::P384 => check!(p384),
        Curve::P521 => check!(p521),
        Curve::Secp256k1 => check!(k256),
        Curve::Ed25519 | Curve::Ed448 => Err(mismatch(scheme, info)),
    }
}

fn verify_mldsa(info: &KeyInfo, scheme: &Scheme, data: &[u8], sig: &[u8]) -> Result<bool> {
    let Scheme::MlDsa { context, .. } = scheme else {
        return Err(mismatch(scheme, info));
    };
    let (Some(set), Some(public)) = (info.param_set, info.public_value.as_deref()) else {
        return Err(mismatch(scheme, info));
    };
    fn check<P: ml_dsa::MlDsaParams>(public: &[u8], sig: &[u8], data: &[u8], ctx: &[u8]) -> bool {
        let (Ok(public), Ok(sig)) = (
            ml_dsa::EncodedVerifyingKey::<P>::try_from(public),
            ml_dsa::EncodedSignature::<P>::try_from(sig),
        ) else {
            return false;
        };
        let Some(sig) = ml_dsa::Signature::<P>::decode(&sig) else {
            return false;
        };
        ml_dsa::VerifyingKey::<P>::decode(&public).verify_with_context(data, ctx, &sig)
    }
    let ctx = context.as_bytes();
    Ok(match set {
        MlDsa::P44 => check::<ml_dsa::MlDsa44>(public, sig, data, ctx),
        MlDsa::P65 => check::<ml_dsa::MlDsa65>(public, sig, data, ctx),
        MlDsa::P87 => check::<ml_dsa::MlDsa87>(public, sig, data, ctx),
    })
}

fn verify_eddsa(info: &KeyInfo, scheme: &Scheme, data: &[u8], sig: &[u8]) -> Result<bool> {
    if *scheme != Scheme::EdDsa {
        return Err(mismatch(scheme, info));
    }
    let (Some(curve), Some(public)) = (info.curve, info.ec_point.as_deref()) else {
        return Err(mismatch(scheme, info));
    };
    match curve {
        Curve::Ed25519 => {
            use ed25519_dalek::Verifier;
            let Ok(bytes) = <[u8; 32]>::try_from(public) else {
                return Ok(false);
            };
            let (Ok(key), Ok(sig)) = (
                ed25519_dalek::VerifyingKey::from_bytes(&bytes),
                ed25519_dalek::Signature::from_slice(sig),
            ) else {
                return Ok(false);
            };
            Ok(key.verify(data, &sig).is_ok())
        }
        Curve::Ed448 => {
            let Ok(bytes) = <[u8; 57]>::try_from(public) else {
                return Ok(false);
            };
            let (Ok(key), Ok(sig)) = (
                ed448_goldilocks::VerifyingKey::from_bytes(&bytes),
                ed448_goldilocks::Signature::from_slice(sig),
            ) else {
                return Ok(false);
            };
            Ok(key.verify_raw(&sig, data).is_ok())
        }
        _ => Err(mismatch(scheme, info)),
    }
}

fn verify_rsa(info: &KeyInfo, scheme: &Scheme, data: &[u8], sig: &[u8]) -> Result<bool> {
    let (Some(n), Some(e)) = (info.modulus.as_deref(), info.public_exponent.as_deref()) else {
        return Err(mismatch(scheme, info));
    };
    let k = n.len();
    let n = BigUint::from_bytes_be(n);
    let s = BigUint::from_bytes_be(sig);
    if sig.len() > k || s >= n {
        return Ok(false);
    }
    let m = s.modpow(&BigUint::from_bytes_be(e), &n).to_bytes_be();
    let mut em = vec![0u8; k.saturating_sub(m.len())];
    em.extend_from_slice(&m);
    match *scheme {
        Scheme::RsaPkcs { hash, prehashed } => {
            let digest = digest(hash, prehashed, data)?;
            let prefix = hash.digest_info_prefix();
            let t_len = prefix.len() + digest.len();
            if k < t_len + 11 {
                return Ok(false);
            }
            let mut expected = vec![0u8, 1];
            expected.resize(k - t_len - 1, 0xff);
            expected.push(0);
            expected.extend_from_slice(prefix);
            expected.extend_from_slice(&digest);
            Ok(em == expected)
        }
        Scheme::RsaPss {
            hash,
            salt,
            prehashed,
        } => {
            let m_hash = digest(hash, prehashed, data)?;
            Ok(pss_verify(hash, &m_hash, &em, info.bits - 1, salt))
        }
        _ => Err(mismatch(scheme, info)),
    }
}

/// EMSA-PSS-VERIFY (RFC 8017 9.1.2) with MGF1 over the same hash and a known salt length.
fn pss_verify(hash: HashAlg, m_hash: &[u8], em_full: &[u8], em_bits: usize, s_len: usize) -> bool {
    let em_len = em_bits.div_ceil(8);
    // EM is the low em_len bytes of the k-byte integer; any byte above must be zero.
    let Some(extra) = em_full.len().checked_sub(em_len) else {
        return false;
    };
    if em_full[..extra].iter().any(|b| *b != 0) {
        return false;
    }
    let em = &em_full[extra..];
    let h_len = hash.len();
    if em_len < h_len + s_len + 2 || em.last() != Some(&0xbc) {
        return false;
    }
    let (masked_db, rest) = em.split_at(em_len - h_len - 1);
    let h = &rest[..h_len];
    let top_bits = 8 * em_len - em_bits;
    if top_bits > 0 && masked_db[0] >> (8 - top_bits) != 0 {
        return false;
    }
    let mask = mgf1(hash, h, masked_db.len());
    let mut db: Vec<u8> = masked_db
        .iter()
        .zip(mask.iter())
        .map(|(a, b)| a ^ b)
        .collect();
    if top_bits > 0 {
        db[0] &= 0xff >> top_bits;
    }
    let ps_len = em_len - h_len - s_len - 2;
    if db[..ps_len].iter().any(|b| *b != 0) || db[ps_len] != 1 {
        return false;
    }
    let salt = &db[ps_len + 1..];
    let mut m_prime = vec![0u8; 8];
    m_prime.extend_from_slice(m_hash);
    m_prime.extend_from_slice(salt);
    hash.digest(&m_prime) == h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ec_info(curve: Curve, point: Vec<u8>) -> KeyInfo {
        KeyInfo {
            kind: if curve.is_edwards() {
                KeyKind::Edwards
            } else {
                KeyKind::Ec
            },
            curve: Some(curve),
            bits: curve.bits(),
            label: None,
            id: vec![],
            modulus: None,
            public_exponent: None,
            ec_point: Some(point),
            unique_id: None,
            param_set: None,
            public_value: None,
            slh_set: None,
        }
    }

    #[test]
    fn mldsa44_rfc9964_appendix_a() {
        // RFC 9964 Appendix A (the all-zero-seed ML-DSA-44 key): public key, JWS signing
        // input, signature (from jwcrypto 1.6.1's tests_mldsa.py).
        let mut lines = include_str!("rfc9964_mldsa44.txt").lines();
        let (Some(public), Some(input), Some(sig)) = (lines.next(), lines.next(), lines.next())
        else {
            panic!("three lines")
        };
        let info = KeyInfo {
            kind: KeyKind::MlDsa,
            curve: None,
            bits: 0,
            label: None,
            id: vec![],
            modulus: None,
            public_exponent: None,
            ec_point: None,
            unique_id: None,
            param_set: Some(MlDsa::P44),
            public_value: Some(hex_bytes(public)),
            slh_set: None,
        };
        let scheme = probe_scheme(&info);
        let sig = hex_bytes(sig);
        assert!(matches!(
            verify(&info, &scheme, input.as_bytes(), &sig),
            Ok(true)
        ));
        assert!(matches!(verify(&info, &scheme, b"other", &sig), Ok(false)));
        let Ok(ctx) = MlDsaContext::new(b"ctx") else {
            panic!("a context")
        };
        let with_ctx = Scheme::MlDsa {
            deterministic: false,
            context: ctx,
        };
        assert!(matches!(
            verify(&info, &with_ctx, input.as_bytes(), &sig),
            Ok(false)
        ));
        let wrong_set = KeyInfo {
            param_set: Some(MlDsa::P65),
            ..info.clone()
        };
        assert!(matches!(
            verify(&wrong_set, &scheme, input.as_bytes(), &sig),
            Ok(false)
        ));
    }

    #[test]
    fn ed25519_rfc8032_test_1() {
        // RFC 8032 7.1, TEST 1 (empty message).
        let public = hex_bytes("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
        let sig = hex_bytes(
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        );
        let info = ec_info(Curve::Ed25519, public);
        assert!(matches!(verify(&info, &Scheme::EdDsa, b"", &sig), Ok(true)));
        assert!(matches!(
            verify(&info, &Scheme::EdDsa, b"x", &sig),
            Ok(false)
        ));
        let ecdsa = Scheme::Ecdsa {
            hash: HashAlg::Sha256,
            prehashed: false,
        };
        assert!(verify(&info, &ecdsa, b"", &sig).is_err());
    }

    #[test]
    fn ed448_rfc8032_blank() {
        // RFC 8032 7.4, "Blank".
        let public = hex_bytes(
            "5fd7449b59b461fd2ce787ec616ad46a1da1342485a70e1f8a0ea75d80e96778edf124769b46c7061bd6783df1e50f6cd1fa1abeafe8256180",
        );
        let sig = hex_bytes(
            "533a37f6bbe457251f023c0d88f976ae2dfb504a843e34d2074fd823d41a591f2b233f034f628281f2fd7a22ddd47d7828c59bd0a21bfd3980ff0d2028d4b18a9df63e006c5d1c2d345b925d8dc00b4104852db99ac5c7cdda8530a113a0f4dbb61149f05a7363268c71d95808ff2e652600",
        );
        let info = ec_info(Curve::Ed448, public);
        assert!(matches!(verify(&info, &Scheme::EdDsa, b"", &sig), Ok(true)));
        assert!(matches!(
            verify(&info, &Scheme::EdDsa, b"a", &sig),
            Ok(false)
        ));
    }

    #[test]
    fn garbage_never_verifies() {
        let info = ec_info(Curve::P256, vec![4; 65]);
        let s = probe_scheme(&info);
        assert!(matches!(verify(&info, &s, b"m", &[1; 64]), Ok(false)));
        let rsa = KeyInfo {
            kind: KeyKind::Rsa,
            curve: None,
            bits: 16,
            label: None,
            id: vec![],
            modulus: Some(vec![0xc3, 0x5b]),
            public_exponent: Some(vec![1, 0, 1]),
            ec_point: None,
            unique_id: None,
            param_set: None,
            public_value: None,
            slh_set: None,
        };
        let s = probe_scheme(&rsa);
        assert!(matches!(verify(&rsa, &s, b"m", &[0xff, 0xff]), Ok(false)));
        assert!(matches!(verify(&rsa, &s, b"m", &[1, 2]), Ok(false)));
    }

    #[test]
    fn rsa_pkcs1_and_pss() {
        // A 1024-bit key and signatures made by pyca/cryptography over b"hsmkey verify vector".
        let n = hex_bytes(
            "a9b6c0a767c062aee031e28efae3b55b926d46f954d146ebc70de7460e3dc45f234188898e50ac1a97e89d88d3813d0c09106678456ef3a5157fae1342e766e9a47d73d6fd597abad2d2d84656bc9244b437e943882929bd939d08fdcf3e1ebaba009d5bdeb0ecd1f59bd286118ece56f1deb7fd747a490092b6eaed8665a393",
        );
        let pkcs1 = hex_bytes(
            "9c1edd49f0824487723d750b16211badfd511cddf43a5833443e4c54d3bd3b1e75d21f757f5776eb4558fe7e355bb6e74fce2590748a63b3074ad16a6696c6aa78c1625d533a73ec7b500b659d09f0e3203e44fe631d3f410970929d27db4b633c411c1302eb60f244a7ee1ea7f7e6e331a71cdf55202503cb232c4be81f29d8",
        );
        let pss = hex_bytes(
            "3e4d8499865dc3af9c1a7561bca680f6cc12ab2ffb8ace082d6d7e8572680b04bfc41b00a205323c759c84f7badaba9d2b06b731c5ada3cc2d0a1c1ceadbb3443d46500632699a30a5ada69af9e0c1dc26c70907e10a2974fc154a2a9ea993704cbd16161179618078058c17cf089881279ea5b666d5d673adf887f830802fbf",
        );
        let info = KeyInfo {
            kind: KeyKind::Rsa,
            curve: None,
            bits: 1024,
            label: None,
            id: vec![],
            modulus: Some(n),
            public_exponent: Some(vec![1, 0, 1]),
            ec_point: None,
            unique_id: None,
            param_set: None,
            public_value: None,
            slh_set: None,
        };
        let m = b"hsmkey verify vector";
        let v15 = Scheme::RsaPkcs {
            hash: HashAlg::Sha256,
            prehashed: false,
        };
        let ps = Scheme::RsaPss {
            hash: HashAlg::Sha256,
            salt: 32,
            prehashed: false,
        };
        assert!(matches!(verify(&info, &v15, m, &pkcs1), Ok(true)));
        assert!(matches!(verify(&info, &ps, m, &pss), Ok(true)));
        assert!(matches!(verify(&info, &v15, b"other", &pkcs1), Ok(false)));
        assert!(matches!(verify(&info, &ps, b"other", &pss), Ok(false)));
        assert!(matches!(verify(&info, &v15, m, &pss), Ok(false)));
        assert!(matches!(verify(&info, &ps, m, &pkcs1), Ok(false)));
        let wrong_salt = Scheme::RsaPss {
            hash: HashAlg::Sha256,
            salt: 20,
            prehashed: false,
        };
        assert!(matches!(verify(&info, &wrong_salt, m, &pss), Ok(false)));
    }

    fn hex_bytes(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .filter_map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
            .collect()
    }
}
