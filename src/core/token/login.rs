//! The login a token's users share: one `C_Login` per token per process, reference-counted,
//! kept alive by an anchor session; PINs compared by fingerprint, never retried.
//!
//! A wrong PIN is tried at most once per process and token: the token's verdicts on a PIN
//! (`CKR_PIN_INCORRECT`, `CKR_PIN_INVALID`, `CKR_PIN_LEN_RANGE`, `CKR_PIN_LOCKED`) are
//! remembered process-wide, by the token's identity (manufacturer, model, serial, label:
//! the same token through another module file, a proxy or a spy is the same token) and the
//! PIN's keyed fingerprint, whichever pool, `hsm_session` or re-login got them, and raised
//! again without another `C_Login`. Any other answer (a device or transport error,
//! `CKR_PIN_EXPIRED`) says nothing about the PIN: it is raised, and the next use tries
//! again. Before every `C_Login` the token's PIN flags are read; if they cannot be, no PIN is
//! tried (a token about to lock must be able to say so), and a token reporting
//! `CKF_USER_PIN_FINAL_TRY` gets no PIN unless the pool allows it.
//!
//! A PIN is only ever recorded as "the PIN of the login" when the token accepted it: when
//! `C_Login` answers `CKR_USER_ALREADY_LOGGED_IN` (another library of the process logged
//! in), the PIN was not checked, so it is neither recorded nor compared.

use std::sync::atomic::Ordering;
use std::sync::Mutex;

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, UserType};

use super::slot::token_info;
use super::{next_epoch, TokenState};
use crate::core::error::{Error, Kind, Result};
use crate::core::log;
use crate::core::module::lock;
use crate::core::secret::{Pin, PinFingerprint};

#[derive(Default)]
pub(super) struct Login {
    pub(super) refs: usize,
    /// The PIN the token accepted for this login; None while nobody is logged in, or when
    /// the login is another library's (`CKR_USER_ALREADY_LOGGED_IN`: no PIN was checked).
    pub(super) fingerprint: Option<PinFingerprint>,
    pub(super) anchor: Option<Session>,
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

/// A token, as failed logins are remembered: the same token whatever slot it is in, through
/// whichever module file (a second copy of a vendor library, a proxy, a spy), and in
/// whichever pool or token state of the process.
#[derive(Clone, PartialEq, Eq)]
struct TokenId {
    manufacturer: String,
    model: String,
    serial: String,
    label: String,
}

struct FailedLogin {
    token: TokenId,
    pin: PinFingerprint,
    error: Error,
}

/// Every login that failed in this process (inherited by forked children: a child must not
/// try the parent's wrong PIN either). A handful at most: one per wrong PIN and token.
static FAILED_LOGINS: Mutex<Vec<FailedLogin>> = Mutex::new(Vec::new());

/// Forgets every failed login of the process, so that the same PINs may be tried again. For
/// tests that fake token failures (a real deployment restarts the process after fixing a
/// PIN instead).
pub fn forget_failed_logins() {
    lock(&FAILED_LOGINS).clear();
}

/// The token's verdicts on a PIN: the answers of `C_Login` that are remembered (the same PIN
/// is never tried on that token again in this process). Every other answer says nothing
/// about the PIN (a device or transport error, `CKR_PIN_EXPIRED` for a right PIN that must be
/// changed) and is retried by the next use.
pub fn is_pin_verdict(rv: Option<RvError>) -> bool {
    matches!(
        rv,
        Some(
            RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange | RvError::PinLocked
        )
    )
}

/// A PIN failure that stays: the token's verdict on the PIN, or hsmkey's own refusal to try
/// it (the token would lock, a different PIN is logged in). A pool raises it again on every
/// use without calling `C_Login`; any other failure is retried by the next use.
pub fn is_lasting_pin_failure(err: &Error) -> bool {
    err.is_pin_error() && (err.rv.is_none() || is_pin_verdict(err.rv))
}

impl TokenState {
    fn id(&self) -> TokenId {
        TokenId {
            manufacturer: self.manufacturer.clone(),
            model: self.model.clone(),
            serial: self.serial.clone(),
            label: self.label.clone(),
        }
    }

    /// The error of an earlier failed `C_Login` with this PIN on this token, if any.
    fn failed_before(&self, pin: &PinFingerprint) -> Option<Error> {
        let id = self.id();
        lock(&FAILED_LOGINS)
            .iter()
            .find(|f| f.token == id && f.pin.matches(pin))
            .map(|f| f.error.clone())
    }

    fn remember_failure(&self, pin: PinFingerprint, error: &Error) {
        let token = self.id();
        let mut failed = lock(&FAILED_LOGINS);
        if !failed
            .iter()
            .any(|f| f.token == token && f.pin.matches(&pin))
        {
            failed.push(FailedLogin {
                token,
                pin,
                error: error.clone(),
            });
        }
    }

