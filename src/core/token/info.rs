//! `C_GetTokenInfo`, read field by field. cryptoki's parser refuses a whole `CK_TOKEN_INFO`
//! when one field is odd (opencryptoki's soft token sets `CKF_CLOCK_ON_TOKEN` with a
//! `utcTime` that is not digits: "Error parsing string as integer"), and then the token could
//! not even be listed. hsmkey needs only the strings, flags and session limits, so where
//! cryptoki refuses, the structure is read again through the module's function list and
//! taken apart here, field by field.

use cryptoki::error::Error as CkError;
use cryptoki::slot::Slot;
use cryptoki_sys::{
    CKF_LOGIN_REQUIRED, CKF_TOKEN_INITIALIZED, CKF_USER_PIN_COUNT_LOW, CKF_USER_PIN_FINAL_TRY,
    CKF_USER_PIN_LOCKED, CK_EFFECTIVELY_INFINITE, CK_FLAGS, CK_TOKEN_INFO, CK_ULONG,
    CK_UNAVAILABLE_INFORMATION, CK_VERSION,
};

use crate::core::module::Module;

/// What hsmkey reads of a token's `CK_TOKEN_INFO`.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    label: String,
    manufacturer_id: String,
    model: String,
    serial_number: String,
    flags: CK_FLAGS,
    max_session_count: Option<u64>,
    max_rw_session_count: Option<u64>,
    hardware_version: (u8, u8),
    firmware_version: (u8, u8),
}

/// A blank-padded `CK_UTF8CHAR` field as text: invalid UTF-8 replaced, padding (blanks, and
/// the NULs some tokens use instead) dropped.
fn text(field: &[u8]) -> String {
    String::from_utf8_lossy(field)
        .trim_end_matches([' ', '\0'])
        .to_string()
}

/// A session limit: None when the token states none (unavailable, or effectively infinite).
fn limit(value: CK_ULONG) -> Option<u64> {
    match value {
        CK_UNAVAILABLE_INFORMATION | CK_EFFECTIVELY_INFINITE => None,
        #[allow(clippy::useless_conversion)] // CK_ULONG is 32 bits on some platforms
        n => Some(u64::from(n)),
    }
}

fn version(v: CK_VERSION) -> (u8, u8) {
    (v.major, v.minor)
}

impl From<&CK_TOKEN_INFO> for TokenInfo {
    fn from(raw: &CK_TOKEN_INFO) -> Self {
        TokenInfo {
            label: text(&raw.label),
            manufacturer_id: text(&raw.manufacturerID),
            model: text(&raw.model),
            serial_number: text(&raw.serialNumber),
            flags: raw.flags,
            max_session_count: limit(raw.ulMaxSessionCount),
            max_rw_session_count: limit(raw.ulMaxRwSessionCount),
            hardware_version: version(raw.hardwareVersion),
            firmware_version: version(raw.firmwareVersion),
        }
    }
}

impl From<&cryptoki::slot::TokenInfo> for TokenInfo {
    fn from(t: &cryptoki::slot::TokenInfo) -> Self {
        use cryptoki::slot::Limit;
        let limit = |l: Limit| match l {
            Limit::Max(n) => Some(n),
            Limit::Unavailable | Limit::Infinite => None,
        };
        let mut flags: CK_FLAGS = 0;
        let bits: [(bool, CK_FLAGS); 19] = [
            (t.rng(), cryptoki_sys::CKF_RNG),
            (t.write_protected(), cryptoki_sys::CKF_WRITE_PROTECTED),
            (t.login_required(), CKF_LOGIN_REQUIRED),
            (
                t.user_pin_initialized(),
                cryptoki_sys::CKF_USER_PIN_INITIALIZED,
            ),
            (
                t.restore_key_not_needed(),
                cryptoki_sys::CKF_RESTORE_KEY_NOT_NEEDED,
            ),
            (t.clock_on_token(), cryptoki_sys::CKF_CLOCK_ON_TOKEN),
            (
                t.protected_authentication_path(),
                cryptoki_sys::CKF_PROTECTED_AUTHENTICATION_PATH,
            ),
            (
                t.dual_crypto_operations(),
                cryptoki_sys::CKF_DUAL_CRYPTO_OPERATIONS,
            ),
            (t.token_initialized(), CKF_TOKEN_INITIALIZED),
            (
                t.secondary_authentication(),
                cryptoki_sys::CKF_SECONDARY_AUTHENTICATION,
            ),
            (t.user_pin_count_low(), CKF_USER_PIN_COUNT_LOW),
            (t.user_pin_final_try(), CKF_USER_PIN_FINAL_TRY),
            (t.user_pin_locked(), CKF_USER_PIN_LOCKED),
            (
                t.user_pin_to_be_changed(),
                cryptoki_sys::CKF_USER_PIN_TO_BE_CHANGED,
            ),
            (t.so_pin_count_low(), cryptoki_sys::CKF_SO_PIN_COUNT_LOW),
            (t.so_pin_final_try(), cryptoki_sys::CKF_SO_PIN_FINAL_TRY),
            (t.so_pin_locked(), cryptoki_sys::CKF_SO_PIN_LOCKED),
            (
                t.so_pin_to_be_changed(),
                cryptoki_sys::CKF_SO_PIN_TO_BE_CHANGED,
            ),
            (t.error_state(), cryptoki_sys::CKF_ERROR_STATE),
        ];
        for (on, bit) in bits {
            if on {
                flags |= bit;
            }
        }
        let v = |v: cryptoki::types::Version| (v.major(), v.minor());
        TokenInfo {
            label: t.label().trim_end().to_string(),
            manufacturer_id: t.manufacturer_id().trim_end().to_string(),
            model: t.model().trim_end().to_string(),
            serial_number: t.serial_number().trim_end().to_string(),
            flags,
            max_session_count: limit(t.max_session_count()),
            max_rw_session_count: limit(t.max_rw_session_count()),
            hardware_version: v(t.hardware_version()),
            firmware_version: v(t.firmware_version()),
        }
    }
}

