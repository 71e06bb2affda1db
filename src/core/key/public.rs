//! The public half of a private key: its type, size and public numbers, read only from sources
//! proven to belong to it. RSA: the private object's modulus and exponent. EC and Edwards:
//! the private object's own CKA_PUBLIC_KEY_INFO or CKA_EC_POINT where it has them, else a
//! public-key object with the key's id or label whose point verifies a probe signature made
//! by the private key in the token, or, for an EC key that may derive but not sign, whose
//! point gives the token's ECDH result with a throwaway peer (anyone with a read-write public
//! session can create a public-key object, with any label and id, without the PIN).

use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use super::ecdh_proof::EcdhProbe;
use super::verify::{probe_scheme, verify};
use super::{KeyInfo, KeyQuery, Signer};
use crate::core::error::{Context, Error, Kind, Result};
use crate::core::mechanism::{der_tlv, public_from_spki, Curve, KeyKind, MlDsa, SlhDsa};

/// What the private object says of itself (no public-key object consulted).
pub struct OwnAttributes {
    pub kind: Option<KeyType>,
    pub label: Option<String>,
    pub id: Vec<u8>,
    pub unique_id: Option<Vec<u8>>,
    pub modulus: Option<Vec<u8>>,
    pub exponent: Option<Vec<u8>>,
    pub params: Option<Vec<u8>>,
    /// CKA_EC_POINT, or the point inside a non-empty CKA_PUBLIC_KEY_INFO (not unwrapped).
    pub point: Option<Vec<u8>>,
    pub spki: Option<Vec<u8>>,
    /// CKA_SIGN and CKA_DERIVE, where the token says.
    pub sign: Option<bool>,
    pub derive: Option<bool>,
}

/// Reads the private object's own attributes in one call.
pub fn own_attributes(session: &Session, handle: ObjectHandle) -> Result<OwnAttributes> {
    let attrs = session
        .get_attributes(
            handle,
            &[
                AttributeType::KeyType,
                AttributeType::Label,
                AttributeType::Id,
                AttributeType::UniqueId,
                AttributeType::Modulus,
                AttributeType::PublicExponent,
                AttributeType::EcParams,
                AttributeType::EcPoint,
                AttributeType::PublicKeyInfo,
                AttributeType::Sign,
                AttributeType::Derive,
            ],
        )
        .context("reading the key's attributes")?;
    let mut own = OwnAttributes {
        kind: None,
        label: None,
        id: Vec::new(),
        unique_id: None,
        modulus: None,
        exponent: None,
        params: None,
        point: None,
        spki: None,
        sign: None,
        derive: None,
    };
    for a in attrs {
        match a {
            Attribute::KeyType(t) => own.kind = Some(t),
            Attribute::Label(l) => own.label = Some(String::from_utf8_lossy(&l).into_owned()),
            Attribute::Id(i) => own.id = i,
            Attribute::UniqueId(u) if !u.is_empty() => own.unique_id = Some(u),
            Attribute::Modulus(m) => own.modulus = Some(strip_leading_zeros(m)),
            Attribute::PublicExponent(e) => own.exponent = Some(strip_leading_zeros(e)),
            Attribute::EcParams(p) => own.params = Some(p),
            Attribute::EcPoint(p) if !p.is_empty() => own.point = Some(p),
            Attribute::PublicKeyInfo(p) if !p.is_empty() => own.spki = Some(p),
            Attribute::Sign(b) => own.sign = Some(b),
            Attribute::Derive(b) => own.derive = Some(b),
            _ => {}
        }
    }
    Ok(own)
}

impl OwnAttributes {
    /// The public point the private object carries itself, unwrapped, if any.
    pub fn own_point(&self, curve: Curve) -> Result<Option<Vec<u8>>> {
        if let Some(spki) = &self.spki {
            if let Some(p) = point_from_spki(curve, spki) {
                return Ok(Some(p));
            }
        }
        match &self.point {
            Some(p) => curve.unwrap_point(p).map(Some),
            None => Ok(None),
        }
    }
}

/// The subjectPublicKey of an SPKI (the BIT STRING at its end) for a curve whose public key
/// has a known length.
fn point_from_spki(curve: Curve, spki: &[u8]) -> Option<Vec<u8>> {
    let (0x30, body) = der_tlv(spki)? else {
        return None;
    };
    let want = curve.public_len();
    let start = body.len().checked_sub(want)?;
    // BIT STRING: tag 03, length want + 1 (short or 0x81 form), zero unused bits, the key.
    let header: &[u8] = if want + 1 < 0x80 {
        &[0x03, (want + 1) as u8, 0]
    } else {
        &[0x03, 0x81, (want + 1) as u8, 0]
    };
    if start < header.len() || &body[start - header.len()..start] != header {
        return None;
    }
    Some(body[start..].to_vec())
}

