//! `Key`: a private key in the token; every operation runs without the GIL, with one
//! released section per call.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;

use crate::core::bound_key::{Binding, KeyRef};
use crate::core::decrypt::{self, Decryption};
use crate::core::error::{Error, Result};
use crate::core::key::KeyInfo;
use crate::core::mechanism::{check_scheme_key, ecdsa_der, HashAlg, JoseAlg, MlDsaContext, Scheme};
use crate::core::pool::{KeyEntry, Pool};
use crate::core::token::TokenState;
use crate::python::args::{opt_count, type_name};
use crate::python::asyncio::Gate;
use crate::python::gil::detach_interruptible;

/// A private key object in the token (found by label and/or id). Its public half is read
/// once; private operations run in the token.
#[pyclass(name = "Key", module = "hsmkey._hsmkey", frozen)]
pub struct PyKey {
    key: KeyRef,
}

impl PyKey {
    pub fn new(pool: Arc<Pool>, binding: Binding, entry: Arc<KeyEntry>) -> Self {
        PyKey {
            key: KeyRef {
                pool,
                binding,
                entry,
            },
        }
    }

    fn info(&self) -> &KeyInfo {
        &self.key.entry.info
    }

    /// Signs in one GIL-free section.
    fn sign_all(&self, py: Python<'_>, scheme: Scheme, inputs: &[&[u8]]) -> PyResult<Vec<Vec<u8>>> {
        let key = &self.key;
        detach_interruptible(py, |interrupt| key.sign_blocking(scheme, inputs, interrupt))
    }

    /// Runs one private-key operation with the key's handle in one GIL-free section.
    fn with_handle<T: Send>(
        &self,
        py: Python<'_>,
        op: impl Fn(&Session, &TokenState, ObjectHandle) -> Result<T> + Send,
    ) -> PyResult<T> {
        let key = &self.key;
        detach_interruptible(py, |interrupt| key.with_handle_blocking(interrupt, op))
    }

    fn jose(&self, alg: &str, deterministic: bool) -> Result<Scheme> {
        let alg = JoseAlg::parse(alg)?;
        let info = self.info();
        alg.check_key_set(info.kind, info.curve, info.param_set, || info.describe())?;
        if !deterministic {
            return Ok(alg.scheme);
        }
        match alg.scheme {
            Scheme::MlDsa { context, .. } => Ok(Scheme::MlDsa {
                deterministic: true,
                context,
            }),
            _ => Err(Error::mechanism(format!(
                "deterministic=True applies to ML-DSA; {} signatures are made as the \
                 algorithm defines",
                alg.name
            ))),
        }
    }
}

#[pymethods]
impl PyKey {
    /// CKA_LABEL, if the key has one.
    #[getter]
    fn label(&self) -> Option<String> {
        self.info().label.clone()
    }

