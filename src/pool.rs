//! The session pool: lazy connection, shared login, warm LIFO sessions, bounded lending with a
//! timeout, idle expiry, fork awareness, and the one-retry recovery of lost sessions, logins
//! and key handles.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;

use crate::error::{Error, Kind, Result};
use crate::key::{self, KeyInfo, KeyQuery};
use crate::keygen;
use crate::log;
use crate::module::{self, lock};
use crate::secret::Pin;
use crate::token::{self, is_logged_in, PinPolicy, TokenCriteria, TokenState};

/// What a pool was built with.
pub struct PoolConfig {
    pub module_path: PathBuf,
    pub criteria: TokenCriteria,
    pub pin: Pin,
    pub max_sessions: usize,
    pub acquire_timeout: Duration,
    pub max_idle: Duration,
    pub pin_policy: PinPolicy,
}

/// Counters reported by `stats()`.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub created: u64,
    pub reused: u64,
    pub waits: u64,
    pub timeouts: u64,
    pub relogins: u64,
    pub discarded: u64,
    pub logins: u64,
    pub recoveries: u64,
    pub max_in_use: u64,
}

/// A snapshot for `stats()`.
pub struct Snapshot {
    pub stats: Stats,
    pub in_use: usize,
    pub idle: usize,
    pub epoch: u64,
}

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
    /// Threads blocked in `acquire` (a return wakes one only if there is one).
    waiting: usize,
    stats: Stats,
}

/// A session lent out by the pool.
pub struct Lease {
    session: Option<Session>,
    pub rw: bool,
    pub token: Arc<TokenState>,
    gen: u64,
    pid: u32,
}

impl Lease {
    pub fn session(&self) -> Result<&Session> {
        self.session
            .as_ref()
            .ok_or_else(|| Error::new(Kind::Session, "the session was lost"))
    }
}

/// A private key found in the token, with its handle cached per login epoch.
pub struct KeyEntry {
    pub query: KeyQuery,
    pub info: KeyInfo,
    handle: Mutex<(u64, ObjectHandle)>,
}

/// Why an operation failed, as far as healing goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    SessionGone,
    LoggedOut,
    StaleHandle,
    TokenGone,
    /// The code said "session gone" but the session is there: try once more on it.
    Retry,
}

static CONNECTIONS: AtomicU64 = AtomicU64::new(1);

fn live_pools() -> &'static Mutex<Vec<std::sync::Weak<Pool>>> {
    static LIVE: std::sync::OnceLock<Mutex<Vec<std::sync::Weak<Pool>>>> =
        std::sync::OnceLock::new();
    LIVE.get_or_init(|| Mutex::new(Vec::new()))
}

/// Remembers a pool for `close_all_pools` (weakly: a dropped pool closes itself).
pub fn register(pool: &Arc<Pool>) {
    let mut live = lock(live_pools());
    live.retain(|w| w.strong_count() > 0);
    live.push(Arc::downgrade(pool));
}

/// Closes every live pool of this process (at interpreter exit).
pub fn close_all_pools() {
    let pools: Vec<Arc<Pool>> = lock(live_pools())
        .drain(..)
        .filter_map(|w| w.upgrade())
        .collect();
    for pool in pools {
        pool.close();
    }
}

pub struct Pool {
    pub cfg: PoolConfig,
    state: Mutex<State>,
    cond: Condvar,
    connect_lock: Mutex<()>,
    keys: Mutex<HashMap<KeyQuery, Arc<KeyEntry>>>,
}

const WAIT_SLICE: Duration = Duration::from_millis(50);

impl Pool {
    pub fn new(cfg: PoolConfig) -> Self {
        Pool {
            cfg,
            state: Mutex::new(State {
                closed: false,
                pid: crate::fork::pid(),
                conn: None,
                failure: None,
                idle_ro: Vec::new(),
                idle_rw: Vec::new(),
                in_use: 0,
                waiting: 0,
                stats: Stats::default(),
            }),
            cond: Condvar::new(),
            connect_lock: Mutex::new(()),
            keys: Mutex::new(HashMap::new()),
        }
    }

    pub fn describe(&self) -> String {
        self.cfg.criteria.describe()
    }

