//! Lending sessions: the warm LIFO stacks (read-only and read-write), the bound on sessions
//! open at once, waiting with a timeout, idle expiry, and taking sessions back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cryptoki::session::Session;

use super::{close_all, Conn, Idle, Pool, State};
use cryptoki::error::RvError;

use crate::core::error::{Error, Kind, Result};
use crate::core::log;
use crate::core::module::lock;
use crate::core::token::TokenState;

const WAIT_SLICE: Duration = Duration::from_millis(50);
/// How long a session limit learned from `CKR_SESSION_COUNT` holds before the pool tries to
/// open one more again (other applications may have returned theirs).
const LEARNED_CAP_TTL: Duration = Duration::from_secs(2);

/// A session lent out by the pool.
pub struct Lease {
    pub(super) session: Option<Session>,
    pub rw: bool,
    pub token: Arc<TokenState>,
    pub(super) gen: u64,
    pub(super) pid: u32,
}

impl Lease {
    /// The session, for this process only (see [`Lease::check_owner`]).
    pub fn session(&self) -> Result<&Session> {
        self.check_owner()?;
        self.session
            .as_ref()
            .ok_or_else(|| Error::new(Kind::Session, "the session was lost"))
    }

    /// The process that borrowed it.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Fails in a forked child: a session borrowed before `fork()` is the parent's, and a
    /// call on its handle would run on the parent's session (or on whatever the child's own
    /// module state numbers that way).
    pub fn check_owner(&self) -> Result<()> {
        let pid = crate::core::fork::pid();
        if self.pid == pid {
            return Ok(());
        }
        Err(Error::new(
            Kind::Session,
            format!(
                "this session was borrowed by process {} before fork(); process {pid} cannot \
                 use it: open a new `with pool.session()` block (or use a pool-bound key) in \
                 the child",
                self.pid
            ),
        ))
    }
}

