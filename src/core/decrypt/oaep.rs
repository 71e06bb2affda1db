//! RSA-OAEP decoding (RFC 8017, 7.1.2) for tokens whose own OAEP lacks a hash (SoftHSM2 does
//! OAEP with SHA-1 only) or ignores the label (SoftHSM2 again): the token does the private-key
//! operation (`CKM_RSA_X_509`), this removes the padding, which needs no secret.
//!
//! Every check runs on every byte, with `subtle`'s constant-time selects; the seed, the data
//! block and the masks live in zeroizing buffers; the one branch is the final "valid or not"
//! (an OAEP failure must raise), taken after all the work is done, and it says nothing about
//! *which* check failed (Manger's attack needs exactly that).

use sha2::Digest;
use subtle::{Choice, ConstantTimeEq};
use zeroize::{Zeroize, Zeroizing};

use super::ct;
use crate::core::error::Result;
use crate::core::mechanism::HashAlg;

/// `hash(parts...)` in a zeroizing buffer (the input may hold the seed).
fn digest_parts(hash: HashAlg, parts: &[&[u8]]) -> Zeroizing<Vec<u8>> {
    fn run<D: Digest>(parts: &[&[u8]]) -> Zeroizing<Vec<u8>> {
        let mut d = D::new();
        for p in parts {
            d.update(p);
        }
        let mut out = d.finalize();
        let v = Zeroizing::new(out.to_vec());
        out[..].zeroize();
        v
    }
    match hash {
        HashAlg::Sha1 => run::<sha1::Sha1>(parts),
        HashAlg::Sha224 => run::<sha2::Sha224>(parts),
        HashAlg::Sha256 => run::<sha2::Sha256>(parts),
        HashAlg::Sha384 => run::<sha2::Sha384>(parts),
        HashAlg::Sha512 => run::<sha2::Sha512>(parts),
    }
}

/// `out ^= MGF1(hash, seed, out.len())`.
pub fn mgf1_xor(hash: HashAlg, seed: &[u8], out: &mut [u8]) {
    for (counter, chunk) in out.chunks_mut(hash.len()).enumerate() {
        let block = digest_parts(hash, &[seed, &(counter as u32).to_be_bytes()]);
        for (o, m) in chunk.iter_mut().zip(block.iter()) {
            *o ^= m;
        }
    }
}

/// MGF1 with `hash`, `len` bytes of mask from `seed`.
pub fn mgf1(hash: HashAlg, seed: &[u8], len: usize) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(vec![0u8; len]);
    mgf1_xor(hash, seed, &mut out);
    out
}

/// Encodes `msg` as an OAEP block of `k` bytes (RFC 8017, 7.1.1) with the given seed (as long
/// as the hash): for hsmkey's own probe ciphertexts (`label_probe`), never for a caller's
/// data. `None` if the message does not fit.
pub fn encode(
    hash: HashAlg,
    mgf_hash: HashAlg,
    label: &[u8],
    msg: &[u8],
    k: usize,
    seed: &[u8],
) -> Option<Vec<u8>> {
    let h_len = hash.len();
    if seed.len() != h_len || k < msg.len() + 2 * h_len + 2 {
        return None;
    }
    let mut db = hash.digest(label);
    db.extend(std::iter::repeat_n(0u8, k - msg.len() - 2 * h_len - 2));
    db.push(1);
    db.extend_from_slice(msg);
    mgf1_xor(mgf_hash, seed, &mut db);
    let mut masked_seed = seed.to_vec();
    mgf1_xor(mgf_hash, &db, &mut masked_seed);
    let mut em = vec![0u8];
    em.extend(masked_seed);
    em.extend(db);
    Some(em)
}

/// Decodes an OAEP block `em` (exactly the modulus length `k`) in time that depends only on
/// `k` and the hash: whether it is valid, and a `k`-byte buffer with the message at its start
/// and its length (meaningful only when valid). `None` when `k` is too small for the hash
/// (public).
pub fn decode_fixed(
    hash: HashAlg,
    mgf_hash: HashAlg,
    label: &[u8],
    em: &[u8],
) -> Option<(Choice, Zeroizing<Vec<u8>>, usize)> {
    let h_len = hash.len();
    let k = em.len();
    if k < 2 * h_len + 2 {
        return None;
    }
    let l_hash = hash.digest(label);
    // Unmask in place, in a copy that is wiped: EM = Y || maskedSeed || maskedDB.
    let mut buf = Zeroizing::new(em.to_vec());
    let (y, rest) = buf.split_at_mut(1);
    let (seed, db) = rest.split_at_mut(h_len);
    mgf1_xor(mgf_hash, db, seed);
    mgf1_xor(mgf_hash, seed, db);

    let mut good = y[0].ct_eq(&0) & db[..h_len].ct_eq(&l_hash[..]);
    // After lHash: zero bytes, then 0x01, then the message. Find the first 0x01; any other
    // non-zero byte before it is an error.
    let mut found = Choice::from(0);
    let mut index = 0usize;
    for (i, byte) in db.iter().enumerate().skip(h_len) {
        let is_one = byte.ct_eq(&1);
        let is_zero = byte.ct_eq(&0);
        index = ct::select_usize(!found & is_one, i, index);
        good &= found | is_one | is_zero;
        found |= is_one;
    }
    good &= found;
    let start = index + 1;
    // index < db.len(), so start <= db.len().
    let len = db.len() - start;
    let mut out = Zeroizing::new(vec![0u8; k]);
    out[..db.len()].copy_from_slice(db);
    ct::shift_left(&mut out, start);
    Some((good, out, len))
}

