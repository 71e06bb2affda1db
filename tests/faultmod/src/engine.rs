//! The process-wide state of the fault module: the real module, the call counters, the
//! control file and what it says, the sessions opened through us and the slots "removed".

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use cryptoki_sys::*;

use crate::config::{self, Config, Effect, Mode, Removal, Rule, Trigger};
use crate::funcs::{self, Func};

pub const DEFAULT_TARGET: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// Where things are, read from the environment once, at the first call.
pub struct Env {
    pub target: PathBuf,
    pub control: Option<PathBuf>,
    pub counts: Option<PathBuf>,
    /// `HSMKEY_FAULT_LATENCY`: a delay per call, as if every call crossed a network (on top
    /// of the control file's `latency` lines: the longest applies).
    pub latency: Vec<(config::Target, Duration)>,
}

static ENV: OnceLock<Env> = OnceLock::new();

/// Values set through `hsmkey_fault_configure` before the first call: they take the place of
/// the environment variables of the same names for this copy of the module only (several
/// copies in one process, each in front of its own token, read one environment).
static OVERRIDES: Mutex<Vec<(String, std::ffi::OsString)>> = Mutex::new(Vec::new());

/// The names `configure` accepts.
pub const ENV_NAMES: [&str; 4] = [
    "HSMKEY_FAULT_TARGET",
    "HSMKEY_FAULT_CONTROL",
    "HSMKEY_FAULT_COUNTS",
    "HSMKEY_FAULT_LATENCY",
];

/// Sets one of `ENV_NAMES` for this copy of the module: 0 done, 1 too late (the module has
/// read its settings already), 2 not a name it reads.
pub fn configure(name: &str, value: std::ffi::OsString) -> i32 {
    if !ENV_NAMES.contains(&name) {
        return 2;
    }
    let mut overrides = OVERRIDES.lock().unwrap_or_else(|p| p.into_inner());
    if ENV.get().is_some() {
        return 1;
    }
    overrides.retain(|(n, _)| n != name);
    overrides.push((name.to_string(), value));
    0
}

fn var_os(name: &str) -> Option<std::ffi::OsString> {
    let overrides = OVERRIDES.lock().unwrap_or_else(|p| p.into_inner());
    match overrides.iter().find(|(n, _)| n == name) {
        Some((_, v)) => Some(v.clone()),
        None => std::env::var_os(name),
    }
}

pub fn env() -> &'static Env {
    ENV.get_or_init(|| {
        let path = |name: &str| var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        Env {
            target: path("HSMKEY_FAULT_TARGET").unwrap_or_else(|| DEFAULT_TARGET.into()),
            control: path("HSMKEY_FAULT_CONTROL"),
            counts: path("HSMKEY_FAULT_COUNTS"),
            latency: match var_os("HSMKEY_FAULT_LATENCY").map(|v| v.into_string()) {
                Some(Ok(text)) => config::parse_latency_env(&text).unwrap_or_else(|e| {
                    eprintln!("hsmkey-faultmod: HSMKEY_FAULT_LATENCY={text:?} ignored: {e}");
                    Vec::new()
                }),
                _ => Vec::new(),
            },
        }
    })
}

/// The real module, loaded once and never unloaded.
struct Real {
    _lib: libloading::Library,
    list: *const CK_FUNCTION_LIST,
}

// SAFETY: `list` points to the function list of a library that stays loaded for the life of
// the process (`_lib` is never dropped: it lives in a `static`). PKCS#11 makes that list
// read-only and its functions callable from any thread once C_Initialize was given
// CKF_OS_LOCKING_OK, which is what our callers pass through.
unsafe impl Send for Real {}
// SAFETY: as above; nothing in `Real` is ever mutated after loading.
unsafe impl Sync for Real {}