impl Pool {
    /// Lends a session, waiting up to `acquire_timeout` for one to be free. `interrupt` is
    /// called about every 50 ms while waiting (to let Ctrl-C through).
    pub fn acquire(&self, rw: bool, interrupt: &dyn Fn() -> Result<()>) -> Result<Lease> {
        // One lock of the state on a warm pool: the loop connects only when it must.
        let mut conn: Conn;
        // Set once connected (a first login is not counted against acquire_timeout).
        let mut deadline: Option<Instant> = None;
        let mut waited = false;
        let mut st = lock(&self.state);
        loop {
            match self.current(&mut st)? {
                Some(c) => conn = c,
                None => {
                    drop(st);
                    self.connection()?;
                    st = lock(&self.state);
                    continue;
                }
            }
            let now = Instant::now();
            let mut expired = self.take_expired(&mut st, now);
            let cap = self.session_cap(&mut st, &conn.token, now);
            // Sessions out for a liveness check are open too: they keep their place.
            let free = st.in_use + st.checking < cap;
            let idle = if rw { &mut st.idle_rw } else { &mut st.idle_ro };
            if let Some(Idle { session, .. }) = if free { idle.pop() } else { None } {
                st.in_use += 1;
                if rw {
                    st.in_use_rw += 1;
                }
                st.stats.reused += 1;
                st.stats.max_in_use = st.stats.max_in_use.max(st.in_use as u64);
                let clear = conn.token.module.lease_taken();
                let lease = Lease {
                    session: Some(session),
                    rw,
                    token: conn.token.clone(),
                    gen: conn.gen,
                    pid: st.pid,
                };
                drop(st);
                if !clear {
                    // The module is being re-initialized: wait; the session's token state
                    // is then gone, and `run` connects again.
                    conn.token.module.wait_rescan();
                }
                close_all(expired);
                return Ok(lease);
            }
            // The token's ulMaxRwSessionCount, when it states one: read-write sessions wait
            // for one of theirs (idle read-write ones were taken above; the login's anchor
            // session is read-only).
            let rw_full = rw
                && conn
                    .token
                    .max_rw_sessions
                    .is_some_and(|max| (st.in_use_rw + st.idle_rw.len()) as u64 >= max.max(1));
            if free && !rw_full {
                // Keep the sessions open on the token (lent + idle of both kinds) within the
                // cap too: make room by closing the oldest idle one of the other kind.
                if st.in_use + st.checking + st.idle_ro.len() + st.idle_rw.len() >= cap {
                    let other = if rw { &mut st.idle_ro } else { &mut st.idle_rw };
                    if !other.is_empty() {
                        expired.push(other.remove(0).session);
                    }
                }
                st.in_use += 1;
                if rw {
                    st.in_use_rw += 1;
                }
                st.stats.created += 1;
                let pid = st.pid;
                let clear = conn.token.module.lease_taken();
                drop(st);
                if !clear {
                    conn.token.module.wait_rescan();
                }
                close_all(expired);
                match conn.token.open_session(rw) {
                    Ok(session) => {
                        // Counted once the session is open (a refused open lent nothing).
                        {
                            let mut st = lock(&self.state);
                            st.stats.max_in_use = st.stats.max_in_use.max(st.in_use as u64);
                        }
                        log::log(
                            log::DEBUG,
                            &format!(
                                "opened a {} session on {}",
                                if rw { "read-write" } else { "read-only" },
                                conn.token.describe()
                            ),
                        );
                        return Ok(Lease {
                            session: Some(session),
                            rw,
                            token: conn.token.clone(),
                            gen: conn.gen,
                            pid,
                        });
                    }
                    Err(e) => {
                        conn.token.module.lease_returned();
                        let mut st2 = lock(&self.state);
                        st2.in_use = st2.in_use.saturating_sub(1);
                        if rw {
                            st2.in_use_rw = st2.in_use_rw.saturating_sub(1);
                        }
                        st2.stats.created -= 1;
                        self.cond.notify_one();
                        if e.rv != Some(RvError::SessionCount) {
                            return Err(e);
                        }
                        // The token allows no more sessions (its limit, stated or not, or
                        // other applications hold the rest). Make room with an idle session
                        // of the other kind, or wait for a lent one to come back.
                        let other = if rw {
                            &mut st2.idle_ro
                        } else {
                            &mut st2.idle_rw
                        };
                        if !other.is_empty() {
                            let spare = other.remove(0).session;
                            drop(st2);
                            let _calls = conn.token.module.calls_guard();
                            let _ = spare.close();
                            drop(_calls);
                            st = lock(&self.state);
                            continue;
                        }
                        let held = st2.in_use + st2.idle_ro.len() + st2.idle_rw.len();
                        if held == 0 {
                            return Err(Error {
                                kind: Kind::PoolExhausted,
                                message: format!(
                                    "{} refuses another session (CKR_SESSION_COUNT) and this \
                                     pool holds none: other applications, or other pools of \
                                     this process, hold every session the token allows",
                                    conn.token.describe()
                                ),
                                rv: e.rv,
                                function: e.function,
                            });
                        }
                        if st2.learned_cap.is_none_or(|(n, _)| n != held) {
                            log::log(
                                log::INFO,
                                &format!(
                                    "{} allows no more sessions (CKR_SESSION_COUNT) with {held} \
                                     open by this pool: waiting for one to come back",
                                    conn.token.describe()
                                ),
                            );
                        }
                        st2.learned_cap = Some((held, Instant::now()));
                        st = st2;
                    }
                }
            } else {
                drop(st);
                if !expired.is_empty() {
                    let _calls = conn.token.module.calls_guard();
                    close_all(expired);
                }
                st = lock(&self.state);
            }
            if !waited {
                waited = true;
                st.stats.waits += 1;
            }
            let now = Instant::now();
            let deadline = *deadline.get_or_insert(now + self.cfg.acquire_timeout);
            if now >= deadline {
                st.stats.timeouts += 1;
                let cap = self.session_cap(&mut st, &conn.token, now);
                return Err(self.exhausted_error(&conn.token.describe(), st.in_use, cap));
            }
            let slice = (deadline - now).min(WAIT_SLICE);
            st.waiting += 1;
            st = match self.cond.wait_timeout(st, slice) {
                Ok((g, _)) => g,
                Err(poisoned) => poisoned.into_inner().0,
            };
            st.waiting -= 1;
            drop(st);
            interrupt()?;
            st = lock(&self.state);
        }
    }
    /// A warm idle session if one is free right now, else None (then `acquire`): no wait, no
    /// connecting, no PKCS#11 call, so an event loop can take it on its own thread.
    pub fn try_acquire_idle(&self, rw: bool) -> Option<Lease> {
        let mut st = lock(&self.state);
        let conn = self.current(&mut st).ok()??;
        // Callers already waiting for a session come first.
        if st.in_use >= self.session_cap(&mut st, &conn.token, Instant::now()) || st.waiting > 0 {
            return None;
        }
        let idle = if rw { &mut st.idle_rw } else { &mut st.idle_ro };
        // An expired one is for `acquire` to close.
        if idle.last()?.since.elapsed() > self.cfg.max_idle {
            return None;
        }
        if conn.token.module.is_rescanning() {
            return None;
        }
        let Idle { session, .. } = idle.pop()?;
        if !conn.token.module.lease_taken() {
            // A rescan began just now: not here (no waiting on this path).
            conn.token.module.lease_returned();
            idle.push(Idle {
                session,
                since: Instant::now(),
            });
            return None;
        }
        st.in_use += 1;
        if rw {
            st.in_use_rw += 1;
        }
        st.stats.reused += 1;
        st.stats.max_in_use = st.stats.max_in_use.max(st.in_use as u64);
        Some(Lease {
            session: Some(session),
            rw,
            token: conn.token.clone(),
            gen: conn.gen,
            pid: st.pid,
        })
    }

