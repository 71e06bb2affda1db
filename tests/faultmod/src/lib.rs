//! hsmkey-faultmod: a PKCS#11 module for tests that forwards every call to a real module
//! (`HSMKEY_FAULT_TARGET`, default SoftHSM2) and injects the faults its control file
//! (`HSMKEY_FAULT_CONTROL`) asks for: return codes, latency, token flags, a removed token,
//! a PIN counter. It counts every call per function. See README.md for the control syntax.
//!
//! Only `C_GetFunctionList` is exported among the PKCS#11 symbols (no `C_GetInterface`: the
//! 2.40 list is all it offers), plus the `hsmkey_fault_*` helpers for tests (ctypes).

use std::ffi::{c_char, c_int, c_void, CStr};

use cryptoki_sys::*;

/// Calls a function of the real module: `real!(C_Sign(h, data, len, sig, siglen))`.
/// CKR_GENERAL_ERROR if the module could not be loaded, CKR_FUNCTION_NOT_SUPPORTED if its list
/// has no such function.
macro_rules! real {
    ($name:ident ( $($arg:expr),* $(,)? )) => {
        match crate::engine::real() {
            None => cryptoki_sys::CKR_GENERAL_ERROR,
            Some(list) => match list.$name {
                None => cryptoki_sys::CKR_FUNCTION_NOT_SUPPORTED,
                Some(f) => {
                    let _in_flight = crate::engine::in_flight();
                    // SAFETY: the arguments are the caller's, passed on unchanged (or buffers
                    // of ours that live across the call); the function is the real module's
                    // implementation of the same PKCS#11 function with the same contract.
                    unsafe { f($($arg),*) }
                }
            },
        }
    };
}

pub mod config;
pub mod engine;
pub mod funcs;
pub mod rv;

use engine::{generic, guard, Scope};
use funcs::Func;

/// Our function list, handed out by `C_GetFunctionList`.
pub fn own_function_list() -> *const CK_FUNCTION_LIST {
    &FUNCTION_LIST
}

/// Forwarding functions with no behaviour of their own: blocked on a removed token, failed by
/// a rule, or passed on unchanged.
macro_rules! forward {
    ($($name:ident ( $($arg:ident : $ty:ty),* ) $scope:expr;)*) => {$(
        #[allow(non_snake_case)]
        unsafe extern "C" fn $name($($arg: $ty),*) -> CK_RV {
            guard(Func::$name, $scope, || generic(Func::$name, $scope, || real!($name($($arg),*)), |_| {}))
        }
    )*};
}

/// Functions of an active operation: an injected failure first runs the real call, then
/// `finish` ends the operation in the real module if that call left it active.
macro_rules! forward_then_end {
    ($($name:ident ( $($arg:ident : $ty:ty),* ) $scope:expr, $finish:expr;)*) => {$(
        #[allow(non_snake_case)]
        unsafe extern "C" fn $name($($arg: $ty),*) -> CK_RV {
            guard(Func::$name, $scope, || generic(Func::$name, $scope, || real!($name($($arg),*)), $finish))
        }
    )*};
}

