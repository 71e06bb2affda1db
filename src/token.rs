//! Finding a token (by label, serial or slot id) and the login state that every pool, session
//! and `hsm_session` on that token shares within the process.
//!
//! PKCS#11 login belongs to the application and the token, not to a session: one `C_Login`
//! logs in every session of the process, one `C_Logout` logs all of them out, and closing the
//! last session logs out too. So the login is reference-counted here, and an *anchor* session
//! stays open while anyone holds a reference, keeping the login alive whatever the pools do
//! with their own sessions.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::MechanismType;
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::{Slot, TokenInfo};

use crate::error::{Context, Error, Kind, Result};
use crate::log;
use crate::mechanism::MechanismSet;
use crate::module::{lock, Module};
use crate::secret::{Pin, PinFingerprint};

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

/// Finds the one slot whose token matches `criteria`.
pub fn find_slot(module: &Module, criteria: &TokenCriteria) -> Result<(Slot, TokenInfo)> {
    let slots = module
        .ctx
        .get_slots_with_token()
        .context("listing the slots with a token")?;
    let mut present = Vec::new();
    let mut seen = Vec::new();
    let mut matches = Vec::new();
    for slot in slots {
        let info = match token_info(module, slot) {
            Ok(info) => info,
            // A token may go away between the two calls.
            Err(CkError::Pkcs11(RvError::TokenNotPresent | RvError::DeviceRemoved, _)) => continue,
            Err(e) => return Err(Error::from_cryptoki(e, "reading token information")),
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
    match matches.len() {
        1 => matches
            .pop()
            .ok_or_else(|| Error::new(Kind::TokenNotFound, "no token")),
        0 => Err(Error::new(
            Kind::TokenNotFound,
            format!(
                "no token with {} in {}; tokens present: {}",
                criteria.describe(),
                module.path.display(),
                if present.is_empty() {
                    "none".to_string()
                } else {
                    present.join(", ")
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

/// `C_GetTokenInfo`, tried again a few times on `CKR_GENERAL_ERROR`/`CKR_FUNCTION_FAILED`:
/// SoftHSM2 re-reads its token files here and answers so, once in a while, while other
/// processes start up on the same token directory.
fn token_info(module: &Module, slot: Slot) -> std::result::Result<TokenInfo, CkError> {
    let mut attempt = 0u64;
    loop {
        match module.ctx.get_token_info(slot) {
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

/// Epochs are unique in the process (and across forks: a child continues the counter), so a
/// handle cached under one epoch can never be mistaken for one of another token state.
static EPOCHS: AtomicU64 = AtomicU64::new(1);

pub fn next_epoch() -> u64 {
    EPOCHS.fetch_add(1, Ordering::Relaxed) + 1
}

/// The login shared by everything in this process that uses one token.
pub struct TokenState {
    pub module: Arc<Module>,
    pub slot: Slot,
    pub label: String,
    pub serial: String,
    mechanisms: HashSet<cryptoki_sys::CK_MECHANISM_TYPE>,
    epoch: AtomicU64,
    login: Mutex<Login>,
    /// Set when the token went away: this state is dead, the next pool to connect makes a
    /// new one.
    gone: AtomicBool,
}

struct Login {
    refs: usize,
    fingerprint: Option<PinFingerprint>,
    anchor: Option<Session>,
}

/// What a pool allows when logging in.
#[derive(Debug, Clone, Copy, Default)]
pub struct PinPolicy {
    /// Try the PIN even when the token says a wrong one would lock it.
    pub allow_final_try: bool,
}

/// What joining the login did.
pub struct Joined {
    /// True when this call made a `C_Login`; false when it joined an existing login.
    pub logged_in: bool,
}

impl MechanismSet for TokenState {
    fn has(&self, mechanism: MechanismType) -> bool {
        self.mechanisms.contains(&*mechanism)
    }
}

pub fn is_logged_in(state: SessionState) -> bool {
    matches!(
        state,
        SessionState::RoUser | SessionState::RwUser | SessionState::RwSecurityOfficer
    )
}

impl TokenState {
    pub fn new(module: Arc<Module>, slot: Slot, info: &TokenInfo) -> Result<Self> {
        let mechanisms = module
            .ctx
            .get_mechanism_list(slot)
            .context("listing the token's mechanisms")?
            .into_iter()
            .map(|m| *m)
            .collect();
        Ok(TokenState {
            module,
            slot,
            label: info.label().trim_end().to_string(),
            serial: info.serial_number().trim_end().to_string(),
            mechanisms,
            epoch: AtomicU64::new(0),
            login: Mutex::new(Login {
                refs: 0,
                fingerprint: None,
                anchor: None,
            }),
            gone: AtomicBool::new(false),
        })
    }

    /// The current login epoch: changes on every (re-)login; 0 before the first.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub fn describe(&self) -> String {
        format!("token {:?} (serial {})", self.label, self.serial)
    }

    /// Opens a session that is never closed by dropping it: closing is always explicit, so
    /// that a forked child or a session lost behind our back never closes a handle it does not
    /// own.
    pub fn open_session(&self, rw: bool) -> Result<Session> {
        let r = if rw {
            self.module.ctx.open_rw_session_no_drop(self.slot)
        } else {
            self.module.ctx.open_ro_session_no_drop(self.slot)
        };
        r.map_err(|e| Error::from_cryptoki(e, &format!("opening a session on {}", self.describe())))
    }

    /// Joins the process's login with `pin`, logging in if nobody is. A different PIN than the
    /// one the process logged in with is refused without logging anyone out.
    pub fn join(&self, pin: &Pin, policy: PinPolicy) -> Result<Joined> {
        let fingerprint = pin.fingerprint();
        let mut login = lock(&self.login);
        if login.refs > 0 {
            return match &login.fingerprint {
                Some(fp) if fp.matches(&fingerprint) => {
                    login.refs += 1;
                    Ok(Joined { logged_in: false })
                }
                _ => Err(Error::new(
                    Kind::Pin,
                    format!(
                        "this process is logged in to {} with a different PIN; a pool cannot \
                         ride on another PIN's login (close the other pools first)",
                        self.describe()
                    ),
                )),
            };
        }
        self.login_locked(&mut login, pin, policy)?;
        login.fingerprint = Some(fingerprint);
        login.refs = 1;
        Ok(Joined { logged_in: true })
    }

    /// Logs in again after the login was lost behind our back (a logout or
    /// `C_CloseAllSessions` by another library, a token restart). Does nothing if another
    /// thread already did it since `seen_epoch`. Never called after a PIN failure.
    pub fn relogin(&self, pin: &Pin, policy: PinPolicy, seen_epoch: u64) -> Result<bool> {
        let mut login = lock(&self.login);
        if self.epoch() != seen_epoch {
            return Ok(false);
        }
        if login.refs == 0 {
            return Err(Error::new(
                Kind::PoolClosed,
                format!("nobody holds the login of {} any more", self.describe()),
            ));
        }
        self.login_locked(&mut login, pin, policy)?;
        Ok(true)
    }

    fn login_locked(&self, login: &mut Login, pin: &Pin, policy: PinPolicy) -> Result<()> {
        // Reuse the anchor if it is still there; forget it (without closing: the handle may
        // already belong to somebody else) if it is gone.
        let anchor = match login.anchor.take() {
            Some(s) if s.get_session_info().is_ok() => s,
            _ => self.open_session(false)?,
        };
        if let Err(e) = self.check_pin_flags(policy) {
            let _ = anchor.close();
            return Err(e);
        }
        let mut result = anchor.login_with_raw(UserType::User, &pin.auth());
        if let Err(CkError::Pkcs11(RvError::GeneralError, _)) = result {
            // SoftHSM2 answers CKR_GENERAL_ERROR before it looks at the PIN when it cannot
            // read its token file (another process was writing it: several workers logging
            // in at the same moment). Once more, after a pause, if the token still allows it.
            log::log(
                log::WARNING,
                &format!(
                    "logging in to {} failed with CKR_GENERAL_ERROR; trying once more",
                    self.describe()
                ),
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
            if let Err(e) = self.check_pin_flags(policy) {
                let _ = anchor.close();
                return Err(e);
            }
            result = anchor.login_with_raw(UserType::User, &pin.auth());
        }
        match result {
            Ok(()) => {
                log::log(log::INFO, &format!("logged in to {}", self.describe()));
            }
            Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {
                // Someone else in this process (another PKCS#11 library) is logged in; the
                // token cannot tell us whether our PIN is right without logging them out.
                log::log(
                    log::WARNING,
                    &format!(
                        "{} was already logged in by another library in this process; \
                         using that login",
                        self.describe()
                    ),
                );
            }
            Err(e) => {
                let _ = anchor.close();
                let mut err =
                    Error::from_cryptoki(e, &format!("logging in to {}", self.describe()));
                if err.rv == Some(RvError::UserNotLoggedIn) {
                    err.kind = Kind::Pin;
                }
                return Err(err);
            }
        }
        login.anchor = Some(anchor);
        self.epoch.store(next_epoch(), Ordering::Release);
        Ok(())
    }

    /// Refuses to try a PIN the token says is locked, or (unless allowed) to spend the last
    /// try before the token locks it.
    fn check_pin_flags(&self, policy: PinPolicy) -> Result<()> {
        let Ok(info) = self.module.ctx.get_token_info(self.slot) else {
            return Ok(());
        };
        if info.user_pin_locked() {
            return Err(Error {
                kind: Kind::Pin,
                message: format!(
                    "the user PIN of {} is locked; the security officer must unlock it \
                     (hsmkey did not try the PIN)",
                    self.describe()
                ),
                rv: Some(RvError::PinLocked),
                function: None,
            });
        }
        if info.user_pin_final_try() && !policy.allow_final_try {
            return Err(Error::new(
                Kind::Pin,
                format!(
                    "{} reports that one more wrong PIN locks the user PIN \
                     (CKF_USER_PIN_FINAL_TRY); hsmkey did not try the PIN. Check it, then pass \
                     allow_final_pin_try=True to try it anyway",
                    self.describe()
                ),
            ));
        }
        if info.user_pin_count_low() {
            log::log(
                log::WARNING,
                &format!(
                    "{} reports failed PIN attempts (CKF_USER_PIN_COUNT_LOW)",
                    self.describe()
                ),
            );
        }
        Ok(())
    }

    /// Marks this state dead after the token went away; forgets the anchor without calling
    /// the module (its handle means nothing any more).
    pub fn mark_gone(&self) {
        self.gone.store(true, Ordering::Release);
        self.forget_anchor();
        self.epoch.store(next_epoch(), Ordering::Release);
    }

    pub fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Acquire)
    }

    /// Drops one reference to the login; the last one logs out and closes the anchor.
    pub fn leave(&self) {
        let mut login = lock(&self.login);
        if login.refs == 0 {
            return;
        }
        login.refs -= 1;
        if login.refs > 0 {
            return;
        }
        login.fingerprint = None;
        if let Some(anchor) = login.anchor.take() {
            match anchor.logout() {
                // Tokens differ: SoftHSM2 says CKR_OK when nobody is logged in, others say
                // CKR_USER_NOT_LOGGED_IN; both mean we are logged out now.
                Ok(()) | Err(CkError::Pkcs11(RvError::UserNotLoggedIn, _)) => {}
                Err(CkError::Pkcs11(RvError::SessionHandleInvalid | RvError::SessionClosed, _)) => {
                    // The anchor is gone (and so is the login).
                    self.epoch.store(next_epoch(), Ordering::Release);
                    return;
                }
                Err(e) => log::log(
                    log::WARNING,
                    &format!("logging out of {}: {e}", self.describe()),
                ),
            }
            let _ = anchor.close();
            log::log(log::INFO, &format!("logged out of {}", self.describe()));
        }
        self.epoch.store(next_epoch(), Ordering::Release);
    }

    /// Forgets the login without calling the module: used in a forked child for state that
    /// belongs to the parent.
    pub fn forget_anchor(&self) {
        let mut login = lock(&self.login);
        if let Some(anchor) = login.anchor.take() {
            std::mem::forget(anchor);
        }
    }
}
