//! Healing after a failed operation: the session itself says what broke (tokens answer the
//! same fault with different codes), that is healed once, and the operation runs once more.

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::Session;

use super::{Idle, Lease, Pool, State};
use crate::core::error::{Error, Kind, Result};
use crate::core::log;
use crate::core::module::lock;
use crate::core::token::{is_logged_in, TokenState};

/// Why an operation failed, as far as healing goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    SessionGone,
    LoggedOut,
    StaleHandle,
    TokenGone,
    /// The module answers nothing any more (its device or its connection went away).
    ModuleLost,
    /// The code said "session gone" but the session is there: try once more on it.
    Retry,
}

impl Pool {
    /// Runs `op` on the lease's session; if it fails because the session, the login or the
    /// key handle was lost, heals that once and runs it once more. `op` gets `refind = true`
    /// on the retry after a stale key handle.
    pub fn run<T>(
        &self,
        lease: &mut Lease,
        mut op: impl FnMut(&Session, &TokenState, bool) -> Result<T>,
    ) -> Result<T> {
        lease.check_owner()?;
        if lease.token.is_gone() {
            // The token (or the whole module) went away under another lease: this session's
            // handle means nothing now, or names somebody else's session.
            self.reconnect(lease)?;
        }
        if lease.session.is_none() {
            // A session replaced after an earlier failure could not be reopened then.
            lease.session = Some(lease.token.open_session(lease.rw)?);
        }
        let seen_epoch = lease.token.epoch();
        let seen_generation = lease.token.module.generation();
        let err = match op(lease.session()?, &lease.token, false) {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let Some(fault) = diagnose(lease, &err) else {
            self.replace_after_error(lease, &err);
            return Err(err);
        };
        self.heal(lease, fault, (seen_epoch, seen_generation), &err)?;
        lock(&self.state).stats.recoveries += 1;
        let result = op(lease.session()?, &lease.token, fault == Fault::StaleHandle);
        if let Err(e) = &result {
            self.replace_after_error(lease, e);
        }
        result
    }
    /// After a token error that was not healed, the session may still carry an active
    /// operation (a token that fails `C_Sign` without ending it answers every later
    /// `C_SignInit` with `CKR_OPERATION_ACTIVE`), or be dead: swap it for a fresh one, closing
    /// it if the token still knows it and forgetting it if not.
    fn replace_after_error(&self, lease: &mut Lease, err: &Error) {
        if err.rv.is_none() || err.is_pin_error() {
            return;
        }
        if let Some(old) = lease.session.take() {
            if old.get_session_info().is_ok() {
                let _ = old.close();
            } else {
                std::mem::forget(old);
            }
        }
        lock(&self.state).stats.discarded += 1;
        lease.session = lease.token.open_session(lease.rw).ok();
    }
    /// Closes the lease's session and lends a fresh one in its place, although no error
    /// says it is broken: for a session that may still hold a secret session object that
    /// could not be destroyed (closing a session destroys its session objects).
    pub fn discard_session(&self, lease: &mut Lease, why: &str) {
        log::log(
            log::WARNING,
            &format!("discarding a session on {}: {why}", lease.token.describe()),
        );
        if let Some(old) = lease.session.take() {
            if old.get_session_info().is_ok() {
                if let Err(e) = old.close() {
                    log::log(
                        log::WARNING,
                        &format!("closing the session failed too ({e})"),
                    );
                }
            } else {
                // The token no longer knows it: its objects are gone with it.
                std::mem::forget(old);
            }
        }
        lock(&self.state).stats.discarded += 1;
        lease.session = lease.token.open_session(lease.rw).ok();
    }
    /// Heals `fault` once; `seen` is the token's login epoch and the module's generation
    /// when the operation started (what another thread healed since is not healed again).
    fn heal(&self, lease: &mut Lease, fault: Fault, seen: (u64, u64), err: &Error) -> Result<()> {
        let (seen_epoch, seen_generation) = seen;
        let what = err.rv_name().unwrap_or_else(|| err.message.clone());
        match fault {
            Fault::Retry => {
                log::log(
                    log::INFO,
                    &format!("the token answered {what} for a session it still knows; retrying"),
                );
                Ok(())
            }
            Fault::StaleHandle => {
                log::log(
                    log::INFO,
                    &format!("key handle no longer valid ({what}); finding the key again"),
                );
                Ok(())
            }
            Fault::LoggedOut => {
                log::log(
                    log::WARNING,
                    &format!(
                        "login to {} was lost ({what}); logging in again",
                        lease.token.describe()
                    ),
                );
                self.relogin(lease, seen_epoch)
            }
            Fault::TokenGone => {
                log::log(
                    log::WARNING,
                    &format!(
                        "{} went away ({what}); dropping its sessions and finding it again",
                        lease.token.describe()
                    ),
                );
                *lock(&self.lost) = Some(lease.token.describe());
                lease.token.mark_gone();
                self.reconnect(lease)
            }
            Fault::ModuleLost => {
                let module = lease.token.module.clone();
                if module.reinitialize_after_loss(seen_generation)? {
                    crate::core::token::mark_module_gone(&module);
                }
                self.reconnect(lease).map_err(|mut e| {
                    e.message = format!(
                        "{} stopped answering ({what}) and was re-initialized; then: {}",
                        module.path.display(),
                        e.message
                    );
                    e
                })
            }
            Fault::SessionGone => {
                log::log(
                    log::WARNING,
                    &format!(
                        "session on {} was lost ({what}); discarding it and retrying on a \
                         fresh one",
                        lease.token.describe()
                    ),
                );
                if let Some(dead) = lease.session.take() {
                    std::mem::forget(dead);
                }
                let purged = self.purge_dead_idle(false);
                lock(&self.state).stats.discarded += 1 + purged;
                let fresh = lease.token.open_session(lease.rw)?;
                let logged_in = fresh
                    .get_session_info()
                    .map(|i| is_logged_in(i.session_state()))
                    .unwrap_or(false);
                lease.session = Some(fresh);
                if logged_in {
                    Ok(())
                } else {
                    self.relogin(lease, seen_epoch)
                }
            }
        }
    }
    /// The lease's token state is dead: forget its session (without calling the module) and
    /// the pool's idle ones, connect again (find the token, log in) and open a session.
    fn reconnect(&self, lease: &mut Lease) -> Result<()> {
        if let Some(dead) = lease.session.take() {
            std::mem::forget(dead);
        }
        {
            let mut st = lock(&self.state);
            if st.conn.as_ref().map(|c| c.gen) == Some(lease.gen) {
                st.conn = None;
            }
        }
        let purged = self.purge_dead_idle(true);
        lock(&self.state).stats.discarded += 1 + purged;
        // This lease's session is given up: it does not keep the module from a rescan.
        let conn = self.connection_holding(1)?;
        lease.token = conn.token.clone();
        lease.gen = conn.gen;
        lease.session = Some(conn.token.open_session(lease.rw)?);
        Ok(())
    }

    fn relogin(&self, lease: &Lease, seen_epoch: u64) -> Result<()> {
        let Some(pin) = self.cfg.pin.as_ref() else {
            // A pool without a PIN (on a token that needs no login) has no login to lose:
            // the one retry runs as it is.
            return Ok(());
        };
        match lease.token.relogin(pin, self.cfg.pin_policy, seen_epoch) {
            Ok(did) => {
                if did {
                    lock(&self.state).stats.relogins += 1;
                }
                Ok(())
            }
            Err(e) => {
                if crate::core::token::is_lasting_pin_failure(&e) {
                    lock(&self.state).failure = Some(e.clone());
                }
                Err(e)
            }
        }
    }
    /// Drops idle sessions that the token no longer knows (all of them if `all`), without
    /// closing their handles (a stale handle number may already name someone else's session).
    fn purge_dead_idle(&self, all: bool) -> u64 {
        // Taken out, checked without the pool's lock (C_GetSessionInfo may be slow, and a
        // child forked meanwhile must not find the lock held), the live ones put back.
        let (ro, rw) = {
            let mut st = lock(&self.state);
            let State {
                idle_ro,
                idle_rw,
                checking,
                ..
            } = &mut *st;
            *checking += idle_ro.len() + idle_rw.len();
            (std::mem::take(idle_ro), std::mem::take(idle_rw))
        };
        let taken = ro.len() + rw.len();
        let mut purged = 0;
        let mut check = |idle: Vec<Idle>| {
            let mut keep = Vec::with_capacity(idle.len());
            for i in idle {
                if !all && i.session.get_session_info().is_ok() {
                    keep.push(i);
                } else {
                    std::mem::forget(i.session);
                    purged += 1;
                }
            }
            keep
        };
        let (ro, rw) = (check(ro), check(rw));
        let mut st = lock(&self.state);
        st.checking = st.checking.saturating_sub(taken);
        // Callers that waited for these places may go on.
        self.cond.notify_all();
        if st.pid != crate::core::fork::pid() {
            // Forked meanwhile: they are the parent's.
            drop(st);
            for i in ro.into_iter().chain(rw) {
                std::mem::forget(i.session);
            }
            return purged;
        }
        if st.closed {
            drop(st);
            super::close_all(ro.into_iter().chain(rw).map(|i| i.session).collect());
            return purged;
        }
        // Sessions returned meanwhile are newer: keep the LIFO order (oldest first).
        let State {
            idle_ro, idle_rw, ..
        } = &mut *st;
        for (idle, kept) in [(idle_ro, ro), (idle_rw, rw)] {
            let newer = std::mem::replace(idle, kept);
            idle.extend(newer);
        }
        purged
    }
}

/// What broke, judged by the session itself (tokens answer the same fault with different
/// codes, so the return code alone cannot tell).
fn diagnose(lease: &Lease, err: &Error) -> Option<Fault> {
    if err.kind == Kind::TokenNotFound && !lease.token.is_gone() {
        // The token cannot be read any more (`TokenState::check_present`).
        return Some(Fault::TokenGone);
    }
    if err.is_pin_error() || (err.rv.is_none() && err.kind != Kind::KeyNotFound) {
        return None;
    }
    if err.kind == Kind::KeyNotFound && lease.token.check_present().is_err() {
        // No key because no token: SoftHSM2 keeps answering searches on a token deleted
        // under it, finding nothing.
        return Some(Fault::TokenGone);
    }
    let Some(session) = lease.session.as_ref() else {
        return Some(Fault::SessionGone);
    };
    match session.get_session_info() {
        Err(CkError::Pkcs11(RvError::DeviceRemoved | RvError::TokenNotPresent, _)) => {
            Some(Fault::TokenGone)
        }
        Err(CkError::Pkcs11(RvError::SessionHandleInvalid | RvError::SessionClosed, _)) => {
            Some(Fault::SessionGone)
        }
        // Not even C_GetInfo answers: the module lost its device or its connection.
        Err(_) if lease.token.module.ctx.get_library_info().is_err() => Some(Fault::ModuleLost),
        Err(_) => Some(Fault::SessionGone),
        Ok(info) if !is_logged_in(info.session_state()) => Some(Fault::LoggedOut),
        Ok(_) => match err.rv {
            Some(RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid) => {
                Some(Fault::StaleHandle)
            }
            Some(RvError::SessionHandleInvalid | RvError::SessionClosed) => Some(Fault::Retry),
            Some(RvError::DeviceRemoved | RvError::TokenNotPresent) => Some(Fault::TokenGone),
            Some(RvError::UserNotLoggedIn) => Some(Fault::LoggedOut),
            _ => None,
        },
    }
}