forward! {
    C_GetInfo(info: *mut CK_INFO) Scope::Global;
    C_InitToken(slot: CK_SLOT_ID, pin: *mut CK_UTF8CHAR, len: CK_ULONG, label: *mut CK_UTF8CHAR)
        Scope::Slot(slot);
    C_InitPIN(h: CK_SESSION_HANDLE, pin: *mut CK_UTF8CHAR, len: CK_ULONG) Scope::Session(h);
    C_SetPIN(h: CK_SESSION_HANDLE, old: *mut CK_UTF8CHAR, old_len: CK_ULONG,
        new: *mut CK_UTF8CHAR, new_len: CK_ULONG) Scope::Session(h);
    C_GetSessionInfo(h: CK_SESSION_HANDLE, info: *mut CK_SESSION_INFO) Scope::Session(h);
    C_GetOperationState(h: CK_SESSION_HANDLE, state: *mut CK_BYTE, len: *mut CK_ULONG)
        Scope::Session(h);
    C_SetOperationState(h: CK_SESSION_HANDLE, state: *mut CK_BYTE, len: CK_ULONG,
        enc: CK_OBJECT_HANDLE, auth: CK_OBJECT_HANDLE) Scope::Session(h);
    C_Logout(h: CK_SESSION_HANDLE) Scope::Session(h);
    C_CreateObject(h: CK_SESSION_HANDLE, t: *mut CK_ATTRIBUTE, n: CK_ULONG,
        obj: *mut CK_OBJECT_HANDLE) Scope::Session(h);
    C_CopyObject(h: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE, t: *mut CK_ATTRIBUTE, n: CK_ULONG,
        obj: *mut CK_OBJECT_HANDLE) Scope::Session(h);
    C_DestroyObject(h: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE) Scope::Session(h);
    C_GetObjectSize(h: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE, size: *mut CK_ULONG)
        Scope::Session(h);
    C_GetAttributeValue(h: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE, t: *mut CK_ATTRIBUTE,
        n: CK_ULONG) Scope::Session(h);
    C_SetAttributeValue(h: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE, t: *mut CK_ATTRIBUTE,
        n: CK_ULONG) Scope::Session(h);
    C_FindObjectsInit(h: CK_SESSION_HANDLE, t: *mut CK_ATTRIBUTE, n: CK_ULONG) Scope::Session(h);
    C_FindObjects(h: CK_SESSION_HANDLE, objs: *mut CK_OBJECT_HANDLE, max: CK_ULONG,
        n: *mut CK_ULONG) Scope::Session(h);
    C_FindObjectsFinal(h: CK_SESSION_HANDLE) Scope::Session(h);
    C_EncryptInit(h: CK_SESSION_HANDLE, m: *mut CK_MECHANISM, k: CK_OBJECT_HANDLE)
        Scope::Session(h);
    C_DigestInit(h: CK_SESSION_HANDLE, m: *mut CK_MECHANISM) Scope::Session(h);
    C_SignRecoverInit(h: CK_SESSION_HANDLE, m: *mut CK_MECHANISM, k: CK_OBJECT_HANDLE)
        Scope::Session(h);
    C_VerifyInit(h: CK_SESSION_HANDLE, m: *mut CK_MECHANISM, k: CK_OBJECT_HANDLE)
        Scope::Session(h);
    C_VerifyRecoverInit(h: CK_SESSION_HANDLE, m: *mut CK_MECHANISM, k: CK_OBJECT_HANDLE)
        Scope::Session(h);
    C_DigestEncryptUpdate(h: CK_SESSION_HANDLE, i: *mut CK_BYTE, il: CK_ULONG, o: *mut CK_BYTE,
        ol: *mut CK_ULONG) Scope::Session(h);
    C_DecryptDigestUpdate(h: CK_SESSION_HANDLE, i: *mut CK_BYTE, il: CK_ULONG, o: *mut CK_BYTE,
        ol: *mut CK_ULONG) Scope::Session(h);
    C_SignEncryptUpdate(h: CK_SESSION_HANDLE, i: *mut CK_BYTE, il: CK_ULONG, o: *mut CK_BYTE,
        ol: *mut CK_ULONG) Scope::Session(h);
    C_DecryptVerifyUpdate(h: CK_SESSION_HANDLE, i: *mut CK_BYTE, il: CK_ULONG, o: *mut CK_BYTE,
        ol: *mut CK_ULONG) Scope::Session(h);
    C_GenerateKey(h: CK_SESSION_HANDLE, m: *mut CK_MECHANISM, t: *mut CK_ATTRIBUTE, n: CK_ULONG,
        k: *mut CK_OBJECT_HANDLE) Scope::Session(h);
    C_GenerateKeyPair(h: CK_SESSION_HANDLE, m: *mut CK_MECHANISM, pt: *mut CK_ATTRIBUTE,
        pn: CK_ULONG, st: *mut CK_ATTRIBUTE, sn: CK_ULONG, pk: *mut CK_OBJECT_HANDLE,
        sk: *mut CK_OBJECT_HANDLE) Scope::Session(h);
    C_WrapKey(h: CK_SESSION_HANDLE, m: *mut CK_MECHANISM, w: CK_OBJECT_HANDLE, k: CK_OBJECT_HANDLE,
        out: *mut CK_BYTE, out_len: *mut CK_ULONG) Scope::Session(h);
    C_UnwrapKey(h: CK_SESSION_HANDLE, m: *mut CK_MECHANISM, u: CK_OBJECT_HANDLE, w: *mut CK_BYTE,
        wl: CK_ULONG, t: *mut CK_ATTRIBUTE, n: CK_ULONG, k: *mut CK_OBJECT_HANDLE)
        Scope::Session(h);
    C_DeriveKey(h: CK_SESSION_HANDLE, m: *mut CK_MECHANISM, b: CK_OBJECT_HANDLE,
        t: *mut CK_ATTRIBUTE, n: CK_ULONG, k: *mut CK_OBJECT_HANDLE) Scope::Session(h);
    C_SeedRandom(h: CK_SESSION_HANDLE, seed: *mut CK_BYTE, len: CK_ULONG) Scope::Session(h);
    C_GenerateRandom(h: CK_SESSION_HANDLE, out: *mut CK_BYTE, len: CK_ULONG) Scope::Session(h);
    C_GetFunctionStatus(h: CK_SESSION_HANDLE) Scope::Session(h);
    C_CancelFunction(h: CK_SESSION_HANDLE) Scope::Session(h);
    C_WaitForSlotEvent(flags: CK_FLAGS, slot: *mut CK_SLOT_ID, reserved: *mut c_void)
        Scope::Global;
}

