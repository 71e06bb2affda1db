//! Private keys in the token: how one is asked for (`KeyQuery`) and what is known of it
//! without a secret (`KeyInfo`). `find` looks keys up, `public` reads their public halves
//! (from proven sources only), `identity` tells whether a handle found again is still the
//! same key, `sign` makes one signature and `verify` checks one in software.

use cryptoki::object::{Attribute, ObjectClass};

use crate::core::error::{Error, Kind, Result};
use crate::core::mechanism::{hex, Curve, KeyKind, MechanismSet, MlDsa, SlhDsa};
use crate::core::raw::RawFunctions;

mod ecdh_proof;
mod find;
mod identity;
mod public;
mod sign;
pub mod verify;

pub use find::{
    find_private_key, list_private_keys, refuse_same_public_key, refuse_taken_names, Listed,
};
pub use identity::{changed_error, same_key, Identity};
pub use public::{read_info, strip_leading_zeros};
pub use sign::sign;

/// What making a signature in the token needs besides a session and a handle: the token's
/// mechanisms and its raw function list (probe signatures use it).
#[derive(Clone, Copy)]
pub struct Signer<'a> {
    pub mechanisms: &'a dyn MechanismSet,
    pub raw: Option<&'a RawFunctions>,
}

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
            parts.push(format!("id {}", hex(id)));
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
    /// CKA_UNIQUE_ID (PKCS#11 3.0) where the token gives one: a cheap identity check.
    pub unique_id: Option<Vec<u8>>,
    /// ML-DSA: the parameter set (`CKA_PARAMETER_SET`).
    pub param_set: Option<MlDsa>,
    /// ML-DSA: the raw public key (FIPS 204 pkEncode; a public object's `CKA_VALUE`).
    pub public_value: Option<Vec<u8>>,
    /// SLH-DSA: the parameter set (the public key is in `public_value`).
    pub slh_set: Option<SlhDsa>,
}

impl KeyInfo {
    /// True if both describe the same public key.
    pub fn same_public_key(&self, other: &KeyInfo) -> bool {
        self.kind == other.kind
            && self.curve == other.curve
            && self.modulus == other.modulus
            && self.public_exponent == other.public_exponent
            && self.ec_point == other.ec_point
            && self.param_set == other.param_set
            && self.public_value == other.public_value
            && self.slh_set == other.slh_set
    }

    /// Room for any signature of this key (the module reports the length it wrote).
    pub fn max_signature_len(&self) -> usize {
        match (self.param_set, self.slh_set) {
            (Some(p), _) => p.signature_len(),
            (_, Some(s)) => s.signature_len(),
            _ => sign::max_signature_len(self.bits),
        }
    }

    pub fn describe(&self) -> String {
        let name = match &self.label {
            Some(l) => format!("key {l:?}"),
            None => format!("key with id {}", hex(&self.id)),
        };
        if let Some(p) = self.param_set {
            return format!("{name} is {}", p.name());
        }
        if let Some(s) = self.slh_set {
            return format!("{name} is {}", s.name());
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
