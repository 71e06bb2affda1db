//! Making and deleting keys in the token: key pairs whose private half is sensitive and
//! never extractable.

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use zeroize::{Zeroize, Zeroizing};

use crate::core::error::{Context, Error, Result};
use crate::core::key::{KeyInfo, KeyQuery};
use crate::core::mechanism::{Curve, KeyKind, MlDsa, SlhDsa};

/// What to generate.
#[derive(Debug, Clone)]
pub struct KeySpec {
    pub kind: KeyKind,
    pub bits: usize,
    pub curve: Option<Curve>,
    /// ML-DSA: the parameter set.
    pub param_set: Option<MlDsa>,
    /// SLH-DSA: the parameter set.
    pub slh_set: Option<SlhDsa>,
    pub label: String,
    pub id: Vec<u8>,
}

impl KeySpec {
    /// `key_type` is "RSA", "EC", "Ed25519"/"Ed448" (or "EC_EDWARDS" with a curve), or
    /// "ML-DSA-44"/"ML-DSA-65"/"ML-DSA-87" (or "ML_DSA" with the parameter set as `curve`).
    pub fn new(
        key_type: &str,
        bits: Option<usize>,
        curve: Option<&str>,
        label: String,
        id: Option<Vec<u8>>,
    ) -> Result<Self> {
        if label.contains('\0') {
            return Err(Error::value("label must not contain NUL characters"));
        }
        let upper = key_type.to_ascii_uppercase().replace('_', "-");
        if upper.starts_with("SLH-DSA-") {
            let set = SlhDsa::parse(key_type)?;
            if bits.is_some() || curve.is_some() {
                return Err(Error::value(format!(
                    "bits= and curve= do not apply to {}: the parameter set is the key type",
                    set.name()
                )));
            }
            return Ok(KeySpec {
                kind: KeyKind::SlhDsa,
                bits: 0,
                curve: None,
                param_set: None,
                slh_set: Some(set),
                label,
                id: new_id(id)?,
            });
        }
        let param_set = if upper == "ML-DSA" {
            Some(MlDsa::parse(curve.unwrap_or("ML-DSA-65"))?)
        } else if upper.starts_with("ML-DSA-") || upper.starts_with("MLDSA") {
            Some(MlDsa::parse(&upper)?)
        } else {
            None
        };
        if let Some(set) = param_set {
            if bits.is_some() {
                return Err(Error::value(format!(
                    "bits= is for RSA keys; {} has a fixed size",
                    set.name()
                )));
            }
            return Ok(KeySpec {
                kind: KeyKind::MlDsa,
                bits: 0,
                curve: None,
                param_set,
                slh_set: None,
                label,
                id: new_id(id)?,
            });
        }
        let (kind, curve) = match key_type.to_ascii_uppercase().as_str() {
            "RSA" => (KeyKind::Rsa, None),
            "EC" => {
                let c = Curve::parse(curve.unwrap_or("P-256"))?;
                if c.is_edwards() {
                    (KeyKind::Edwards, Some(c))
                } else {
                    (KeyKind::Ec, Some(c))
                }
            }
            "ED25519" => (KeyKind::Edwards, Some(Curve::Ed25519)),
            "ED448" => (KeyKind::Edwards, Some(Curve::Ed448)),
            "EC_EDWARDS" | "OKP" => {
                let c = Curve::parse(curve.unwrap_or("Ed25519"))?;
                if !c.is_edwards() {
                    return Err(Error::value(format!(
                        "{} is not an Edwards curve",
                        c.name()
                    )));
                }
                (KeyKind::Edwards, Some(c))
            }
            other => {
                return Err(Error::value(format!(
                    "unknown key type {other:?} (RSA, EC, Ed25519, Ed448, ML-DSA-44, ML-DSA-65 \
                     or ML-DSA-87)"
                )))
            }
        };
        let bits = match kind {
            KeyKind::Rsa => {
                let b = bits.unwrap_or(2048);
                if !(2048..=8192).contains(&b) || b % 8 != 0 {
                    return Err(Error::value(format!(
                        "RSA keys must have 2048 to 8192 bits (a multiple of 8), not {b}"
                    )));
                }
                b
            }
            _ => {
                if bits.is_some() {
                    return Err(Error::value(
                        "bits= is for RSA keys; give curve= for EC keys",
                    ));
                }
                curve.map(|c| c.bits()).unwrap_or(0)
            }
        };
        Ok(KeySpec {
            kind,
            bits,
            curve,
            param_set: None,
            slh_set: None,
            label,
            id: new_id(id)?,
        })
    }
}

/// The id given, or 16 random bytes.
fn new_id(id: Option<Vec<u8>>) -> Result<Vec<u8>> {
    match id {
        Some(id) => Ok(id),
        None => {
            let mut id = vec![0u8; 16];
            getrandom::fill(&mut id)
                .map_err(|e| Error::value(format!("no randomness for a key id: {e}")))?;
            Ok(id)
        }
    }
}

