//! Lanes: where an asynchronous call lines up before it takes a worker thread. A pool's lane
//! is `max_sessions` wide, a lent session's lane one wide; a worker that finishes a call
//! takes the next one waiting in its lane itself, and a timer fails calls that wait past
//! their `acquire_timeout`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use crate::core::error::{Error, Kind};
use crate::core::module::lock;
use crate::core::pool::Pool;
use crate::core::session::SessionSlot;

/// Where an asynchronous call lines up before it takes a worker thread.
pub enum Gate<'a> {
    /// The pool's lane, `max_sessions` wide (the call borrows a session from the pool).
    Pool(&'a Arc<Pool>),
    /// The lane of a call on a block's session: the pool's for an `async with` block (the
    /// call borrows the session), else the session's own, one wide (a `with` block's).
    Session(&'a Arc<SessionSlot>),
    /// No lane (the call borrows nothing and returns quickly).
    Free,
}

/// A call waiting in a lane (type-erased [`Job`]).
pub(super) trait Waiting: Send {
    fn run(self: Box<Self>);
    fn fail(self: Box<Self>, err: Error);
    fn is_cancelled(&self) -> bool;
    fn deadline(&self) -> Instant;
}

struct LaneState {
    running: usize,
    /// In arrival order, so in deadline order too (one pool, one `acquire_timeout`).
    queue: VecDeque<Box<dyn Waiting>>,
    /// A timer fails calls that wait past their deadline; at most one per lane.
    timer: bool,
}

pub(super) struct Lane {
    width: usize,
    /// Weak: a lane must not keep its pool alive (the last reference closes a pool). Calls in
    /// the lane hold it strongly while they wait.
    pool: Weak<Pool>,
    state: Mutex<LaneState>,
}

impl Lane {
    fn new(width: usize, pool: &Arc<Pool>) -> Lane {
        Lane {
            width: width.max(1),
            pool: Arc::downgrade(pool),
            state: Mutex::new(LaneState {
                running: 0,
                queue: VecDeque::new(),
                timer: false,
            }),
        }
    }

    /// Runs `job` now on a worker thread if the lane has room, else lines it up.
    pub(super) fn submit(self: &Arc<Self>, job: Box<dyn Waiting>) {
        let mut st = lock(&self.state);
        if st.running < self.width {
            st.running += 1;
            drop(st);
            let lane = self.clone();
            pyo3_async_runtimes::tokio::get_runtime().spawn_blocking(move || lane.work(job));
            return;
        }
        st.queue.push_back(job);
        if !std::mem::replace(&mut st.timer, true) {
            drop(st);
            let lane = self.clone();
            pyo3_async_runtimes::tokio::get_runtime().spawn(async move { lane.expire().await });
        }
    }

    /// The error of a call whose `acquire_timeout` ran out while it waited in the lane.
    fn timed_out(&self) -> Error {
        match self.pool.upgrade() {
            Some(pool) => pool.timed_out(true),
            None => Error::new(Kind::PoolClosed, "the pool is gone"),
        }
    }

    /// A worker thread of the lane: runs `job`, then whatever waits, until nothing does.
    fn work(&self, mut job: Box<dyn Waiting>) {
        loop {
            job.run();
            let mut st = lock(&self.state);
            loop {
                match st.queue.pop_front() {
                    None => {
                        st.running -= 1;
                        return;
                    }
                    Some(next) if next.is_cancelled() => drop(next),
                    Some(next) if Instant::now() >= next.deadline() => {
                        drop(st);
                        next.fail(self.timed_out());
                        st = lock(&self.state);
                    }
                    Some(next) => {
                        job = next;
                        break;
                    }
                }
            }
        }
    }

    /// The lane's timer: fails the calls that waited past their deadline, sleeping until the
    /// next one's; ends when nothing waits.
    async fn expire(self: Arc<Self>) {
        loop {
            let now = Instant::now();
            let mut expired = Vec::new();
            let next = {
                let mut st = lock(&self.state);
                while let Some(front) = st.queue.front() {
                    if !front.is_cancelled() && front.deadline() > now {
                        break;
                    }
                    if let Some(job) = st.queue.pop_front() {
                        if !job.is_cancelled() {
                            expired.push(job);
                        }
                    }
                }
                let next = st.queue.front().map(|j| j.deadline());
                if next.is_none() {
                    st.timer = false;
                }
                next
            };
            for job in expired {
                job.fail(self.timed_out());
            }
            match next {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => return,
            }
        }
    }
}

/// A lane per live owner, found by the owner's address and checked by its weak reference
/// (an address reused by a new owner gets a new lane).
struct Lanes<T> {
    map: BTreeMap<usize, (Weak<T>, Arc<Lane>)>,
    /// Dead entries are swept when the map grows past this.
    sweep_at: usize,
}

impl<T> Lanes<T> {
    const fn new() -> Self {
        Lanes {
            map: BTreeMap::new(),
            sweep_at: 64,
        }
    }

    fn get(&mut self, owner: &Arc<T>, make: impl FnOnce() -> Lane) -> Arc<Lane> {
        let key = Arc::as_ptr(owner) as usize;
        if let Some((weak, lane)) = self.map.get(&key) {
            if weak.upgrade().is_some_and(|o| Arc::ptr_eq(&o, owner)) {
                return lane.clone();
            }
        }
        if self.map.len() >= self.sweep_at {
            self.map.retain(|_, (weak, _)| weak.strong_count() > 0);
            self.sweep_at = (self.map.len() * 2).max(64);
        }
        let lane = Arc::new(make());
        self.map.insert(key, (Arc::downgrade(owner), lane.clone()));
        lane
    }
}

static POOL_LANES: Mutex<Lanes<Pool>> = Mutex::new(Lanes::new());
static SESSION_LANES: Mutex<Lanes<SessionSlot>> = Mutex::new(Lanes::new());

impl Gate<'_> {
    /// The lane to line up in, and the pool whose `acquire_timeout` bounds the wait.
    pub(super) fn lane(&self) -> Option<(Arc<Lane>, Arc<Pool>)> {
        match self {
            Gate::Pool(pool) => Some((
                lock(&POOL_LANES).get(pool, || Lane::new(pool.cfg.max_sessions, pool)),
                Arc::clone(pool),
            )),
            // A call of an `async with` block borrows the session for itself: it waits with
            // the pool's callers, so a session is never held by a call that only waits.
            Gate::Session(slot) if slot.is_per_call() => Gate::Pool(&slot.pool).lane(),
            Gate::Session(slot) => Some((
                lock(&SESSION_LANES).get(slot, || Lane::new(1, &slot.pool)),
                slot.pool.clone(),
            )),
            Gate::Free => None,
        }
    }
}
