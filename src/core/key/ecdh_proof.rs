//! Proof by ECDH that a public point belongs to a private EC key that may derive but not
//! sign (CKA_SIGN false, CKA_DERIVE true), when the private object does not carry its point.
//!
//! A throwaway peer scalar `d` is drawn here; the token derives `x(k·(d·G))` with the private
//! key `k`, and a candidate point `Q` is the key's own when `x(d·Q)` is the same. An x
//! coordinate cannot tell `Q` from `-Q`; for a key that only derives this does not matter:
//! ECDH with `-Q` gives the same shared secret as with `Q`, so either publishes the key that
//! the token's key agrees with. The derived value reveals nothing about `k` (`d` is random
//! and forgotten), and is wiped all the same.

use zeroize::Zeroizing;

use crate::core::error::{Error, Kind, Result};
use crate::core::mechanism::Curve;

/// A throwaway ECDH peer on `curve`: its secret scalar and its public point.
pub struct EcdhProbe {
    curve: Curve,
    scalar: Zeroizing<Vec<u8>>,
    peer: Vec<u8>,
}

macro_rules! with_curve {
    ($curve:expr, $c:ident => $body:expr, $other:expr) => {
        match $curve {
            Curve::P256 => {
                use p256 as $c;
                $body
            }
            Curve::P384 => {
                use p384 as $c;
                $body
            }
            Curve::P521 => {
                use p521 as $c;
                $body
            }
            Curve::Secp256k1 => {
                use k256 as $c;
                $body
            }
            Curve::Ed25519 | Curve::Ed448 => $other,
        }
    };
}

impl EcdhProbe {
    /// A fresh peer on a Weierstrass curve.
    pub fn new(curve: Curve) -> Result<EcdhProbe> {
        let field = curve.bits().div_ceil(8);
        with_curve!(curve, c => {
            use c::elliptic_curve::sec1::ToSec1Point;
            // A uniformly random scalar in [1, n): draw until one is in range.
            for _ in 0..64 {
                let mut bytes = Zeroizing::new(vec![0u8; field]);
                getrandom::fill(&mut bytes).map_err(|e| {
                    Error::new(Kind::General, format!("no random bytes for an ECDH probe: {e}"))
                })?;
                // As many bits as the order has (P-521: 521), so that few draws are refused.
                let spare = field * 8 - curve.bits();
                if let Some(top) = bytes.first_mut() {
                    *top &= 0xffu8 >> spare;
                }
                if let Ok(secret) = c::SecretKey::from_slice(&bytes) {
                    let peer = secret.public_key().to_sec1_point(false).as_bytes().to_vec();
                    return Ok(EcdhProbe { curve, scalar: bytes, peer });
                }
            }
            Err(Error::new(Kind::General, "no ECDH probe scalar in range after 64 draws"))
        }, Err(Error::mechanism(format!(
            "ECDH does not apply to {} keys",
            curve.name()
        ))))
    }

    /// The peer's public point, uncompressed (what the token derives with).
    pub fn peer_point(&self) -> &[u8] {
        &self.peer
    }

    /// `x(d·point)`: what the token derives if `point` (uncompressed) is its key's public
    /// point (or that point's negation). None for a point not on the curve.
    pub fn shared_with(&self, point: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        with_curve!(self.curve, c => {
            use c::elliptic_curve::sec1::ToSec1Point;
            let public = c::PublicKey::from_sec1_bytes(point).ok()?;
            let secret = c::SecretKey::from_slice(&self.scalar).ok()?;
            let shared = (public.to_projective() * *secret.to_nonzero_scalar()).to_affine();
            let encoded = shared.to_sec1_point(false);
            encoded.x().map(|x| Zeroizing::new(x.to_vec()))
        }, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two throwaway peers agree: x(d1·(d2·G)) == x(d2·(d1·G)), on every curve.
    #[test]
    fn peers_agree() {
        for curve in [Curve::P256, Curve::P384, Curve::P521, Curve::Secp256k1] {
            let (a, b) = match (EcdhProbe::new(curve), EcdhProbe::new(curve)) {
                (Ok(a), Ok(b)) => (a, b),
                _ => panic!("no probe on {curve:?}"),
            };
            assert_eq!(a.peer_point().len(), curve.public_len());
            let ab = a.shared_with(b.peer_point());
            let ba = b.shared_with(a.peer_point());
            assert!(ab.is_some());
            assert_eq!(ab, ba);
            // Another point gives another secret.
            let c = EcdhProbe::new(curve).map(|c| c.peer_point().to_vec());
            assert_ne!(a.shared_with(&c.unwrap_or_default()), ab);
            assert!(a.shared_with(b"\x04garbage").is_none());
        }
    }

    #[test]
    fn edwards_curves_have_no_probe() {
        assert!(EcdhProbe::new(Curve::Ed25519).is_err());
    }
}