/// Reads the key's type and public half.
///
/// `public` is the public-key object when the caller knows it is genuine (it just made the
/// pair in this session); otherwise an EC or Edwards key without its own point gets it from
/// a public-key object that a probe signature proves. Without a `signer` the first candidate
/// is taken unproven: only for what is never published nor used to verify (the duplicate
/// check of an import).
pub fn read_info(
    session: &Session,
    handle: ObjectHandle,
    public: Option<ObjectHandle>,
    query: &KeyQuery,
    signer: Option<Signer<'_>>,
) -> Result<KeyInfo> {
    let own = own_attributes(session, handle)?;
    let kind = match own.kind {
        Some(KeyType::RSA) => KeyKind::Rsa,
        Some(KeyType::EC) => KeyKind::Ec,
        Some(KeyType::EC_EDWARDS) => KeyKind::Edwards,
        Some(KeyType::ML_DSA) => KeyKind::MlDsa,
        Some(KeyType::SLH_DSA) => KeyKind::SlhDsa,
        other => {
            return Err(Error::mechanism(format!(
                "the private key with {} has a key type hsmkey does not sign with ({other:?})",
                query.describe()
            )))
        }
    };
    let mut info = KeyInfo {
        kind,
        curve: None,
        bits: 0,
        label: own.label.clone(),
        id: own.id.clone(),
        modulus: None,
        public_exponent: None,
        ec_point: None,
        unique_id: own.unique_id.clone(),
        param_set: None,
        public_value: None,
        slh_set: None,
    };
    match kind {
        KeyKind::Rsa => {
            let (Some(n), Some(e)) = (own.modulus, own.exponent) else {
                return Err(Error::mechanism(format!(
                    "the RSA key with {} does not show its modulus and public exponent",
                    query.describe()
                )));
            };
            info.bits = bit_length(&n);
            info.modulus = Some(n);
            info.public_exponent = Some(e);
        }
        KeyKind::Ec | KeyKind::Edwards => {
            let params = own.params.as_deref().ok_or_else(|| {
                Error::mechanism(format!(
                    "the EC key with {} has no CKA_EC_PARAMS",
                    query.describe()
                ))
            })?;
            let curve = Curve::from_ec_params(params)?;
            if curve.is_edwards() != (kind == KeyKind::Edwards) {
                return Err(Error::mechanism(format!(
                    "the key with {} has key type {} but curve {}",
                    query.describe(),
                    kind.name(),
                    curve.name()
                )));
            }
            info.curve = Some(curve);
            info.bits = curve.bits();
            let point = match (own.own_point(curve)?, public) {
                (Some(p), _) => p,
                (None, Some(h)) => {
                    curve.unwrap_point(&read_point(session, h)?.ok_or_else(|| {
                        Error::mechanism("the new public key has no CKA_EC_POINT")
                    })?)?
                }
                (None, None) => {
                    // A key that may derive but not sign is proven by ECDH instead.
                    let by_ecdh =
                        kind == KeyKind::Ec && own.sign == Some(false) && own.derive == Some(true);
                    proven_point(session, handle, &info, query, signer, by_ecdh)?
                }
            };
            info.ec_point = Some(point);
        }
        KeyKind::MlDsa => {
            let set = parameter_set(session, handle)?.ok_or_else(|| {
                Error::mechanism(format!(
                    "the ML-DSA key with {} has no CKA_PARAMETER_SET",
                    query.describe()
                ))
            })?;
            info.param_set = Some(set);
            let own_public = own.spki.as_deref().and_then(|s| public_from_spki(s, set));
            let value = match (own_public, public) {
                (Some(v), _) => v,
                (None, Some(h)) => read_mldsa_public(session, h, set)?.ok_or_else(|| {
                    Error::mechanism("the new ML-DSA public key has no CKA_VALUE")
                })?,
                (None, None) => proven_mldsa_public(session, handle, &info, query, signer)?,
            };
            info.public_value = Some(value);
        }
        KeyKind::SlhDsa => {
            let set = slh_parameter_set(session, handle)?.ok_or_else(|| {
                Error::mechanism(format!(
                    "the SLH-DSA key with {} has no CKA_PARAMETER_SET",
                    query.describe()
                ))
            })?;
            info.slh_set = Some(set);
            // No software verifier for SLH-DSA: a public-key object cannot be proven, so the
            // public key comes from the private object itself, or from the pair just made.
            let value = match (slh_public_from_spki(own.spki.as_deref(), set), public) {
                (Some(v), _) => v,
                (None, Some(h)) => read_value(session, h, set.public_len())?.ok_or_else(|| {
                    Error::mechanism("the new SLH-DSA public key has no CKA_VALUE")
                })?,
                (None, None) => {
                    return Err(Error::mechanism(format!(
                        "the {} private key with {} does not carry its public key \
                         (CKA_PUBLIC_KEY_INFO), and hsmkey cannot prove a public-key object's \
                         SLH-DSA key (it has no SLH-DSA verifier)",
                        set.name(),
                        query.describe()
                    )))
                }
            };
            info.public_value = Some(value);
        }
    }
    Ok(info)
}

