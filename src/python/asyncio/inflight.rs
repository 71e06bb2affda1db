//! Calls in flight: every asynchronous call is counted from `spawn` until its result is in
//! its loop's queue, so that the `atexit` handler can wait for none to be left before the
//! interpreter finalizes (a worker must not be inside a GIL-released section then).

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::core::module::lock;

static IN_FLIGHT: Mutex<usize> = Mutex::new(0);
static SETTLED: Condvar = Condvar::new();

/// Waits (without the GIL) until no asynchronous call is in flight, at most `timeout`.
pub fn wait_idle(timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut n = lock(&IN_FLIGHT);
    while *n > 0 {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        n = match SETTLED.wait_timeout(n, deadline - now) {
            Ok((g, _)) => g,
            Err(p) => p.into_inner().0,
        };
    }
}

/// One call in flight, counted from `spawn` until its result is in its loop's queue (or the
/// call was dropped).
pub(super) struct InFlight;

impl InFlight {
    pub(super) fn new() -> Self {
        *lock(&IN_FLIGHT) += 1;
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut n = lock(&IN_FLIGHT);
        *n = n.saturating_sub(1);
        SETTLED.notify_all();
    }
}
