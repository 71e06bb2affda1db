//! A session borrowed for a block (`with pool.session() as session:`), shared with the keys
//! loaded from it: one user at a time, returned to the pool when the block ends.
//!
//! Two locks: `user` (a [`CallLock`]) lets one thread at a time run an operation, and is held
//! across its PKCS#11 calls; `state` guards the lease and the flags and is only ever held for
//! a few instructions. While an operation runs, its lease is taken out of `state`, so that
//! `closed`, `repr()` or a forked child never wait for the token. The process that borrowed
//! the lease is kept outside both locks and checked first: a child forked while the parent
//! used the session fails at once with `HSMSessionError`, taking no lock.
//!
//! An `async with` block holds a session only while one of its calls runs
//! ([`SessionSlot::enter_per_call`]): each call borrows one from the pool (waiting with the
//! pool's other callers) and gives it back when it ends, on its worker thread. Between its
//! calls, and while a result travels back to the event loop, the block holds nothing. So
//! entering and leaving a block on a warm pool never waits, a task never holds a session
//! while it only waits (for one, or for the loop), no session sits idle while a task that
//! holds it waits for its turn on the loop, and a synchronous call on the loop's thread (a
//! first `find_key`) waits at most for a call in the token, never for the loop itself.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use crate::core::error::{Error, Kind, Result};
use crate::core::fork::{pid, CallLock};
use crate::core::module::lock;
use crate::core::pool::{CallsAfterRelease, Lease, Pool};

/// The lease behind a `Session` object, shared with the keys loaded from it.
pub struct SessionSlot {
    pub pool: Arc<Pool>,
    state: Mutex<SlotState>,
    /// One operation at a time (held across its PKCS#11 calls).
    user: CallLock,
    /// The process that borrowed the lease (0: not borrowed yet).
    owner: AtomicU32,
}

struct SlotState {
    lease: Option<Lease>,
    closed: bool,
    /// The lease is out for an operation (taken from `lease` by `with_lease`).
    busy: bool,
    /// `Some(rw)`: an `async with` block: each call that needs the session borrows one
    /// (read-write or not) and gives it back when it ends.
    per_call: Option<bool>,
}

fn not_open() -> Error {
    Error::new(
        Kind::Session,
        "the session is not open yet: use it inside `with pool.session() as session:`",
    )
}

fn closed_error() -> Error {
    Error::new(
        Kind::PoolClosed,
        "the session is closed: load keys inside the `with pool.session()` block that uses \
         them, or load a pool-bound key with HSMJWK.from_hsm(pool, ...)",
    )
}

impl SessionSlot {
    pub fn new(pool: Arc<Pool>, lease: Option<Lease>) -> Self {
        let owner = lease.as_ref().map(|l| l.pid()).unwrap_or(0);
        SessionSlot {
            pool,
            state: Mutex::new(SlotState {
                lease,
                closed: false,
                busy: false,
                per_call: None,
            }),
            user: CallLock::new(),
            owner: AtomicU32::new(owner),
        }
    }

    /// Fails in a forked child for a session the parent borrowed: checked before any lock.
    fn check_owner(&self) -> Result<()> {
        let owner = self.owner.load(Ordering::Acquire);
        let me = pid();
        if owner == 0 || owner == me {
            return Ok(());
        }
        Err(Error::new(
            Kind::Session,
            format!(
                "this session was borrowed by process {owner} before fork(); process {me} \
                 cannot use it: open a new `with pool.session()` block (or use a pool-bound \
                 key) in the child"
            ),
        ))
    }

    /// Runs `f` on the lease, one thread at a time.
    pub fn with_lease<T>(&self, f: impl FnOnce(&mut Lease) -> Result<T>) -> Result<T> {
        self.with_lease_waiting(&|| Ok(()), f)
    }

    /// [`with_lease`](Self::with_lease), borrowing the session first if the block was
    /// entered with none (`interrupt` as for [`Pool::acquire`]).
    pub fn with_lease_waiting<T>(
        &self,
        interrupt: &dyn Fn() -> Result<()>,
        f: impl FnOnce(&mut Lease) -> Result<T>,
    ) -> Result<T> {
        self.check_owner()?;
        let _user = self.user.lock();
        let borrow = {
            let st = lock(&self.state);
            match (&st.lease, st.closed, st.busy, st.per_call) {
                (None, false, false, Some(rw)) => Some(rw),
                _ => None,
            }
        };
        if let Some(rw) = borrow {
            self.open(rw, interrupt)?;
        }
        let mut lease = {
            let mut st = lock(&self.state);
            if st.closed {
                return Err(closed_error());
            }
            match st.lease.take() {
                Some(lease) => {
                    st.busy = true;
                    lease
                }
                None => return Err(not_open()),
            }
        };
        let result = lease.check_owner().and_then(|()| f(&mut lease));
        let mut st = lock(&self.state);
        st.busy = false;
        if st.per_call.is_some() {
            // An `async with` block's call: the session goes back as soon as it is done.
            drop(st);
            self.pool.release(lease);
        } else {
            st.lease = Some(lease);
        }
        result
    }

