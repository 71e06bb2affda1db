//! Calls made through the module's own function list where cryptoki would make more of them:
//! `Session::sign` asks `C_Sign` for the signature's length before asking for the signature,
//! one round trip too many on a network HSM. hsmkey knows the length from the key.
//! `Session::get_attributes` reads a secret attribute into buffers it drops unwiped; hsmkey
//! reads the ECDH shared secret with one `C_GetAttributeValue` into zeroizing memory.
//! Used only where the module's function list reaches the instance cryptoki initialized
//! ([`RawFunctions::reaches`]).

use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, Rv};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use cryptoki_sys::{
    CKR_BUFFER_TOO_SMALL, CKR_CRYPTOKI_NOT_INITIALIZED, CKR_OK, CKR_SESSION_HANDLE_INVALID,
    CK_ATTRIBUTE, CK_ATTRIBUTE_TYPE, CK_BYTE_PTR, CK_FUNCTION_LIST, CK_MECHANISM, CK_RV,
    CK_SESSION_HANDLE, CK_SESSION_INFO, CK_SLOT_ID, CK_TOKEN_INFO, CK_ULONG, CK_ULONG_PTR,
};
use zeroize::Zeroizing;

/// The function list of a loaded module.
pub struct RawFunctions {
    /// Keeps the library loaded while `list` is used.
    _lib: cryptoki_sys::Pkcs11,
    list: *const CK_FUNCTION_LIST,
    /// Whether `list` reaches the instance cryptoki initialized: UNKNOWN until a session
    /// told. Most modules hand out one static list; some make a new instance per
    /// `C_GetFunctionList` (p11-kit-client: each is a connection of its own, which nobody
    /// initialized), and then cryptoki's calls are used.
    same: AtomicU8,
}

const UNKNOWN: u8 = 0;
const SAME: u8 = 1;
const OTHER: u8 = 2;

// SAFETY: `list` points to the module's function list, which PKCS#11 makes static and
// read-only for the life of the library (kept loaded by `_lib`); the functions themselves may
// be called from any thread (the module is initialized with CKF_OS_LOCKING_OK).
unsafe impl Send for RawFunctions {}
// SAFETY: as for Send: nothing behind the pointer is ever written by us.
unsafe impl Sync for RawFunctions {}

impl RawFunctions {
    /// The function list of the module at `path`, already loaded (and initialized) through
    /// cryptoki: this `dlopen` takes one more reference to the same instance. None if the
    /// module does not give one (then cryptoki's calls are used).
    pub fn load(path: &Path) -> Option<RawFunctions> {
        // SAFETY: loading a library runs its initializers; it is the library cryptoki has
        // just loaded from the same path, so this only takes another reference to it.
        let lib = unsafe { cryptoki_sys::Pkcs11::new(path) }.ok()?;
        let mut list: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
        // SAFETY: `C_GetFunctionList` writes one pointer to the module's static list.
        let rv: CK_RV = unsafe { lib.C_GetFunctionList(&mut list) };
        if rv != CKR_OK || list.is_null() {
            return None;
        }
        // SAFETY: non-null, returned by the module, valid while `lib` keeps it loaded.
        let has_both = unsafe { (*list).C_SignInit.is_some() && (*list).C_Sign.is_some() };
        has_both.then_some(RawFunctions {
            _lib: lib,
            list: list.cast_const(),
            same: AtomicU8::new(UNKNOWN),
        })
    }

    /// True if this list reaches the instance that `session` (opened through cryptoki) lives
    /// in: asked once, with `C_GetSessionInfo` through both.
    pub fn reaches(&self, session: &Session) -> bool {
        match self.same.load(Ordering::Relaxed) {
            SAME => return true,
            OTHER => return false,
            _ => {}
        }
        // SAFETY: `list` is valid for the life of `self` (see the Send impl).
        let Some(get_info) = (unsafe { &*self.list }).C_GetSessionInfo else {
            self.same.store(OTHER, Ordering::Relaxed);
            return false;
        };
        let Ok(theirs) = session.get_session_info() else {
            return false; // the session cannot tell now; ask again another time
        };
        // SAFETY: CK_SESSION_INFO is plain data (integers): all zeros is a valid value.
        let mut ours: CK_SESSION_INFO = unsafe { std::mem::zeroed() };
        // SAFETY: `ours` is a live, writable CK_SESSION_INFO; the handle is a plain number.
        let rv = unsafe { get_info(session.handle(), &mut ours) };
        let verdict = if rv == CKR_OK && ours.slotID == theirs.slot_id().id() {
            SAME
        } else if rv == CKR_CRYPTOKI_NOT_INITIALIZED || rv == CKR_SESSION_HANDLE_INVALID {
            OTHER
        } else {
            return false; // undecided (e.g. the device is unreachable): cryptoki this time
        };
        self.same.store(verdict, Ordering::Relaxed);
        verdict == SAME
    }

