//! Constant-time building blocks for removing RSA padding, over the `subtle` crate: selects,
//! comparisons and a left shift whose time depends only on the length of the buffer, never on
//! its contents or on the (secret) shift.

use subtle::{Choice, ConditionallySelectable, ConstantTimeLess};
use zeroize::Zeroizing;

/// `a` if `choice`, else `b`, without a branch.
pub fn select_usize(choice: Choice, a: usize, b: usize) -> usize {
    u64::conditional_select(&(b as u64), &(a as u64), choice) as usize
}

/// `a < b`, without a branch.
pub fn lt(a: usize, b: usize) -> Choice {
    (a as u64).ct_lt(&(b as u64))
}

/// `a >= b`, without a branch.
pub fn ge(a: usize, b: usize) -> Choice {
    !lt(a, b)
}

/// `dst[i] = if choice { a[i] } else { b[i] }` for every `i` (all three the same length).
pub fn select_into(dst: &mut [u8], choice: Choice, a: &[u8], b: &[u8]) {
    for ((d, x), y) in dst.iter_mut().zip(a).zip(b) {
        *d = u8::conditional_select(y, x, choice);
    }
}

/// Moves the contents of `buf` left by `shift` bytes (`0 <= shift <= buf.len()`), filling the
/// end with zeros. One pass per bit of `buf.len()`, each touching every byte, so the time is
/// the same for every `shift`: the message that starts at a secret offset ends up at offset 0.
pub fn shift_left(buf: &mut [u8], shift: usize) {
    let n = buf.len();
    let mut bit = 0u32;
    while bit < usize::BITS && (1usize << bit) <= n {
        let d = 1usize << bit;
        let on = Choice::from(((shift >> bit) & 1) as u8);
        // Ascending `i`: `buf[i + d]` is read before this pass writes it.
        for i in 0..n {
            let src = if i + d < n { buf[i + d] } else { 0 };
            buf[i] = u8::conditional_select(&buf[i], &src, on);
        }
        bit += 1;
    }
}

/// `src` right-aligned in a zeroed `k`-byte buffer (tokens may drop leading zero bytes of a
/// raw RSA result); `None` if `src` is longer than `k`.
pub fn right_align(src: &[u8], k: usize) -> Option<Zeroizing<Vec<u8>>> {
    let pad = k.checked_sub(src.len())?;
    let mut out = Zeroizing::new(vec![0u8; k]);
    out[pad..].copy_from_slice(src);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shift_left_moves_every_amount() {
        for n in [1usize, 2, 7, 8, 9, 128, 255, 256, 257] {
            let orig: Vec<u8> = (0..n).map(|i| (i % 251) as u8 + 1).collect();
            for shift in 0..=n {
                let mut buf = orig.clone();
                shift_left(&mut buf, shift);
                let mut want = orig[shift..].to_vec();
                want.resize(n, 0);
                assert_eq!(buf, want, "n={n} shift={shift}");
            }
        }
    }

    #[test]
    fn selects_and_compares() {
        assert_eq!(select_usize(Choice::from(1), 3, 9), 3);
        assert_eq!(select_usize(Choice::from(0), 3, 9), 9);
        assert!(bool::from(lt(2, 3)));
        assert!(!bool::from(lt(3, 3)));
        assert!(bool::from(ge(3, 3)));
        let mut dst = [0u8; 3];
        select_into(&mut dst, Choice::from(1), &[1, 2, 3], &[4, 5, 6]);
        assert_eq!(dst, [1, 2, 3]);
        select_into(&mut dst, Choice::from(0), &[1, 2, 3], &[4, 5, 6]);
        assert_eq!(dst, [4, 5, 6]);
    }

    #[test]
    fn right_align_pads_on_the_left() {
        assert_eq!(
            right_align(&[1, 2], 4).as_deref().map(|v| v.as_slice()),
            Some(&[0, 0, 1, 2][..])
        );
        assert!(right_align(&[1, 2, 3], 2).is_none());
    }
}