    /// In a forked child, everything the pool holds belongs to the parent: forget it without
    /// calling into the module; the next use connects anew.
    fn reset_after_fork(&self, st: &mut State) {
        let pid = crate::fork::pid();
        if st.pid == pid {
            return;
        }
        for idle in st.idle_ro.drain(..) {
            std::mem::forget(idle.session);
        }
        for idle in st.idle_rw.drain(..) {
            std::mem::forget(idle.session);
        }
        if let Some(conn) = st.conn.take() {
            conn.token.forget_anchor();
        }
        st.in_use = 0;
        st.waiting = 0;
        st.pid = pid;
        lock(&self.keys).clear();
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
        if let Some(c) = self.current(&mut lock(&self.state))? {
            return Ok(c);
        }
        let _connecting = lock(&self.connect_lock);
        if let Some(c) = self.current(&mut lock(&self.state))? {
            return Ok(c);
        }
        let result = self.connect();
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
                if e.is_pin_error() {
                    st.failure = Some(e.clone());
                }
                Err(e)
            }
        }
    }

    fn connect(&self) -> Result<(Arc<TokenState>, bool)> {
        let module = module::load(&self.cfg.module_path)?;
        let mut attempt = 0u64;
        let token = loop {
            let found = {
                let _shared = module
                    .connecting
                    .read()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                token::find_slot(&module, &self.cfg.criteria).and_then(|(slot, info)| {
                    module.token_state(slot, || TokenState::new(module.clone(), slot, &info))
                })
            };
            match found {
                Err(e) if e.kind == Kind::TokenNotFound && attempt < 3 => {
                    // A token SoftHSM2 could not read at start-up (see reload_if_unused).
                    attempt += 1;
                    if !module.reload_if_unused() {
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
        let joined = token.join(&self.cfg.pin, self.cfg.pin_policy)?;
        Ok((token, joined.logged_in))
    }

    /// Connects and logs in now, and checks that a session can be opened.
    pub fn check(&self) -> Result<()> {
        let lease = self.acquire(false, &|| Ok(()))?;
        let r = lease.session().and_then(|s| {
            s.get_session_info()
                .map_err(|e| Error::from_cryptoki(e, "checking the session"))
        });
        self.release(lease);
        r.map(|_| ())
    }

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
            let free = st.in_use < self.cfg.max_sessions;
            let idle = if rw { &mut st.idle_rw } else { &mut st.idle_ro };
            if let Some(Idle { session, .. }) = idle.pop().filter(|_| free) {
                st.in_use += 1;
                st.stats.reused += 1;
                st.stats.max_in_use = st.stats.max_in_use.max(st.in_use as u64);
                let lease = Lease {
                    session: Some(session),
                    rw,
                    token: conn.token.clone(),
                    gen: conn.gen,
                    pid: st.pid,
                };
                drop(st);
                close_all(expired);
                return Ok(lease);
            }
            if free {
                // Keep the sessions open on the token (lent + idle of both kinds) within
                // max_sessions too: make room by closing the oldest idle one of the other kind.
                if st.in_use + st.idle_ro.len() + st.idle_rw.len() >= self.cfg.max_sessions {
                    let other = if rw { &mut st.idle_ro } else { &mut st.idle_rw };
                    if !other.is_empty() {
                        expired.push(other.remove(0).session);
                    }
                }
                st.in_use += 1;
                st.stats.created += 1;
                st.stats.max_in_use = st.stats.max_in_use.max(st.in_use as u64);
                let pid = st.pid;
                drop(st);
                close_all(expired);
                return match conn.token.open_session(rw) {
                    Ok(session) => {
                        log::log(
                            log::DEBUG,
                            &format!(
                                "opened a {} session on {}",
                                if rw { "read-write" } else { "read-only" },
                                conn.token.describe()
                            ),
                        );
                        Ok(Lease {
                            session: Some(session),
                            rw,
                            token: conn.token.clone(),
                            gen: conn.gen,
                            pid,
                        })
                    }
                    Err(e) => {
                        let mut st = lock(&self.state);
                        st.in_use = st.in_use.saturating_sub(1);
                        st.stats.created -= 1;
                        self.cond.notify_one();
                        Err(e)
                    }
                };
            }
            drop(st);
            close_all(expired);
            st = lock(&self.state);
            if !waited {
                waited = true;
                st.stats.waits += 1;
            }
            let now = Instant::now();
            let deadline = *deadline.get_or_insert(now + self.cfg.acquire_timeout);
            if now >= deadline {
                st.stats.timeouts += 1;
                return Err(Error::new(
                    Kind::PoolExhausted,
                    format!(
                        "no session on {} became free within {:.3} s: all {} are in use; \
                         return sessions sooner or raise max_sessions= / acquire_timeout=",
                        conn.token.describe(),
                        self.cfg.acquire_timeout.as_secs_f64(),
                        self.cfg.max_sessions
                    ),
                ));
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
    pub fn release(&self, mut lease: Lease) {
        let session = lease.session.take();
        let mut st = lock(&self.state);
        let pid = crate::fork::pid();
        if lease.pid != pid || st.pid != pid {
            // Inherited from the parent process: not ours to close or reuse.
            std::mem::forget(session);
            return;
        }
        st.in_use = st.in_use.saturating_sub(1);
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
        if let Some(s) = close {
            let _ = s.close();
        }
        if let Some(conn) = finish {
            conn.token.leave();
        }
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
        self.cond.notify_all();
        drop(st);
        lock(&self.keys).clear();
        close_all(idle);
        if let Some(conn) = finish {
            conn.token.leave();
        }
    }

    pub fn is_closed(&self) -> bool {
        lock(&self.state).closed
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut st = lock(&self.state);
        self.reset_after_fork(&mut st);
        Snapshot {
            stats: st.stats.clone(),
            in_use: st.in_use,
            idle: st.idle_ro.len() + st.idle_rw.len(),
            epoch: st.conn.as_ref().map(|c| c.token.epoch()).unwrap_or(0),
        }
    }

    /// Runs `op` on the lease's session; if it fails because the session, the login or the
    /// key handle was lost, heals that once and runs it once more. `op` gets `refind = true`
    /// on the retry after a stale key handle.
    pub fn run<T>(
        &self,
        lease: &mut Lease,
        mut op: impl FnMut(&Session, &TokenState, bool) -> Result<T>,
    ) -> Result<T> {
        if lease.session.is_none() {
            // A session replaced after an earlier failure could not be reopened then.
            lease.session = Some(lease.token.open_session(lease.rw)?);
        }
        let seen_epoch = lease.token.epoch();
        let err = match op(lease.session()?, &lease.token, false) {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let Some(fault) = diagnose(lease, &err) else {
            self.replace_after_error(lease, &err);
            return Err(err);
        };
        self.heal(lease, fault, seen_epoch, &err)?;
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

    fn heal(&self, lease: &mut Lease, fault: Fault, seen_epoch: u64, err: &Error) -> Result<()> {
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
                lease.token.mark_gone();
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
                let conn = self.connection()?;
                lease.token = conn.token.clone();
                lease.gen = conn.gen;
                lease.session = Some(conn.token.open_session(lease.rw)?);
                Ok(())
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

    fn relogin(&self, lease: &Lease, seen_epoch: u64) -> Result<()> {
        match lease
            .token
            .relogin(&self.cfg.pin, self.cfg.pin_policy, seen_epoch)
        {
            Ok(did) => {
                if did {
                    lock(&self.state).stats.relogins += 1;
                }
                Ok(())
            }
            Err(e) => {
                if e.is_pin_error() {
                    lock(&self.state).failure = Some(e.clone());
                }
                Err(e)
            }
        }
    }

    /// Drops idle sessions that the token no longer knows (all of them if `all`), without
    /// closing their handles (a stale handle number may already name someone else's session).
    fn purge_dead_idle(&self, all: bool) -> u64 {
        let mut st = lock(&self.state);
        let mut purged = 0;
        let State {
            idle_ro, idle_rw, ..
        } = &mut *st;
        for idle in [idle_ro, idle_rw] {
            let mut keep = Vec::with_capacity(idle.len());
            for i in idle.drain(..) {
                if !all && i.session.get_session_info().is_ok() {
                    keep.push(i);
                } else {
                    std::mem::forget(i.session);
                    purged += 1;
                }
            }
            *idle = keep;
        }
        purged
    }

    /// The key entry for `query`: from the cache when found in this login epoch, else found
    /// (and its public half read) through `lease`.
    pub fn find_key(&self, lease: &mut Lease, query: &KeyQuery) -> Result<Arc<KeyEntry>> {
        if let Some(entry) = lock(&self.keys).get(query) {
            if lock(&entry.handle).0 == lease.token.epoch() {
                return Ok(entry.clone());
            }
        }
        let entry = self.run(lease, |session, token, _| {
            let epoch = token.epoch();
            let handle = key::find_private_key(session, query, &token.describe())?;
            let info = key::read_info(session, handle, None, query)?;
            Ok(Arc::new(KeyEntry {
                query: query.clone(),
                info,
                handle: Mutex::new((epoch, handle)),
            }))
        })?;
        lock(&self.keys).insert(query.clone(), entry.clone());
        Ok(entry)
    }

    /// Generates a key pair on a read-write lease and returns its entry (cached like a found
    /// key).
    pub fn generate_key(&self, lease: &mut Lease, spec: &keygen::KeySpec) -> Result<Arc<KeyEntry>> {
        let query = KeyQuery::new(Some(spec.label.clone()), Some(spec.id.clone()))?;
        self.store_key(lease, "generating", query, |s| keygen::generate(s, spec))
    }

    /// Imports a private key on a read-write lease and returns its entry.
    pub fn import_key(&self, lease: &mut Lease, import: &keygen::Import) -> Result<Arc<KeyEntry>> {
        let query = KeyQuery::new(Some(import.label.clone()), Some(import.id.clone()))?;
        self.store_key(lease, "importing", query, |s| keygen::import(s, import))
    }

    /// Makes a key object with `make` (on a read-write lease) and caches its entry. On the
    /// retry after a lost session, the first attempt may have made the key before its answer
    /// was lost (a network HSM): the retry looks for it before making another.
    fn store_key(
        &self,
        lease: &mut Lease,
        what: &str,
        query: KeyQuery,
        make: impl Fn(&Session) -> Result<(ObjectHandle, ObjectHandle)>,
    ) -> Result<Arc<KeyEntry>> {
        if !lease.rw {
            return Err(Error::new(
                Kind::Session,
                format!("{what} keys needs a read-write session: use pool.session(rw=True)"),
            ));
        }
        let mut tried = false;
        let entry = self.run(lease, |session, token, _| {
            let epoch = token.epoch();
            let existing = match tried {
                true => key::find_private_key(session, &query, &token.describe()).ok(),
                false => None,
            };
            tried = true;
            let (handle, public) = match existing {
                Some(h) => (h, None),
                None => {
                    let (private, public) = make(session)?;
                    (private, Some(public))
                }
            };
            let info = key::read_info(session, handle, public, &query)?;
            Ok(Arc::new(KeyEntry {
                query: query.clone(),
                info,
                handle: Mutex::new((epoch, handle)),
            }))
        })?;
        lock(&self.keys).insert(query, entry.clone());
        Ok(entry)
    }

    /// Every private key of the token that hsmkey can use, as cached entries.
    pub fn list_keys(&self, lease: &mut Lease) -> Result<Vec<Arc<KeyEntry>>> {
        let entries = self.run(lease, |session, token, _| {
            let epoch = token.epoch();
            key::list_private_keys(session)?
                .into_iter()
                .map(|(handle, query)| {
                    let info = key::read_info(session, handle, None, &query)?;
                    Ok(Arc::new(KeyEntry {
                        query,
                        info,
                        handle: Mutex::new((epoch, handle)),
                    }))
                })
                .filter(|r: &Result<Arc<KeyEntry>>| {
                    // Keys hsmkey cannot use (other types, EC keys with no public half)
                    // are left out of the listing rather than failing it.
                    !matches!(r, Err(e) if e.kind == Kind::Mechanism)
                })
                .collect::<Result<Vec<_>>>()
        })?;
        let mut keys = lock(&self.keys);
        for e in &entries {
            keys.insert(e.query.clone(), e.clone());
        }
        Ok(entries)
    }

    /// Deletes the keys matching `query` on a read-write lease; returns how many objects went.
    pub fn delete_key(&self, lease: &mut Lease, query: &KeyQuery) -> Result<usize> {
        if !lease.rw {
            return Err(Error::new(
                Kind::Session,
                "deleting keys needs a read-write session: use pool.session(rw=True)",
            ));
        }
        let n = self.run(lease, |session, _, _| keygen::delete(session, query))?;
        // Cached entries may name what was just deleted.
        lock(&self.keys).clear();
        Ok(n)
    }

    /// The key's handle in the current epoch (found again after a re-login or when `refind`).
    pub fn key_handle(
        &self,
        session: &Session,
        token: &TokenState,
        entry: &KeyEntry,
        refind: bool,
    ) -> Result<ObjectHandle> {
        let epoch = token.epoch();
        {
            let cached = lock(&entry.handle);
            if !refind && cached.0 == epoch {
                return Ok(cached.1);
            }
        }
        let handle = key::find_private_key(session, &entry.query, &token.describe())?;
        *lock(&entry.handle) = (epoch, handle);
        Ok(handle)
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

/// What broke, judged by the session itself (tokens answer the same fault with different
/// codes, so the return code alone cannot tell).
fn diagnose(lease: &Lease, err: &Error) -> Option<Fault> {
    if err.is_pin_error() || (err.rv.is_none() && err.kind != Kind::KeyNotFound) {
        return None;
    }
    let Some(session) = lease.session.as_ref() else {
        return Some(Fault::SessionGone);
    };
    match session.get_session_info() {
        Err(CkError::Pkcs11(RvError::DeviceRemoved | RvError::TokenNotPresent, _)) => {
            Some(Fault::TokenGone)
        }
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