    /// `C_GetTokenInfo` as the module wrote it (None if it fails, or if this list reaches
    /// another, uninitialized instance: then the caller keeps cryptoki's answer).
    pub fn token_info(&self, slot: CK_SLOT_ID) -> Option<CK_TOKEN_INFO> {
        // SAFETY: `list` is valid for the life of `self` (see the Send impl).
        let get = (unsafe { &*self.list }).C_GetTokenInfo?;
        // SAFETY: CK_TOKEN_INFO is plain data (integers and byte arrays): zeros are valid.
        let mut info: CK_TOKEN_INFO = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a live, writable CK_TOKEN_INFO; the slot id is a plain number.
        let rv = unsafe { get(slot, &mut info) };
        (rv == CKR_OK).then_some(info)
    }

    /// `C_SignInit` + one `C_Sign` into a buffer of `max_len` bytes (two calls); a token that
    /// answers `CKR_BUFFER_TOO_SMALL` (leaving the operation active, as PKCS#11 says) gets a
    /// second `C_Sign` with the length it asked for.
    pub fn sign(
        &self,
        session: &Session,
        mechanism: &Mechanism,
        key: ObjectHandle,
        data: &[u8],
        max_len: usize,
    ) -> cryptoki::error::Result<Vec<u8>> {
        // SAFETY: `list` is valid for the life of `self` (see the Send impl).
        let list = unsafe { &*self.list };
        let (Some(sign_init), Some(sign)) = (list.C_SignInit, list.C_Sign) else {
            return Err(CkError::NullFunctionPointer);
        };
        let mut mech: CK_MECHANISM = mechanism.into();
        // SAFETY: `mech` (and the parameters it points into, owned by `mechanism`) outlives
        // the call; the session and key handles are plain numbers the module checks.
        let rv = unsafe { sign_init(session.handle(), &mut mech, key.handle()) };
        Rv::from(rv).into_result(Function::SignInit)?;
        let mut out = Zeroizing::new(vec![0u8; max_len.max(1)]);
        // SAFETY: `sign` is the module's C_Sign, called right after C_SignInit on `session`.
        let rv = unsafe { single_part(sign, session, data, &mut out)? };
        Rv::from(rv).into_result(Function::Sign)?;
        // A signature is no secret: the buffer leaves its zeroizing wrapper as it is.
        Ok(std::mem::take(&mut *out))
    }

    /// `C_DecryptInit` + one `C_Decrypt` into a zeroizing buffer of `max_len` bytes (two
    /// calls; cryptoki's `Session::decrypt` asks for the length first, a third). A token that
    /// answers `CKR_BUFFER_TOO_SMALL` (the operation stays active) gets a second `C_Decrypt`
    /// with the length it asked for. Errors carry `Function::DecryptInit` or
    /// `Function::Decrypt`, as cryptoki's would.
    pub fn decrypt(
        &self,
        session: &Session,
        mechanism: &Mechanism,
        key: ObjectHandle,
        data: &[u8],
        max_len: usize,
    ) -> cryptoki::error::Result<Zeroizing<Vec<u8>>> {
        // SAFETY: `list` is valid for the life of `self` (see the Send impl).
        let list = unsafe { &*self.list };
        let (Some(decrypt_init), Some(decrypt)) = (list.C_DecryptInit, list.C_Decrypt) else {
            return Err(CkError::NullFunctionPointer);
        };
        let mut mech: CK_MECHANISM = mechanism.into();
        // SAFETY: `mech` (and the parameters it points into, owned by `mechanism`) outlives
        // the call; the session and key handles are plain numbers the module checks.
        let rv = unsafe { decrypt_init(session.handle(), &mut mech, key.handle()) };
        Rv::from(rv).into_result(Function::DecryptInit)?;
        let mut out = Zeroizing::new(vec![0u8; max_len.max(1)]);
        // SAFETY: `decrypt` is the module's C_Decrypt, called right after C_DecryptInit on
        // `session`.
        let rv = unsafe { single_part(decrypt, session, data, &mut out)? };
        Rv::from(rv).into_result(Function::Decrypt)?;
        Ok(out)
    }

