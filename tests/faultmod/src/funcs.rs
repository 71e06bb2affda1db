//! The 68 functions of the PKCS#11 2.40 function list, by index and by spec name.

macro_rules! functions {
    ($($name:ident),* $(,)?) => {
        /// One function of `CK_FUNCTION_LIST`, in list order.
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(usize)]
        pub enum Func {
            $($name),*
        }

        /// Every function, in list order (`ALL[f as usize] == f`).
        pub const ALL: &[Func] = &[$(Func::$name),*];

        /// The spec names, in list order.
        pub const NAMES: &[&str] = &[$(stringify!($name)),*];
    };
}

functions!(
    C_Initialize,
    C_Finalize,
    C_GetInfo,
    C_GetFunctionList,
    C_GetSlotList,
    C_GetSlotInfo,
    C_GetTokenInfo,
    C_GetMechanismList,
    C_GetMechanismInfo,
    C_InitToken,
    C_InitPIN,
    C_SetPIN,
    C_OpenSession,
    C_CloseSession,
    C_CloseAllSessions,
    C_GetSessionInfo,
    C_GetOperationState,
    C_SetOperationState,
    C_Login,
    C_Logout,
    C_CreateObject,
    C_CopyObject,
    C_DestroyObject,
    C_GetObjectSize,
    C_GetAttributeValue,
    C_SetAttributeValue,
    C_FindObjectsInit,
    C_FindObjects,
    C_FindObjectsFinal,
    C_EncryptInit,
    C_Encrypt,
    C_EncryptUpdate,
    C_EncryptFinal,
    C_DecryptInit,
    C_Decrypt,
    C_DecryptUpdate,
    C_DecryptFinal,
    C_DigestInit,
    C_Digest,
    C_DigestUpdate,
    C_DigestKey,
    C_DigestFinal,
    C_SignInit,
    C_Sign,
    C_SignUpdate,
    C_SignFinal,
    C_SignRecoverInit,
    C_SignRecover,
    C_VerifyInit,
    C_Verify,
    C_VerifyUpdate,
    C_VerifyFinal,
    C_VerifyRecoverInit,
    C_VerifyRecover,
    C_DigestEncryptUpdate,
    C_DecryptDigestUpdate,
    C_SignEncryptUpdate,
    C_DecryptVerifyUpdate,
    C_GenerateKey,
    C_GenerateKeyPair,
    C_WrapKey,
    C_UnwrapKey,
    C_DeriveKey,
    C_SeedRandom,
    C_GenerateRandom,
    C_GetFunctionStatus,
    C_CancelFunction,
    C_WaitForSlotEvent,
);

/// How many functions the list has.
pub const COUNT: usize = NAMES.len();

impl Func {
    pub fn name(self) -> &'static str {
        NAMES[self as usize]
    }

    pub fn from_name(name: &str) -> Option<Func> {
        NAMES.iter().position(|n| *n == name).map(|i| ALL[i])
    }

    /// Whether an injected failure, by default, first lets the real module run the call and
    /// then reports the failure ("the device did the work, the answer was lost"). These are the
    /// calls of an active cryptographic operation: PKCS#11 says a failure ends the operation,
    /// so the real one must run (and end) too, or the session would be left with an operation
    /// active. Every other function fails without reaching the real module.
    pub fn fails_after_forwarding(self) -> bool {
        use Func::*;
        matches!(
            self,
            C_Encrypt
                | C_EncryptUpdate
                | C_EncryptFinal
                | C_Decrypt
                | C_DecryptUpdate
                | C_DecryptFinal
                | C_Digest
                | C_DigestUpdate
                | C_DigestKey
                | C_DigestFinal
                | C_Sign
                | C_SignUpdate
                | C_SignFinal
                | C_SignRecover
                | C_Verify
                | C_VerifyUpdate
                | C_VerifyFinal
                | C_VerifyRecover
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_the_240_list() {
        assert_eq!(COUNT, 68);
        assert_eq!(Func::C_Sign.name(), "C_Sign");
        assert_eq!(
            Func::from_name("C_WaitForSlotEvent"),
            Some(Func::C_WaitForSlotEvent)
        );
        assert_eq!(Func::from_name("C_Nope"), None);
        for (i, f) in ALL.iter().enumerate() {
            assert_eq!(*f as usize, i);
        }
    }
}
