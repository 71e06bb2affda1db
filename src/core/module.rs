//! The process-wide cache of loaded PKCS#11 modules: one `Pkcs11` per canonical path per
//! process, always initialized with OS locking, re-initialized after a fork.

use std::collections::HashMap;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};

use crate::core::error::{Error, Kind, Result};
use crate::core::log;

/// One loaded and initialized PKCS#11 module.
pub struct Module {
    pub ctx: Pkcs11,
    pub path: PathBuf,
    /// The process that initialized it; another pid means we are in a forked child.
    pub pid: u32,
    /// Labels of the initialized tokens seen by the last token search (see `load`).
    pub seen_labels: Mutex<Vec<String>>,
    /// True when this process's `C_Initialize` (not another library's) set the module up.
    initialized_here: bool,
    /// When it did: the start-up race `reload_if_unused` works around is over after a while.
    initialized_at: std::time::Instant,
    /// Held (shared) by connections between finding a token and holding its state; taken
    /// (exclusive) by `reload_if_unused`, so a reload never pulls the module from under them.
    pub connecting: std::sync::RwLock<()>,
    /// The module's function list, for the calls cryptoki makes in more round trips than
    /// needed (None: cryptoki's calls are used).
    pub raw: Option<crate::core::raw::RawFunctions>,
    /// Set when the module stopped answering and was re-initialized for it (see
    /// `reinitialize_after_loss`); cleared once a token is found through it again.
    lost: std::sync::atomic::AtomicBool,
    /// Counts the re-initializations after a loss: threads that saw the module stop
    /// answering in the same generation re-initialize it once.
    generation: std::sync::atomic::AtomicU64,
    /// The `C_Initialize` reserved string it was initialized with (`init_args=`), kept for
    /// re-initializations and to refuse a second pool that asks for other arguments.
    init_args: Option<CString>,
    /// Sessions lent out by pools on this module (see `rescan`).
    leases: std::sync::atomic::AtomicUsize,
    /// Set while `rescan` finalizes and re-initializes the module.
    rescanning: std::sync::atomic::AtomicBool,
    /// When the last rescan happened (they are rate-limited).
    last_rescan: Mutex<Option<std::time::Instant>>,
    /// The last token search met a slot whose token information could not be read (as
    /// SoftHSM2 answers for a token deleted since `C_Initialize`).
    saw_unreadable: std::sync::atomic::AtomicBool,
}