/// After a failed single-part call (or final): if the real call only reported the output size
/// (NULL output, or CKR_BUFFER_TOO_SMALL) the operation is still active there; run it again
/// into a scratch buffer to end it.
fn end_if_active(
    rv: CK_RV,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
    again: impl FnOnce(*mut CK_BYTE, *mut CK_ULONG) -> CK_RV,
) {
    if out_len.is_null() || !((rv == CKR_OK && out.is_null()) || rv == CKR_BUFFER_TOO_SMALL) {
        return;
    }
    // SAFETY: `out_len` is the caller's non-null length pointer, which the real module has
    // just written.
    let needed = unsafe { *out_len };
    let mut buf = engine::scratch(needed);
    let mut len = buf.len() as CK_ULONG;
    let _ = again(buf.as_mut_ptr(), &mut len);
}

/// Ends a multi-part operation by running its final step into a scratch buffer.
fn end_with_final(final_step: impl Fn(*mut CK_BYTE, *mut CK_ULONG) -> CK_RV) {
    let mut len: CK_ULONG = 0;
    if final_step(std::ptr::null_mut(), &mut len) == CKR_OK {
        let mut buf = engine::scratch(len);
        let mut len = buf.len() as CK_ULONG;
        let _ = final_step(buf.as_mut_ptr(), &mut len);
    }
}

fn end_sign(h: CK_SESSION_HANDLE) {
    end_with_final(|b, l| real!(C_SignFinal(h, b, l)));
}
fn end_encrypt(h: CK_SESSION_HANDLE) {
    end_with_final(|b, l| real!(C_EncryptFinal(h, b, l)));
}
fn end_decrypt(h: CK_SESSION_HANDLE) {
    end_with_final(|b, l| real!(C_DecryptFinal(h, b, l)));
}
fn end_digest(h: CK_SESSION_HANDLE) {
    end_with_final(|b, l| real!(C_DigestFinal(h, b, l)));
}
fn end_verify(h: CK_SESSION_HANDLE) {
    // A signature of the wrong length ends the operation (CKR_SIGNATURE_LEN_RANGE).
    let mut junk = [0u8; 1];
    let _ = real!(C_VerifyFinal(h, junk.as_mut_ptr(), 1));
}

fn ok_or_short(rv: CK_RV) -> bool {
    rv == CKR_OK || rv == CKR_BUFFER_TOO_SMALL
}

forward_then_end! {
    C_Encrypt(h: CK_SESSION_HANDLE, i: *mut CK_BYTE, il: CK_ULONG, o: *mut CK_BYTE,
        ol: *mut CK_ULONG) Scope::Session(h),
        |rv| end_if_active(rv, o, ol, |b, l| real!(C_Encrypt(h, i, il, b, l)));
    C_Decrypt(h: CK_SESSION_HANDLE, i: *mut CK_BYTE, il: CK_ULONG, o: *mut CK_BYTE,
        ol: *mut CK_ULONG) Scope::Session(h),
        |rv| end_if_active(rv, o, ol, |b, l| real!(C_Decrypt(h, i, il, b, l)));
    C_Digest(h: CK_SESSION_HANDLE, i: *mut CK_BYTE, il: CK_ULONG, o: *mut CK_BYTE,
        ol: *mut CK_ULONG) Scope::Session(h),
        |rv| end_if_active(rv, o, ol, |b, l| real!(C_Digest(h, i, il, b, l)));
    C_Sign(h: CK_SESSION_HANDLE, i: *mut CK_BYTE, il: CK_ULONG, o: *mut CK_BYTE,
        ol: *mut CK_ULONG) Scope::Session(h),
        |rv| end_if_active(rv, o, ol, |b, l| real!(C_Sign(h, i, il, b, l)));
    C_SignRecover(h: CK_SESSION_HANDLE, i: *mut CK_BYTE, il: CK_ULONG, o: *mut CK_BYTE,
        ol: *mut CK_ULONG) Scope::Session(h),
        |rv| end_if_active(rv, o, ol, |b, l| real!(C_SignRecover(h, i, il, b, l)));
    C_VerifyRecover(h: CK_SESSION_HANDLE, i: *mut CK_BYTE, il: CK_ULONG, o: *mut CK_BYTE,
        ol: *mut CK_ULONG) Scope::Session(h),
        |rv| end_if_active(rv, o, ol, |b, l| real!(C_VerifyRecover(h, i, il, b, l)));
    C_EncryptFinal(h: CK_SESSION_HANDLE, o: *mut CK_BYTE, ol: *mut CK_ULONG) Scope::Session(h),
        |rv| end_if_active(rv, o, ol, |b, l| real!(C_EncryptFinal(h, b, l)));
    C_DecryptFinal(h: CK_SESSION_HANDLE, o: *mut CK_BYTE, ol: *mut CK_ULONG) Scope::Session(h),
        |rv| end_if_active(rv, o, ol, |b, l| real!(C_DecryptFinal(h, b, l)));
    C_DigestFinal(h: CK_SESSION_HANDLE, o: *mut CK_BYTE, ol: *mut CK_ULONG) Scope::Session(h),
        |rv| end_if_active(rv, o, ol, |b, l| real!(C_DigestFinal(h, b, l)));
    C_SignFinal(h: CK_SESSION_HANDLE, o: *mut CK_BYTE, ol: *mut CK_ULONG) Scope::Session(h),
        |rv| end_if_active(rv, o, ol, |b, l| real!(C_SignFinal(h, b, l)));
    C_EncryptUpdate(h: CK_SESSION_HANDLE, i: *mut CK_BYTE, il: CK_ULONG, o: *mut CK_BYTE,
        ol: *mut CK_ULONG) Scope::Session(h),
        |rv| if ok_or_short(rv) { end_encrypt(h) };
    C_DecryptUpdate(h: CK_SESSION_HANDLE, i: *mut CK_BYTE, il: CK_ULONG, o: *mut CK_BYTE,
        ol: *mut CK_ULONG) Scope::Session(h),
        |rv| if ok_or_short(rv) { end_decrypt(h) };
    C_DigestUpdate(h: CK_SESSION_HANDLE, p: *mut CK_BYTE, len: CK_ULONG) Scope::Session(h),
        |rv| if rv == CKR_OK { end_digest(h) };
    C_DigestKey(h: CK_SESSION_HANDLE, k: CK_OBJECT_HANDLE) Scope::Session(h),
        |rv| if rv == CKR_OK { end_digest(h) };
    C_SignUpdate(h: CK_SESSION_HANDLE, p: *mut CK_BYTE, len: CK_ULONG) Scope::Session(h),
        |rv| if rv == CKR_OK { end_sign(h) };
    C_VerifyUpdate(h: CK_SESSION_HANDLE, p: *mut CK_BYTE, len: CK_ULONG) Scope::Session(h),
        |rv| if rv == CKR_OK { end_verify(h) };
    C_Verify(h: CK_SESSION_HANDLE, d: *mut CK_BYTE, dl: CK_ULONG, s: *mut CK_BYTE, sl: CK_ULONG)
        Scope::Session(h), |_| {};
    C_VerifyFinal(h: CK_SESSION_HANDLE, s: *mut CK_BYTE, sl: CK_ULONG) Scope::Session(h), |_| {};
}

