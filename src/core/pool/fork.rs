//! After `fork()`: everything a pool holds belongs to the parent process.

use super::{Pool, State};

impl Pool {
    /// In a forked child, everything the pool holds belongs to the parent: forget it without
    /// calling into the module; the next use connects anew.
    pub(super) fn reset_after_fork(&self, st: &mut State) {
        let pid = crate::core::fork::pid();
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
            conn.token.forget_anchor_after_fork();
        }
        st.in_use = 0;
        st.in_use_rw = 0;
        st.checking = 0;
        st.learned_cap = None;
        st.waiting = 0;
        st.pid = pid;
        self.keys.clear();
    }
}
