//! The unfiltered `C_GetMechanismList`: cryptoki's own drops the mechanism types it has no
//! name for (SoftHSM2's DES, DSA, DH, MD5 and SHA-224 families), and `hsmkey tokens` must show
//! what the token really offers.

use std::path::Path;

use cryptoki::mechanism::MechanismType;
use cryptoki_sys::{CKR_OK, CK_FUNCTION_LIST, CK_MECHANISM_TYPE, CK_RV, CK_SLOT_ID, CK_ULONG};

/// Every mechanism type the module lists for `slot`, or `None` if the module cannot be
/// asked directly (then the caller falls back to cryptoki's filtered list).
pub fn mechanism_types(path: &Path, slot: CK_SLOT_ID) -> Option<Vec<MechanismType>> {
    // SAFETY: loading a library runs its initializers. This is the module the caller has
    // already loaded and initialized through cryptoki (same path), so this `dlopen` only
    // takes another reference to the same instance.
    let lib = unsafe { cryptoki_sys::Pkcs11::new(path) }.ok()?;
    let mut list: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
    // SAFETY: `C_GetFunctionList` writes one pointer to the module's static function list.
    let rv: CK_RV = unsafe { lib.C_GetFunctionList(&mut list) };
    if rv != CKR_OK || list.is_null() {
        return None;
    }
    // SAFETY: the module returned a non-null pointer to its function list, valid while the
    // library stays loaded (`lib` lives to the end of this function).
    let get_list = unsafe { (*list).C_GetMechanismList }?;
    let mut count: CK_ULONG = 0;
    // SAFETY: a NULL list asks for the count only, per PKCS#11.
    if unsafe { get_list(slot, std::ptr::null_mut(), &mut count) } != CKR_OK {
        return None;
    }
    let mut codes: Vec<CK_MECHANISM_TYPE> = vec![0; usize::try_from(count).ok()?];
    // SAFETY: `codes` has room for `count` entries; the module writes at most that many and
    // updates `count`.
    if unsafe { get_list(slot, codes.as_mut_ptr(), &mut count) } != CKR_OK {
        return None;
    }
    codes.truncate(usize::try_from(count).ok()?);
    Some(
        codes
            .into_iter()
            // SAFETY: MechanismType is `#[repr(transparent)]` over CK_MECHANISM_TYPE (cryptoki
            // documents this so that the two have one layout) and has no other invariant: its
            // Display names unknown codes itself.
            .map(|code| unsafe { std::mem::transmute::<CK_MECHANISM_TYPE, MechanismType>(code) })
            .collect(),
    )
}