    /// Takes a warm idle session from the pool if one is free right now (no wait, no
    /// PKCS#11 call); returns whether the session is borrowed now.
    pub fn take_idle(&self, rw: bool) -> bool {
        if self.check_owner().is_err() {
            return false;
        }
        let mut st = lock(&self.state);
        if st.lease.is_none() && !st.busy && !st.closed {
            st.lease = self.pool.try_acquire_idle(rw);
            if let Some(lease) = &st.lease {
                self.owner.store(lease.pid(), Ordering::Release);
            }
        }
        st.lease.is_some() || st.busy
    }

    /// Enters an `async with` block on a connected pool: no session is borrowed (each call
    /// borrows one and gives it back), no wait, no PKCS#11 call. Returns false when the pool
    /// must connect first ([`enter_connecting`](Self::enter_connecting), on a worker).
    pub fn enter_per_call(&self, rw: bool) -> bool {
        if !self.pool.is_connected() {
            return false;
        }
        self.mark_per_call(rw).is_ok()
    }

    /// [`enter_per_call`](Self::enter_per_call) on a pool that is not connected yet:
    /// connects and logs in (the errors a block's entry raises), waiting for a session as
    /// an entry would, then gives the session back at once.
    pub fn enter_connecting(&self, rw: bool, interrupt: &dyn Fn() -> Result<()>) -> Result<()> {
        let lease = self.pool.acquire(rw, interrupt)?;
        self.pool.release(lease);
        self.mark_per_call(rw)
    }

    fn mark_per_call(&self, rw: bool) -> Result<()> {
        let mut st = lock(&self.state);
        if st.closed {
            return Err(Error::new(
                Kind::PoolClosed,
                "this session was closed (or its task cancelled) while it waited for the pool",
            ));
        }
        if st.lease.is_some() || st.busy {
            // A session that holds its lease already (`pool.open_session()`, or a `with`
            // block) keeps it: `async with` on it only enters it.
            return Ok(());
        }
        self.owner.store(pid(), Ordering::Release);
        st.per_call = Some(rw);
        Ok(())
    }

    /// True for an `async with` block (every call borrows the session and gives it back).
    pub fn is_per_call(&self) -> bool {
        lock(&self.state).per_call.is_some()
    }

    /// True if the block has been entered (it holds its session, or will borrow it on first
    /// use) and has not ended.
    pub fn entered(&self) -> bool {
        let st = lock(&self.state);
        !st.closed && (st.lease.is_some() || st.busy || st.per_call.is_some())
    }

    /// Borrows the session from the pool, unless it already is. The slot's lock is not held
    /// while the pool is asked (that may wait, log or be interrupted): a second thread
    /// reading the slot meanwhile never waits for this one.
    pub fn open(&self, rw: bool, interrupt: &dyn Fn() -> Result<()>) -> Result<()> {
        self.check_owner()?;
        {
            let st = lock(&self.state);
            if st.closed {
                return Err(Error::new(
                    Kind::PoolClosed,
                    "this session was closed; call pool.session() again for a new one",
                ));
            }
            if st.lease.is_some() || st.busy {
                return Ok(());
            }
        }
        let lease = self.pool.acquire(rw, interrupt)?;
        let mut st = lock(&self.state);
        if st.closed {
            drop(st);
            self.pool.release(lease);
            return Err(Error::new(
                Kind::PoolClosed,
                "this session was closed (or its task cancelled) while it waited for the pool",
            ));
        }
        if st.lease.is_some() || st.busy {
            // Another thread opened it meanwhile: keep that one.
            drop(st);
            self.pool.release(lease);
        } else {
            self.owner.store(lease.pid(), Ordering::Release);
            st.lease = Some(lease);
        }
        Ok(())
    }

    /// Whether the session went back to its pool, and whether it is borrowed now (or is to
    /// be, by the calls of an `async with` block). Never waits for an operation.
    pub fn status(&self) -> (bool, bool) {
        let st = lock(&self.state);
        (
            st.closed,
            st.lease.is_some() || st.busy || st.per_call.is_some(),
        )
    }

    /// [`close`](Self::close) if that needs no wait: no operation runs on the session (or
    /// the block is an `async with` one, whose running call gives it back itself). Then the
    /// session is back in its pool and `Ok` holds what a closed pool leaves to do in the
    /// token (to run without the GIL); `Err(())`: an operation runs, call `close`.
    #[allow(clippy::result_unit_err)]
    pub fn close_now(&self) -> std::result::Result<Option<CallsAfterRelease>, ()> {
        let mut st = lock(&self.state);
        st.closed = true;
        if st.busy && st.per_call.is_none() {
            return Err(());
        }
        let lease = st.lease.take();
        drop(st);
        Ok(lease.and_then(|lease| self.pool.give_back(lease)))
    }

    /// Returns the session to its pool (after the operation running on it, if any; an
    /// `async with` block's running call gives its session back itself when it ends).
    pub fn close(&self) {
        match self.close_now() {
            Ok(calls) => {
                if let Some(calls) = calls {
                    calls.run();
                }
            }
            Err(()) => {
                // An operation runs on it: wait for it (in a forked child, the parent's
                // operation does not count, and its lease is the parent's).
                let _user = self.user.lock();
                let lease = lock(&self.state).lease.take();
                if let Some(lease) = lease {
                    self.pool.release(lease);
                }
            }
        }
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.close();
    }
}
