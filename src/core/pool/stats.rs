//! The counters behind `pool.stats()`.

use super::Pool;
use crate::core::module::lock;

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

impl Pool {
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
}