/// `C_GetTokenInfo` once: through cryptoki, or, where cryptoki's parser refuses what the token
/// wrote (an error that is not a PKCS#11 return code), through the module's function list.
pub fn read(module: &Module, slot: Slot) -> Result<TokenInfo, CkError> {
    match module.ctx.get_token_info(slot) {
        Ok(info) => Ok(TokenInfo::from(&info)),
        Err(e @ CkError::Pkcs11(..)) => Err(e),
        Err(parse) => match module.raw.as_ref().and_then(|r| r.token_info(slot.id())) {
            Some(raw) => {
                crate::core::log::log(
                    crate::core::log::DEBUG,
                    &format!(
                        "{}: cryptoki could not parse CK_TOKEN_INFO of slot {} ({parse}); \
                         read field by field",
                        module.path.display(),
                        slot.id()
                    ),
                );
                Ok(TokenInfo::from(&raw))
            }
            None => Err(parse),
        },
    }
}

impl TokenInfo {
    fn flag(&self, bit: CK_FLAGS) -> bool {
        self.flags & bit != 0
    }
    pub fn label(&self) -> &str {
        &self.label
    }
    pub fn manufacturer_id(&self) -> &str {
        &self.manufacturer_id
    }
    pub fn model(&self) -> &str {
        &self.model
    }
    pub fn serial_number(&self) -> &str {
        &self.serial_number
    }
    /// The raw `CK_FLAGS`.
    pub fn flags(&self) -> CK_FLAGS {
        self.flags
    }
    pub fn token_initialized(&self) -> bool {
        self.flag(CKF_TOKEN_INITIALIZED)
    }
    pub fn login_required(&self) -> bool {
        self.flag(CKF_LOGIN_REQUIRED)
    }
    pub fn user_pin_locked(&self) -> bool {
        self.flag(CKF_USER_PIN_LOCKED)
    }
    pub fn user_pin_final_try(&self) -> bool {
        self.flag(CKF_USER_PIN_FINAL_TRY)
    }
    pub fn user_pin_count_low(&self) -> bool {
        self.flag(CKF_USER_PIN_COUNT_LOW)
    }
    /// `ulMaxSessionCount`, when the token states a number.
    pub fn max_session_count(&self) -> Option<u64> {
        self.max_session_count
    }
    /// `ulMaxRwSessionCount`, when the token states a number.
    pub fn max_rw_session_count(&self) -> Option<u64> {
        self.max_rw_session_count
    }
    /// "major.minor".
    pub fn hardware_version(&self) -> String {
        format!("{}.{}", self.hardware_version.0, self.hardware_version.1)
    }
    pub fn firmware_version(&self) -> String {
        format!("{}.{}", self.firmware_version.0, self.firmware_version.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_fields_are_read_one_by_one() {
        // SAFETY: CK_TOKEN_INFO is plain data (integers and byte arrays): zeros are valid.
        let mut raw: CK_TOKEN_INFO = unsafe { std::mem::zeroed() };
        raw.label = [b' '; 32];
        raw.label[..8].copy_from_slice(b"my token");
        raw.serialNumber = [0; 16];
        raw.serialNumber[..4].copy_from_slice(b"1234");
        raw.utcTime = [b'?'; 16]; // what cryptoki refuses; not read here
        raw.flags = CKF_LOGIN_REQUIRED | CKF_TOKEN_INITIALIZED | cryptoki_sys::CKF_CLOCK_ON_TOKEN;
        raw.ulMaxSessionCount = 3;
        raw.ulMaxRwSessionCount = CK_UNAVAILABLE_INFORMATION;
        let info = TokenInfo::from(&raw);
        assert_eq!(info.label(), "my token");
        assert_eq!(info.serial_number(), "1234");
        assert!(info.login_required() && info.token_initialized());
        assert_eq!(info.max_session_count(), Some(3));
        assert_eq!(info.max_rw_session_count(), None);
        raw.ulMaxSessionCount = CK_EFFECTIVELY_INFINITE;
        assert_eq!(TokenInfo::from(&raw).max_session_count(), None);
    }
}
