//! The one mapping from the core's errors to the exception classes of `hsmkey.exceptions`
//! (plain Python classes, imported here so that their docstrings, pickling and subclassing
//! stay ordinary).

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::PyErr;

use crate::core::error::{Error, Kind};

pyo3::import_exception!(hsmkey.exceptions, HSMError);
pyo3::import_exception!(hsmkey.exceptions, HSMModuleError);
pyo3::import_exception!(hsmkey.exceptions, HSMSessionError);
pyo3::import_exception!(hsmkey.exceptions, HSMTokenNotFoundError);
pyo3::import_exception!(hsmkey.exceptions, HSMPoolClosedError);
pyo3::import_exception!(hsmkey.exceptions, HSMPoolExhaustedError);
pyo3::import_exception!(hsmkey.exceptions, HSMPinError);
pyo3::import_exception!(hsmkey.exceptions, HSMKeyNotFoundError);
pyo3::import_exception!(hsmkey.exceptions, HSMMechanismError);
pyo3::import_exception!(hsmkey.exceptions, HSMKeyChangedError);

impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        let args = (err.message.clone(), err.rv_name(), err.function_name());
        match err.kind {
            Kind::General => HSMError::new_err(args),
            Kind::Module => HSMModuleError::new_err(args),
            Kind::Session => HSMSessionError::new_err(args),
            Kind::TokenNotFound => HSMTokenNotFoundError::new_err(args),
            Kind::PoolClosed => HSMPoolClosedError::new_err(args),
            Kind::PoolExhausted => HSMPoolExhaustedError::new_err(args),
            Kind::Pin => HSMPinError::new_err(args),
            Kind::KeyNotFound => HSMKeyNotFoundError::new_err(args),
            Kind::Mechanism => HSMMechanismError::new_err(args),
            Kind::KeyChanged => HSMKeyChangedError::new_err(args),
            Kind::Value => PyValueError::new_err(err.message),
            Kind::Type => PyTypeError::new_err(err.message),
        }
    }
}