/// CKA_PARAMETER_SET of an SLH-DSA key object.
pub fn slh_parameter_set(session: &Session, handle: ObjectHandle) -> Result<Option<SlhDsa>> {
    let attrs = session
        .get_attributes(handle, &[AttributeType::ParameterSet])
        .context("reading CKA_PARAMETER_SET")?;
    for a in attrs {
        if let Attribute::ParameterSet(p) = a {
            return SlhDsa::from_parameter_set(p).map(Some);
        }
    }
    Ok(None)
}

/// The SLH-DSA public key inside the private object's CKA_PUBLIC_KEY_INFO (the BIT STRING at
/// its end, of the set's length).
pub fn slh_public_from_spki(spki: Option<&[u8]>, set: SlhDsa) -> Option<Vec<u8>> {
    let (0x30, body) = der_tlv(spki?)? else {
        return None;
    };
    let want = set.public_len();
    let start = body.len().checked_sub(want)?;
    let header = [0x03, (want + 1) as u8, 0];
    if start < header.len() || body[start - header.len()..start] != header {
        return None;
    }
    Some(body[start..].to_vec())
}

/// CKA_VALUE of a public-key object, if it has `len` bytes.
fn read_value(session: &Session, handle: ObjectHandle, len: usize) -> Result<Option<Vec<u8>>> {
    let attrs = session
        .get_attributes(handle, &[AttributeType::Value])
        .context("reading CKA_VALUE")?;
    Ok(attrs.into_iter().find_map(|a| match a {
        Attribute::Value(v) if v.len() == len => Some(v),
        _ => None,
    }))
}

/// CKA_PARAMETER_SET of an ML-DSA key object (read on its own: other key types do not have
/// the attribute, and asking every key for it would cost some tokens a second call).
pub fn parameter_set(session: &Session, handle: ObjectHandle) -> Result<Option<MlDsa>> {
    let attrs = session
        .get_attributes(handle, &[AttributeType::ParameterSet])
        .context("reading CKA_PARAMETER_SET")?;
    for a in attrs {
        if let Attribute::ParameterSet(p) = a {
            return MlDsa::from_parameter_set(p).map(Some);
        }
    }
    Ok(None)
}

/// The raw public key of an ML-DSA public-key object of parameter set `set`: its CKA_VALUE,
/// else the key in its CKA_PUBLIC_KEY_INFO; None if it is another type or set.
fn read_mldsa_public(
    session: &Session,
    handle: ObjectHandle,
    set: MlDsa,
) -> Result<Option<Vec<u8>>> {
    let attrs = session
        .get_attributes(
            handle,
            &[
                AttributeType::KeyType,
                AttributeType::ParameterSet,
                AttributeType::Value,
                AttributeType::PublicKeyInfo,
            ],
        )
        .context("reading an ML-DSA public key")?;
    let mut value = None;
    let mut spki = None;
    for a in attrs {
        match a {
            Attribute::KeyType(t) if t != KeyType::ML_DSA => return Ok(None),
            Attribute::ParameterSet(p) if MlDsa::from_parameter_set(p).ok() != Some(set) => {
                return Ok(None)
            }
            Attribute::Value(v) if v.len() == set.public_len() => value = Some(v),
            Attribute::PublicKeyInfo(v) if !v.is_empty() => spki = Some(v),
            _ => {}
        }
    }
    Ok(value.or_else(|| spki.and_then(|s| public_from_spki(&s, set))))
}