fn load_real(own: *const CK_FUNCTION_LIST) -> Result<Real, String> {
    let path = &env().target;
    // SAFETY: loading a shared library runs its initializers; the target is a PKCS#11 module
    // chosen by the test harness (HSMKEY_FAULT_TARGET), which is what such a module is for.
    let lib = unsafe { libloading::Library::new(path) }
        .map_err(|e| format!("cannot load {}: {e}", path.display()))?;
    // SAFETY: C_GetFunctionList has this signature in every PKCS#11 module.
    let get: libloading::Symbol<unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV> =
        unsafe { lib.get(b"C_GetFunctionList\0") }
            .map_err(|e| format!("{} is not a PKCS#11 module: {e}", path.display()))?;
    // Calling our own C_GetFunctionList from here would wait for this very initialization.
    if *get as *const () == crate::C_GetFunctionList as *const () {
        return Err(format!(
            "HSMKEY_FAULT_TARGET={} names the fault module itself",
            path.display()
        ));
    }
    let mut list: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
    // SAFETY: `list` is a valid place for the module to write its list pointer into.
    let rv = unsafe { get(&mut list) };
    if rv != CKR_OK || list.is_null() {
        return Err(format!(
            "C_GetFunctionList of {} returned {}",
            path.display(),
            crate::rv::rv_name(rv)
        ));
    }
    if std::ptr::eq(list, own) {
        return Err(format!(
            "HSMKEY_FAULT_TARGET={} names the fault module itself",
            path.display()
        ));
    }
    Ok(Real { _lib: lib, list })
}

/// The real module's function list, loaded on first use; None (and a message on stderr, once)
/// if it cannot be loaded.
pub fn real() -> Option<&'static CK_FUNCTION_LIST> {
    static REAL: OnceLock<Result<Real, String>> = OnceLock::new();
    let real = REAL.get_or_init(|| {
        let r = load_real(crate::own_function_list());
        if let Err(e) = &r {
            eprintln!("hsmkey-faultmod: {e}");
        }
        r
    });
    match real {
        // SAFETY: see `Real`: the list outlives the process's use of it and is never written.
        Ok(r) => Some(unsafe { &*r.list }),
        Err(_) => None,
    }
}

thread_local! {
    /// Whether the current call had a failure injected (for the trace).
    static INJECTED_NOW: Cell<bool> = const { Cell::new(false) };
}

/// Runs an exported function's body; a panic becomes CKR_GENERAL_ERROR instead of unwinding
/// into C. Writes the trace line when tracing.
pub fn guard(func: Func, scope: Scope, body: impl FnOnce() -> CK_RV) -> CK_RV {
    INJECTED_NOW.with(|c| c.set(false));
    let rv = catch_unwind(AssertUnwindSafe(body)).unwrap_or(CKR_GENERAL_ERROR);
    if TRACING.load(Ordering::Relaxed) {
        let _ = catch_unwind(AssertUnwindSafe(|| trace(func, scope, rv)));
    }
    rv
}

static TRACING: AtomicBool = AtomicBool::new(false);

type Tracer = Option<(PathBuf, std::fs::File, Instant)>;

fn set_trace(t: &mut Tracer, path: Option<&PathBuf>) {
    if t.as_ref().map(|(p, ..)| p) == path {
        return;
    }
    *t = path.and_then(|p| {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| eprintln!("hsmkey-faultmod: cannot trace to {}: {e}", p.display()))
            .ok()?;
        Some((p.clone(), file, Instant::now()))
    });
    TRACING.store(t.is_some(), Ordering::Relaxed);
}

fn trace(func: Func, scope: Scope, rv: CK_RV) {
    use std::io::Write;
    let injected = INJECTED_NOW.with(|c| c.get());
    let mut st = state();
    if let Some((_, file, start)) = st.trace.as_mut() {
        let scope = match scope {
            Scope::Global => String::new(),
            Scope::Slot(s) => format!(" slot={s}"),
            Scope::Session(h) => format!(" session={h}"),
        };
        let _ = writeln!(
            file,
            "{:>10.6} {:?} {}{scope} -> {}{}",
            start.elapsed().as_secs_f64(),
            std::thread::current().id(),
            func.name(),
            crate::rv::rv_name(rv),
            if injected { " (injected)" } else { "" }
        );
    }
}

