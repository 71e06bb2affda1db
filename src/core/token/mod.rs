//! The state every pool, session and `hsm_session` on one token shares within the process:
//! its mechanisms, its login (`login`) and the login epoch that key handles are cached
//! under. `slot` finds the token by label, serial or slot id.
//!
//! PKCS#11 login belongs to the application and the token, not to a session: one `C_Login`
//! logs in every session of the process, one `C_Logout` logs all of them out, and closing the
//! last session logs out too. So the login is reference-counted here, and an *anchor* session
//! stays open while anyone holds a reference, keeping the login alive whatever the pools do
//! with their own sessions.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use cryptoki::mechanism::MechanismType;
use cryptoki::session::{Session, SessionState};
use cryptoki::slot::Slot;

use crate::core::error::{Context, Error, Result};
use crate::core::mechanism::MechanismSet;
use crate::core::module::{lock, Module};

mod info;
mod login;
mod slot;

pub use info::{read as read_token_info, TokenInfo};

use login::Login;
pub use login::{forget_failed_logins, is_lasting_pin_failure, is_pin_verdict, Joined, PinPolicy};
pub use slot::{find_slot, TokenCriteria};

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
    /// The token's manufacturer and model (with serial and label: its identity, under which
    /// wrong PINs are remembered).
    pub manufacturer: String,
    pub model: String,
    mechanisms: HashSet<cryptoki_sys::CK_MECHANISM_TYPE>,
    epoch: AtomicU64,
    login: Mutex<Login>,
    /// Set when the token went away: this state is dead, the next pool to connect makes a
    /// new one.
    gone: AtomicBool,
    /// `CKF_LOGIN_REQUIRED`: off on tokens whose keys need no login (kmsp11); a pool without
    /// a PIN makes no `C_Login` there.
    pub login_required: bool,
    /// `ulMaxSessionCount` / `ulMaxRwSessionCount` when the token states a number: the pool
    /// never opens more.
    pub max_sessions: Option<u64>,
    pub max_rw_sessions: Option<u64>,
}

impl MechanismSet for TokenState {
    fn has(&self, mechanism: MechanismType) -> bool {
        self.mechanisms.contains(&*mechanism)
    }
    fn describe(&self) -> String {
        TokenState::describe(self)
    }
}

pub fn is_logged_in(state: SessionState) -> bool {
    matches!(
        state,
        SessionState::RoUser | SessionState::RwUser | SessionState::RwSecurityOfficer
    )
}

/// The token states of the process, by module path and slot: one per token, shared.
type States = Mutex<HashMap<(PathBuf, u64), Weak<TokenState>>>;

fn states() -> &'static States {
    static STATES: OnceLock<States> = OnceLock::new();
    STATES.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The shared state of the token in `slot` of `module`, made with `make` on first use (or
/// when the last one went away with its token, or belongs to a module of the parent process).
pub fn shared(
    module: &Arc<Module>,
    slot: Slot,
    make: impl FnOnce() -> Result<TokenState>,
) -> Result<Arc<TokenState>> {
    let key = (module.path.clone(), slot.id());
    let current = |all: &HashMap<(PathBuf, u64), Weak<TokenState>>| {
        all.get(&key)
            .and_then(Weak::upgrade)
            .filter(|state| !state.is_gone() && Arc::ptr_eq(&state.module, module))
    };
    if let Some(state) = current(&lock(states())) {
        return Ok(state);
    }
    // Made without the map's lock (it lists the token's mechanisms: a PKCS#11 call, and a
    // child forked meanwhile must not find the lock held); a state another thread made
    // meanwhile wins.
    let made = Arc::new(make()?);
    let mut all = lock(states());
    if let Some(state) = current(&all) {
        return Ok(state);
    }
    all.insert(key, Arc::downgrade(&made));
    Ok(made)
}

/// True while any token state of `module` is alive (someone uses the module).
pub fn module_in_use(module: &Arc<Module>) -> bool {
    lock(states())
        .values()
        .filter_map(Weak::upgrade)
        .any(|state| Arc::ptr_eq(&state.module, module))
}

/// Marks every token state of `module` dead (after the module was re-initialized: their
/// sessions and login are gone); the next use of each makes a new one.
pub fn mark_module_gone(module: &Arc<Module>) {
    let states: Vec<Arc<TokenState>> = lock(states())
        .values()
        .filter_map(Weak::upgrade)
        .filter(|state| Arc::ptr_eq(&state.module, module))
        .collect();
    for state in states {
        state.mark_gone();
    }
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
            manufacturer: info.manufacturer_id().trim_end().to_string(),
            model: info.model().trim_end().to_string(),
            mechanisms,
            epoch: AtomicU64::new(0),
            login: Mutex::new(Login::default()),
            gone: AtomicBool::new(false),
            login_required: info.login_required(),
            max_sessions: info.max_session_count(),
            max_rw_sessions: info.max_rw_session_count(),
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
    /// Marks this state dead after the token went away; forgets the anchor without calling
    /// the module (its handle means nothing any more).
    pub fn mark_gone(&self) {
        self.gone.store(true, Ordering::Release);
        self.forget_anchor();
        self.epoch.store(next_epoch(), Ordering::Release);
    }
    /// Reads the token's information: fails with `HSMTokenNotFoundError` when the token is
    /// no longer there (SoftHSM2 answers `CKR_GENERAL_ERROR` for a token deleted under it).
    pub fn check_present(&self) -> Result<()> {
        match slot::token_info(&self.module, self.slot) {
            Ok(_) => Ok(()),
            Err(e) => {
                let mut err = Error::from_cryptoki(
                    e,
                    &format!("{} cannot be read any more", self.describe()),
                );
                err.kind = crate::core::error::Kind::TokenNotFound;
                Err(err)
            }
        }
    }
    pub fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Acquire)
    }
    /// In a forked child, for state that belongs to the parent: forgets the login without
    /// calling the module, and without waiting for the login's lock (a thread of the parent
    /// may have held it in `C_Login` when the process forked: it never lets go here).
    pub fn forget_anchor_after_fork(&self) {
        if let Ok(mut login) = self.login.try_lock() {
            if let Some(anchor) = login.anchor.take() {
                std::mem::forget(anchor);
            }
        }
        // Else the state is the parent's and abandoned with its anchor: nothing calls it.
    }
    /// Forgets the login without calling the module (the token went away).
    pub fn forget_anchor(&self) {
        let mut login = lock(&self.login);
        if let Some(anchor) = login.anchor.take() {
            std::mem::forget(anchor);
        }
    }
}