/// The first public-key object beside the private key (same CKA_ID, then same label) whose
/// public key, read by `read`, a probe signature of the private key proves (`as_info` makes
/// the key description to verify it with); without a signer, the first one found. Planted
/// twins (objects that anyone with a public session can create) are skipped. `Err(n)`: no
/// candidate proven, `n` of them tried.
fn proven_candidate(
    session: &Session,
    info: &KeyInfo,
    signer: Option<Signer<'_>>,
    read: impl Fn(ObjectHandle) -> Result<Option<Vec<u8>>>,
    mut proves: impl FnMut(Signer<'_>, &[u8]) -> Result<bool>,
) -> Result<std::result::Result<Vec<u8>, usize>> {
    let mut searches = Vec::new();
    if !info.id.is_empty() {
        searches.push(KeyQuery {
            label: None,
            id: Some(info.id.clone()),
        });
    }
    if let Some(l) = info.label.as_ref().filter(|l| !l.is_empty()) {
        searches.push(KeyQuery {
            label: Some(l.clone()),
            id: None,
        });
    }
    let mut seen_objects = Vec::new();
    let mut tried: Vec<Vec<u8>> = Vec::new();
    for q in searches {
        let found = session
            .find_objects(&q.template(ObjectClass::PUBLIC_KEY))
            .context("searching for the public key beside the private key")?;
        for object in found {
            if seen_objects.contains(&object) {
                continue;
            }
            seen_objects.push(object);
            let Some(value) = read(object)? else {
                continue;
            };
            if tried.contains(&value) {
                continue;
            }
            tried.push(value.clone());
            let Some(signer) = signer else {
                return Ok(Ok(value));
            };
            if proves(signer, &value)? {
                return Ok(Ok(value));
            }
        }
    }
    Ok(Err(tried.len()))
}

/// Proves candidates by one probe signature of the private key (made at the first
/// candidate), verified in software with each candidate's public key.
fn signature_proof<'i>(
    session: &'i Session,
    handle: ObjectHandle,
    info: &'i KeyInfo,
    as_info: impl Fn(Vec<u8>) -> KeyInfo + 'i,
) -> impl FnMut(Signer<'_>, &[u8]) -> Result<bool> + 'i {
    let mut probe_sig: Option<(Vec<u8>, Vec<u8>)> = None;
    move |signer, value| {
        if probe_sig.is_none() {
            probe_sig = Some(probe(session, handle, info, signer)?);
        }
        let Some((message, sig)) = &probe_sig else {
            return Ok(false);
        };
        verify(&as_info(value.to_vec()), &probe_scheme(info), message, sig)
    }
}

/// Proves candidate points by one ECDH derivation of the private key with a throwaway peer
/// (made at the first candidate), compared with the same derivation in software.
fn ecdh_proof<'i>(
    session: &'i Session,
    handle: ObjectHandle,
    info: &'i KeyInfo,
    curve: Curve,
) -> impl FnMut(Signer<'_>, &[u8]) -> Result<bool> + 'i {
    let mut derived: Option<(EcdhProbe, zeroize::Zeroizing<Vec<u8>>)> = None;
    move |signer, point| {
        if derived.is_none() {
            let peer = EcdhProbe::new(curve)?;
            // The secret is x(k·d·G) for a random d forgotten after the proof: it reveals
            // nothing, so a derived object the token failed to destroy holds nothing of use.
            let leftover = std::cell::Cell::new(false);
            let token = crate::core::decrypt::ecdh(
                session,
                handle,
                info,
                signer.mechanisms,
                signer.raw,
                peer.peer_point(),
                &leftover,
            )
            .map_err(|mut e| {
                e.message = format!(
                    "an ECDH probe with the private key (to prove which public key is its \
                     own) failed: {}",
                    e.message
                );
                e
            })?;
            derived = Some((peer, token));
        }
        let Some((peer, token)) = &derived else {
            return Ok(false);
        };
        Ok(peer.shared_with(point).is_some_and(|ours| ours == *token))
    }
}

/// The public key of the public-key object (same CKA_ID, else same label) that a probe
/// signature of the private key proves, as for EC keys ([`proven_point`]).
fn proven_mldsa_public(
    session: &Session,
    handle: ObjectHandle,
    info: &KeyInfo,
    query: &KeyQuery,
    signer: Option<Signer<'_>>,
) -> Result<Vec<u8>> {
    let Some(set) = info.param_set else {
        return Err(Error::mechanism("an ML-DSA key without a parameter set"));
    };
    let tried = match proven_candidate(
        session,
        info,
        signer,
        |object| read_mldsa_public(session, object, set),
        signature_proof(session, handle, info, |value| KeyInfo {
            public_value: Some(value),
            ..info.clone()
        }),
    )? {
        Ok(value) => return Ok(value),
        Err(tried) => tried,
    };
    let what = if tried == 0 {
        "it does not carry its public key (CKA_PUBLIC_KEY_INFO) and there is no public-key \
         object with the same CKA_ID or label; import its public key as well"
            .to_string()
    } else {
        format!(
            "{} public-key object(s) with its CKA_ID or label carry a key that does not verify \
             a signature made by the private key (a public-key object can be created without \
             the PIN); delete them and import the key's genuine public key",
            tried
        )
    };
    Err(Error::new(
        Kind::KeyNotFound,
        format!(
            "no public key proven to belong to the {} private key with {}: {what}",
            set.name(),
            query.describe()
        ),
    ))
}

/// CKA_EC_POINT of a public-key object, if it has one.
fn read_point(session: &Session, handle: ObjectHandle) -> Result<Option<Vec<u8>>> {
    let attrs = session
        .get_attributes(handle, &[AttributeType::EcPoint])
        .context("reading CKA_EC_POINT")?;
    Ok(attrs.into_iter().find_map(|a| match a {
        Attribute::EcPoint(p) if !p.is_empty() => Some(p),
        _ => None,
    }))
}

/// A probe signature made by the private key in the token: (message, signature).
pub fn probe(
    session: &Session,
    handle: ObjectHandle,
    info: &KeyInfo,
    signer: Signer<'_>,
) -> Result<(Vec<u8>, Vec<u8>)> {
    let mut message = b"hsmkey: proof that a public key belongs to this private key ".to_vec();
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce)
        .map_err(|e| Error::new(Kind::General, format!("no random bytes for a probe: {e}")))?;
    message.extend_from_slice(&nonce);
    let sig = super::sign(
        session,
        handle,
        &probe_scheme(info),
        info,
        signer.mechanisms,
        signer.raw,
        &message,
    )
    .map_err(|mut e| {
        e.message = format!(
            "a probe signature with the private key (to prove which public key is its own) \
             failed: {}",
            e.message
        );
        e
    })?;
    Ok((message, sig))
}