static CALLS: [AtomicU64; funcs::COUNT] = [const { AtomicU64::new(0) }; funcs::COUNT];
static INJECTED: [AtomicU64; funcs::COUNT] = [const { AtomicU64::new(0) }; funcs::COUNT];

pub fn calls(func: Func) -> u64 {
    per_process();
    CALLS[func as usize].load(Ordering::Relaxed)
}

pub fn injected(func: Func) -> u64 {
    per_process();
    INJECTED[func as usize].load(Ordering::Relaxed)
}

pub fn reset_counts() {
    for c in CALLS.iter().chain(INJECTED.iter()) {
        c.store(0, Ordering::Relaxed);
    }
}

/// What a call is about, for removal and for effects.
#[derive(Debug, Clone, Copy)]
pub enum Scope {
    Global,
    Slot(CK_SLOT_ID),
    Session(CK_SESSION_HANDLE),
}

struct ArmedRule {
    rule: Rule,
    calls: u64,
    rng: u64,
}

impl ArmedRule {
    fn new(rule: Rule) -> Self {
        let rng = match rule.trigger {
            Trigger::Prob { seed, .. } => seed,
            _ => 0,
        };
        ArmedRule {
            rule,
            calls: 0,
            rng,
        }
    }

    /// Counts a call and says whether the rule fires on it.
    fn fires(&mut self) -> bool {
        self.calls += 1;
        let n = self.calls;
        match self.rule.trigger {
            Trigger::Nth(k) => n == k,
            Trigger::Every(k) => n % k == 0,
            Trigger::Count(k) => n <= k,
            Trigger::Always => true,
            Trigger::Prob { p, .. } => {
                // splitmix64: deterministic for a seed and a sequence of calls.
                self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = self.rng;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                ((z >> 11) as f64 / (1u64 << 53) as f64) < p
            }
        }
    }
}

/// A simulated PIN counter (`pin_retries N`).
struct PinCounter {
    max: u32,
    left: u32,
}

type Stamp = (u64, u64, i64, i64, u64);

#[derive(Default)]
struct State {
    /// (dev, ino, mtime, mtime_nsec, size) of the control file as last read; None: no file.
    stamp: Option<Stamp>,
    loaded: bool,
    rules: Vec<ArmedRule>,
    latency: Vec<(config::Target, Duration)>,
    flags_set: CK_FLAGS,
    flags_clear: CK_FLAGS,
    removals: Vec<Removal>,
    /// `removals` turned into slot ids (needs the real module initialized); None until then.
    removed: Option<HashSet<CK_SLOT_ID>>,
    /// `removals` changed and `removed` is not yet up to date.
    pending_resolution: bool,
    pin: Option<PinCounter>,
    /// Sessions opened through us and not closed, with their slot.
    sessions: HashMap<CK_SESSION_HANDLE, CK_SLOT_ID>,
    /// Sessions that died when their token was "removed"; while it stays removed, calls on
    /// them return CKR_DEVICE_REMOVED.
    dead: HashMap<CK_SESSION_HANDLE, CK_SLOT_ID>,
    errors: usize,
    trace: Tracer,
    init_args: Option<String>,
    max_sessions: Option<(u64, bool)>,
    /// Sessions being opened (counted against `max_sessions` until they are open or failed).
    opening: HashMap<CK_SLOT_ID, u64>,
    no_login: Option<String>,
    hidden: Vec<CK_MECHANISM_TYPE>,
    utc_time: Option<[u8; 16]>,
    /// `unreachable`: (code, delay) answered to every call while the line stays.
    unreachable: Option<(CK_RV, Duration)>,
    /// The module just became unreachable: its sessions are to be closed in the real module.
    pending_cut: bool,
}

/// The state of this process. After a `fork()` the child gets a fresh one (and zeroed
/// counters): the parent's may be locked by a thread that does not exist in the child, and
/// its sessions belong to the parent. The old one is leaked on purpose.
struct PerProcess {
    pid: u32,
    state: Mutex<State>,
    /// Held shared across every call into the real module ([`in_flight`]) and exclusively by
    /// `cut`, which closes sessions other threads may be using: SoftHSM2 frees a session
    /// closed under a call that runs on it (seen as a segfault), a network HSM does not.
    calls: RwLock<()>,
}