/// Generates a key pair; returns the (private, public) handles.
pub fn generate(session: &Session, spec: &KeySpec) -> Result<(ObjectHandle, ObjectHandle)> {
    let common = |private: bool| {
        vec![
            Attribute::Token(true),
            Attribute::Private(private),
            Attribute::Label(spec.label.as_bytes().to_vec()),
            Attribute::Id(spec.id.clone()),
        ]
    };
    let mut public = common(false);
    let mut private = common(true);
    private.extend([
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
    ]);
    public.push(Attribute::Verify(true));
    let mechanism = match (spec.kind, spec.curve) {
        (KeyKind::MlDsa, _) => {
            let set = spec
                .param_set
                .ok_or_else(|| Error::value("an ML-DSA key needs a parameter set"))?;
            public.push(Attribute::ParameterSet(set.parameter_set()));
            Mechanism::MlDsaKeyPairGen
        }
        (KeyKind::SlhDsa, _) => {
            let set = spec
                .slh_set
                .ok_or_else(|| Error::value("an SLH-DSA key needs a parameter set"))?;
            public.push(Attribute::ParameterSet(set.parameter_set()));
            Mechanism::SlhDsaKeyPairGen
        }
        (KeyKind::Rsa, _) => {
            public.extend([
                Attribute::ModulusBits((spec.bits as u64).into()),
                Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
                Attribute::Encrypt(true),
            ]);
            private.push(Attribute::Decrypt(true));
            Mechanism::RsaPkcsKeyPairGen
        }
        (KeyKind::Ec, Some(c)) => {
            public.push(Attribute::EcParams(c.ec_params().to_vec()));
            private.push(Attribute::Derive(true));
            Mechanism::EccKeyPairGen
        }
        (KeyKind::Edwards, Some(c)) => {
            public.push(Attribute::EcParams(c.ec_params().to_vec()));
            Mechanism::EccEdwardsKeyPairGen
        }
        _ => return Err(Error::value("an EC key needs a curve")),
    };
    let (public_handle, private_handle) = session
        .generate_key_pair(&mechanism, &public, &private)
        .context(&format!("generating a key pair labelled {:?}", spec.label))?;
    Ok((private_handle, public_handle))
}

/// A private key to import, as PKCS#11 attribute values.
pub struct Import {
    pub kind: KeyKind,
    pub curve: Option<Curve>,
    /// ML-DSA: the parameter set.
    pub param_set: Option<MlDsa>,
    pub label: String,
    pub id: Vec<u8>,
    /// (attribute name, value): RSA numbers, `value` and `ec_point` for EC/Edwards, `seed`
    /// and `public` (the raw public key) for ML-DSA.
    /// Wiped when dropped.
    pub components: Vec<(String, Zeroizing<Vec<u8>>)>,
}

impl Import {
    /// The public half of the key to import (to refuse a key the token holds already).
    pub fn public_info(&self) -> Result<KeyInfo> {
        let get = |name: &str| {
            self.components
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.to_vec())
        };
        let (modulus, public_exponent, ec_point) = match self.kind {
            KeyKind::Rsa => (
                get("modulus").map(crate::core::key::strip_leading_zeros),
                get("public_exponent").map(crate::core::key::strip_leading_zeros),
                None,
            ),
            _ => (None, None, get("ec_point")),
        };
        Ok(KeyInfo {
            kind: self.kind,
            curve: self.curve,
            bits: 0,
            label: Some(self.label.clone()),
            id: self.id.clone(),
            modulus,
            public_exponent,
            ec_point,
            unique_id: None,
            param_set: self.param_set,
            public_value: match self.kind {
                KeyKind::MlDsa => get("public"),
                _ => None,
            },
            slh_set: None,
        })
    }
}