/// At most one rescan per module in this time.
const RESCAN_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl Module {
    /// A pool lent a session on this module. Returns false while a rescan runs: then the
    /// caller waits for it (`wait_rescan`) before using the session.
    pub fn lease_taken(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        self.leases.fetch_add(1, SeqCst);
        !self.rescanning.load(SeqCst)
    }

    /// A lent session came back (or was never used).
    pub fn lease_returned(&self) {
        self.leases
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether a rescan runs now.
    pub fn is_rescanning(&self) -> bool {
        self.rescanning.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Held around PKCS#11 calls made outside a lease and outside connecting (closing idle
    /// sessions, logging out): a rescan waits for them, and they for it.
    pub fn calls_guard(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.connecting
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until a running rescan is over.
    pub fn wait_rescan(&self) {
        drop(
            self.connecting
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
    }

    /// Whether the last token search met a slot it could not read.
    pub fn saw_unreadable(&self) -> bool {
        self.saw_unreadable
            .load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn set_saw_unreadable(&self, saw: bool) {
        self.saw_unreadable
            .store(saw, std::sync::atomic::Ordering::Release);
    }

    /// Finalizes and re-initializes the module so that it sees tokens created or deleted
    /// since (SoftHSM2 reads its token directory only in `C_Initialize`), if no session of
    /// this process is lent on it but the caller's `held`, nobody is connecting, and no
    /// rescan happened in the last second. Every session and the login of the process on
    /// the module end: the caller marks the module's token states gone (`f`, run before
    /// anyone can use the module again), and every pool heals on its next use (a new
    /// session and a login). Returns whether it rescanned.
    pub fn rescan(&self, held: usize, f: impl FnOnce()) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        if self.pid != crate::core::fork::pid() {
            return false;
        }
        {
            let last = lock(&self.last_rescan);
            if last.is_some_and(|t| t.elapsed() < RESCAN_EVERY) {
                return false;
            }
        }
        let _exclusive = self
            .connecting
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.rescanning.store(true, SeqCst);
        // A lease taken from now on sees `rescanning` and waits (see `lease_taken`).
        if self.leases.load(SeqCst) > held {
            self.rescanning.store(false, SeqCst);
            return false;
        }
        *lock(&self.last_rescan) = Some(std::time::Instant::now());
        log::log(
            log::INFO,
            &format!(
                "re-initializing {} to look for tokens created or deleted since",
                self.path.display()
            ),
        );
        let ok = reinitialize(&self.ctx, &self.path, self.init_args.as_deref()).is_ok();
        self.generation.fetch_add(1, SeqCst);
        f();
        self.rescanning.store(false, SeqCst);
        ok
    }

    /// Whether the module stopped answering and was re-initialized for it, with no token
    /// found through it since.
    pub fn is_lost(&self) -> bool {
        self.lost.load(std::sync::atomic::Ordering::Acquire)
    }

    /// A token was found through the module again.
    pub fn found_again(&self) {
        self.lost.store(false, std::sync::atomic::Ordering::Release);
    }

    /// Which re-initialization after a loss the module is at (see `reinitialize_after_loss`).
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The module stopped answering (`C_GetInfo` fails too): a network module whose
    /// connection dropped stays dead until it is initialized again (p11-kit-client answers
    /// `CKR_DEVICE_ERROR` to every call, and one initialized while its server is down shows
    /// no slot until the next `C_Initialize`). `C_Finalize` + `C_Initialize`, unless another
    /// thread did since `seen` (the generation the caller saw the failure in); every
    /// session and the login of the process on this module are gone afterwards. Returns
    /// whether this call re-initialized it.
    pub fn reinitialize_after_loss(&self, seen: u64) -> Result<bool> {
        if self.pid != crate::core::fork::pid() {
            return Ok(false); // an inherited module: the child loads its own
        }
        let _exclusive = self
            .connecting
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if self.generation() != seen {
            return Ok(false);
        }
        self.lost.store(true, std::sync::atomic::Ordering::Release);
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        log::log(
            log::WARNING,
            &format!(
                "PKCS#11 module {} stopped answering; re-initializing it",
                self.path.display()
            ),
        );
        reinitialize(&self.ctx, &self.path, self.init_args.as_deref())?;
        Ok(true)
    }

    /// Finalizes and re-initializes the module if nothing of this process uses it (`in_use`
    /// says no, asked while nobody can start connecting) and this process initialized it. SoftHSM2 skips, for
    /// the life of its state, a token whose files it could not read during `C_Initialize`
    /// (sibling processes logging in rewrite them): a fresh start brings it back. Only in the
    /// first seconds after start-up, when that race happens. Returns whether it reloaded.
    pub fn reload_if_unused(&self, in_use: impl FnOnce() -> bool) -> bool {
        if !self.initialized_here
            || self.pid != crate::core::fork::pid()
            || self.initialized_at.elapsed() > std::time::Duration::from_secs(10)
        {
            return false;
        }
        let _exclusive = self
            .connecting
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if in_use() {
            return false;
        }
        reinitialize(&self.ctx, &self.path, self.init_args.as_deref()).is_ok()
    }

    /// The `init_args` the module was initialized with (None: no reserved string).
    pub fn init_args(&self) -> Option<&str> {
        self.init_args.as_deref().and_then(|c| c.to_str().ok())
    }
}

fn registry() -> &'static Mutex<HashMap<PathBuf, Arc<Module>>> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Arc<Module>>>> = OnceLock::new();
    MODULES.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Locks a mutex, recovering from poisoning: every critical section of hsmkey leaves its data
/// consistent before anything that can panic.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Checks that `path` names a file, before any `dlopen`.
pub fn check_path(path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Err(e) => Err(Error::new(
            Kind::Module,
            format!("PKCS#11 module {} cannot be used: {e}", path.display()),
        )),
        Ok(meta) if meta.is_dir() => Err(Error::new(
            Kind::Module,
            format!(
                "PKCS#11 module {} is a directory, not a shared library",
                path.display()
            ),
        )),
        Ok(_) => Ok(()),
    }
}

/// The loaded module for `path`: loaded and initialized on first use in this process.
pub fn load(path: &Path) -> Result<Arc<Module>> {
    load_with(path, None)
}

/// The loaded module for `path`, initialized with `init_args` as `C_Initialize`'s reserved
/// string (NSS softokn's configuration, kmsp11's configuration file, YubiHSM's connector).
/// A module is initialized once per process: asking for other arguments than the ones it was
/// initialized with is an error (finalizing it would end every other user's sessions). A
/// failed `C_Initialize` leaves nothing behind, so a later call may bring the right ones.
pub fn load_with(path: &Path, init_args: Option<&str>) -> Result<Arc<Module>> {
    check_path(path)?;
    let wanted = init_args
        .map(|a| {
            CString::new(a)
                .map_err(|_| Error::value("init_args must not contain NUL characters".to_string()))
        })
        .transpose()?;
    let canonical = std::fs::canonicalize(path).map_err(|e| {
        Error::new(
            Kind::Module,
            format!("PKCS#11 module {} cannot be used: {e}", path.display()),
        )
    })?;
    let pid = crate::core::fork::pid();
    let check = |m: Arc<Module>| -> Result<Arc<Module>> {
        if m.initialized_here && m.init_args != wanted {
            return Err(Error::new(
                Kind::Module,
                format!(
                    "PKCS#11 module {} is already initialized in this process {}; a module \
                     is initialized once per process, so every pool of it must pass the \
                     same init_args (asked for {})",
                    path.display(),
                    describe_args(m.init_args.as_deref()),
                    describe_args(wanted.as_deref()),
                ),
            ));
        }
        Ok(m)
    };
    let loaded = |modules: &HashMap<PathBuf, Arc<Module>>| {
        modules.get(&canonical).filter(|m| m.pid == pid).cloned()
    };
    if let Some(m) = loaded(&lock(registry())) {
        return check(m);
    }
    // Loading calls the module (C_Initialize, and a few more in a forked child): under a
    // fork-safe lock, never under the registry's (a child forked meanwhile needs that one).
    static LOADING: crate::core::fork::CallLock = crate::core::fork::CallLock::new();
    let _loading = LOADING.lock();
    let (forked, expected) = {
        let mut modules = lock(registry());
        if let Some(m) = loaded(&modules) {
            return check(m);
        }
        match modules.remove(&canonical) {
            // The parent's module state (its sessions, its login) is not ours: never drop or
            // call into it. Leak the inherited value so that nothing of it runs in this
            // process. What the parent had seen (plain memory, no call) tells which tokens to
            // expect.
            Some(old) => {
                let expected = lock(&old.seen_labels).clone();
                std::mem::forget(old);
                (true, expected)
            }
            None => (false, Vec::new()),
        }
    };
    let module = Arc::new(open(&canonical, pid, forked, &expected, wanted.clone())?);
    lock(registry()).insert(canonical, module.clone());
    Ok(module)
}

/// How an error message names a reserved string: its text is configuration, not a secret,
/// but it may be long (NSS's): the first 60 characters.
fn describe_args(args: Option<&std::ffi::CStr>) -> String {
    match args {
        None => "without init_args".to_string(),
        Some(a) => {
            let text = a.to_string_lossy();
            let short: String = text.chars().take(60).collect();
            let more = if short.len() < text.len() { "..." } else { "" };
            format!("with init_args {short:?}{more}")
        }
    }
}

/// `C_Initialize`'s arguments: always OS locking (FACTS: without it SoftHSM2 turns its own
/// mutexes off), plus the reserved string when one is given.
fn init_args_for(reserved: Option<&std::ffi::CStr>) -> CInitializeArgs {
    match reserved {
        None => CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK),
        Some(text) => {
            let ptr = std::ptr::NonNull::from(text).cast::<std::ffi::c_void>();
            // SAFETY: `ptr` points to a NUL-terminated string owned by the caller (the
            // module's `init_args`, or the value about to be stored there), which outlives
            // every `C_Initialize` made with these arguments; PKCS#11 leaves the layout of
            // pReserved to the module, and the modules that read it (NSS softokn, kmsp11,
            // YubiHSM) read a C string.
            unsafe { CInitializeArgs::new_with_reserved(CInitializeFlags::OS_LOCKING_OK, ptr) }
        }
    }
}

fn open(
    path: &Path,
    pid: u32,
    forked: bool,
    expected: &[String],
    init_args: Option<CString>,
) -> Result<Module> {
    let ctx = Pkcs11::new(path).map_err(|e| match e {
        CkError::LibraryLoading(err) => Error::new(
            Kind::Module,
            format!("cannot load {} as a PKCS#11 module: {err}", path.display()),
        ),
        CkError::MissingSymbol(sym) => Error::new(
            Kind::Module,
            format!(
                "{} is not a PKCS#11 module: it exports no {sym}",
                path.display()
            ),
        ),
        other => Error::from_cryptoki(other, &format!("loading {}", path.display())),
    })?;
    let reserved = init_args.as_deref();
    let mut initialized_here = true;
    match ctx.initialize(init_args_for(reserved)) {
        Ok(()) => {}
        Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) if forked => {
            // The child inherited the parent's initialized state: finalize it (this does not
            // touch the parent's process) and start over with our own.
            reinitialize(&ctx, path, reserved)?;
            // SoftHSM2 reads its token directory in C_Initialize and skips a token whose
            // files it cannot read at that moment, as when sibling workers log in (which
            // rewrites the token file) while this one starts: seen as no token at all, or
            // all but one. Nobody in this process uses the module yet (the registry lock is
            // held), so start over until every token the parent saw is back, a few times.
            for attempt in 1..=6u32 {
                let present = initialized_labels(&ctx);
                let missing = match present.is_empty() {
                    true => true,
                    false => expected.iter().any(|l| !present.contains(l)),
                };
                if !missing {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10 * u64::from(attempt)));
                reinitialize(&ctx, path, reserved)?;
            }
            log::log(
                log::INFO,
                &format!("re-initialized {} in forked child", path.display()),
            );
        }
        Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {
            // Another library in this process initialized the module: share its instance.
            initialized_here = false;
            log::log(
                log::DEBUG,
                &format!("{} was already initialized in this process", path.display()),
            );
        }
        Err(e) => {
            let mut err = Error::from_cryptoki(e, &format!("initializing {}", path.display()));
            err.kind = Kind::Module;
            if err.rv == Some(RvError::ArgumentsBad) {
                err.message.push_str(if reserved.is_none() {
                    "; this module may need C_Initialize arguments: pass init_args= (or set \
                     HSM_INIT_ARGS), e.g. NSS softokn's configdir='sql:DIR' ... string"
                } else {
                    "; the module refused the init_args given"
                });
            }
            if let Some(hint) = softhsm2_hint(path) {
                err.message = format!("{}; {hint}", err.message);
            }
            return Err(err);
        }
    }
    log::log(
        log::DEBUG,
        &format!("loaded PKCS#11 module {}", path.display()),
    );
    Ok(Module {
        ctx,
        path: path.to_path_buf(),
        pid,
        seen_labels: Mutex::new(Vec::new()),
        initialized_here,
        initialized_at: std::time::Instant::now(),
        connecting: std::sync::RwLock::new(()),
        raw: crate::core::raw::RawFunctions::load(path),
        lost: std::sync::atomic::AtomicBool::new(false),
        generation: std::sync::atomic::AtomicU64::new(0),
        init_args,
        leases: std::sync::atomic::AtomicUsize::new(0),
        rescanning: std::sync::atomic::AtomicBool::new(false),
        last_rescan: Mutex::new(None),
        saw_unreadable: std::sync::atomic::AtomicBool::new(false),
    })
}