/// Shared hold on the real module for one call (see [`PerProcess::calls`]).
pub fn in_flight() -> RwLockReadGuard<'static, ()> {
    per_process()
        .calls
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

static CURRENT: AtomicPtr<PerProcess> = AtomicPtr::new(std::ptr::null_mut());

fn per_process() -> &'static PerProcess {
    let pid = std::process::id();
    let current = CURRENT.load(Ordering::Acquire);
    // SAFETY: CURRENT only ever holds null or a pointer from Box::into_raw that is never
    // freed once published.
    if let Some(p) = unsafe { current.as_ref() } {
        if p.pid == pid {
            return p;
        }
    }
    let forked = !current.is_null();
    let fresh = Box::into_raw(Box::new(PerProcess {
        pid,
        state: Mutex::new(State::default()),
        calls: RwLock::new(()),
    }));
    match CURRENT.compare_exchange(current, fresh, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => {
            if forked {
                reset_counts();
            }
            // SAFETY: `fresh` came from Box::into_raw just above and is now published for
            // the life of the process.
            unsafe { &*fresh }
        }
        Err(winner) => {
            // SAFETY: `fresh` was never published; we still own it.
            drop(unsafe { Box::from_raw(fresh) });
            // SAFETY: as for `current` above.
            unsafe { &*winner }
        }
    }
}

