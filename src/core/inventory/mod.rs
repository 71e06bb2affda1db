//! What a module offers: its slots, tokens and mechanisms (for `hsmkey tokens`). Only
//! slot/token/mechanism queries: no session, no login, so it never disturbs live pools.

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::{MechanismInfo, MechanismType};
use cryptoki::slot::{Slot, SlotInfo, TokenInfo};

use crate::core::error::{Context, Result};
use crate::core::module::Module;

mod raw_mechanisms;

/// One mechanism of a token.
pub struct MechanismEntry {
    pub name: String,
    pub code: u64,
    pub min_key_size: u64,
    pub max_key_size: u64,
    pub flags: Vec<&'static str>,
}

/// One slot, with its token if one is present.
pub struct SlotEntry {
    pub slot_id: u64,
    pub description: String,
    pub manufacturer: String,
    pub slot_flags: Vec<&'static str>,
    pub token: Option<TokenEntry>,
}

pub struct TokenEntry {
    pub label: String,
    pub manufacturer: String,
    pub model: String,
    pub serial: String,
    pub flags: Vec<&'static str>,
    pub hardware_version: String,
    pub firmware_version: String,
    pub mechanisms: Vec<MechanismEntry>,
}

/// Every slot of the module, in `C_GetSlotList(FALSE)` order.
pub fn list(module: &Module, with_mechanisms: bool) -> Result<Vec<SlotEntry>> {
    let slots = module
        .ctx
        .get_all_slots()
        .context("listing the module's slots")?;
    slots
        .into_iter()
        .map(|slot| slot_entry(module, slot, with_mechanisms))
        .collect()
}

fn slot_entry(module: &Module, slot: Slot, with_mechanisms: bool) -> Result<SlotEntry> {
    let info = module
        .ctx
        .get_slot_info(slot)
        .context("reading slot information")?;
    let token = if info.token_present() {
        match module.ctx.get_token_info(slot) {
            Ok(t) => Some(token_entry(module, slot, &t, with_mechanisms)?),
            Err(CkError::Pkcs11(RvError::TokenNotPresent | RvError::TokenNotRecognized, _)) => None,
            Err(e) => {
                return Err(crate::core::error::Error::from_cryptoki(
                    e,
                    "reading token information",
                ))
            }
        }
    } else {
        None
    };
    Ok(SlotEntry {
        slot_id: slot.id(),
        description: info.slot_description().trim_end().to_string(),
        manufacturer: info.manufacturer_id().trim_end().to_string(),
        slot_flags: slot_flags(&info, token.is_some()),
        token,
    })
}

fn slot_flags(info: &SlotInfo, present: bool) -> Vec<&'static str> {
    let mut out = Vec::new();
    if present {
        out.push("CKF_TOKEN_PRESENT");
    }
    if info.removable_device() {
        out.push("CKF_REMOVABLE_DEVICE");
    }
    if info.hardware_slot() {
        out.push("CKF_HW_SLOT");
    }
    out
}

