//! The process id, kept current across `fork()` without a system call per use: hsmkey compares
//! it on every lend and return of a session to notice that it runs in a forked child.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;

static PID: AtomicU32 = AtomicU32::new(0);
static INSTALL: Once = Once::new();

#[cfg(unix)]
extern "C" fn after_fork_in_child() {
    // getpid and an atomic store are async-signal-safe, as a fork handler must be.
    PID.store(std::process::id(), Ordering::Relaxed);
}

/// The id of the current process.
pub fn pid() -> u32 {
    INSTALL.call_once(|| {
        PID.store(std::process::id(), Ordering::Relaxed);
        // Registration failing (ENOMEM) leaves the handler out: then fall back to asking the
        // system every time.
        #[cfg(unix)]
        // SAFETY: registers a handler that only reads the process id and stores an atomic;
        // it runs in the child right after fork(), where that is allowed.
        let rv = unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
        // No fork() elsewhere (Windows): the process id never changes under us.
        #[cfg(not(unix))]
        let rv = 0;
        if rv != 0 {
            PID.store(0, Ordering::Relaxed);
        }
    });
    match PID.load(Ordering::Relaxed) {
        0 => std::process::id(),
        pid => pid,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pid_is_the_process_id() {
        assert_eq!(super::pid(), std::process::id());
        assert_eq!(super::pid(), std::process::id());
    }
}