fn state() -> MutexGuard<'static, State> {
    per_process()
        .state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl State {
    /// Re-reads the control file if it changed (a stat per call), then resolves pending
    /// token removals.
    fn refresh(&mut self, force: bool) {
        if let Some(path) = &env().control {
            let stamp = std::fs::metadata(path)
                .ok()
                .map(|m| (m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.size()));
            if force || !self.loaded || stamp != self.stamp {
                let text = stamp
                    .and_then(|_| std::fs::read_to_string(path).ok())
                    .unwrap_or_default();
                self.stamp = stamp;
                self.loaded = true;
                self.apply(config::parse(&text));
            }
        }
        self.resolve_removals();
        self.cut();
    }

    /// The module became unreachable: what the real module held for us (sessions, and with
    /// the last of them the login) is gone, as a network HSM forgets a client it lost.
    fn cut(&mut self) {
        if !self.pending_cut || self.unreachable.is_none() {
            return;
        }
        self.pending_cut = false;
        // Alone in the real module: calls in flight on these sessions end first (new ones
        // wait, then find the module unreachable).
        let _alone = per_process()
            .calls
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let close = real().and_then(|list| list.C_CloseSession);
        for (h, _) in self.sessions.drain() {
            if let Some(close) = close {
                // SAFETY: the real module's C_CloseSession on a handle it gave us; no other
                // call into the module runs meanwhile (the exclusive hold above).
                let _ = unsafe { close(h) };
            }
        }
        self.dead.clear();
    }

    fn apply(&mut self, cfg: Config) {
        for e in &cfg.errors {
            eprintln!("hsmkey-faultmod: {e}");
        }
        self.errors = cfg.errors.len();
        let mut old: HashMap<String, ArmedRule> = self
            .rules
            .drain(..)
            .map(|r| (r.rule.key.clone(), r))
            .collect();
        self.rules = cfg
            .rules
            .into_iter()
            .map(|rule| match old.remove(&rule.key) {
                Some(armed) if armed.rule == rule => armed,
                _ => ArmedRule::new(rule),
            })
            .collect();
        self.latency = cfg.latency;
        self.flags_set = cfg.flags_set;
        self.flags_clear = cfg.flags_clear;
        if cfg.no_login.is_some() {
            self.flags_clear |= CKF_LOGIN_REQUIRED;
            self.flags_set &= !CKF_LOGIN_REQUIRED;
        }
        self.init_args = cfg.init_args;
        self.max_sessions = cfg.max_sessions;
        self.no_login = cfg.no_login;
        self.hidden = cfg.hidden_mechanisms;
        self.utc_time = cfg.utc_time;
        self.pin = match (cfg.pin_retries, self.pin.take()) {
            (Some(max), Some(p)) if p.max == max => Some(p),
            (Some(max), _) => Some(PinCounter { max, left: max }),
            (None, _) => None,
        };
        if cfg.removals != self.removals {
            self.removals = cfg.removals;
            if self.removals.is_empty() {
                self.restore_all();
            } else {
                // Resolved (and newly removed slots emptied) by resolve_removals.
                self.pending_resolution = true;
            }
        }
        if cfg.unreachable.is_some() && self.unreachable.is_none() {
            self.pending_cut = true;
        }
        self.unreachable = cfg.unreachable;
        set_trace(&mut self.trace, cfg.trace.as_ref());
        if cfg.dump {
            let _ = write_counts(self.sessions.len() as u64);
        }
    }

    fn restore_all(&mut self) {
        self.removed = None;
        self.pending_resolution = false;
        // The sessions that died stay dead: from now on the real module answers for them.
        self.dead.clear();
    }

    fn resolve_removals(&mut self) {
        if !self.pending_resolution {
            return;
        }
        let Some(slots) = resolve(&self.removals) else {
            return; // the real module is not initialized yet: try again at the next call
        };
        let before = self.removed.take().unwrap_or_default();
        for &slot in slots.difference(&before) {
            // The token goes away: its sessions and its login are gone for real.
            let _ = real!(C_CloseAllSessions(slot));
            let (gone, kept): (HashMap<_, _>, HashMap<_, _>) =
                self.sessions.drain().partition(|(_, s)| *s == slot);
            self.sessions = kept;
            self.dead.extend(gone);
        }
        self.dead.retain(|_, s| slots.contains(s));
        self.removed = Some(slots);
        self.pending_resolution = false;
    }

    fn is_removed(&self, slot: CK_SLOT_ID) -> bool {
        self.removed.as_ref().is_some_and(|r| r.contains(&slot))
    }

    fn slot_of(&self, scope: Scope) -> Option<CK_SLOT_ID> {
        match scope {
            Scope::Global => None,
            Scope::Slot(s) => Some(s),
            Scope::Session(h) => self.sessions.get(&h).or_else(|| self.dead.get(&h)).copied(),
        }
    }

    fn pin_flags(&self) -> CK_FLAGS {
        match &self.pin {
            None => 0,
            Some(p) if p.left == 0 => CKF_USER_PIN_LOCKED,
            Some(p) if p.left == 1 => CKF_USER_PIN_FINAL_TRY | CKF_USER_PIN_COUNT_LOW,
            Some(p) if p.left < p.max => CKF_USER_PIN_COUNT_LOW,
            Some(_) => 0,
        }
    }

    fn token_flags(&self, real: CK_FLAGS) -> CK_FLAGS {
        (real | self.flags_set | self.pin_flags()) & !self.flags_clear
    }
}

/// The slots that `removals` name, or None while the real module cannot tell.
fn resolve(removals: &[Removal]) -> Option<HashSet<CK_SLOT_ID>> {
    let mut out = HashSet::new();
    let mut present: Option<Vec<CK_SLOT_ID>> = None;
    for removal in removals {
        match removal {
            Removal::Slot(s) => {
                out.insert(*s);
            }
            Removal::All | Removal::Label(_) => {
                if present.is_none() {
                    present = Some(real_slots(CK_TRUE)?);
                }
                for &slot in present.iter().flatten() {
                    let keep = match removal {
                        Removal::Label(label) => real_label(slot).as_deref() == Some(label),
                        _ => true,
                    };
                    if keep {
                        out.insert(slot);
                    }
                }
            }
        }
    }
    Some(out)
}

