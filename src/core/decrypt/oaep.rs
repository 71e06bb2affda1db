//! RSA-OAEP decoding (RFC 8017, 7.1.2) for tokens whose own OAEP lacks a hash (SoftHSM2 does
//! OAEP with SHA-1 only): the token does the private-key operation (`CKM_RSA_X_509`), this
//! removes the padding, which needs no secret. Checks run without early exits so that the
//! time taken does not say which check failed.

use crate::core::error::{Error, Result};
use crate::core::mechanism::HashAlg;

/// MGF1 with `hash`, `len` bytes of mask from `seed`.
pub fn mgf1(hash: HashAlg, seed: &[u8], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + hash.len());
    let mut counter: u32 = 0;
    while out.len() < len {
        let mut block = seed.to_vec();
        block.extend_from_slice(&counter.to_be_bytes());
        out.extend_from_slice(&hash.digest(&block));
        counter = counter.wrapping_add(1);
    }
    out.truncate(len);
    out
}

/// Decodes an OAEP-encoded block `em` (exactly the modulus length `k`).
pub fn decode(hash: HashAlg, mgf_hash: HashAlg, label: &[u8], em: &[u8]) -> Result<Vec<u8>> {
    let h_len = hash.len();
    let k = em.len();
    if k < 2 * h_len + 2 {
        return Err(decryption_error());
    }
    let l_hash = hash.digest(label);
    let (y, rest) = (em[0], &em[1..]);
    let (masked_seed, masked_db) = rest.split_at(h_len);
    let seed: Vec<u8> = masked_seed
        .iter()
        .zip(mgf1(mgf_hash, masked_db, h_len))
        .map(|(a, b)| a ^ b)
        .collect();
    let db: Vec<u8> = masked_db
        .iter()
        .zip(mgf1(mgf_hash, &seed, k - h_len - 1))
        .map(|(a, b)| a ^ b)
        .collect();
    let mut bad = y;
    for (a, b) in db[..h_len].iter().zip(l_hash.iter()) {
        bad |= a ^ b;
    }
    // Find the 0x01 separator after the zero padding, without branching on secret data.
    let mut found: u8 = 0;
    let mut index: usize = 0;
    for (i, &byte) in db[h_len..].iter().enumerate() {
        let is_one = ct_eq(byte, 1);
        let is_zero = ct_eq(byte, 0);
        let first_one = is_one & !found & 1;
        index |= (i * first_one as usize) & mask_usize(first_one);
        // A non-zero, non-one byte before the separator is an error.
        bad |= !found & 1 & !is_one & !is_zero & 1;
        found |= is_one;
    }
    bad |= !found & 1;
    if bad != 0 {
        return Err(decryption_error());
    }
    Ok(db[h_len + index + 1..].to_vec())
}

fn ct_eq(a: u8, b: u8) -> u8 {
    let x = (a ^ b) as u16;
    (((x | x.wrapping_neg()) >> 8) as u8 & 1) ^ 1
}

fn mask_usize(bit: u8) -> usize {
    (bit as usize).wrapping_neg()
}

fn decryption_error() -> Error {
    Error::new(crate::core::error::Kind::General, "decryption failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes per RFC 8017 7.1.1 with a fixed seed (test-only).
    fn encode(hash: HashAlg, label: &[u8], msg: &[u8], k: usize, seed: &[u8]) -> Vec<u8> {
        let h_len = hash.len();
        let mut db = hash.digest(label);
        db.extend(std::iter::repeat_n(0u8, k - msg.len() - 2 * h_len - 2));
        db.push(1);
        db.extend_from_slice(msg);
        let masked_db: Vec<u8> = db
            .iter()
            .zip(mgf1(hash, seed, k - h_len - 1))
            .map(|(a, b)| a ^ b)
            .collect();
        let masked_seed: Vec<u8> = seed
            .iter()
            .zip(mgf1(hash, &masked_db, h_len))
            .map(|(a, b)| a ^ b)
            .collect();
        let mut em = vec![0u8];
        em.extend(masked_seed);
        em.extend(masked_db);
        em
    }

    #[test]
    fn round_trip() {
        for hash in [HashAlg::Sha1, HashAlg::Sha256, HashAlg::Sha512] {
            let seed = vec![7u8; hash.len()];
            for msg in [&b""[..], b"a", &[0u8; 16], &[1u8; 32]] {
                let em = encode(hash, b"", msg, 256, &seed);
                assert_eq!(decode(hash, hash, b"", &em).ok().as_deref(), Some(msg));
            }
        }
    }

    #[test]
    fn rejects_tampering() {
        let hash = HashAlg::Sha256;
        let em = encode(hash, b"", b"secret key", 256, &[3u8; 32]);
        assert!(decode(hash, hash, b"other label", &em).is_err());
        for i in [0, 1, 40, 200, 255] {
            let mut bad = em.clone();
            bad[i] ^= 0x80;
            assert!(decode(hash, hash, b"", &bad).is_err(), "byte {i}");
        }
        assert!(decode(hash, hash, b"", &em[..50]).is_err());
    }

    #[test]
    fn mgf1_matches_a_known_value() {
        // MGF1-SHA1("foo", 3) = 1ac907 (a widely published test value).
        assert_eq!(mgf1(HashAlg::Sha1, b"foo", 3), vec![0x1a, 0xc9, 0x07]);
    }
}