/// What SoftHSM2's failed `C_Initialize` most likely means (it answers `CKR_GENERAL_ERROR`
/// whether its configuration file or its token directory is missing): the files it tried, as
/// SoftHSM2 chooses them (`SOFTHSM2_CONF`, else `~/.config/softhsm2/softhsm2.conf`, else the
/// built-in default). None for other modules.
fn softhsm2_hint(module: &Path) -> Option<String> {
    if !module.to_string_lossy().contains("softhsm2") {
        return None;
    }
    let user = std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".config/softhsm2/softhsm2.conf"))
        .filter(|p| p.is_file());
    let (conf, source) = match std::env::var_os("SOFTHSM2_CONF") {
        Some(conf) => (PathBuf::from(conf), "named by SOFTHSM2_CONF"),
        None => match user {
            Some(conf) => (conf, "the user's, as SOFTHSM2_CONF is not set"),
            // The built-in default: /etc/softhsm/softhsm2.conf (Debian, Ubuntu, Homebrew's
            // under its prefix), /etc/softhsm2.conf (Fedora, RHEL).
            None => (
                ["/etc/softhsm/softhsm2.conf", "/etc/softhsm2.conf"]
                    .into_iter()
                    .map(PathBuf::from)
                    .find(|p| p.is_file())
                    .unwrap_or_else(|| PathBuf::from("/etc/softhsm/softhsm2.conf")),
                "the default, as SOFTHSM2_CONF is not set",
            ),
        },
    };
    let text = match std::fs::read_to_string(&conf) {
        Err(e) => {
            return Some(format!(
                "SoftHSM2 cannot read its configuration file {} ({source}): {e}",
                conf.display()
            ))
        }
        Ok(text) => text,
    };
    let tokendir = text.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        (key.trim() == "directories.tokendir").then(|| PathBuf::from(value.trim()))
    });
    Some(match tokendir {
        Some(dir) if !dir.is_dir() => format!(
            "the token directory {} of SoftHSM2's configuration file {} ({source}) does not exist",
            dir.display(),
            conf.display()
        ),
        _ => format!(
            "check SoftHSM2's configuration file {} ({source}) and its token directory",
            conf.display()
        ),
    })
}

/// Labels of the initialized tokens the module shows now.
fn initialized_labels(ctx: &Pkcs11) -> Vec<String> {
    ctx.get_slots_with_initialized_token()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|slot| ctx.get_token_info(slot).ok())
        .map(|info| info.label().trim_end().to_string())
        .collect()
}

fn reinitialize(ctx: &Pkcs11, path: &Path, reserved: Option<&std::ffi::CStr>) -> Result<()> {
    let _ = ctx.clone().finalize();
    ctx.initialize(init_args_for(reserved)).map_err(|e| {
        Error::from_cryptoki(e, &format!("re-initializing {} after fork", path.display()))
    })
}