// ---- functions with behaviour of their own ----

/// `init_args TEXT` in the control file: a module that needs C_Initialize arguments (NSS
/// softokn, kmsp11): anything but pReserved = TEXT is CKR_ARGUMENTS_BAD; the real module gets
/// the same arguments with pReserved NULL (SoftHSM2 refuses a non-NULL one).
#[allow(non_snake_case)]
unsafe extern "C" fn C_Initialize(args: *mut c_void) -> CK_RV {
    guard(Func::C_Initialize, Scope::Global, || {
        let Some(required) = engine::required_init_args() else {
            return generic(
                Func::C_Initialize,
                Scope::Global,
                || real!(C_Initialize(args)),
                |_| {},
            );
        };
        let refuse = || {
            generic(
                Func::C_Initialize,
                Scope::Global,
                || CKR_ARGUMENTS_BAD,
                |_| {},
            )
        };
        if args.is_null() {
            return refuse();
        }
        // SAFETY: a non-NULL C_Initialize argument is a CK_C_INITIALIZE_ARGS (PKCS#11).
        let mut copy: CK_C_INITIALIZE_ARGS =
            unsafe { std::ptr::read(args.cast::<CK_C_INITIALIZE_ARGS>()) };
        if copy.pReserved.is_null() {
            return refuse();
        }
        // SAFETY: the modules that take init args read pReserved as a NUL-terminated string.
        let given = unsafe { CStr::from_ptr(copy.pReserved.cast::<c_char>()) };
        if given.to_bytes() != required.as_bytes() {
            return refuse();
        }
        copy.pReserved = std::ptr::null_mut();
        let ptr: *mut CK_C_INITIALIZE_ARGS = &mut copy;
        generic(
            Func::C_Initialize,
            Scope::Global,
            || real!(C_Initialize(ptr.cast::<c_void>())),
            |_| {},
        )
    })
}

/// `hide_mechanism`: hidden mechanisms are left out of the list.
#[allow(non_snake_case)]
unsafe extern "C" fn C_GetMechanismList(
    slot: CK_SLOT_ID,
    list: *mut CK_MECHANISM_TYPE,
    n: *mut CK_ULONG,
) -> CK_RV {
    guard(Func::C_GetMechanismList, Scope::Slot(slot), || {
        let hidden = engine::hidden_mechanisms();
        if hidden.is_empty() || n.is_null() {
            return generic(
                Func::C_GetMechanismList,
                Scope::Slot(slot),
                || real!(C_GetMechanismList(slot, list, n)),
                |_| {},
            );
        }
        let mut all: Vec<CK_MECHANISM_TYPE> = Vec::new();
        let rv = generic(
            Func::C_GetMechanismList,
            Scope::Slot(slot),
            || {
                let mut count: CK_ULONG = 0;
                let rv = real!(C_GetMechanismList(slot, std::ptr::null_mut(), &mut count));
                if rv != CKR_OK {
                    return rv;
                }
                all = vec![0; count as usize];
                let rv = real!(C_GetMechanismList(slot, all.as_mut_ptr(), &mut count));
                all.truncate(count as usize);
                rv
            },
            |_| {},
        );
        if rv != CKR_OK {
            return rv;
        }
        all.retain(|m| !hidden.contains(m));
        let count = all.len() as CK_ULONG;
        // SAFETY: `n` is the caller's non-null in/out count; `list`, when non-null, has room
        // for `*n` entries (the PKCS#11 contract), and at most that many are written.
        unsafe {
            if list.is_null() {
                *n = count;
                return CKR_OK;
            }
            if *n < count {
                *n = count;
                return CKR_BUFFER_TOO_SMALL;
            }
            std::ptr::copy_nonoverlapping(all.as_ptr(), list, all.len());
            *n = count;
        }
        CKR_OK
    })
}