/// C_GetSlotList of the real module (None if it fails, e.g. not initialized yet).
pub fn real_slots(token_present: CK_BBOOL) -> Option<Vec<CK_SLOT_ID>> {
    for _ in 0..8 {
        let mut n: CK_ULONG = 0;
        if real!(C_GetSlotList(token_present, std::ptr::null_mut(), &mut n)) != CKR_OK {
            return None;
        }
        let mut slots = vec![0 as CK_SLOT_ID; n as usize];
        match real!(C_GetSlotList(token_present, slots.as_mut_ptr(), &mut n)) {
            CKR_OK => {
                slots.truncate(n as usize);
                return Some(slots);
            }
            CKR_BUFFER_TOO_SMALL => continue, // a slot appeared in between
            _ => return None,
        }
    }
    None
}

fn real_label(slot: CK_SLOT_ID) -> Option<String> {
    // SAFETY: CK_TOKEN_INFO is plain data (byte arrays and integers): all zeros is valid.
    let mut info: CK_TOKEN_INFO = unsafe { std::mem::zeroed() };
    if real!(C_GetTokenInfo(slot, &mut info)) != CKR_OK {
        return None;
    }
    Some(String::from_utf8_lossy(&info.label).trim_end().to_string())
}

/// What happens to one call, decided under the lock.
pub struct Entry {
    /// The call is on a removed token: return this instead of forwarding.
    pub blocked: Option<CK_RV>,
    /// A rule fired: (code, mode, effect).
    pub inject: Option<(CK_RV, Mode, Effect)>,
    pub slot: Option<CK_SLOT_ID>,
}

/// Counts the call, re-reads the control file if needed, decides, and sleeps the latency.
/// Calls on a removed token do not advance the rules.
pub fn enter(func: Func, scope: Scope) -> Entry {
    per_process(); // a forked child starts from zero before counting this call
    CALLS[func as usize].fetch_add(1, Ordering::Relaxed);
    let mut st = state();
    st.refresh(false);
    let delay: Duration = st
        .latency
        .iter()
        .chain(env().latency.iter())
        .filter(|(t, _)| t.matches(func))
        .map(|(_, d)| *d)
        .max()
        .unwrap_or_default();
    let slot = st.slot_of(scope);
    let blocked = match (scope, slot) {
        (Scope::Session(_), Some(s)) if st.is_removed(s) => Some(CKR_DEVICE_REMOVED),
        (Scope::Slot(_), Some(s)) if st.is_removed(s) => Some(CKR_TOKEN_NOT_PRESENT),
        _ => None,
    };
    let mut inject = None;
    let mut delay = delay;
    if let Some((rv, wait)) = st.unreachable {
        // C_GetInfo is answered by a network HSM's client library itself.
        if config::Target::All.matches(func) && func != Func::C_GetInfo {
            inject = Some((rv, Mode::Before, Effect::None));
            delay = delay.max(wait);
        }
    }
    if blocked.is_none() && inject.is_none() {
        for armed in st.rules.iter_mut().filter(|r| r.rule.target.matches(func)) {
            if armed.fires() && inject.is_none() {
                let mode = armed.rule.mode.unwrap_or(if func.fails_after_forwarding() {
                    Mode::After
                } else {
                    Mode::Before
                });
                inject = Some((armed.rule.rv, mode, armed.rule.effect));
            }
        }
    }
    drop(st);
    if inject.is_some() {
        INJECTED[func as usize].fetch_add(1, Ordering::Relaxed);
        INJECTED_NOW.with(|c| c.set(true));
    }
    if !delay.is_zero() {
        std::thread::sleep(delay);
    }
    Entry {
        blocked,
        inject,
        slot,
    }
}

/// Carries out an injected failure: forwards first in `Mode::After` (then `finish` ends the
/// operation if the real call left it active), applies the effect, returns the injected code.
pub fn inject(
    scope: Scope,
    slot: Option<CK_SLOT_ID>,
    (rv, mode, effect): (CK_RV, Mode, Effect),
    forward: impl FnOnce() -> CK_RV,
    finish: impl FnOnce(CK_RV),
) -> CK_RV {
    if mode == Mode::After {
        let real_rv = forward();
        finish(real_rv);
    }
    match (effect, scope) {
        (Effect::None, _) => {}
        (Effect::CloseSession, Scope::Session(h)) => {
            let rv = real!(C_CloseSession(h));
            if rv == CKR_OK {
                state().sessions.remove(&h);
            }
        }
        (Effect::Logout, Scope::Session(h)) => {
            let _ = real!(C_Logout(h));
        }
        (Effect::CloseAll, _) => {
            if let Some(slot) = slot {
                if real!(C_CloseAllSessions(slot)) == CKR_OK {
                    state().sessions.retain(|_, s| *s != slot);
                }
            }
        }
        // close_session / logout on a call without a session: nothing to act on.
        _ => {}
    }
    rv
}

