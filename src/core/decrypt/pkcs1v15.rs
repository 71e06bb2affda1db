//! PKCS#1 v1.5 decryption padding (RFC 8017, 7.2.2) with *implicit rejection*
//! (draft-irtf-cfrg-rsa-guidance, the algorithm of OpenSSL >= 3.2 and so of pyca/cryptography's
//! own keys): a block whose padding is wrong does not raise, it decodes to a synthetic message,
//! derived from a per-key secret and the ciphertext, that looks like any other plaintext. Same
//! ciphertext, same synthetic bytes; no error, no branch and no memory access pattern that
//! depends on whether the padding was right.
//!
//! The derivation is the draft's, byte for byte: `KDK = HMAC-SHA256(key, ciphertext)`, then
//! `PRF(KDK, "length")` picks the synthetic length and `PRF(KDK, "message")` its bytes. OpenSSL
//! keys the HMAC with `SHA256(d)`; an HSM never shows `d`, so hsmkey keys it with a secret the
//! token derives from the key (`super::rejection`). With `SHA256(d)` as the key, [`decode`]
//! gives exactly what OpenSSL gives (a unit test below checks that against pyca/cryptography).

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
use zeroize::{Zeroize, Zeroizing};

use super::ct;
use crate::core::error::{Error, Result};

type HmacSha256 = Hmac<Sha256>;

/// Candidates for the synthetic length (two bytes each): the draft's 128 tries, so that the
/// chance of none fitting (the length then is 0) is 2^-128 at worst.
const LENGTH_TRIES: usize = 128;

/// The smallest block: `00 02`, eight bytes of padding, the `00` separator.
pub const MIN_BLOCK: usize = 11;

fn hmac(key: &[u8]) -> HmacSha256 {
    match <HmacSha256 as KeyInit>::new_from_slice(key) {
        Ok(mac) => mac,
        // HMAC takes keys of any length.
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    }
}

/// The key derivation key of one ciphertext: `HMAC-SHA256(key, ciphertext)`, the ciphertext
/// being exactly the modulus length.
pub fn kdk(key: &[u8; 32], ciphertext: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut mac = hmac(key);
    mac.update(ciphertext);
    let mut tag = mac.finalize().into_bytes();
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&tag);
    tag[..].zeroize();
    out
}

/// The draft's PRF: `out.len()` bytes of `HMAC-SHA256(kdk, I2OSP(i, 2) || label ||
/// I2OSP(bits, 2))` for i = 0, 1, ...; `bits` (the output length in bits) must fit 16 bits.
pub fn prf(kdk: &[u8; 32], label: &[u8], out: &mut [u8]) -> Result<()> {
    let bits = u16::try_from(out.len() * 8)
        .map_err(|_| Error::value("the RSA modulus is too large for implicit rejection"))?;
    for (i, chunk) in out.chunks_mut(32).enumerate() {
        let mut mac = hmac(kdk);
        mac.update(&(i as u16).to_be_bytes());
        mac.update(label);
        mac.update(&bits.to_be_bytes());
        let mut block = mac.finalize().into_bytes();
        chunk.copy_from_slice(&block[..chunk.len()]);
        block[..].zeroize();
    }
    Ok(())
}

/// Decodes a PKCS#1 v1.5 encryption block `em` (the raw RSA result, exactly `k` bytes) with
/// implicit rejection, in time that depends only on `k`. Returns a `k`-byte buffer with the
/// message (or the synthetic message) at its start, and its length. `reject` forces the
/// synthetic message whatever `em` holds (see `super::rejection`: the one ciphertext whose raw
/// result is the key's own secret). Errors only for a modulus length out of range (public).
pub fn decode_fixed(
    em: &[u8],
    kdk: &[u8; 32],
    reject: Choice,
) -> Result<(Zeroizing<Vec<u8>>, usize)> {
    let k = em.len();
    if k < MIN_BLOCK {
        return Err(Error::value(
            "the RSA modulus is too small for PKCS#1 v1.5 decryption",
        ));
    }
    // The synthetic message, and candidates for its length.
    let mut synthetic = Zeroizing::new(vec![0u8; k]);
    prf(kdk, b"message", &mut synthetic)?;
    let mut lengths = Zeroizing::new([0u8; 2 * LENGTH_TRIES]);
    prf(kdk, b"length", &mut lengths[..])?;
    // The longest message: k less `00 02` and eight bytes of padding (and the separator, as
    // the draft counts it: lengths strictly below `k - 10`).
    let max_len = k - 10;
    let mut mask = max_len;
    for s in [1, 2, 4, 8, 16, 32] {
        mask |= mask >> s;
    }
    let mut synthetic_len = 0usize;
    for pair in lengths.chunks_exact(2) {
        let candidate = ((usize::from(pair[0]) << 8) | usize::from(pair[1])) & mask;
        synthetic_len = ct::select_usize(ct::lt(candidate, max_len), candidate, synthetic_len);
    }
    let synthetic_index = k - synthetic_len;

    // The real block: 00 02, at least eight non-zero bytes, 00, the message.
    let mut good = em[0].ct_eq(&0) & em[1].ct_eq(&2) & !reject;
    let mut found_zero = Choice::from(0);
    let mut zero_index = 0usize;
    for (i, byte) in em.iter().enumerate().skip(2) {
        let is_zero = byte.ct_eq(&0);
        zero_index = ct::select_usize(!found_zero & is_zero, i, zero_index);
        found_zero |= is_zero;
    }
    // Also false when there is no zero byte at all (zero_index stays 0).
    good &= ct::ge(zero_index, 2 + 8);
    let index = ct::select_usize(good, zero_index + 1, synthetic_index);

    let mut out = Zeroizing::new(vec![0u8; k]);
    ct::select_into(&mut out, good, em, &synthetic);
    ct::shift_left(&mut out, index);
    Ok((out, k - index))
}