#[allow(non_snake_case)]
unsafe extern "C" fn C_GetMechanismInfo(
    slot: CK_SLOT_ID,
    ty: CK_MECHANISM_TYPE,
    info: *mut CK_MECHANISM_INFO,
) -> CK_RV {
    guard(Func::C_GetMechanismInfo, Scope::Slot(slot), || {
        generic(
            Func::C_GetMechanismInfo,
            Scope::Slot(slot),
            || {
                if engine::is_hidden(ty) {
                    return CKR_MECHANISM_INVALID;
                }
                real!(C_GetMechanismInfo(slot, ty, info))
            },
            |_| {},
        )
    })
}

/// The mechanism type of a *Init call's mechanism (None for NULL).
fn mechanism_type(m: *mut CK_MECHANISM) -> Option<CK_MECHANISM_TYPE> {
    // SAFETY: a non-NULL mechanism pointer of a PKCS#11 call points to a CK_MECHANISM.
    unsafe { m.as_ref() }.map(|m| m.mechanism)
}

#[allow(non_snake_case)]
unsafe extern "C" fn C_SignInit(
    h: CK_SESSION_HANDLE,
    m: *mut CK_MECHANISM,
    k: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard(Func::C_SignInit, Scope::Session(h), || {
        generic(
            Func::C_SignInit,
            Scope::Session(h),
            || {
                if mechanism_type(m).is_some_and(engine::is_hidden) {
                    return CKR_MECHANISM_INVALID;
                }
                real!(C_SignInit(h, m, k))
            },
            |_| {},
        )
    })
}

#[allow(non_snake_case)]
unsafe extern "C" fn C_DecryptInit(
    h: CK_SESSION_HANDLE,
    m: *mut CK_MECHANISM,
    k: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard(Func::C_DecryptInit, Scope::Session(h), || {
        generic(
            Func::C_DecryptInit,
            Scope::Session(h),
            || {
                if mechanism_type(m).is_some_and(engine::is_hidden) {
                    return CKR_MECHANISM_INVALID;
                }
                real!(C_DecryptInit(h, m, k))
            },
            |_| {},
        )
    })
}

#[allow(non_snake_case)]
unsafe extern "C" fn C_Finalize(reserved: *mut c_void) -> CK_RV {
    guard(Func::C_Finalize, Scope::Global, || {
        let rv = generic(
            Func::C_Finalize,
            Scope::Global,
            || real!(C_Finalize(reserved)),
            |_| {},
        );
        if rv == CKR_OK {
            engine::finalized();
        }
        rv
    })
}

/// The PKCS#11 entry point: our function list, after loading the real module.
///
/// # Safety
/// `list` must be NULL or point to writable storage for one pointer (the PKCS#11 contract).
#[no_mangle]
pub unsafe extern "C" fn C_GetFunctionList(list: *mut *mut CK_FUNCTION_LIST) -> CK_RV {
    guard(Func::C_GetFunctionList, Scope::Global, || {
        let e = engine::enter(Func::C_GetFunctionList, Scope::Global);
        if let Some((rv, ..)) = e.inject {
            return rv;
        }
        if list.is_null() {
            return CKR_ARGUMENTS_BAD;
        }
        if engine::real().is_none() {
            return CKR_GENERAL_ERROR;
        }
        // SAFETY: `list` is non-null and, by the PKCS#11 contract, writable. The list is a
        // static that callers only read.
        unsafe { *list = own_function_list().cast_mut() };
        CKR_OK
    })
}

/// Hides removed tokens from `C_GetSlotList(CK_TRUE, ...)`.
#[allow(non_snake_case)]
unsafe extern "C" fn C_GetSlotList(
    present: CK_BBOOL,
    list: *mut CK_SLOT_ID,
    count: *mut CK_ULONG,
) -> CK_RV {
    guard(Func::C_GetSlotList, Scope::Global, || {
        let forward = || real!(C_GetSlotList(present, list, count));
        let e = engine::enter(Func::C_GetSlotList, Scope::Global);
        if let Some(inj) = e.inject {
            return engine::inject(Scope::Global, None, inj, forward, |_| {});
        }
        if present == 0 || !engine::any_removed() || count.is_null() {
            return forward();
        }
        let Some(all) = engine::real_slots(present) else {
            return forward();
        };
        let removed = engine::removed_slots(&all);
        let visible: Vec<CK_SLOT_ID> = all
            .iter()
            .zip(removed)
            .filter(|(_, r)| !r)
            .map(|(s, _)| *s)
            .collect();
        let n = visible.len() as CK_ULONG;
        // SAFETY: `count` is the caller's non-null in/out count; `list`, when non-null, has room
        // for `*count` slot ids (the PKCS#11 contract), and we write at most that many.
        unsafe {
            if list.is_null() {
                *count = n;
                return CKR_OK;
            }
            if *count < n {
                *count = n;
                return CKR_BUFFER_TOO_SMALL;
            }
            std::ptr::copy_nonoverlapping(visible.as_ptr(), list, visible.len());
            *count = n;
        }
        CKR_OK
    })
}