    /// One attribute of at most `max_len` bytes, read with one `C_GetAttributeValue` straight
    /// into zeroizing memory (for secrets: nothing else ever holds the value). A value longer
    /// than `max_len` is an error (`CKR_BUFFER_TOO_SMALL`), not a second call.
    pub fn secret_attribute(
        &self,
        session: &Session,
        object: ObjectHandle,
        attribute: CK_ATTRIBUTE_TYPE,
        max_len: usize,
    ) -> cryptoki::error::Result<Zeroizing<Vec<u8>>> {
        // SAFETY: `list` is valid for the life of `self` (see the Send impl).
        let list = unsafe { &*self.list };
        let Some(get) = list.C_GetAttributeValue else {
            return Err(CkError::NullFunctionPointer);
        };
        let mut out = Zeroizing::new(vec![0u8; max_len.max(1)]);
        let mut template = CK_ATTRIBUTE {
            type_: attribute,
            pValue: out.as_mut_ptr().cast(),
            ulValueLen: max_len.try_into()?,
        };
        // SAFETY: one live CK_ATTRIBUTE whose buffer `out` has room for `ulValueLen` bytes
        // (the module writes at most that many); the handles are plain numbers.
        let rv = unsafe { get(session.handle(), object.handle(), &mut template, 1) };
        Rv::from(rv).into_result(Function::GetAttributeValue)?;
        let len = usize::try_from(template.ulValueLen)?;
        if len > max_len {
            return Err(CkError::Pkcs11(
                cryptoki::error::RvError::BufferTooSmall,
                Function::GetAttributeValue,
            ));
        }
        out.truncate(len);
        Ok(out)
    }
}

/// The C prototype `C_Sign` and `C_Decrypt` share (single-part, output into a buffer).
type SinglePart = unsafe extern "C" fn(
    CK_SESSION_HANDLE,
    CK_BYTE_PTR,
    CK_ULONG,
    CK_BYTE_PTR,
    CK_ULONG_PTR,
) -> CK_RV;

/// One single-part call (`C_Sign` or `C_Decrypt`) of `data` into `out`, truncated to the
/// length the module wrote. A module that answers `CKR_BUFFER_TOO_SMALL` (nothing written;
/// the operation stays active, as PKCS#11 says) is called once more with a new buffer of the
/// length it asked for. Returns the module's return value.
///
/// # Safety
/// `f` must be the module's function for an operation initialized on `session`.
unsafe fn single_part(
    f: SinglePart,
    session: &Session,
    data: &[u8],
    out: &mut Zeroizing<Vec<u8>>,
) -> cryptoki::error::Result<CK_RV> {
    let data_len: CK_ULONG = data.len().try_into()?;
    let mut len: CK_ULONG = out.len().try_into()?;
    // SAFETY: `data` is only read (`*mut` in the C prototype); `out` has room for `len`
    // bytes, and the module writes at most that many.
    let mut rv = unsafe {
        f(
            session.handle(),
            data.as_ptr().cast_mut(),
            data_len,
            out.as_mut_ptr(),
            &mut len,
        )
    };
    if rv == CKR_BUFFER_TOO_SMALL {
        *out = Zeroizing::new(vec![0u8; usize::try_from(len)?.max(1)]);
        // SAFETY: as above, with `out` of the length the module asked for.
        rv = unsafe {
            f(
                session.handle(),
                data.as_ptr().cast_mut(),
                data_len,
                out.as_mut_ptr(),
                &mut len,
            )
        };
    }
    if rv == CKR_OK {
        out.truncate(usize::try_from(len)?);
    }
    Ok(rv)
}
