//! The session pool: lazy connection, shared login, warm LIFO sessions, bounded lending with a
//! timeout, idle expiry, fork awareness, and the one-retry recovery of lost sessions, logins
//! and key handles.
//!
//! This file holds the pool's state and its connection to the token; the rest is one file a
//! concern: `lease` (lending and returning sessions), `heal` (diagnosing a failed operation
//! and the one retry), `key_cache` (keys found once per login epoch, their identity, expiry
//! and refresh), `stats`, `fork`
//! (forgetting the parent's state in a child) and `registry` (every live pool, closed at
//! exit).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use cryptoki::session::Session;
use key_cache::KeyCache;

use crate::core::error::{Error, Kind, Result};
use crate::core::fork::CallLock;
use crate::core::log;
use crate::core::module::{self, lock};
use crate::core::secret::Pin;
use crate::core::token::{self, PinPolicy, TokenCriteria, TokenState};

mod fork;
mod heal;
mod key_cache;
mod lease;
mod registry;
mod stats;

pub use key_cache::KeyEntry;
pub use lease::{CallsAfterRelease, Lease};
pub use registry::{close_all_pools, register};
pub use stats::{Snapshot, Stats};

/// Sessions a pool lends at once when `max_sessions` is not given.
pub const DEFAULT_MAX_SESSIONS: usize = 64;

/// What a pool was built with.
pub struct PoolConfig {
    pub module_path: PathBuf,
    pub criteria: TokenCriteria,
    /// None: no PIN (a token that requires no login).
    pub pin: Option<Pin>,
    /// `C_Initialize`'s reserved string (`init_args=`, `HSM_INIT_ARGS`).
    pub init_args: Option<String>,
    pub max_sessions: usize,
    pub acquire_timeout: Duration,
    pub max_idle: Duration,
    pub pin_policy: PinPolicy,
    /// How long a key lookup by label or id is trusted before the next lookup searches again.
    pub key_cache_ttl: Duration,
    /// Verify every signature in software before returning it.
    pub verify_signatures: bool,
}

static CONNECTIONS: AtomicU64 = AtomicU64::new(1);

#[derive(Clone)]
struct Conn {
    token: Arc<TokenState>,
    gen: u64,
}

struct Idle {
    session: Session,
    since: Instant,
}

struct State {
    closed: bool,
    pid: u32,
    conn: Option<Conn>,
    /// A PIN failure: raised again on every use, never retried.
    failure: Option<Error>,
    idle_ro: Vec<Idle>,
    idle_rw: Vec<Idle>,
    in_use: usize,
    /// Read-write sessions among `in_use` (for the token's `ulMaxRwSessionCount`).
    in_use_rw: usize,
    /// Idle sessions taken out of the idle lists for a liveness check (`purge_dead_idle`):
    /// still open on the token, so they count against the cap until they are put back.
    checking: usize,
    /// Sessions open when the token last answered `CKR_SESSION_COUNT`, and when: the pool
    /// opens no more than that for a while (tokens that do not state their limit, or whose
    /// sessions other applications hold).
    learned_cap: Option<(usize, Instant)>,
    /// Threads blocked in `acquire` (a return wakes one only if there is one).
    waiting: usize,
    stats: Stats,
}

pub struct Pool {
    pub cfg: PoolConfig,
    state: Mutex<State>,
    cond: Condvar,
    /// Held while connecting (module, token, login: PKCS#11 calls): fork-safe.
    connect_lock: CallLock,
    keys: KeyCache,
    /// The token this pool was on when it went away (its description), until a token with
    /// the pool's label (or serial) is found again.
    lost: Mutex<Option<String>>,
}