/// A removed token's slot is there, without CKF_TOKEN_PRESENT.
#[allow(non_snake_case)]
unsafe extern "C" fn C_GetSlotInfo(slot: CK_SLOT_ID, info: *mut CK_SLOT_INFO) -> CK_RV {
    guard(Func::C_GetSlotInfo, Scope::Slot(slot), || {
        let forward = || real!(C_GetSlotInfo(slot, info));
        let e = engine::enter(Func::C_GetSlotInfo, Scope::Slot(slot));
        if let Some(inj) = e.inject {
            return engine::inject(Scope::Slot(slot), e.slot, inj, forward, |_| {});
        }
        let rv = forward();
        if rv == CKR_OK && e.blocked.is_some() && !info.is_null() {
            // SAFETY: `info` is the caller's non-null CK_SLOT_INFO, just filled in.
            unsafe { (*info).flags &= !CKF_TOKEN_PRESENT };
        }
        rv
    })
}

/// Reports the configured token flags (and the simulated PIN counter's).
#[allow(non_snake_case)]
unsafe extern "C" fn C_GetTokenInfo(slot: CK_SLOT_ID, info: *mut CK_TOKEN_INFO) -> CK_RV {
    guard(Func::C_GetTokenInfo, Scope::Slot(slot), || {
        let rv = generic(
            Func::C_GetTokenInfo,
            Scope::Slot(slot),
            || real!(C_GetTokenInfo(slot, info)),
            |_| {},
        );
        if rv == CKR_OK && !info.is_null() {
            // SAFETY: `info` is the caller's non-null CK_TOKEN_INFO, just filled in.
            unsafe { (*info).flags = engine::token_flags((*info).flags) };
            if let Some(time) = engine::utc_time() {
                // SAFETY: as above.
                unsafe { (*info).utcTime = time };
            }
            if let Some(max) = engine::reported_max_sessions() {
                // SAFETY: as above.
                unsafe { (*info).ulMaxSessionCount = max };
            }
        }
        rv
    })
}

#[allow(non_snake_case)]
unsafe extern "C" fn C_OpenSession(
    slot: CK_SLOT_ID,
    flags: CK_FLAGS,
    app: *mut c_void,
    notify: CK_NOTIFY,
    session: *mut CK_SESSION_HANDLE,
) -> CK_RV {
    guard(Func::C_OpenSession, Scope::Slot(slot), || {
        // `max_sessions`: the token's session limit (checked, and a place reserved, first).
        let reserved = match engine::reserve_session(slot) {
            Ok(reserved) => reserved,
            Err(rv) => {
                engine::note_injected(Func::C_OpenSession);
                return generic(Func::C_OpenSession, Scope::Slot(slot), || rv, |_| {});
            }
        };
        let rv = generic(
            Func::C_OpenSession,
            Scope::Slot(slot),
            || real!(C_OpenSession(slot, flags, app, notify, session)),
            // mode=after: the real session was opened but the caller heard of a failure.
            |rv| {
                if rv == CKR_OK && !session.is_null() {
                    // SAFETY: `session` is the caller's non-null handle, just written.
                    let h = unsafe { *session };
                    let _ = real!(C_CloseSession(h));
                }
            },
        );
        if rv == CKR_OK && !session.is_null() {
            // SAFETY: `session` is the caller's non-null handle, just written.
            let h = unsafe { *session };
            engine::session_opened(slot, h, reserved);
            engine::log_in_quietly(h);
        } else if reserved {
            engine::opening_done(slot);
        }
        rv
    })
}

#[allow(non_snake_case)]
unsafe extern "C" fn C_CloseSession(h: CK_SESSION_HANDLE) -> CK_RV {
    guard(Func::C_CloseSession, Scope::Session(h), || {
        let rv = generic(
            Func::C_CloseSession,
            Scope::Session(h),
            || real!(C_CloseSession(h)),
            |_| {},
        );
        if matches!(
            rv,
            CKR_OK | CKR_SESSION_HANDLE_INVALID | CKR_SESSION_CLOSED | CKR_DEVICE_REMOVED
        ) {
            engine::session_closed(h);
        }
        rv
    })
}