/// Decodes an OAEP block: the message, or the one "decryption failed" error.
pub fn decode(
    hash: HashAlg,
    mgf_hash: HashAlg,
    label: &[u8],
    em: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    let Some((good, mut out, len)) = decode_fixed(hash, mgf_hash, label, em) else {
        return Err(super::decryption_failed());
    };
    if !bool::from(good) {
        return Err(super::decryption_failed());
    }
    out.truncate(len);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes per RFC 8017 7.1.1 with a fixed seed (test-only).
    pub(crate) fn encode(
        hash: HashAlg,
        label: &[u8],
        msg: &[u8],
        k: usize,
        seed: &[u8],
    ) -> Vec<u8> {
        let h_len = hash.len();
        let mut db = hash.digest(label);
        db.extend(std::iter::repeat_n(0u8, k - msg.len() - 2 * h_len - 2));
        db.push(1);
        db.extend_from_slice(msg);
        mgf1_xor(hash, seed, &mut db);
        let mut masked_seed = seed.to_vec();
        mgf1_xor(hash, &db, &mut masked_seed);
        let mut em = vec![0u8];
        em.extend(masked_seed);
        em.extend(db);
        em
    }

    #[test]
    fn encode_matches_the_test_encoder_and_decodes() {
        for hash in [HashAlg::Sha1, HashAlg::Sha256] {
            let seed = vec![3u8; hash.len()];
            let em = super::encode(hash, hash, b"l", b"msg", 128, &seed);
            assert_eq!(
                em.as_deref(),
                Some(encode(hash, b"l", b"msg", 128, &seed).as_slice())
            );
            let got = em.and_then(|em| decode(hash, hash, b"l", &em).ok());
            assert_eq!(got.as_deref().map(|v| v.as_slice()), Some(&b"msg"[..]));
        }
        assert!(super::encode(HashAlg::Sha512, HashAlg::Sha512, b"", b"", 128, &[0; 64]).is_none());
    }

    #[test]
    fn round_trip() {
        for hash in [HashAlg::Sha1, HashAlg::Sha256, HashAlg::Sha512] {
            let seed = vec![7u8; hash.len()];
            let longest = vec![9u8; 256 - 2 * hash.len() - 2];
            for msg in [&b""[..], b"a", &[0u8; 16], &[1u8; 32], &longest] {
                let em = encode(hash, b"", msg, 256, &seed);
                let got = decode(hash, hash, b"", &em).ok();
                assert_eq!(got.as_deref().map(|v| v.as_slice()), Some(msg));
                let em = encode(hash, b"label", msg, 256, &seed);
                let got = decode(hash, hash, b"label", &em).ok();
                assert_eq!(got.as_deref().map(|v| v.as_slice()), Some(msg));
            }
        }
    }

    #[test]
    fn rejects_tampering() {
        let hash = HashAlg::Sha256;
        let em = encode(hash, b"", b"secret key", 256, &[3u8; 32]);
        assert!(decode(hash, hash, b"other label", &em).is_err());
        assert!(decode(hash, HashAlg::Sha1, b"", &em).is_err());
        for i in [0, 1, 40, 200, 255] {
            let mut bad = em.clone();
            bad[i] ^= 0x80;
            assert!(decode(hash, hash, b"", &bad).is_err(), "byte {i}");
        }
        assert!(decode(hash, hash, b"", &em[..50]).is_err());
        // Every failure is the same error.
        let a = decode(hash, hash, b"x", &em).err().map(|e| e.message);
        let b = decode(hash, hash, b"", &[0u8; 256])
            .err()
            .map(|e| e.message);
        assert_eq!(a, b);
    }

    #[test]
    fn a_nonzero_byte_before_the_separator_is_an_error() {
        let hash = HashAlg::Sha1;
        let seed = [5u8; 20];
        // Build a DB with a stray 0x02 in the zero padding, then mask it as encode() does.
        let mut db = hash.digest(b"");
        db.extend([0u8, 0, 2, 0, 1, 0x41, 0x42]);
        db.resize(256 - 21, 0x43);
        mgf1_xor(hash, &seed, &mut db);
        let mut masked_seed = seed.to_vec();
        mgf1_xor(hash, &db, &mut masked_seed);
        let em = [vec![0u8], masked_seed, db].concat();
        assert!(decode(hash, hash, b"", &em).is_err());
    }

    #[test]
    fn mgf1_matches_a_known_value() {
        // MGF1-SHA1("foo", 3) = 1ac907 (a widely published test value).
        assert_eq!(
            mgf1(HashAlg::Sha1, b"foo", 3).as_slice(),
            &[0x1a, 0xc9, 0x07]
        );
    }
}
