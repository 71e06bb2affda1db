//! Finding the one slot whose token a pool names.

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::slot::Slot;

use super::info::{self, TokenInfo};

use crate::core::error::{Context, Error, Kind, Result};
use crate::core::module::{lock, Module};

/// How a pool names its token.
#[derive(Debug, Clone, Default)]
pub struct TokenCriteria {
    pub label: Option<String>,
    pub serial: Option<String>,
    pub slot_id: Option<u64>,
}

impl TokenCriteria {
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(l) = &self.label {
            parts.push(format!("label {l:?}"));
        }
        if let Some(s) = &self.serial {
            parts.push(format!("serial {s:?}"));
        }
        if let Some(id) = self.slot_id {
            parts.push(format!("slot id {id}"));
        }
        parts.join(", ")
    }
}

/// Finds the one slot whose token matches `criteria`. A slot whose token information cannot
/// be read is skipped (SoftHSM2 answers `CKR_GENERAL_ERROR` for a token deleted under it):
/// one broken token never hides the others.
pub fn find_slot(module: &Module, criteria: &TokenCriteria) -> Result<(Slot, TokenInfo)> {
    let slots = module
        .ctx
        .get_slots_with_token()
        .context("listing the slots with a token")?;
    let mut present = Vec::new();
    let mut seen = Vec::new();
    let mut matches = Vec::new();
    let mut unreadable = Vec::new();
    for slot in slots {
        let info = match token_info(module, slot) {
            Ok(info) => info,
            // A token may go away between the two calls.
            Err(CkError::Pkcs11(RvError::TokenNotPresent | RvError::DeviceRemoved, _)) => continue,
            Err(e) => {
                let e = Error::from_cryptoki(e, "reading token information");
                unreadable.push(format!(
                    "slot {} ({})",
                    slot.id(),
                    e.rv_name().unwrap_or(e.message)
                ));
                continue;
            }
        };
        let label = info.label().trim_end().to_string();
        let serial = info.serial_number().trim_end().to_string();
        let ok = criteria.label.as_deref().is_none_or(|l| l == label)
            && criteria.serial.as_deref().is_none_or(|s| s == serial)
            && criteria.slot_id.is_none_or(|id| id == slot.id());
        if info.token_initialized() {
            seen.push(label.clone());
            present.push(format!("{label:?} (serial {serial}, slot {})", slot.id()));
        }
        if ok {
            matches.push((slot, info));
        }
    }
    *lock(&module.seen_labels) = seen;
    module.set_saw_unreadable(!unreadable.is_empty());
    match matches.len() {
        1 => matches
            .pop()
            .filter(|(_, info)| info.token_initialized())
            .ok_or_else(|| not_initialized(module, criteria)),
        0 => Err(Error::new(
            Kind::TokenNotFound,
            format!(
                "no token with {} in {}; tokens present: {}{}",
                criteria.describe(),
                module.path.display(),
                if present.is_empty() {
                    "none".to_string()
                } else {
                    present.join(", ")
                },
                if unreadable.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; unreadable (deleted or broken tokens): {}",
                        unreadable.join(", ")
                    )
                }
            ),
        )),
        n => Err(Error::new(
            Kind::TokenNotFound,
            format!(
                "{n} tokens match {}: {}; pass token_serial= (or slot_id=) to choose one",
                criteria.describe(),
                matches
                    .iter()
                    .map(|(s, i)| format!(
                        "serial {} in slot {}",
                        i.serial_number().trim_end(),
                        s.id()
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// The token a pool names (by slot id or serial) has never been initialized: it has no label,
/// no PIN and no keys yet, and the module refuses sessions on it (`CKR_TOKEN_NOT_RECOGNIZED`).
fn not_initialized(module: &Module, criteria: &TokenCriteria) -> Error {
    let slot = criteria
        .slot_id
        .map_or_else(|| "SLOT".to_string(), |id| id.to_string());
    let softhsm = module.path.to_string_lossy().contains("softhsm2");
    let how = if softhsm {
        format!("softhsm2-util --init-token --slot {slot} --label LABEL")
    } else {
        format!(
            "pkcs11-tool --module {} --init-token --slot {slot} --label LABEL, then --init-pin",
            module.path.display()
        )
    };
    Error::new(
        Kind::TokenNotFound,
        format!(
            "the token with {} in {} is not initialized (no label, PIN or keys yet): \
             initialize it first, e.g. with `{how}`",
            criteria.describe(),
            module.path.display()
        ),
    )
}

/// `C_GetTokenInfo`, tried again a few times on `CKR_GENERAL_ERROR`/`CKR_FUNCTION_FAILED`:
/// SoftHSM2 re-reads its token files here and answers so, once in a while, while other
/// processes start up on the same token directory.
pub(super) fn token_info(module: &Module, slot: Slot) -> std::result::Result<TokenInfo, CkError> {
    let mut attempt = 0u64;
    loop {
        match info::read(module, slot) {
            Err(CkError::Pkcs11(RvError::GeneralError | RvError::FunctionFailed, _))
                if attempt < 4 =>
            {
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(5 * attempt));
            }
            other => return other,
        }
    }
}