/// The common path of a function: blocked, injected, or forwarded.
pub fn generic(
    func: Func,
    scope: Scope,
    forward: impl FnOnce() -> CK_RV,
    finish: impl FnOnce(CK_RV),
) -> CK_RV {
    let e = enter(func, scope);
    if let Some(rv) = e.blocked {
        return rv;
    }
    if let Some(inj) = e.inject {
        return inject(scope, e.slot, inj, forward, finish);
    }
    forward()
}

// ---- hooks of the functions with special behaviour ----

/// A session was opened: counted, and (in the same step) no longer "being opened" if
/// `reserve_session` reserved it.
pub fn session_opened(slot: CK_SLOT_ID, handle: CK_SESSION_HANDLE, reserved: bool) {
    let mut st = state();
    st.dead.remove(&handle);
    st.sessions.insert(handle, slot);
    if reserved {
        if let Some(n) = st.opening.get_mut(&slot) {
            *n = n.saturating_sub(1);
        }
    }
}

pub fn session_closed(handle: CK_SESSION_HANDLE) {
    let mut st = state();
    st.sessions.remove(&handle);
    st.dead.remove(&handle);
}

pub fn all_sessions_closed(slot: CK_SLOT_ID) {
    let mut st = state();
    st.sessions.retain(|_, s| *s != slot);
    st.dead.retain(|_, s| *s != slot);
}

pub fn finalized() {
    let mut st = state();
    st.sessions.clear();
    st.dead.clear();
    drop(st);
    let _ = write_counts(0);
}

/// Which of `slots` are removed.
pub fn removed_slots(slots: &[CK_SLOT_ID]) -> Vec<bool> {
    let st = state();
    slots.iter().map(|s| st.is_removed(*s)).collect()
}

pub fn any_removed() -> bool {
    state().removed.as_ref().is_some_and(|r| !r.is_empty())
}

/// The token flags to report, given the real ones.
pub fn token_flags(real: CK_FLAGS) -> CK_FLAGS {
    state().token_flags(real)
}

/// Before a user C_Login: CKR_PIN_LOCKED if the (simulated) token says the PIN is locked.
pub fn login_refusal() -> Option<CK_RV> {
    let st = state();
    (st.token_flags(0) & CKF_USER_PIN_LOCKED != 0).then_some(CKR_PIN_LOCKED)
}

/// After a forwarded user C_Login: the simulated PIN counter.
pub fn login_result(rv: CK_RV) {
    let mut st = state();
    if let Some(p) = st.pin.as_mut() {
        match rv {
            CKR_OK => p.left = p.max,
            CKR_PIN_INCORRECT => p.left = p.left.saturating_sub(1),
            _ => {}
        }
    }
}

pub fn open_sessions() -> u64 {
    state().sessions.len() as u64
}

/// Re-reads the control file now; returns how many of its lines could not be used.
pub fn reload() -> usize {
    let mut st = state();
    st.refresh(true);
    st.errors
}

