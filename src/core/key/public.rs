//! The public half of a private key: its type, size and public numbers, read from the private
//! object or, where it lacks them, from the public-key object beside it.

use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use super::{KeyInfo, KeyQuery};
use crate::core::error::{Context, Error, Result};
use crate::core::mechanism::{public_from_spki, Curve, KeyKind, MlDsa};

/// Reads the key's type and public half (from the private object, or from the public-key
/// object beside it where the private object does not carry the point).
///
/// `public` is the public-key object when the caller knows it (it just made the pair).
pub fn read_info(
    session: &Session,
    handle: ObjectHandle,
    public: Option<ObjectHandle>,
    query: &KeyQuery,
) -> Result<KeyInfo> {
    let attrs = session
        .get_attributes(
            handle,
            &[
                AttributeType::KeyType,
                AttributeType::Label,
                AttributeType::Id,
                AttributeType::Modulus,
                AttributeType::PublicExponent,
                AttributeType::EcParams,
                AttributeType::EcPoint,
            ],
        )
        .context("reading the key's attributes")?;
    let mut key_type = None;
    let mut label = None;
    let mut id = Vec::new();
    let mut modulus = None;
    let mut exponent = None;
    let mut params = None;
    let mut point = None;
    for a in attrs {
        match a {
            Attribute::KeyType(t) => key_type = Some(t),
            Attribute::Label(l) => label = Some(String::from_utf8_lossy(&l).into_owned()),
            Attribute::Id(i) => id = i,
            Attribute::Modulus(m) => modulus = Some(m),
            Attribute::PublicExponent(e) => exponent = Some(e),
            Attribute::EcParams(p) => params = Some(p),
            Attribute::EcPoint(p) => point = Some(p),
            _ => {}
        }
    }
    let kind = match key_type {
        Some(KeyType::RSA) => KeyKind::Rsa,
        Some(KeyType::EC) => KeyKind::Ec,
        Some(KeyType::EC_EDWARDS) => KeyKind::Edwards,
        Some(KeyType::ML_DSA) => KeyKind::MlDsa,
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
        label,
        id,
        modulus: None,
        public_exponent: None,
        ec_point: None,
        param_set: None,
        public_value: None,
        proven: Default::default(),
    };
    match kind {
        KeyKind::Rsa => {
            let (Some(n), Some(e)) = (modulus, exponent) else {
                return Err(Error::mechanism(format!(
                    "the RSA key with {} does not show its modulus and public exponent",
                    query.describe()
                )));
            };
            let n = strip_leading_zeros(n);
            info.bits = bit_length(&n);
            info.modulus = Some(n);
            info.public_exponent = Some(strip_leading_zeros(e));
        }
        KeyKind::Ec | KeyKind::Edwards => {
            let params = params.ok_or_else(|| {
                Error::mechanism(format!(
                    "the EC key with {} has no CKA_EC_PARAMS",
                    query.describe()
                ))
            })?;
            let curve = Curve::from_ec_params(&params)?;
            if curve.is_edwards() != (kind == KeyKind::Edwards) {
                return Err(Error::mechanism(format!(
                    "the key with {} has key type {} but curve {}",
                    query.describe(),
                    kind.name(),
                    curve.name()
                )));
            }
            let raw = match (point, public) {
                (Some(p), _) if !p.is_empty() => p,
                (_, Some(h)) => read_point(session, h)?
                    .ok_or_else(|| Error::mechanism("the new public key has no CKA_EC_POINT"))?,
                _ => public_point(session, &info, query)?,
            };
            info.ec_point = Some(curve.unwrap_point(&raw)?);
            info.curve = Some(curve);
            info.bits = curve.bits();
        }
        KeyKind::MlDsa => {
            let (set, value) = mldsa_public(session, handle, public, &info, query)?;
            info.param_set = Some(set);
            info.public_value = Some(value);
        }
    }
    Ok(info)
}

