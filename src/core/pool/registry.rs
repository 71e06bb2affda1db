//! Every live pool of the process, weakly held, so that interpreter exit can close them all.

use std::sync::{Arc, Mutex, OnceLock, Weak};

use super::Pool;
use crate::core::module::lock;

fn live_pools() -> &'static Mutex<Vec<Weak<Pool>>> {
    static LIVE: OnceLock<Mutex<Vec<Weak<Pool>>>> = OnceLock::new();
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
