//! The one error type of the core: what failed, in words, with the PKCS#11 function and return
//! code where a token answered. Which Python exception each [`Kind`] becomes is decided in
//! `crate::python::errors`, the only place that knows about Python.

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, RvError};

/// The class of a failure (the bindings map each to one exception class).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `HSMError`: a PKCS#11 failure with no more specific class.
    General,
    /// `HSMModuleError`: the module cannot be loaded or initialized.
    Module,
    /// `HSMSessionError`: sessions, devices, login state.
    Session,
    /// `HSMTokenNotFoundError`.
    TokenNotFound,
    /// `HSMPoolClosedError`.
    PoolClosed,
    /// `HSMPoolExhaustedError`.
    PoolExhausted,
    /// `HSMPinError`.
    Pin,
    /// `HSMKeyNotFoundError`.
    KeyNotFound,
    /// `HSMMechanismError`.
    Mechanism,
    /// `HSMKeyChangedError`: the key under a key object's label or id is another key now.
    KeyChanged,
    /// `ValueError`: a wrong value from the caller.
    Value,
    /// `TypeError`: a wrong type from the caller.
    Type,
}

/// Every failure of the core. Cloneable, so that a failed login can be remembered and raised
/// again without another `C_Login`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub kind: Kind,
    pub message: String,
    pub rv: Option<RvError>,
    pub function: Option<Function>,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            rv: None,
            function: None,
        }
    }

    /// A PKCS#11 function failed: the class follows from the return code.
    pub fn pkcs11(rv: RvError, function: Function, context: &str) -> Self {
        Error {
            kind: classify(rv),
            message: format!(
                "{context}: {} returned {}",
                function_name(function),
                rv_name(rv)
            ),
            rv: Some(rv),
            function: Some(function),
        }
    }

    /// Converts any cryptoki error, adding what hsmkey was doing.
    pub fn from_cryptoki(err: CkError, context: &str) -> Self {
        match err {
            CkError::Pkcs11(rv, function) => Error::pkcs11(rv, function, context),
            CkError::LibraryLoading(e) => Error::new(Kind::Module, format!("{context}: {e}")),
            CkError::MissingSymbol(sym) => Error::new(
                Kind::Module,
                format!("{context}: not a PKCS#11 module (it has no {sym})"),
            ),
            CkError::NullFunctionPointer => Error::new(
                Kind::General,
                format!("{context}: the module does not implement this PKCS#11 function"),
            ),
            other => Error::new(Kind::General, format!("{context}: {other}")),
        }
    }

    pub fn value(message: impl Into<String>) -> Self {
        Error::new(Kind::Value, message)
    }

    pub fn mechanism(message: impl Into<String>) -> Self {
        Error::new(Kind::Mechanism, message)
    }

    /// The `CKR_*` name, where a token returned this error.
    pub fn rv_name(&self) -> Option<String> {
        self.rv.map(rv_name)
    }

    pub fn function_name(&self) -> Option<String> {
        self.function.map(function_name)
    }

    pub fn is_pin_error(&self) -> bool {
        self.kind == Kind::Pin
    }
}