impl Pool {
    pub fn new(cfg: PoolConfig) -> Self {
        Pool {
            cfg,
            state: Mutex::new(State {
                closed: false,
                pid: crate::core::fork::pid(),
                conn: None,
                failure: None,
                idle_ro: Vec::new(),
                idle_rw: Vec::new(),
                in_use: 0,
                in_use_rw: 0,
                checking: 0,
                learned_cap: None,
                waiting: 0,
                stats: Stats::default(),
            }),
            cond: Condvar::new(),
            connect_lock: CallLock::new(),
            keys: KeyCache::default(),
            lost: Mutex::new(None),
        }
    }
    pub fn describe(&self) -> String {
        self.cfg.criteria.describe()
    }
    fn current(&self, st: &mut State) -> Result<Option<Conn>> {
        self.reset_after_fork(st);
        if st.closed {
            return Err(closed_error());
        }
        if let Some(f) = &st.failure {
            return Err(f.clone());
        }
        Ok(st.conn.clone())
    }
    /// The connection, made on first use: load the module, find the token, join the login.
    fn connection(&self) -> Result<Conn> {
        self.connection_holding(0)
    }
    /// `connection`, for a caller that holds `held` leases whose sessions it has given up
    /// (they do not stop a rescan of the module).
    fn connection_holding(&self, held: usize) -> Result<Conn> {
        if let Some(c) = self.current(&mut lock(&self.state))? {
            return Ok(c);
        }
        let _connecting = self.connect_lock.lock();
        if let Some(c) = self.current(&mut lock(&self.state))? {
            return Ok(c);
        }
        let result = self.connect(held);
        let mut st = lock(&self.state);
        match result {
            Ok((token, logged_in)) => {
                if st.closed {
                    drop(st);
                    token.leave();
                    return Err(closed_error());
                }
                if logged_in {
                    st.stats.logins += 1;
                }
                let conn = Conn {
                    token,
                    gen: CONNECTIONS.fetch_add(1, Ordering::Relaxed),
                };
                st.conn = Some(conn.clone());
                Ok(conn)
            }
            Err(e) => {
                if token::is_lasting_pin_failure(&e) {
                    st.failure = Some(e.clone());
                }
                Err(e)
            }
        }
    }
    fn connect(&self, held: usize) -> Result<(Arc<TokenState>, bool)> {
        let module = module::load_with(&self.cfg.module_path, self.cfg.init_args.as_deref())?;
        let mut attempt = 0u64;
        let mut rescanned = false;
        let token = loop {
            let generation = module.generation();
            let found = {
                let _shared = module
                    .connecting
                    .read()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                token::find_slot(&module, &self.cfg.criteria).and_then(|(slot, info)| {
                    token::shared(&module, slot, || {
                        TokenState::new(module.clone(), slot, &info)
                    })
                })
            };
            match found {
                Err(e) if e.kind == Kind::TokenNotFound && module.is_lost() && attempt < 1 => {
                    // The module was re-initialized after it stopped answering, maybe while
                    // its device (or server) was still away: then it shows no token until it
                    // is initialized again.
                    attempt += 1;
                    if module.reinitialize_after_loss(generation)? {
                        token::mark_module_gone(&module);
                    }
                }
                Err(e) if e.kind == Kind::TokenNotFound && module.is_lost() => {
                    return Err(lost_hint(e));
                }
                Err(e)
                    if e.kind == Kind::TokenNotFound
                        && !rescanned
                        && (lock(&self.lost).is_some() || module.saw_unreadable()) =>
                {
                    // This pool's token went away, or a token was deleted under the module:
                    // a token with the pool's label may have been created since, which
                    // modules like SoftHSM2 only show after C_Initialize.
                    rescanned = true;
                    if !module.rescan(held, || token::mark_module_gone(&module)) {
                        return Err(self.gone_hint(e));
                    }
                }
                Err(e) if e.kind == Kind::TokenNotFound && rescanned => {
                    return Err(self.gone_hint(e));
                }
                Err(e) if e.kind == Kind::TokenNotFound && attempt < 3 => {
                    // A token SoftHSM2 could not read at start-up (see reload_if_unused).
                    attempt += 1;
                    if !module.reload_if_unused(|| token::module_in_use(&module)) {
                        return Err(e);
                    }
                    log::log(
                        log::INFO,
                        &format!("token not found; re-initialized the module ({e})"),
                    );
                    std::thread::sleep(Duration::from_millis(10 * attempt));
                }
                other => break other?,
            }
        };
        module.found_again();
        *lock(&self.lost) = None;
        // Logging in is a call outside any lease: never while a rescan re-initializes.
        let joined = {
            let _calls = module.calls_guard();
            token.join(self.cfg.pin.as_ref(), self.cfg.pin_policy)?
        };
        Ok((token, joined.logged_in))
    }
    /// A token search that failed after this pool's token went away: say which one.
    fn gone_hint(&self, mut e: Error) -> Error {
        if let Some(token) = lock(&self.lost).as_ref() {
            e.message = format!("{token} went away: {}", e.message);
        }
        e
    }
    /// Connects and logs in now, and checks that a session can be opened and that the
    /// token is still there.
    pub fn check(&self) -> Result<()> {
        let mut lease = self.acquire(false, &|| Ok(()))?;
        let r = self.run(&mut lease, |session, token, _| {
            session
                .get_session_info()
                .map_err(|e| Error::from_cryptoki(e, "checking the session"))?;
            token.check_present()
        });
        self.release(lease);
        r
    }
    /// Closes idle sessions and releases this pool's share of the login (at once, or when
    /// the last lent session comes back).
    pub fn close(&self) {
        let mut st = lock(&self.state);
        self.reset_after_fork(&mut st);
        if st.closed {
            return;
        }
        st.closed = true;
        let State {
            idle_ro, idle_rw, ..
        } = &mut *st;
        let idle: Vec<Session> = idle_ro
            .drain(..)
            .chain(idle_rw.drain(..))
            .map(|i| i.session)
            .collect();
        let finish = if st.in_use == 0 { st.conn.take() } else { None };
        let module = st
            .conn
            .as_ref()
            .or(finish.as_ref())
            .map(|c| c.token.module.clone());
        self.cond.notify_all();
        drop(st);
        self.keys.clear();
        // Calls outside a lease: never while a rescan re-initializes the module.
        let _calls = module.as_ref().map(|m| m.calls_guard());
        close_all(idle);
        if let Some(conn) = finish {
            conn.token.leave();
        }
    }
    pub fn is_closed(&self) -> bool {
        lock(&self.state).closed
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.close();
    }
}

fn closed_error() -> Error {
    Error::new(
        Kind::PoolClosed,
        "the pool is closed; create a new SessionPool",
    )
}

fn close_all(sessions: Vec<Session>) {
    for s in sessions {
        let _ = s.close();
    }
}

/// A token search that failed after the module had stopped answering: say so.
fn lost_hint(mut e: Error) -> Error {
    e.message = format!(
        "{}; the module had stopped answering (its device, or the server of a network \
         module, went away) and was re-initialized: is it reachable again?",
        e.message
    );
    e
}