/// An ML-DSA key's parameter set (from the private object) and raw public key: from the
/// public object just made, the private object's CKA_PUBLIC_KEY_INFO, or the public-key
/// object beside it (its CKA_VALUE or CKA_PUBLIC_KEY_INFO). Not proven here: the pool proves
/// it with a probe signature before publishing it.
fn mldsa_public(
    session: &Session,
    handle: ObjectHandle,
    public: Option<ObjectHandle>,
    info: &KeyInfo,
    query: &KeyQuery,
) -> Result<(MlDsa, Vec<u8>)> {
    let attrs = session
        .get_attributes(
            handle,
            &[AttributeType::ParameterSet, AttributeType::PublicKeyInfo],
        )
        .context("reading the ML-DSA key's attributes")?;
    let mut set = None;
    let mut spki = None;
    for a in attrs {
        match a {
            Attribute::ParameterSet(p) => set = Some(MlDsa::from_parameter_set(p)?),
            Attribute::PublicKeyInfo(v) if !v.is_empty() => spki = Some(v),
            _ => {}
        }
    }
    let set = set.ok_or_else(|| {
        Error::mechanism(format!(
            "the ML-DSA key with {} has no CKA_PARAMETER_SET",
            query.describe()
        ))
    })?;
    let read = |h: ObjectHandle| read_mldsa_public(session, h, set);
    let value = match public {
        Some(h) => read(h)?,
        None => match spki.and_then(|s| public_from_spki(&s, set)) {
            Some(v) => Some(v),
            None => beside(session, info, read)?,
        },
    };
    let value = value.ok_or_else(|| {
        Error::mechanism(format!(
            "the {} private key with {} has no public key beside it (no public-key object with \
             the same CKA_ID or label carrying CKA_VALUE, and no CKA_PUBLIC_KEY_INFO on the \
             private key): import its public key as well",
            set.name(),
            query.describe()
        ))
    })?;
    Ok((set, value))
}

/// The raw ML-DSA public key of a public-key object of parameter set `set`.
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

/// What `read` gives for the public-key object with the same CKA_ID and/or label as the
/// private key (most specific first; a query that matches several objects is skipped).
fn beside(
    session: &Session,
    info: &KeyInfo,
    read: impl Fn(ObjectHandle) -> Result<Option<Vec<u8>>>,
) -> Result<Option<Vec<u8>>> {
    let mut candidates = Vec::new();
    if let (false, Some(l)) = (info.id.is_empty(), &info.label) {
        candidates.push(KeyQuery {
            label: Some(l.clone()),
            id: Some(info.id.clone()),
        });
    }
    if !info.id.is_empty() {
        candidates.push(KeyQuery {
            label: None,
            id: Some(info.id.clone()),
        });
    }
    if let Some(l) = &info.label {
        candidates.push(KeyQuery {
            label: Some(l.clone()),
            id: None,
        });
    }
    for q in candidates {
        let found = session
            .find_objects(&q.template(ObjectClass::PUBLIC_KEY))
            .context("searching for the public key beside the private key")?;
        if found.len() != 1 {
            continue;
        }
        if let Some(v) = read(found[0])? {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

/// CKA_EC_POINT of a public-key object, if it has one.
fn read_point(session: &Session, handle: ObjectHandle) -> Result<Option<Vec<u8>>> {
    let attrs = session
        .get_attributes(handle, &[AttributeType::EcPoint])
        .context("reading CKA_EC_POINT")?;
    Ok(attrs.into_iter().find_map(|a| match a {
        Attribute::EcPoint(p) => Some(p),
        _ => None,
    }))
}

/// The public point from the public-key object with the same CKA_ID (or label).
fn public_point(session: &Session, info: &KeyInfo, query: &KeyQuery) -> Result<Vec<u8>> {
    // Most specific first: a label and id that both match beat either alone.
    let mut candidates = Vec::new();
    if let (false, Some(l)) = (info.id.is_empty(), &info.label) {
        candidates.push(KeyQuery {
            label: Some(l.clone()),
            id: Some(info.id.clone()),
        });
    }
    if !info.id.is_empty() {
        candidates.push(KeyQuery {
            label: None,
            id: Some(info.id.clone()),
        });
    }
    if let Some(l) = &info.label {
        candidates.push(KeyQuery {
            label: Some(l.clone()),
            id: None,
        });
    }
    for q in candidates {
        let found = session
            .find_objects(&q.template(ObjectClass::PUBLIC_KEY))
            .context("searching for the public key beside the private key")?;
        if found.len() != 1 {
            continue;
        }
        if let Some(point) = read_point(session, found[0])? {
            return Ok(point);
        }
    }
    Err(Error::mechanism(format!(
        "the EC private key with {} has no public key beside it (no public-key object with the \
         same CKA_ID or label, and no CKA_EC_POINT on the private key): import its public key \
         as well",
        query.describe()
    )))
}

fn strip_leading_zeros(mut v: Vec<u8>) -> Vec<u8> {
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