/// Adds what hsmkey was doing to a cryptoki result.
pub trait Context<T> {
    fn context(self, what: &str) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, CkError> {
    fn context(self, what: &str) -> Result<T> {
        self.map_err(|e| Error::from_cryptoki(e, what))
    }
}

/// The exception class for a return code.
pub fn classify(rv: RvError) -> Kind {
    use RvError::*;
    match rv {
        PinIncorrect | PinInvalid | PinLenRange | PinExpired | PinLocked | PinTooWeak => Kind::Pin,
        SessionHandleInvalid
        | SessionClosed
        | SessionCount
        | SessionExists
        | SessionParallelNotSupported
        | SessionReadOnly
        | SessionReadOnlyExists
        | SessionReadWriteSoExists
        | DeviceRemoved
        | DeviceError
        | DeviceMemory
        | TokenNotPresent
        | TokenNotRecognized
        | UserNotLoggedIn
        | UserAnotherAlreadyLoggedIn
        | UserTooManyTypes
        | CryptokiNotInitialized
        | SlotIdInvalid => Kind::Session,
        MechanismInvalid
        | MechanismParamInvalid
        | KeyTypeInconsistent
        | KeyFunctionNotPermitted
        | KeySizeRange
        | CurveNotSupported => Kind::Mechanism,
        _ => Kind::General,
    }
}

/// `PinIncorrect` -> `CKR_PIN_INCORRECT`; the spec's names are the variant names in
/// upper snake case (checked for every variant of cryptoki 0.12 by a unit test).
pub fn rv_name(rv: RvError) -> String {
    let debug = format!("{rv:?}");
    if let Some(rest) = debug.strip_prefix("VendorDefined(") {
        return format!("CKR_VENDOR_DEFINED({}", rest);
    }
    if let Some(rest) = debug.strip_prefix("Unknown(") {
        return format!("CKR_UNKNOWN({}", rest);
    }
    let mut out = String::with_capacity(debug.len() + 8);
    out.push_str("CKR");
    for ch in debug.chars() {
        if ch.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(ch.to_ascii_uppercase());
    }
    out
}

/// `SignInit` -> `C_SignInit`.
pub fn function_name(function: Function) -> String {
    format!("C_{function:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rv_names_follow_the_spec() {
        assert_eq!(rv_name(RvError::PinIncorrect), "CKR_PIN_INCORRECT");
        assert_eq!(
            rv_name(RvError::UserAlreadyLoggedIn),
            "CKR_USER_ALREADY_LOGGED_IN"
        );
        assert_eq!(
            rv_name(RvError::SessionHandleInvalid),
            "CKR_SESSION_HANDLE_INVALID"
        );
        assert_eq!(rv_name(RvError::GeneralError), "CKR_GENERAL_ERROR");
        assert_eq!(
            rv_name(RvError::CryptokiAlreadyInitialized),
            "CKR_CRYPTOKI_ALREADY_INITIALIZED"
        );
    }

    #[test]
    fn every_code_round_trips_through_its_name() {
        // Every CK_RV that cryptoki knows maps back to the name the spec gives it.
        let codes: &[(cryptoki_sys::CK_RV, &str)] = &[
            (cryptoki_sys::CKR_PIN_LOCKED, "CKR_PIN_LOCKED"),
            (
                cryptoki_sys::CKR_OBJECT_HANDLE_INVALID,
                "CKR_OBJECT_HANDLE_INVALID",
            ),
            (
                cryptoki_sys::CKR_KEY_HANDLE_INVALID,
                "CKR_KEY_HANDLE_INVALID",
            ),
            (cryptoki_sys::CKR_DEVICE_REMOVED, "CKR_DEVICE_REMOVED"),
            (cryptoki_sys::CKR_TOKEN_NOT_PRESENT, "CKR_TOKEN_NOT_PRESENT"),
            (
                cryptoki_sys::CKR_USER_NOT_LOGGED_IN,
                "CKR_USER_NOT_LOGGED_IN",
            ),
            (cryptoki_sys::CKR_MECHANISM_INVALID, "CKR_MECHANISM_INVALID"),
            (cryptoki_sys::CKR_ARGUMENTS_BAD, "CKR_ARGUMENTS_BAD"),
        ];
        for (code, name) in codes {
            match cryptoki::error::Rv::from(*code) {
                cryptoki::error::Rv::Error(rv) => assert_eq!(&rv_name(rv), name),
                cryptoki::error::Rv::Ok => panic!("{name} is not CKR_OK"),
            }
        }
    }

    #[test]
    fn classes_follow_codes() {
        assert_eq!(classify(RvError::PinIncorrect), Kind::Pin);
        assert_eq!(classify(RvError::PinLocked), Kind::Pin);
        assert_eq!(classify(RvError::SessionClosed), Kind::Session);
        assert_eq!(classify(RvError::MechanismInvalid), Kind::Mechanism);
        assert_eq!(classify(RvError::DataLenRange), Kind::General);
    }

    #[test]
    fn function_names() {
        assert_eq!(function_name(Function::SignInit), "C_SignInit");
        assert_eq!(function_name(Function::Login), "C_Login");
    }
}