/// The point of the public-key object (same CKA_ID, else same label) that a probe signature
/// of the private key proves; planted twins are skipped.
fn proven_point(
    session: &Session,
    handle: ObjectHandle,
    info: &KeyInfo,
    query: &KeyQuery,
    signer: Option<Signer<'_>>,
    by_ecdh: bool,
) -> Result<Vec<u8>> {
    let Some(curve) = info.curve else {
        return Err(Error::mechanism("an EC key without a curve"));
    };
    let read =
        |object| Ok(read_point(session, object)?.and_then(|raw| curve.unwrap_point(&raw).ok()));
    let found = if by_ecdh {
        proven_candidate(
            session,
            info,
            signer,
            read,
            ecdh_proof(session, handle, info, curve),
        )?
    } else {
        let as_info = |point| KeyInfo {
            ec_point: Some(point),
            ..info.clone()
        };
        proven_candidate(
            session,
            info,
            signer,
            read,
            signature_proof(session, handle, info, as_info),
        )?
    };
    let tried = match found {
        Ok(point) => return Ok(point),
        Err(tried) => tried,
    };
    if tried == 0 {
        return Err(Error::new(
            Kind::KeyNotFound,
            format!(
                "the {} private key with {} has no public key hsmkey can use: it does not \
                 carry its point (CKA_EC_POINT, CKA_PUBLIC_KEY_INFO) and there is no \
                 public-key object with the same CKA_ID or label; import its public key as \
                 well",
                curve.name(),
                query.describe()
            ),
        ));
    }
    Err(Error::new(
        Kind::KeyNotFound,
        format!(
            "no public key proven to belong to the {} private key with {}: {} public-key \
             object(s) with its CKA_ID or label carry a point that does not {} (a public-key \
             object can be created without the PIN); delete them and import the key's genuine \
             public key",
            curve.name(),
            query.describe(),
            tried,
            if by_ecdh {
                "give the private key's ECDH result (the key may derive, not sign)"
            } else {
                "verify a signature made by the private key"
            }
        ),
    ))
}

pub fn strip_leading_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let zeros = v.iter().take_while(|b| **b == 0).count();
    if zeros == v.len() {
        return vec![0];
    }
    v.drain(..zeros);
    v
}

fn bit_length(be: &[u8]) -> usize {
    match be.first() {
        None => 0,
        Some(&first) => (be.len() - 1) * 8 + (8 - first.leading_zeros() as usize),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_lengths() {
        assert_eq!(bit_length(&[0x80, 0]), 16);
        assert_eq!(bit_length(&[0x01]), 1);
        assert_eq!(strip_leading_zeros(vec![0, 0, 1, 2]), vec![1, 2]);
        assert_eq!(strip_leading_zeros(vec![0, 0]), vec![0]);
    }
}
