//! A session borrowed for a block (`with pool.session() as session:`), shared with the keys
//! loaded from it: one user at a time (its lock), returned to the pool when the block ends.

use std::sync::{Arc, Mutex};

use crate::core::error::{Error, Kind, Result};
use crate::core::module::lock;
use crate::core::pool::{Lease, Pool};

/// The lease behind a `Session` object, shared with the keys loaded from it.
pub struct SessionSlot {
    pub pool: Arc<Pool>,
    pub state: Mutex<SlotState>,
}

pub struct SlotState {
    pub lease: Option<Lease>,
    pub closed: bool,
}

impl SessionSlot {
    /// Runs `f` on the lease, holding the session's lock (one thread at a time).
    pub fn with_lease<T>(&self, f: impl FnOnce(&mut Lease) -> Result<T>) -> Result<T> {
        let mut st = lock(&self.state);
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
            None => st.lease = Some(lease),
        }
        Ok(())
    }

    /// Whether the session went back to its pool, and whether it is borrowed now.
    pub fn status(&self) -> (bool, bool) {
        let st = lock(&self.state);
        (st.closed, st.lease.is_some())
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
