//! What a module offers: its slots, tokens and mechanisms (for `hsmkey tokens`). Only
//! slot/token/mechanism queries: no session, no login, so it never disturbs live pools.

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::{MechanismInfo, MechanismType};
use cryptoki::slot::{Slot, SlotInfo};

use crate::core::error::{Context, Result};
use crate::core::module::Module;
use crate::core::token::TokenInfo;

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
        match crate::core::token::read_token_info(module, slot) {
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
    use cryptoki_sys as ck;
    let names: [(ck::CK_FLAGS, &'static str); 19] = [
        (ck::CKF_RNG, "CKF_RNG"),
        (ck::CKF_WRITE_PROTECTED, "CKF_WRITE_PROTECTED"),
        (ck::CKF_LOGIN_REQUIRED, "CKF_LOGIN_REQUIRED"),
        (ck::CKF_USER_PIN_INITIALIZED, "CKF_USER_PIN_INITIALIZED"),
        (ck::CKF_RESTORE_KEY_NOT_NEEDED, "CKF_RESTORE_KEY_NOT_NEEDED"),
        (ck::CKF_CLOCK_ON_TOKEN, "CKF_CLOCK_ON_TOKEN"),
        (
            ck::CKF_PROTECTED_AUTHENTICATION_PATH,
            "CKF_PROTECTED_AUTHENTICATION_PATH",
        ),
        (ck::CKF_DUAL_CRYPTO_OPERATIONS, "CKF_DUAL_CRYPTO_OPERATIONS"),
        (ck::CKF_TOKEN_INITIALIZED, "CKF_TOKEN_INITIALIZED"),
        (
            ck::CKF_SECONDARY_AUTHENTICATION,
            "CKF_SECONDARY_AUTHENTICATION",
        ),
        (ck::CKF_USER_PIN_COUNT_LOW, "CKF_USER_PIN_COUNT_LOW"),
        (ck::CKF_USER_PIN_FINAL_TRY, "CKF_USER_PIN_FINAL_TRY"),
        (ck::CKF_USER_PIN_LOCKED, "CKF_USER_PIN_LOCKED"),
        (ck::CKF_USER_PIN_TO_BE_CHANGED, "CKF_USER_PIN_TO_BE_CHANGED"),
        (ck::CKF_SO_PIN_COUNT_LOW, "CKF_SO_PIN_COUNT_LOW"),
        (ck::CKF_SO_PIN_FINAL_TRY, "CKF_SO_PIN_FINAL_TRY"),
        (ck::CKF_SO_PIN_LOCKED, "CKF_SO_PIN_LOCKED"),
        (ck::CKF_SO_PIN_TO_BE_CHANGED, "CKF_SO_PIN_TO_BE_CHANGED"),
        (ck::CKF_ERROR_STATE, "CKF_ERROR_STATE"),
    ];
    let bits: Vec<(bool, &'static str)> = names
        .iter()
        .map(|(bit, name)| (t.flags() & bit != 0, *name))
        .collect();
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
        hardware_version: t.hardware_version(),
        firmware_version: t.firmware_version(),
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