/// [`decode_fixed`], cut to the message's length.
pub fn decode(em: &[u8], kdk: &[u8; 32], reject: Choice) -> Result<Zeroizing<Vec<u8>>> {
    let (mut out, len) = decode_fixed(em, kdk, reject)?;
    // Truncating a Vec<u8> never reallocates: the bytes past `len` stay in the allocation
    // that `Zeroizing` wipes.
    out.truncate(len);
    Ok(out)
}

/// For tokens that remove the padding themselves (`CKM_RSA_PKCS`, no raw RSA): the block to
/// give [`decode`], rebuilt from what the token answered. `Some(message)`: a valid block
/// around it (`00 02 01.. 00 message`); `None` (the token rejected the padding) or a message
/// too long for any valid block: all zeros, which decodes to the synthetic message.
pub fn reencode(message: Option<&[u8]>, k: usize) -> Zeroizing<Vec<u8>> {
    let mut em = Zeroizing::new(vec![0u8; k]);
    let fits = message.map(|m| m.len() + MIN_BLOCK <= k).unwrap_or(false);
    let m = message.unwrap_or(&[]);
    let len = if fits { m.len() } else { 0 };
    let ok = Choice::from(u8::from(fits));
    em[1] = u8::conditional_select(&0, &2, ok);
    for b in em[2..k - len].iter_mut() {
        *b = u8::conditional_select(&0, &1, ok);
    }
    em[k - len - 1] = 0;
    if fits {
        em[k - len..].copy_from_slice(m);
    }
    em
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or(0))
            .collect()
    }

    fn key_of(d: &[u8]) -> [u8; 32] {
        let mut key = [0u8; 32];
        key.copy_from_slice(&Sha256::digest(d));
        key
    }

    #[test]
    fn valid_blocks_decode() {
        let key = [7u8; 32];
        for msg in [&b""[..], b"k", &[0u8; 16], &[0xffu8; 32], &[5u8; 117]] {
            let mut em = vec![0u8, 2];
            em.extend(std::iter::repeat_n(0x5a, 128 - 3 - msg.len()));
            em.push(0);
            em.extend_from_slice(msg);
            let out = decode(&em, &key, Choice::from(0)).ok();
            assert_eq!(out.as_deref().map(|v| v.as_slice()), Some(msg));
            // Forced rejection gives the synthetic message instead.
            let forced = decode(&em, &key, Choice::from(1)).ok();
            assert!(forced.is_some() && forced.as_deref().map(|v| v.as_slice()) != Some(msg));
        }
    }

    #[test]
    fn bad_blocks_give_deterministic_synthetic_messages() {
        let key = [9u8; 32];
        let bad: Vec<Vec<u8>> = vec![
            vec![1u8; 128],                                            // no 00 02
            [vec![0, 2], vec![1; 7], vec![0], vec![3; 118]].concat(),  // padding too short
            [vec![0, 2], vec![1; 126]].concat(),                       // no separator
            [vec![0, 1], vec![1; 20], vec![0], vec![3; 105]].concat(), // block type 1
        ];
        let mut seen = Vec::new();
        for em in &bad {
            let ct = Sha256::digest(em); // stands for the ciphertext
            let kdk = kdk(&key, &ct);
            let a = decode(em, &kdk, Choice::from(0)).ok();
            let b = decode(em, &kdk, Choice::from(0)).ok();
            assert!(a.is_some());
            assert_eq!(a, b);
            let len = a.as_ref().map(|v| v.len()).unwrap_or(usize::MAX);
            assert!(len < 128 - 10);
            seen.push(a);
        }
        seen.dedup();
        assert_eq!(seen.len(), bad.len());
    }

    #[test]
    fn reencode_round_trips() {
        let key = [1u8; 32];
        for msg in [&b""[..], b"abc", &[0u8; 117]] {
            let em = reencode(Some(msg), 128);
            let out = decode(&em, &key, Choice::from(0)).ok();
            assert_eq!(out.as_deref().map(|v| v.as_slice()), Some(msg));
        }
        // Rejected by the token, or longer than a block can hold: synthetic.
        let synthetic = decode(&reencode(None, 128), &key, Choice::from(0)).ok();
        let too_long = decode(&reencode(Some(&[1u8; 118]), 128), &key, Choice::from(0)).ok();
        assert_eq!(synthetic, too_long);
        assert!(synthetic.is_some());
    }

    /// pyca/cryptography 50 (OpenSSL's implicit rejection) on one 1024-bit key: `em` is the raw
    /// RSA result `c^d mod n`, `want` what `key.decrypt(c, PKCS1v15())` returned. With
    /// `SHA256(I2OSP(d, k))` as the HMAC key, hsmkey's decoding gives the same bytes.
    #[test]
    fn matches_openssl_implicit_rejection() {
        for v in vectors::VECTORS {
            let key = key_of(&unhex(v.d));
            let c = unhex(v.c);
            let em = unhex(v.em);
            let kdk = kdk(&key, &c);
            let got = decode(&em, &kdk, Choice::from(0)).ok();
            assert_eq!(
                got.as_deref().map(|v| v.as_slice()),
                Some(unhex(v.want).as_slice()),
                "{}",
                v.what
            );
        }
    }
}

#[cfg(test)]
mod vectors;
