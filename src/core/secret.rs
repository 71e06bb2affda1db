//! The user PIN: held in zeroizing memory, never printed, compared by a keyed hash.

use std::fmt;
use std::sync::OnceLock;

use cryptoki::types::RawAuthPin;
use hmac::{KeyInit, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// A PIN. Its bytes (the whole allocation) are wiped when it is dropped; `Debug` shows no
/// part of it.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct Pin {
    bytes: Vec<u8>,
}

impl Pin {
    /// Takes the bytes over (no copy is left behind).
    pub fn new(bytes: Vec<u8>) -> Self {
        Pin { bytes }
    }

    /// True for the empty PIN (refused before any PKCS#11 call: it would spend a PIN try).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// A copy in cryptoki's secret type (itself wiped on drop), for one `C_Login`.
    pub fn auth(&self) -> RawAuthPin {
        RawAuthPin::new(Box::new(self.bytes.to_vec()))
    }

    /// HMAC-SHA256 of the PIN under a key drawn once per process: lets two pools compare PINs
    /// without keeping a second copy of either.
    pub fn fingerprint(&self) -> PinFingerprint {
        let key = process_key();
        // An HMAC key may have any length: `new_from_slice` cannot fail for HMAC.
        let mut mac = match <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key.as_slice()) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        };
        mac.update(&self.bytes);
        let out = mac.finalize().into_bytes();
        let mut fp = Zeroizing::new([0u8; 32]);
        fp.copy_from_slice(&out);
        PinFingerprint(fp)
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(<hidden>)")
    }
}

/// A keyed hash of a PIN that worked; wiped on drop.
#[derive(Clone, ZeroizeOnDrop)]
pub struct PinFingerprint(Zeroizing<[u8; 32]>);

impl PinFingerprint {
    /// Constant-time comparison.
    pub fn matches(&self, other: &PinFingerprint) -> bool {
        let diff = self
            .0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        diff == 0
    }
}

impl fmt::Debug for PinFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PinFingerprint(<hidden>)")
    }
}

fn process_key() -> &'static Zeroizing<[u8; 32]> {
    static KEY: OnceLock<Zeroizing<[u8; 32]>> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut key = Zeroizing::new([0u8; 32]);
        if getrandom::fill(key.as_mut()).is_err() {
            // No OS randomness: fall back to the std hasher's random keys (still per process).
            use std::hash::{BuildHasher, Hasher};
            for chunk in key.chunks_mut(8) {
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_u64(chunk.len() as u64);
                chunk.copy_from_slice(&h.finish().to_le_bytes()[..chunk.len()]);
            }
        }
        key
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_pin() {
        let pin = Pin::new(b"123456".to_vec());
        let shown = format!("{pin:?} {:?}", pin.fingerprint());
        assert!(!shown.contains("123456"));
    }

    #[test]
    fn the_pin_is_wiped() {
        fn wiped_on_drop<T: ZeroizeOnDrop>() {}
        wiped_on_drop::<Pin>();
        wiped_on_drop::<PinFingerprint>();
        // What drop does: zeroize the whole allocation (capacity, not just length).
        let mut pin = Pin::new(b"s3cret-pin-0042".to_vec());
        let (ptr, cap) = (pin.bytes.as_ptr(), pin.bytes.capacity());
        pin.zeroize();
        // SAFETY: `pin` is alive, so its allocation of `cap` bytes is too; zeroize wrote
        // zeros to all of it, so every byte is initialized.
        let memory = unsafe { std::slice::from_raw_parts(ptr, cap) };
        assert!(memory.iter().all(|b| *b == 0));
    }

    #[test]
    fn fingerprints_compare() {
        let a = Pin::new(b"123456".to_vec()).fingerprint();
        let b = Pin::new(b"123456".to_vec()).fingerprint();
        let c = Pin::new(b"654321".to_vec()).fingerprint();
        assert!(a.matches(&b));
        assert!(!a.matches(&c));
    }
}