#[allow(non_snake_case)]
unsafe extern "C" fn C_CloseAllSessions(slot: CK_SLOT_ID) -> CK_RV {
    guard(Func::C_CloseAllSessions, Scope::Slot(slot), || {
        let rv = generic(
            Func::C_CloseAllSessions,
            Scope::Slot(slot),
            || real!(C_CloseAllSessions(slot)),
            |_| {},
        );
        if matches!(rv, CKR_OK | CKR_TOKEN_NOT_PRESENT) {
            engine::all_sessions_closed(slot);
        }
        rv
    })
}

/// A locked PIN (token flag or PIN counter) refuses user logins with CKR_PIN_LOCKED; the PIN
/// counter (`pin_retries`) counts CKR_PIN_INCORRECT answers, injected or real.
#[allow(non_snake_case)]
unsafe extern "C" fn C_Login(
    h: CK_SESSION_HANDLE,
    user: CK_USER_TYPE,
    pin: *mut CK_UTF8CHAR,
    len: CK_ULONG,
) -> CK_RV {
    guard(Func::C_Login, Scope::Session(h), || {
        let forward = || real!(C_Login(h, user, pin, len));
        let e = engine::enter(Func::C_Login, Scope::Session(h));
        if let Some(rv) = e.blocked {
            return rv;
        }
        let rv = if let Some(inj) = e.inject {
            engine::inject(Scope::Session(h), e.slot, inj, forward, |_| {})
        } else if user == CKU_USER {
            if let Some(rv) = engine::login_refusal() {
                return rv;
            }
            forward()
        } else {
            forward()
        };
        if user == CKU_USER {
            engine::login_result(rv);
        }
        rv
    })
}

static FUNCTION_LIST: CK_FUNCTION_LIST = CK_FUNCTION_LIST {
    version: CK_VERSION {
        major: 2,
        minor: 40,
    },
    C_Initialize: Some(C_Initialize),
    C_Finalize: Some(C_Finalize),
    C_GetInfo: Some(C_GetInfo),
    C_GetFunctionList: Some(C_GetFunctionList),
    C_GetSlotList: Some(C_GetSlotList),
    C_GetSlotInfo: Some(C_GetSlotInfo),
    C_GetTokenInfo: Some(C_GetTokenInfo),
    C_GetMechanismList: Some(C_GetMechanismList),
    C_GetMechanismInfo: Some(C_GetMechanismInfo),
    C_InitToken: Some(C_InitToken),
    C_InitPIN: Some(C_InitPIN),
    C_SetPIN: Some(C_SetPIN),
    C_OpenSession: Some(C_OpenSession),
    C_CloseSession: Some(C_CloseSession),
    C_CloseAllSessions: Some(C_CloseAllSessions),
    C_GetSessionInfo: Some(C_GetSessionInfo),
    C_GetOperationState: Some(C_GetOperationState),
    C_SetOperationState: Some(C_SetOperationState),
    C_Login: Some(C_Login),
    C_Logout: Some(C_Logout),
    C_CreateObject: Some(C_CreateObject),
    C_CopyObject: Some(C_CopyObject),
    C_DestroyObject: Some(C_DestroyObject),
    C_GetObjectSize: Some(C_GetObjectSize),
    C_GetAttributeValue: Some(C_GetAttributeValue),
    C_SetAttributeValue: Some(C_SetAttributeValue),
    C_FindObjectsInit: Some(C_FindObjectsInit),
    C_FindObjects: Some(C_FindObjects),
    C_FindObjectsFinal: Some(C_FindObjectsFinal),
    C_EncryptInit: Some(C_EncryptInit),
    C_Encrypt: Some(C_Encrypt),
    C_EncryptUpdate: Some(C_EncryptUpdate),
    C_EncryptFinal: Some(C_EncryptFinal),
    C_DecryptInit: Some(C_DecryptInit),
    C_Decrypt: Some(C_Decrypt),
    C_DecryptUpdate: Some(C_DecryptUpdate),
    C_DecryptFinal: Some(C_DecryptFinal),
    C_DigestInit: Some(C_DigestInit),
    C_Digest: Some(C_Digest),
    C_DigestUpdate: Some(C_DigestUpdate),
    C_DigestKey: Some(C_DigestKey),
    C_DigestFinal: Some(C_DigestFinal),
    C_SignInit: Some(C_SignInit),
    C_Sign: Some(C_Sign),
    C_SignUpdate: Some(C_SignUpdate),
    C_SignFinal: Some(C_SignFinal),
    C_SignRecoverInit: Some(C_SignRecoverInit),
    C_SignRecover: Some(C_SignRecover),
    C_VerifyInit: Some(C_VerifyInit),
    C_Verify: Some(C_Verify),
    C_VerifyUpdate: Some(C_VerifyUpdate),
    C_VerifyFinal: Some(C_VerifyFinal),
    C_VerifyRecoverInit: Some(C_VerifyRecoverInit),
    C_VerifyRecover: Some(C_VerifyRecover),
    C_DigestEncryptUpdate: Some(C_DigestEncryptUpdate),
    C_DecryptDigestUpdate: Some(C_DecryptDigestUpdate),
    C_SignEncryptUpdate: Some(C_SignEncryptUpdate),
    C_DecryptVerifyUpdate: Some(C_DecryptVerifyUpdate),
    C_GenerateKey: Some(C_GenerateKey),
    C_GenerateKeyPair: Some(C_GenerateKeyPair),
    C_WrapKey: Some(C_WrapKey),
    C_UnwrapKey: Some(C_UnwrapKey),
    C_DeriveKey: Some(C_DeriveKey),
    C_SeedRandom: Some(C_SeedRandom),
    C_GenerateRandom: Some(C_GenerateRandom),
    C_GetFunctionStatus: Some(C_GetFunctionStatus),
    C_CancelFunction: Some(C_CancelFunction),
    C_WaitForSlotEvent: Some(C_WaitForSlotEvent),
};