    /// True if the pool is open and connected (logged in): a session can be borrowed
    /// without connecting first.
    pub fn is_connected(&self) -> bool {
        matches!(self.current(&mut lock(&self.state)), Ok(Some(_)))
    }

    /// The most sessions this pool lends at once now: `max_sessions`, within the token's
    /// stated `ulMaxSessionCount` (less the login's anchor session) and a limit learned from
    /// `CKR_SESSION_COUNT` in the last seconds.
    fn session_cap(&self, st: &mut State, token: &TokenState, now: Instant) -> usize {
        let mut cap = self.cfg.max_sessions;
        if let Some(max) = token.max_sessions {
            let anchor = u64::from(token.login_required);
            let allowed = usize::try_from(max.saturating_sub(anchor).max(1)).unwrap_or(usize::MAX);
            cap = cap.min(allowed);
        }
        match st.learned_cap {
            Some((n, since)) if now.duration_since(since) < LEARNED_CAP_TTL => cap.min(n.max(1)),
            Some(_) => {
                st.learned_cap = None;
                cap
            }
            None => cap,
        }
    }

    /// What a caller gets when no session became free within `acquire_timeout`: `in_use`
    /// sessions lent, of the `cap` this pool may open now.
    fn exhausted_error(&self, token: &str, in_use: usize, cap: usize) -> Error {
        let detail = if in_use < cap {
            format!("{in_use} of {cap} are in use, and the callers ahead of it took every turn")
        } else if cap < self.cfg.max_sessions {
            format!("all {in_use} are in use (as many as the token allows)")
        } else {
            format!("all {in_use} are in use")
        };
        Error::new(
            Kind::PoolExhausted,
            format!(
                "no session on {token} became free within {:.3} s: {detail}; return sessions \
                 sooner or raise max_sessions= / acquire_timeout=",
                self.cfg.acquire_timeout.as_secs_f64(),
            ),
        )
    }