    /// Joins the process's login with `pin`, logging in if nobody is. A different PIN than the
    /// one the token accepted for this login is refused without logging anyone out. A login
    /// the token never checked a PIN for (another library's) is joined with any PIN but one
    /// the token refused before: hsmkey cannot tell without logging the other library out.
    ///
    /// Without a PIN (`None`): on a token that requires no login (`CKF_LOGIN_REQUIRED` off,
    /// as kmsp11) the pool joins without any `C_Login`; on one that does, a clear
    /// `HSMPinError` (nothing is tried).
    pub fn join(&self, pin: Option<&Pin>, policy: PinPolicy) -> Result<Joined> {
        let Some(pin) = pin else {
            if self.login_required {
                return Err(Error::new(
                    Kind::Pin,
                    format!(
                        "{} requires a login (CKF_LOGIN_REQUIRED) and this pool has no PIN: \
                         pass user_pin= (or set HSM_PIN)",
                        self.describe()
                    ),
                ));
            }
            let mut login = lock(&self.login);
            if login.refs == 0 {
                // A new epoch for the handles cached under this (login-less) state.
                self.epoch.store(next_epoch(), Ordering::Release);
            }
            login.refs += 1;
            return Ok(Joined { logged_in: false });
        };
        let fingerprint = pin.fingerprint();
        let mut login = lock(&self.login);
        if login.refs > 0 {
            if let Some(error) = self.failed_before(&fingerprint) {
                return Err(error);
            }
            return match &login.fingerprint {
                Some(fp) if fp.matches(&fingerprint) => {
                    login.refs += 1;
                    Ok(Joined { logged_in: false })
                }
                // Only pools without a PIN (on a login-less token) hold it: log in now.
                None if login.anchor.is_none() => {
                    let verified = self.login_locked(&mut login, pin, &fingerprint, policy)?;
                    login.fingerprint = verified.then_some(fingerprint);
                    login.refs += 1;
                    Ok(Joined { logged_in: true })
                }
                None => {
                    login.refs += 1;
                    Ok(Joined { logged_in: false })
                }
                Some(_) => Err(Error::new(
                    Kind::Pin,
                    format!(
                        "this process is logged in to {} with a different PIN; a pool cannot \
                         ride on another PIN's login (close the other pools first)",
                        self.describe()
                    ),
                )),
            };
        }
        let verified = self.login_locked(&mut login, pin, &fingerprint, policy)?;
        login.fingerprint = verified.then_some(fingerprint);
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
        let fingerprint = pin.fingerprint();
        if self.login_locked(&mut login, pin, &fingerprint, policy)? {
            // The token accepted this PIN now (an earlier login may have been another
            // library's, with no PIN checked).
            login.fingerprint = Some(fingerprint);
        }
        Ok(true)
    }
    fn login_locked(
        &self,
        login: &mut Login,
        pin: &Pin,
        fingerprint: &PinFingerprint,
        policy: PinPolicy,
    ) -> Result<bool> {
        if let Some(error) = self.failed_before(fingerprint) {
            return Err(error);
        }
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
        // One try per use, whatever the answer.
        let verified = match anchor.login_with_raw(UserType::User, &pin.auth()) {
            Ok(()) => {
                log::log(log::INFO, &format!("logged in to {}", self.describe()));
                true
            }
            Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {
                // Someone else in this process (another PKCS#11 library) is logged in; the
                // token cannot tell us whether our PIN is right without logging them out.
                log::log(
                    log::WARNING,
                    &format!(
                        "{} was already logged in by another library in this process; \
                         using that login (the token did not check this pool's PIN)",
                        self.describe()
                    ),
                );
                false
            }
            Err(e) => {
                let _ = anchor.close();
                let mut err =
                    Error::from_cryptoki(e, &format!("logging in to {}", self.describe()));
                if err.rv == Some(RvError::UserNotLoggedIn) {
                    err.kind = Kind::Pin;
                }
                if is_pin_verdict(err.rv) {
                    err.message.push_str(
                        "; hsmkey will not try this PIN on this token again in this process",
                    );
                    self.remember_failure(fingerprint.clone(), &err);
                }
                return Err(err);
            }
        };
        login.anchor = Some(anchor);
        self.epoch.store(next_epoch(), Ordering::Release);
        Ok(verified)
    }

    /// Refuses to try a PIN the token says is locked, or (unless allowed) to spend the last
    /// try before the token locks it.
    fn check_pin_flags(&self, policy: PinPolicy) -> Result<()> {
        let info = match token_info(&self.module, self.slot) {
            Ok(info) => info,
            Err(e) => {
                let mut err = Error::from_cryptoki(
                    e,
                    &format!(
                        "reading the PIN state of {} before logging in (hsmkey does not try \
                         a PIN without it)",
                        self.describe()
                    ),
                );
                if err.kind == Kind::General {
                    err.kind = Kind::Session;
                }
                return Err(err);
            }
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
}
