//! A session borrowed for a block (`with pool.session() as session:`), shared with the keys
//! loaded from it: one user at a time (its lock), returned to the pool when the block ends.
//!
//! An `async with` block entered when no session is free borrows none yet ([`SessionSlot::
//! defer`]): the first call that needs the session borrows it, waiting as the block's entry
//! would have, and the block keeps it until it ends. So entering and leaving a block on a
//! warm pool never waits, and a task never holds a session while it only waits for one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::core::error::{Error, Kind, Result};
use crate::core::module::lock;
use crate::core::pool::{Lease, Pool};

/// The lease behind a `Session` object, shared with the keys loaded from it.
pub struct SessionSlot {
    pub pool: Arc<Pool>,
    pub state: Mutex<SlotState>,
    /// Set while a deferred block's session is still to be borrowed by its first
    /// asynchronous call (which then waits with the pool's other callers); cleared once the
    /// session is borrowed or that call is under way.
    pub first_call: AtomicBool,
}

pub struct SlotState {
    pub lease: Option<Lease>,
    pub closed: bool,
    /// `Some(rw)`: the block was entered with no session; the first call that needs one
    /// borrows it (read-write or not).
    pub deferred: Option<bool>,
}

impl SessionSlot {
    pub fn new(pool: Arc<Pool>, lease: Option<Lease>) -> SessionSlot {
        SessionSlot {
            pool,
            state: Mutex::new(SlotState {
                lease,
                closed: false,
                deferred: None,
            }),
            first_call: AtomicBool::new(false),
        }
    }

    /// Enters the block with no session (when none is free): the first call that needs one
    /// borrows it. Makes no PKCS#11 call and never waits.
    pub fn defer(&self, rw: bool) {
        let mut st = lock(&self.state);
        if st.lease.is_none() && !st.closed && st.deferred.is_none() {
            st.deferred = Some(rw);
            self.first_call.store(true, Ordering::Release);
        }
    }

    /// True once for the first asynchronous call of a deferred block that has no session yet.
    pub fn take_first_call(&self) -> bool {
        self.first_call.load(Ordering::Acquire) && self.first_call.swap(false, Ordering::AcqRel)
    }

    /// True if the block has been entered (it holds its session, or will borrow it on first
    /// use) and has not ended. `None` when another thread holds the session's lock (a call
    /// under way on it): the caller asks the slow way then.
    pub fn try_entered(&self) -> Option<bool> {
        let st = self.state.try_lock().ok()?;
        Some(!st.closed && (st.lease.is_some() || st.deferred.is_some()))
    }

    /// Runs `f` on the lease, holding the session's lock (one thread at a time).
    pub fn with_lease<T>(&self, f: impl FnOnce(&mut Lease) -> Result<T>) -> Result<T> {
        self.with_lease_waiting(&|| Ok(()), f)
    }

    /// [`with_lease`](Self::with_lease), borrowing the session first if the block was
    /// deferred (`interrupt` as for [`Pool::acquire`]).
    pub fn with_lease_waiting<T>(
        &self,
        interrupt: &dyn Fn() -> Result<()>,
        f: impl FnOnce(&mut Lease) -> Result<T>,
    ) -> Result<T> {
        let mut st = lock(&self.state);
        if let (None, false, Some(rw)) = (&st.lease, st.closed, st.deferred) {
            drop(st);
            self.open(rw, interrupt)?;
            st = lock(&self.state);
        }
        let closed = st.closed;
        match st.lease.as_mut() {
            Some(lease) => {
                lease.check_owner()?;
                f(lease)
            }
            None if closed => Err(Error::new(
                Kind::PoolClosed,
                "the session is closed: load keys inside the `with pool.session()` block that \
                 uses them, or load a pool-bound key with HSMJWK.from_hsm(pool, ...)",
            )),
            None => Err(Error::new(
                Kind::Session,
                "the session is not open yet: use it inside `with pool.session() as session:`",
            )),
        }
    }

    /// Borrows the session from the pool, unless it already is. The slot's lock is not held
    /// while the pool is asked (that may wait, log or be interrupted): a second thread
    /// reading the slot meanwhile never waits for this one.
    pub fn open(&self, rw: bool, interrupt: &dyn Fn() -> Result<()>) -> Result<()> {
        {
            let st = lock(&self.state);
            if st.closed {
                return Err(Error::new(
                    Kind::PoolClosed,
                    "this session was closed; call pool.session() again for a new one",
                ));
            }
            if st.lease.is_some() {
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
        match st.lease {
            // Another thread opened it meanwhile: keep that one.
            Some(_) => {
                drop(st);
                self.pool.release(lease);
            }
            None => {
                st.lease = Some(lease);
                self.first_call.store(false, Ordering::Release);
            }
        }
        Ok(())
    }

    /// Whether the session went back to its pool, and whether it is borrowed now (or is to
    /// be, by the first call of a deferred block).
    pub fn status(&self) -> (bool, bool) {
        let st = lock(&self.state);
        (st.closed, st.lease.is_some() || st.deferred.is_some())
    }

    pub fn close(&self) {
        let lease = {
            let mut st = lock(&self.state);
            st.closed = true;
            st.lease.take()
        };
        if let Some(lease) = lease {
            self.pool.release(lease);
        }
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.close();
    }
}