/// Writes the counters as JSON to HSMKEY_FAULT_COUNTS (atomically: temporary file, rename).
pub fn write_counts(open_sessions: u64) -> Result<(), i32> {
    let Some(path) = &env().counts else {
        return Err(1);
    };
    let section = |counters: &[AtomicU64]| {
        funcs::ALL
            .iter()
            .map(|f| {
                format!(
                    "\"{}\": {}",
                    f.name(),
                    counters[*f as usize].load(Ordering::Relaxed)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let json = format!(
        "{{\"pid\": {}, \"calls\": {{{}}}, \"injected\": {{{}}}, \"open_sessions\": {}}}\n",
        std::process::id(),
        section(&CALLS),
        section(&INJECTED),
        open_sessions
    );
    let mut tmp = path.clone().into_os_string();
    tmp.push(format!(".tmp{}", std::process::id()));
    std::fs::write(&tmp, json).map_err(|_| 2)?;
    std::fs::rename(&tmp, path).map_err(|_| 2)
}

/// A scratch output buffer for ending an operation the caller will never finish.
pub fn scratch(len: CK_ULONG) -> Vec<u8> {
    vec![0u8; (len as usize).clamp(1, 1 << 20)]
}

// ---- the token models of the control file (init_args, max_sessions, no_login,
// hide_mechanism) ----

/// The text C_Initialize must carry as pReserved, if the control file asks for one.
pub fn required_init_args() -> Option<String> {
    let mut st = state();
    st.refresh(false);
    st.init_args.clone()
}

/// Before a C_OpenSession on `slot`: CKR_SESSION_COUNT when the slot has `max_sessions`
/// open (or being opened); otherwise Ok(true) when a place was reserved (until
/// `session_opened` or `opening_done`), Ok(false) when there is no limit.
pub fn reserve_session(slot: CK_SLOT_ID) -> Result<bool, CK_RV> {
    let mut st = state();
    let Some((max, _)) = st.max_sessions else {
        return Ok(false);
    };
    let open = st.sessions.values().filter(|s| **s == slot).count() as u64;
    let opening = st.opening.get(&slot).copied().unwrap_or(0);
    if open + opening >= max {
        return Err(CKR_SESSION_COUNT);
    }
    *st.opening.entry(slot).or_insert(0) += 1;
    Ok(true)
}

/// The C_OpenSession reserved by `reserve_session` is over (opened or failed).
pub fn opening_done(slot: CK_SLOT_ID) {
    let mut st = state();
    if let Some(n) = st.opening.get_mut(&slot) {
        *n = n.saturating_sub(1);
    }
}

/// ulMaxSessionCount as the control file states it: Some(value) to report instead of the
/// real module's.
pub fn reported_max_sessions() -> Option<CK_ULONG> {
    match state().max_sessions {
        None => None,
        Some((n, true)) => CK_ULONG::try_from(n).ok(),
        Some((_, false)) => Some(CK_UNAVAILABLE_INFORMATION),
    }
}

/// A login-less token (`no_login PIN`): the module logs the new session `h` in itself, in the
/// real module (not counted), unless the process is logged in already.
pub fn log_in_quietly(h: CK_SESSION_HANDLE) {
    let Some(pin) = state().no_login.clone() else {
        return;
    };
    // SAFETY: CK_SESSION_INFO is plain data: zeros are valid.
    let mut info: CK_SESSION_INFO = unsafe { std::mem::zeroed() };
    if real!(C_GetSessionInfo(h, &mut info)) == CKR_OK
        && (info.state == CKS_RO_USER_FUNCTIONS || info.state == CKS_RW_USER_FUNCTIONS)
    {
        return;
    }
    let mut bytes = pin.into_bytes();
    let len = bytes.len() as CK_ULONG;
    let _ = real!(C_Login(h, CKU_USER, bytes.as_mut_ptr(), len));
}

/// Whether `hide_mechanism` hides `mechanism`.
pub fn is_hidden(mechanism: CK_MECHANISM_TYPE) -> bool {
    let st = state();
    st.hidden.contains(&mechanism)
}

/// The mechanisms `hide_mechanism` hides (empty: none).
pub fn hidden_mechanisms() -> Vec<CK_MECHANISM_TYPE> {
    state().hidden.clone()
}

/// Counts a failure the module made up by itself (a token model's answer, such as
/// `max_sessions`' CKR_SESSION_COUNT) as injected.
pub fn note_injected(func: Func) {
    INJECTED[func as usize].fetch_add(1, Ordering::Relaxed);
}

/// `utc_time`: the utcTime field to report, if the control file sets one.
pub fn utc_time() -> Option<[u8; 16]> {
    state().utc_time
}
