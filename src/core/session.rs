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
            Some(lease) => f(lease),
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
