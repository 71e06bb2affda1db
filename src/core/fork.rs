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

/// A lock for sections that call into a PKCS#11 module (a login, a connection, an operation
/// on a session): a thread may hold it for as long as the token takes. A plain mutex held
/// by another thread when the process forks stays locked for ever in the child (that thread
/// does not exist there); this one remembers which process holds it, and a forked child
/// takes it although the parent's thread holds it. The inner mutex is only held for a few
/// instructions, never across a call.
#[derive(Default)]
pub struct CallLock {
    /// The process whose thread holds the lock (0: nobody).
    holder: std::sync::Mutex<u32>,
    freed: std::sync::Condvar,
}

/// Holds a [`CallLock`]; released when dropped.
pub struct CallGuard<'a> {
    lock: &'a CallLock,
    pid: u32,
}

impl CallLock {
    pub const fn new() -> Self {
        CallLock {
            holder: std::sync::Mutex::new(0),
            freed: std::sync::Condvar::new(),
        }
    }

    /// Waits until no thread of this process holds the lock, then takes it.
    pub fn lock(&self) -> CallGuard<'_> {
        let me = pid();
        let mut holder = self
            .holder
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Held by this process: wait. Held by another (the parent, before fork()): that
        // thread is not in this process and never lets go: take it.
        while *holder == me {
            holder = self
                .freed
                .wait(holder)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        *holder = me;
        CallGuard {
            lock: self,
            pid: me,
        }
    }
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        let mut holder = self
            .lock
            .holder
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // A guard taken before fork() and dropped in the child (or the other way round) does
        // not release a lock the other process holds now.
        if *holder == self.pid && self.pid == pid() {
            *holder = 0;
            drop(holder);
            self.lock.freed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pid_is_the_process_id() {
        assert_eq!(super::pid(), std::process::id());
        assert_eq!(super::pid(), std::process::id());
    }

    #[test]
    fn call_lock_excludes_threads_of_one_process() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let lock = Arc::new(super::CallLock::new());
        let inside = Arc::new(AtomicBool::new(false));
        let guard = lock.lock();
        let (l2, i2) = (lock.clone(), inside.clone());
        let t = std::thread::spawn(move || {
            let _g = l2.lock();
            i2.store(true, Ordering::SeqCst);
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!inside.load(Ordering::SeqCst));
        drop(guard);
        assert!(t.join().is_ok());
        assert!(inside.load(Ordering::SeqCst));
        drop(lock.lock());
    }
}
