//! Encodings that need no secret: ECDSA signatures as DER (what pyca/cryptography's keys
//! return), one DER TLV, hex for messages.

/// An ECDSA signature `r || s` (two equal halves) as the DER `ECDSA-Sig-Value` that
/// pyca/cryptography's keys return: `SEQUENCE { INTEGER r, INTEGER s }`.
pub fn ecdsa_der(raw: &[u8]) -> Vec<u8> {
    fn integer(out: &mut Vec<u8>, be: &[u8]) {
        let zeros = be.iter().take_while(|b| **b == 0).count();
        let digits = if zeros == be.len() {
            &[0u8][..]
        } else {
            &be[zeros..]
        };
        let pad = digits[0] & 0x80 != 0;
        out.push(0x02);
        push_len(out, digits.len() + usize::from(pad));
        if pad {
            out.push(0);
        }
        out.extend_from_slice(digits);
    }
    fn push_len(out: &mut Vec<u8>, n: usize) {
        if n < 0x80 {
            out.push(n as u8);
        } else {
            out.extend([0x81, n as u8]);
        }
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    let mut body = Vec::with_capacity(raw.len() + 8);
    integer(&mut body, r);
    integer(&mut body, s);
    let mut out = Vec::with_capacity(body.len() + 3);
    out.push(0x30);
    push_len(&mut out, body.len());
    out.extend(body);
    out
}

/// One DER TLV that spans the whole input: (tag, contents).
pub fn der_tlv(data: &[u8]) -> Option<(u8, &[u8])> {
    let (&tag, rest) = data.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[n..])
    };
    if rest.len() != len {
        return None;
    }
    Some((tag, rest))
}

pub fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecdsa_der_encodes_like_openssl() {
        // r with its high bit set gets a 0 byte; s with leading zeros loses them.
        let mut raw = vec![0x80u8; 32];
        raw.extend([0u8, 0, 0x01]);
        raw.extend(vec![0x11u8; 29]);
        let der = ecdsa_der(&raw);
        assert_eq!(&der[..5], &[0x30, 0x43, 0x02, 0x21, 0x00]);
        assert_eq!(&der[37..39], &[0x02, 0x1e]);
        assert_eq!(der.len(), 2 + 0x43);
        // P-521: the sequence needs a long-form length.
        let big = vec![0xffu8; 132];
        let der = ecdsa_der(&big);
        assert_eq!(&der[..3], &[0x30, 0x81, 0x8a]);
        assert_eq!(der_tlv(&der).map(|(t, b)| (t, b.len())), Some((0x30, 0x8a)));
    }
}