// ---- helpers for tests (ctypes) ----

/// The function named by a C string, if any.
///
/// # Safety
/// `name` must be NULL or a NUL-terminated string.
unsafe fn func_arg(name: *const c_char) -> Option<Func> {
    if name.is_null() {
        return None;
    }
    // SAFETY: non-null and NUL-terminated per this function's contract.
    let name = unsafe { CStr::from_ptr(name) };
    Func::from_name(name.to_str().ok()?)
}

/// How many times the function named `name` (`"C_Sign"`) was called through this module
/// (injected failures and blocked calls included); `u64::MAX` for an unknown name.
///
/// # Safety
/// `name` must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn hsmkey_fault_count(name: *const c_char) -> u64 {
    // SAFETY: the caller's contract is ours.
    let f = unsafe { func_arg(name) };
    f.map_or(u64::MAX, engine::calls)
}

/// How many failures were injected into the function named `name`; `u64::MAX` if unknown.
///
/// # Safety
/// `name` must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn hsmkey_fault_injected(name: *const c_char) -> u64 {
    // SAFETY: the caller's contract is ours.
    let f = unsafe { func_arg(name) };
    f.map_or(u64::MAX, engine::injected)
}

/// Sets every call and injection counter to zero.
#[no_mangle]
pub extern "C" fn hsmkey_fault_reset_counts() {
    engine::reset_counts();
}

/// Sets one of the module's settings for this copy of the library, in place of the
/// environment variable of that name (`HSMKEY_FAULT_TARGET`, `HSMKEY_FAULT_CONTROL`,
/// `HSMKEY_FAULT_COUNTS`, `HSMKEY_FAULT_LATENCY`): several copies of the module in one
/// process can so each have their own target and control file. Call it before the copy's
/// first PKCS#11 call. Returns 0 when set, 1 when too late (the settings were read already),
/// 2 for a name the module does not read, 3 for a NULL or non-UTF-8 argument.
///
/// # Safety
/// `name` and `value` must be NULL or point to NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn hsmkey_fault_configure(
    name: *const c_char,
    value: *const c_char,
) -> c_int {
    if name.is_null() || value.is_null() {
        return 3;
    }
    // SAFETY: both are non-null NUL-terminated strings (the caller's contract).
    let (name, value) = unsafe { (CStr::from_ptr(name), CStr::from_ptr(value)) };
    let (Ok(name), Ok(value)) = (name.to_str(), value.to_str()) else {
        return 3;
    };
    std::panic::catch_unwind(|| engine::configure(name, value.into())).unwrap_or(3)
}

/// Writes the counters as JSON to the file named by `HSMKEY_FAULT_COUNTS`: 0 when written,
/// 1 when the variable is not set, 2 when the file cannot be written.
#[no_mangle]
pub extern "C" fn hsmkey_fault_dump() -> c_int {
    let open = engine::open_sessions();
    match catch(|| engine::write_counts(open)) {
        Some(Ok(())) => 0,
        Some(Err(code)) => code,
        None => 2,
    }
}

/// Re-reads the control file now; returns the number of lines that could not be used (each
/// one is described on stderr), or -1 on an internal error.
#[no_mangle]
pub extern "C" fn hsmkey_fault_reload() -> c_int {
    catch(engine::reload).map_or(-1, |n| c_int::try_from(n).unwrap_or(c_int::MAX))
}

/// How many sessions opened through this module are still open (closed by C_CloseSession,
/// C_CloseAllSessions, C_Finalize, a removed token or an injected effect).
#[no_mangle]
pub extern "C" fn hsmkey_fault_open_sessions() -> u64 {
    catch(engine::open_sessions).unwrap_or(u64::MAX)
}

/// The value of a return-code name (`"CKR_PIN_LOCKED"`), or -1 if unknown.
///
/// # Safety
/// `name` must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn hsmkey_fault_rv(name: *const c_char) -> i64 {
    if name.is_null() {
        return -1;
    }
    // SAFETY: non-null and NUL-terminated per this function's contract.
    let name = unsafe { CStr::from_ptr(name) };
    name.to_str()
        .ok()
        .and_then(rv::parse_rv)
        .and_then(|v| i64::try_from(v).ok())
        .unwrap_or(-1)
}

fn catch<T>(f: impl FnOnce() -> T) -> Option<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok()
}