/// Stores a private key (sensitive, never extractable) and its public key in the token;
/// returns the private key's handle.
pub fn import(session: &Session, key: &Import) -> Result<(ObjectHandle, ObjectHandle)> {
    let get = |name: &str| -> Result<Vec<u8>> {
        key.components
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.to_vec())
            .ok_or_else(|| Error::value(format!("the key to import has no {name}")))
    };
    let common = |class: ObjectClass, key_type: KeyType, private: bool| {
        vec![
            Attribute::Class(class),
            Attribute::KeyType(key_type),
            Attribute::Token(true),
            Attribute::Private(private),
            Attribute::Label(key.label.as_bytes().to_vec()),
            Attribute::Id(key.id.clone()),
        ]
    };
    let (mut private, mut public) = match (key.kind, key.curve) {
        (KeyKind::MlDsa, _) => {
            let set = key
                .param_set
                .ok_or_else(|| Error::value("an ML-DSA key needs a parameter set"))?;
            let seed = get("seed")?;
            if seed.len() != 32 {
                return Err(Error::value("an ML-DSA seed is 32 bytes"));
            }
            let mut private = common(ObjectClass::PRIVATE_KEY, KeyType::ML_DSA, true);
            private.extend([
                Attribute::ParameterSet(set.parameter_set()),
                Attribute::Seed(seed),
            ]);
            let mut public = common(ObjectClass::PUBLIC_KEY, KeyType::ML_DSA, false);
            public.extend([
                Attribute::ParameterSet(set.parameter_set()),
                Attribute::Value(get("public")?),
            ]);
            (private, public)
        }
        (KeyKind::Rsa, _) => {
            let mut private = common(ObjectClass::PRIVATE_KEY, KeyType::RSA, true);
            private.extend([
                Attribute::Modulus(get("modulus")?),
                Attribute::PublicExponent(get("public_exponent")?),
                Attribute::PrivateExponent(get("private_exponent")?),
                Attribute::Prime1(get("prime1")?),
                Attribute::Prime2(get("prime2")?),
                Attribute::Exponent1(get("exponent1")?),
                Attribute::Exponent2(get("exponent2")?),
                Attribute::Coefficient(get("coefficient")?),
                Attribute::Decrypt(true),
            ]);
            let mut public = common(ObjectClass::PUBLIC_KEY, KeyType::RSA, false);
            public.extend([
                Attribute::Modulus(get("modulus")?),
                Attribute::PublicExponent(get("public_exponent")?),
                Attribute::Encrypt(true),
            ]);
            (private, public)
        }
        (kind, Some(curve)) => {
            let key_type = if kind == KeyKind::Edwards {
                KeyType::EC_EDWARDS
            } else {
                KeyType::EC
            };
            let mut private = common(ObjectClass::PRIVATE_KEY, key_type, true);
            private.extend([
                Attribute::EcParams(curve.ec_params().to_vec()),
                Attribute::Value(get("value")?),
            ]);
            if kind == KeyKind::Ec {
                private.push(Attribute::Derive(true));
            }
            let mut public = common(ObjectClass::PUBLIC_KEY, key_type, false);
            public.extend([
                Attribute::EcParams(curve.ec_params().to_vec()),
                Attribute::EcPoint(der_octet_string(&get("ec_point")?)),
            ]);
            (private, public)
        }
        _ => return Err(Error::value("an EC key needs a curve")),
    };
    private.extend([
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
    ]);
    public.push(Attribute::Verify(true));
    let private = SecretTemplate(private);
    let handle = session
        .create_object(&private.0)
        .context(&format!("importing the private key {:?}", key.label))?;
    match session.create_object(&public) {
        Ok(public_handle) => Ok((handle, public_handle)),
        Err(e) => {
            let _ = session.destroy_object(handle);
            Err(Error::from_cryptoki(
                e,
                &format!("importing the public key {:?}", key.label),
            ))
        }
    }
}

/// DER OCTET STRING around `data` (how PKCS#11 wants CKA_EC_POINT).
fn der_octet_string(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x04];
    let n = data.len();
    if n < 0x80 {
        out.push(n as u8);
    } else if n < 0x100 {
        out.extend([0x81, n as u8]);
    } else {
        out.extend([0x82, (n >> 8) as u8, n as u8]);
    }
    out.extend_from_slice(data);
    out
}

/// Destroys every private-, public-key and certificate object matching `query`; returns how
/// many were destroyed.
pub fn delete(session: &Session, query: &KeyQuery) -> Result<usize> {
    let mut n = 0;
    for class in [
        ObjectClass::PRIVATE_KEY,
        ObjectClass::PUBLIC_KEY,
        ObjectClass::CERTIFICATE,
    ] {
        for handle in session
            .find_objects(&query.template(class))
            .context("searching for the key to delete")?
        {
            session
                .destroy_object(handle)
                .context(&format!("deleting the key with {}", query.describe()))?;
            n += 1;
        }
    }
    Ok(n)
}

/// A template that carries private-key values: they are wiped when it is dropped, on every
/// path (cryptoki's `Attribute` does not wipe itself).
struct SecretTemplate(Vec<Attribute>);

impl Drop for SecretTemplate {
    fn drop(&mut self) {
        for attribute in &mut self.0 {
            match attribute {
                Attribute::PrivateExponent(v)
                | Attribute::Prime1(v)
                | Attribute::Prime2(v)
                | Attribute::Exponent1(v)
                | Attribute::Exponent2(v)
                | Attribute::Coefficient(v)
                | Attribute::Value(v)
                | Attribute::Seed(v) => v.zeroize(),
                _ => {}
            }
        }
    }
}