fn token_entry(
    module: &Module,
    slot: Slot,
    t: &TokenInfo,
    with_mechanisms: bool,
) -> Result<TokenEntry> {
    let bits: [(bool, &'static str); 19] = [
        (t.rng(), "CKF_RNG"),
        (t.write_protected(), "CKF_WRITE_PROTECTED"),
        (t.login_required(), "CKF_LOGIN_REQUIRED"),
        (t.user_pin_initialized(), "CKF_USER_PIN_INITIALIZED"),
        (t.restore_key_not_needed(), "CKF_RESTORE_KEY_NOT_NEEDED"),
        (t.clock_on_token(), "CKF_CLOCK_ON_TOKEN"),
        (
            t.protected_authentication_path(),
            "CKF_PROTECTED_AUTHENTICATION_PATH",
        ),
        (t.dual_crypto_operations(), "CKF_DUAL_CRYPTO_OPERATIONS"),
        (t.token_initialized(), "CKF_TOKEN_INITIALIZED"),
        (t.secondary_authentication(), "CKF_SECONDARY_AUTHENTICATION"),
        (t.user_pin_count_low(), "CKF_USER_PIN_COUNT_LOW"),
        (t.user_pin_final_try(), "CKF_USER_PIN_FINAL_TRY"),
        (t.user_pin_locked(), "CKF_USER_PIN_LOCKED"),
        (t.user_pin_to_be_changed(), "CKF_USER_PIN_TO_BE_CHANGED"),
        (t.so_pin_count_low(), "CKF_SO_PIN_COUNT_LOW"),
        (t.so_pin_final_try(), "CKF_SO_PIN_FINAL_TRY"),
        (t.so_pin_locked(), "CKF_SO_PIN_LOCKED"),
        (t.so_pin_to_be_changed(), "CKF_SO_PIN_TO_BE_CHANGED"),
        (t.error_state(), "CKF_ERROR_STATE"),
    ];
    let mechanisms = if with_mechanisms {
        let types = match raw_mechanisms::mechanism_types(&module.path, slot.id()) {
            Some(types) => types,
            None => module
                .ctx
                .get_mechanism_list(slot)
                .context("listing the token's mechanisms")?,
        };
        types
            .into_iter()
            .map(|m| mechanism_entry(module, slot, m))
            .collect()
    } else {
        Vec::new()
    };
    Ok(TokenEntry {
        label: t.label().trim_end().to_string(),
        manufacturer: t.manufacturer_id().trim_end().to_string(),
        model: t.model().trim_end().to_string(),
        serial: t.serial_number().trim_end().to_string(),
        flags: bits.iter().filter(|(on, _)| *on).map(|(_, n)| *n).collect(),
        hardware_version: t.hardware_version().to_string(),
        firmware_version: t.firmware_version().to_string(),
        mechanisms,
    })
}

fn mechanism_entry(module: &Module, slot: Slot, m: MechanismType) -> MechanismEntry {
    let code: u64 = *m;
    let name = m.to_string();
    let name = if name.starts_with("unknown") {
        if code >= 0x8000_0000 {
            format!("CKM_VENDOR_DEFINED+0x{:x}", code - 0x8000_0000)
        } else {
            format!("CKM_0x{code:08x}")
        }
    } else {
        name
    };
    match module.ctx.get_mechanism_info(slot, m) {
        Ok(info) => MechanismEntry {
            name,
            code,
            min_key_size: info.min_key_size() as u64,
            max_key_size: info.max_key_size() as u64,
            flags: mechanism_flags(&info),
        },
        Err(_) => MechanismEntry {
            name,
            code,
            min_key_size: 0,
            max_key_size: 0,
            flags: Vec::new(),
        },
    }
}

fn mechanism_flags(i: &MechanismInfo) -> Vec<&'static str> {
    let bits: [(bool, &'static str); 20] = [
        (i.hardware(), "CKF_HW"),
        (i.encrypt(), "CKF_ENCRYPT"),
        (i.decrypt(), "CKF_DECRYPT"),
        (i.digest(), "CKF_DIGEST"),
        (i.sign(), "CKF_SIGN"),
        (i.sign_recover(), "CKF_SIGN_RECOVER"),
        (i.verify(), "CKF_VERIFY"),
        (i.verify_recover(), "CKF_VERIFY_RECOVER"),
        (i.generate(), "CKF_GENERATE"),
        (i.generate_key_pair(), "CKF_GENERATE_KEY_PAIR"),
        (i.wrap(), "CKF_WRAP"),
        (i.unwrap(), "CKF_UNWRAP"),
        (i.derive(), "CKF_DERIVE"),
        (i.extension(), "CKF_EXTENSION"),
        (i.ec_f_p(), "CKF_EC_F_P"),
        (i.ec_f_2m(), "CKF_EC_F_2M"),
        (i.ec_from_parameters(), "CKF_EC_ECPARAMETERS"),
        (i.ec_from_oid(), "CKF_EC_OID"),
        (i.ec_uncompressed(), "CKF_EC_UNCOMPRESS"),
        (i.ec_compressed(), "CKF_EC_COMPRESS"),
    ];
    bits.iter().filter(|(on, _)| *on).map(|(_, n)| *n).collect()
}