    /// An asynchronous caller's `acquire_timeout` ran out (waiting for its turn, or for a
    /// session; `acquire` counted the wait already in the latter case): counted as a timeout
    /// and answered like a blocking `acquire`.
    pub fn timed_out(&self, count_wait: bool) -> Error {
        let mut st = lock(&self.state);
        if count_wait {
            st.stats.waits += 1;
        }
        st.stats.timeouts += 1;
        let conn = st.conn.clone();
        let (token, cap) = match &conn {
            Some(c) => (
                c.token.describe(),
                self.session_cap(&mut st, &c.token, Instant::now()),
            ),
            None => (self.describe(), self.cfg.max_sessions),
        };
        let in_use = st.in_use;
        drop(st);
        self.exhausted_error(&token, in_use, cap)
    }

    fn take_expired(&self, st: &mut State, now: Instant) -> Vec<Session> {
        let mut out = Vec::new();
        let State {
            idle_ro, idle_rw, ..
        } = st;
        for idle in [idle_ro, idle_rw] {
            // LIFO: the oldest sessions are at the front.
            let n = idle
                .iter()
                .take_while(|i| now.duration_since(i.since) > self.cfg.max_idle)
                .count();
            out.extend(idle.drain(..n).map(|i| i.session));
        }
        out
    }
    /// Returns a lease. Sessions of a closed pool are closed; the last one returned to a
    /// closed pool releases its share of the login.
    pub fn release(&self, lease: Lease) {
        if let Some(calls) = self.give_back(lease) {
            calls.run();
        }
    }

    /// [`release`](Self::release) without its PKCS#11 calls: on an open pool, giving a
    /// session back is bookkeeping only (no call, no wait), and `None` is returned; on a
    /// closed one, what is left to do in the token (closing the session, logging out) is
    /// returned, for the caller to run where a blocking call may run (without the GIL).
    pub fn give_back(&self, mut lease: Lease) -> Option<CallsAfterRelease> {
        let session = lease.session.take();
        let mut st = lock(&self.state);
        let pid = crate::core::fork::pid();
        if lease.pid != pid || st.pid != pid {
            // Inherited from the parent process: not ours to close or reuse.
            std::mem::forget(session);
            return None;
        }
        lease.token.module.lease_returned();
        st.in_use = st.in_use.saturating_sub(1);
        if lease.rw {
            st.in_use_rw = st.in_use_rw.saturating_sub(1);
        }
        let current = st.conn.as_ref().map(|c| c.gen) == Some(lease.gen);
        let mut close = None;
        if let Some(s) = session {
            if !current {
                // From a connection dropped because the token went away: the handle means
                // nothing now (and may name somebody else's session): never close it.
                std::mem::forget(s);
            } else if st.closed {
                close = Some(s);
            } else {
                let idle = if lease.rw {
                    &mut st.idle_rw
                } else {
                    &mut st.idle_ro
                };
                idle.push(Idle {
                    session: s,
                    since: Instant::now(),
                });
            }
        }
        let finish = if st.closed && st.in_use == 0 {
            st.conn.take()
        } else {
            None
        };
        if st.waiting > 0 {
            self.cond.notify_one();
        }
        drop(st);
        if close.is_none() && finish.is_none() {
            return None;
        }
        Some(CallsAfterRelease {
            token: lease.token.clone(),
            close,
            finish,
        })
    }
}

/// The PKCS#11 calls a lease returned to a closed pool leaves to make: closing its session,
/// and, for the pool's last one, leaving the login.
#[must_use = "the session stays open unless run() is called"]
pub struct CallsAfterRelease {
    token: Arc<TokenState>,
    close: Option<Session>,
    finish: Option<Conn>,
}

impl CallsAfterRelease {
    /// Makes the calls (blocking).
    pub fn run(self) {
        // Calls outside a lease: never while a rescan re-initializes the module.
        let _calls = self.token.module.calls_guard();
        if let Some(s) = self.close {
            let _ = s.close();
        }
        if let Some(conn) = self.finish {
            conn.token.leave();
        }
    }
}