    /// CKA_ID (may be empty).
    #[getter]
    fn id<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.info().id)
    }

    /// ``"RSA"``, ``"EC"``, ``"EC_EDWARDS"`` or ``"ML_DSA"``.
    #[getter]
    fn key_type(&self) -> &'static str {
        self.info().kind.name()
    }

    /// The curve name, or None for RSA.
    #[getter]
    fn curve(&self) -> Option<&'static str> {
        self.info().curve.map(|c| c.name())
    }

    /// Bits of the modulus (RSA) or of the curve; 0 for ML-DSA (see ``parameter_set``).
    #[getter]
    fn key_size(&self) -> usize {
        self.info().bits
    }

    /// The RSA modulus, big-endian.
    #[getter]
    fn modulus<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.key
            .entry
            .info
            .modulus
            .as_ref()
            .map(|m| PyBytes::new(py, m))
    }

    /// The RSA public exponent, big-endian.
    #[getter]
    fn public_exponent<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.key
            .entry
            .info
            .public_exponent
            .as_ref()
            .map(|e| PyBytes::new(py, e))
    }

    /// The EC public point (uncompressed) or the raw Edwards public key.
    #[getter]
    fn ec_point<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.key
            .entry
            .info
            .ec_point
            .as_ref()
            .map(|p| PyBytes::new(py, p))
    }

    /// ML-DSA: ``"ML-DSA-44"``, ``"ML-DSA-65"`` or ``"ML-DSA-87"``; None for other keys.
    #[getter]
    fn parameter_set(&self) -> Option<&'static str> {
        let info = self.info();
        info.param_set
            .map(|p| p.name())
            .or_else(|| info.slh_set.map(|s| s.name()))
    }

    /// ML-DSA: the raw public key (FIPS 204 encoding, what RFC 9964's ``pub`` carries).
    #[getter]
    fn public_value<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.info()
            .public_value
            .as_ref()
            .map(|v| PyBytes::new(py, v))
    }

    /// Signs ``data`` for a JOSE algorithm; returns the JOSE signature (r||s for ECDSA).
    /// ``deterministic=True`` asks ML-DSA keys for the deterministic variant of FIPS 204
    /// (the default is hedged).
    #[pyo3(signature = (alg, data, *, deterministic=false))]
    fn sign<'py>(
        &self,
        py: Python<'py>,
        alg: &str,
        data: &[u8],
        deterministic: bool,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let scheme = self.jose(alg, deterministic)?;
        let mut sigs = self.sign_all(py, scheme, &[data])?;
        let sig = sigs.pop().unwrap_or_default();
        Ok(PyBytes::new(py, &sig))
    }

    /// ``await key.sign_async(alg, data)``: like :meth:`sign`, run on a worker thread so
    /// that the event loop keeps running while the token signs.
    #[pyo3(signature = (alg, data, *, deterministic=false))]
    fn sign_async<'py>(
        &self,
        py: Python<'py>,
        alg: &str,
        data: Vec<u8>,
        deterministic: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let scheme = self.jose(alg, deterministic)?;
        let key = self.key.clone();
        let gate = match &self.key.binding {
            Binding::Pool => Gate::Pool(&self.key.pool),
            Binding::Session(slot) => Gate::Session(slot),
        };
        crate::python::asyncio::spawn_bytes(py, gate, move |interrupt| {
            let mut sigs = key.sign_blocking(scheme, &[&data], interrupt)?;
            Ok(sigs.pop().unwrap_or_default())
        })
    }

    /// Signs many payloads in one GIL-free section (one session for the whole batch).
    #[pyo3(signature = (alg, payloads, *, deterministic=false))]
    fn sign_many<'py>(
        &self,
        py: Python<'py>,
        alg: &str,
        payloads: &Bound<'py, PyAny>,
        deterministic: bool,
    ) -> PyResult<Bound<'py, PyList>> {
        let scheme = self.jose(alg, deterministic)?;
        let mut items = Vec::new();
        for item in payloads.try_iter()? {
            let item = item?;
            items.push(item.cast_into::<PyBytes>().map_err(|e| {
                PyErr::from(Error::new(
                    crate::core::error::Kind::Type,
                    format!(
                        "sign_many takes an iterable of bytes, not of {}",
                        type_name(e.into_inner().as_any())
                    ),
                ))
            })?);
        }
        let inputs: Vec<&[u8]> = items.iter().map(|p| p.as_bytes()).collect();
        let sigs = self.sign_all(py, scheme, &inputs)?;
        PyList::new(py, sigs.iter().map(|s| PyBytes::new(py, s)))
    }

    /// The low-level signer behind the cryptography key interface. ``"ML_DSA"`` takes
    /// ``context`` (at most 255 bytes) and ``deterministic``.
    #[pyo3(signature = (mechanism, data, *, hash=None, prehashed=false, salt_length=None, der=false, context=None, deterministic=false))]
    #[allow(clippy::too_many_arguments)]
    fn sign_raw<'py>(
        &self,
        py: Python<'py>,
        mechanism: &str,
        data: &[u8],
        hash: Option<&str>,
        prehashed: bool,
        salt_length: Option<&Bound<'py, PyAny>>,
        der: bool,
        context: Option<&[u8]>,
        deterministic: bool,
    ) -> PyResult<Bound<'py, PyBytes>> {
        if (context.is_some() || deterministic) && !matches!(mechanism, "ML_DSA" | "SLH_DSA") {
            return Err(Error::value(format!(
                "context= and deterministic= are for ML_DSA and SLH_DSA signatures, not \
                 {mechanism}"
            ))
            .into());
        }
        let salt_length = opt_count("salt_length", salt_length, 0..=1 << 16)?;
        let need_hash = || -> Result<HashAlg> {
            HashAlg::parse(
                hash.ok_or_else(|| Error::value(format!("{mechanism} signatures need hash=")))?,
            )
        };
        let scheme = match mechanism {
            "RSA_PKCS" => Scheme::RsaPkcs {
                hash: need_hash()?,
                prehashed,
            },
            "RSA_PSS" => {
                let hash = need_hash()?;
                Scheme::RsaPss {
                    hash,
                    salt: salt_length.unwrap_or(hash.len()),
                    prehashed,
                }
            }
            "ECDSA" => Scheme::Ecdsa {
                hash: need_hash()?,
                prehashed,
            },
            "EDDSA" => Scheme::EdDsa,
            "ML_DSA" => Scheme::MlDsa {
                deterministic,
                context: MlDsaContext::new(context.unwrap_or_default())?,
            },
            "SLH_DSA" => Scheme::SlhDsa {
                deterministic,
                context: MlDsaContext::new(context.unwrap_or_default())?,
            },
            other => {
                return Err(Error::mechanism(format!(
                    "unknown signature mechanism {other:?} (RSA_PKCS, RSA_PSS, ECDSA, EDDSA, \
                     ML_DSA or SLH_DSA)"
                ))
                .into())
            }
        };
        check_scheme_key(&scheme, self.info().kind, || self.info().describe())?;
        let sig = self
            .sign_all(py, scheme, &[data])?
            .pop()
            .unwrap_or_default();
        match (der, scheme) {
            (true, Scheme::Ecdsa { .. }) => Ok(PyBytes::new(py, &ecdsa_der(&sig))),
            _ => Ok(PyBytes::new(py, &sig)),
        }
    }

    /// Decrypts with the RSA private key: ``"RSA_PKCS"`` (PKCS#1 v1.5 with implicit
    /// rejection: a ciphertext with bad padding decrypts to a synthetic message that is the
    /// same every time, and never raises), ``"RSA_OAEP"`` (``hash``/``mgf_hash`` default sha1,
    /// optional ``label``; every failure raises the same ``HSMError``) or ``"RSA_X_509"``
    /// (raw ``c^d mod n``, a private-key oracle: only with ``allow_raw=True``).
    /// A ciphertext not below the modulus raises ``ValueError`` before the token sees it.
    /// ``allow_process_secret=True``: v1.5 with a key that allows neither raw RSA nor signing
    /// (refused otherwise: its implicit-rejection secret could only be drawn per process).
    #[pyo3(signature = (mechanism, data, *, hash=None, mgf_hash=None, label=None, allow_raw=false, allow_process_secret=false))]
    #[allow(clippy::too_many_arguments)]
    fn decrypt<'py>(
        &self,
        py: Python<'py>,
        mechanism: &str,
        data: &[u8],
        hash: Option<&str>,
        mgf_hash: Option<&str>,
        label: Option<&[u8]>,
        allow_raw: bool,
        allow_process_secret: bool,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let how = match mechanism {
            "RSA_PKCS" => Decryption::Pkcs1v15 {
                allow_process_secret,
            },
            "RSA_X_509" if allow_raw => Decryption::Raw,
            "RSA_X_509" => {
                return Err(Error::mechanism(
                    "raw RSA decryption (RSA_X_509) returns c^d mod n for any c: whoever \
                     chooses the ciphertexts can sign and decrypt anything with the key. \
                     Pass allow_raw=True if that is what you mean",
                )
                .into())
            }
            "RSA_OAEP" => {
                let hash = HashAlg::parse(hash.unwrap_or("sha1"))?;
                Decryption::Oaep {
                    hash,
                    mgf_hash: match mgf_hash {
                        Some(h) => HashAlg::parse(h)?,
                        None => hash,
                    },
                    label: label.unwrap_or_default().to_vec(),
                }
            }
            other => {
                return Err(Error::mechanism(format!(
                    "unknown decryption mechanism {other:?} (RSA_PKCS, RSA_OAEP or RSA_X_509)"
                ))
                .into())
            }
        };
        let info = self.info();
        let plain = self.with_handle(py, |session, token, handle| {
            decrypt::decrypt(session, handle, info, token, &how, data)
        })?;
        // The only copy that is not wiped: the bytes object the caller asked for.
        Ok(PyBytes::new(py, &plain))
    }

    /// ECDH with an EC private key: the shared secret (x coordinate) with ``peer_point``,
    /// the peer's uncompressed public point. The token derives it into a session object that
    /// is read once and destroyed (its session is closed if that fails).
    fn ecdh<'py>(&self, py: Python<'py>, peer_point: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let key = &self.key;
        let secret = detach_interruptible(py, |interrupt| {
            decrypt::ecdh_blocking(key, peer_point, interrupt)
        })?;
        Ok(PyBytes::new(py, &secret))
    }

    fn __repr__(&self) -> String {
        let info = self.info();
        let what = match (info.curve, info.param_set, info.slh_set) {
            (Some(c), _, _) => format!("{} {}", info.kind.name(), c.name()),
            (None, Some(p), _) => p.name().to_string(),
            (None, None, Some(s)) => s.name().to_string(),
            (None, None, None) => format!("{} {}", info.kind.name(), info.bits),
        };
        format!(
            "<Key label={:?} id={} {}>",
            info.label.as_deref().unwrap_or(""),
            crate::core::mechanism::hex(&info.id),
            what
        )
    }
}
