//! Finding private keys, reading their public halves, and signing with them.

use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use crate::error::{Context, Error, Kind, Result};
use crate::mechanism::{prepare, Curve, KeyKind, MechanismSet, Scheme};

/// How a key was asked for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyQuery {
    pub label: Option<String>,
    pub id: Option<Vec<u8>>,
}

impl KeyQuery {
    pub fn new(label: Option<String>, id: Option<Vec<u8>>) -> Result<Self> {
        if label.is_none() && id.is_none() {
            return Err(Error::value("give key_label=, key_id= or both"));
        }
        if let Some(l) = &label {
            if l.contains('\0') {
                return Err(Error::value("key_label must not contain NUL characters"));
            }
        }
        Ok(KeyQuery { label, id })
    }

    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(l) = &self.label {
            parts.push(format!("label {l:?}"));
        }
        if let Some(id) = &self.id {
            parts.push(format!("id {}", crate::mechanism::hex(id)));
        }
        parts.join(" and ")
    }

    pub fn template(&self, class: ObjectClass) -> Vec<Attribute> {
        let mut t = vec![Attribute::Class(class)];
        if let Some(l) = &self.label {
            t.push(Attribute::Label(l.as_bytes().to_vec()));
        }
        if let Some(id) = &self.id {
            t.push(Attribute::Id(id.clone()));
        }
        t
    }
}

/// The public facts of a private key, read once.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    pub kind: KeyKind,
    pub curve: Option<Curve>,
    pub bits: usize,
    pub label: Option<String>,
    pub id: Vec<u8>,
    pub modulus: Option<Vec<u8>>,
    pub public_exponent: Option<Vec<u8>>,
    /// Uncompressed point (Weierstrass) or raw public key (Edwards).
    pub ec_point: Option<Vec<u8>>,
}

impl KeyInfo {
    pub fn describe(&self) -> String {
        let name = match &self.label {
            Some(l) => format!("key {l:?}"),
            None => format!("key with id {}", crate::mechanism::hex(&self.id)),
        };
        match (self.kind, self.curve) {
            (KeyKind::Rsa, _) => format!("{name} is RSA {}", self.bits),
            (_, Some(c)) => format!("{name} is {} {}", self.kind.name(), c.name()),
            (_, None) => format!("{name} is {}", self.kind.name()),
        }
    }
}

/// Outcome of a search that found no private key: the caller must first ask the session
/// whether it is still logged in (a logged-out session finds no private objects, silently).
pub fn not_found(query: &KeyQuery, token: &str) -> Error {
    Error::new(
        Kind::KeyNotFound,
        format!("no private key with {} on {token}", query.describe()),
    )
}

/// Finds exactly one private key.
pub fn find_private_key(session: &Session, query: &KeyQuery, token: &str) -> Result<ObjectHandle> {
    let found = session
        .find_objects(&query.template(ObjectClass::PRIVATE_KEY))
        .context(&format!(
            "searching for the private key with {}",
            query.describe()
        ))?;
    match found.len() {
        1 => Ok(found[0]),
        0 => Err(not_found(query, token)),
        n => Err(Error::new(
            Kind::KeyNotFound,
            format!(
                "{n} private keys match {} on {token}; give key_id= (CKA_ID) as well to choose one",
                query.describe()
            ),
        )),
    }
}

/// Every private key in the token (that can be found again: it has a label or an id), with
/// the query that finds it.
pub fn list_private_keys(session: &Session) -> Result<Vec<(ObjectHandle, KeyQuery)>> {
    let handles = session
        .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
        .context("listing the private keys")?;
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        let attrs = session
            .get_attributes(handle, &[AttributeType::Label, AttributeType::Id])
            .context("reading a key's label and id")?;
        let mut label = None;
        let mut id = None;
        for a in attrs {
            match a {
                Attribute::Label(l) if !l.is_empty() => {
                    label = Some(String::from_utf8_lossy(&l).into_owned())
                }
                Attribute::Id(i) if !i.is_empty() => id = Some(i),
                _ => {}
            }
        }
        if label.is_some() || id.is_some() {
            out.push((handle, KeyQuery { label, id }));
        }
    }
    Ok(out)
}

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
    }
    Ok(info)
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

/// One signature: `C_SignInit` + `C_Sign` (after any local hashing the scheme needs).
pub fn sign(
    session: &Session,
    handle: ObjectHandle,
    scheme: &Scheme,
    info: &KeyInfo,
    token: &dyn MechanismSet,
    data: &[u8],
) -> Result<Vec<u8>> {
    let prepared = prepare(scheme, data, info.bits, token)?;
    let input = prepared.data.as_deref().unwrap_or(data);
    session
        .sign(&prepared.mechanism, handle, input)
        .context("signing")
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

    #[test]
    fn queries_need_a_label_or_id() {
        assert!(KeyQuery::new(None, None).is_err());
        assert!(KeyQuery::new(Some("a\0b".into()), None).is_err());
        let q = KeyQuery::new(Some("k".into()), Some(vec![1, 0xab]));
        assert_eq!(
            q.map(|q| q.describe()).ok().as_deref(),
            Some("label \"k\" and id 01ab")
        );
    }
}
