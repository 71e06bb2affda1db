//! The raw signing limit of a PKCS#11 token: what a plain Rust loop over cryptoki reaches.
//!
//! Each thread opens its own session (after one `C_Login` for the process), finds the key
//! once, then signs in a loop for the given time, in two PKCS#11 calls per signature:
//! `C_SignInit`, then one `C_Sign` into a buffer sized beforehand (the signature's length,
//! learnt once at warm-up), both through the module's own function list. `--calls 3` signs
//! the way cryptoki's `Session::sign` does instead: `C_SignInit`, `C_Sign` asked for the
//! length, `C_Sign` for the signature (one round trip more on a network HSM).
//! ES256/ES384 hash locally and sign with `CKM_ECDSA` (SoftHSM2 has no ECDSA-with-hash).
//! ML-DSA-65 signs the payload with `CKM_ML_DSA` and NULL parameters (hedged, empty context:
//! RFC 9964's JWS), on a PKCS#11 3.2 token such as kryoptic.
//!
//! Usage:
//!
//!     hsmkey-bench-limit [--calls 2|3] MODULE TOKEN_LABEL PIN KEY_LABEL ALG THREADS SECONDS
//!         [REPETITIONS [PAYLOAD_BYTES]]
//!     hsmkey-bench-limit MODULE TOKEN_LABEL PIN --serve [PAYLOAD_BYTES]
//!
//! The first form prints one JSON object: `ops_per_sec` (the median over the repetitions,
//! default 5), `reps` (ops/s of each repetition) and the parameters. SECONDS may instead be
//! a count such as `1000ops`: each thread then signs exactly that many times per repetition
//! (for instruction counts under `valgrind --tool=callgrind`).
//!
//! `--serve` keeps the module loaded and logged in, and measures on request: it reads lines
//! `KEY_LABEL ALG THREADS SECONDS [CALLS]` on stdin (CALLS: 2, the default, or 3) and answers
//! each with one JSON line `{"ops": N, "seconds": S, "cpu": C}` (C: the CPU time this process
//! used meanwhile, in seconds). The benchmark driver uses it to interleave short slices of
//! the limit with slices of the other layers.
//!
//! Signing threads persist between repetitions and requests; each keeps its session and
//! the key handles it found. All threads of a measurement start together; the time is
//! taken from the start signal to the last thread's end.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Function, Pkcs11};
use cryptoki::error::{Error, Rv, RvError};
use cryptoki::mechanism::dsa::{HedgeType, SignAdditionalContext};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use cryptoki_sys::{CKR_OK, CK_FUNCTION_LIST, CK_MECHANISM, CK_RV, CK_ULONG};
use sha2::{Digest, Sha256, Sha384};

/// The module's own function list (the instance cryptoki loaded and initialized: a second
/// `dlopen` of the same path takes one more reference to the same library).
struct Raw {
    _lib: cryptoki_sys::Pkcs11,
    list: *const CK_FUNCTION_LIST,
}

// SAFETY: `list` points to the module's static, read-only function list, kept loaded by
// `_lib`; the module is initialized with CKF_OS_LOCKING_OK, so any thread may call it.
unsafe impl Send for Raw {}
// SAFETY: as for Send: nothing behind the pointer is ever written by us.
unsafe impl Sync for Raw {}

impl Raw {
    fn load(path: &str) -> Result<Raw, String> {
        // SAFETY: the library cryptoki has just loaded from the same path: its initializers
        // have run already, this only takes another reference to it.
        let lib = unsafe { cryptoki_sys::Pkcs11::new(path) }
            .map_err(|e| format!("loading {path} again: {e}"))?;
        let mut list: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
        // SAFETY: `C_GetFunctionList` writes one pointer to the module's static list.
        let rv: CK_RV = unsafe { lib.C_GetFunctionList(&mut list) };
        if rv != CKR_OK || list.is_null() {
            return Err(format!("C_GetFunctionList: {rv:#x}"));
        }
        Ok(Raw {
            _lib: lib,
            list: list.cast_const(),
        })
    }

    /// `C_SignInit`, then one `C_Sign` into `out` (its length is the room the module gets);
    /// returns the signature's length.
    fn sign(
        &self,
        session: &Session,
        mechanism: &Mechanism,
        key: ObjectHandle,
        data: &[u8],
        out: &mut [u8],
    ) -> Result<usize, Error> {
        // SAFETY: `list` is valid for the life of `self` (see the Send impl).
        let list = unsafe { &*self.list };
        let (Some(sign_init), Some(sign)) = (list.C_SignInit, list.C_Sign) else {
            return Err(Error::NullFunctionPointer);
        };
        let mut mech: CK_MECHANISM = mechanism.into();
        // SAFETY: `mech` (and the parameters it points into, owned by `mechanism`) outlives
        // the call; the handles are plain numbers the module checks.
        let rv = unsafe { sign_init(session.handle(), &mut mech, key.handle()) };
        Rv::from(rv).into_result(Function::SignInit)?;
        let data_len: CK_ULONG = data.len().try_into()?;
        let mut len: CK_ULONG = out.len().try_into()?;
        // SAFETY: `data` is only read by C_Sign (`*mut` in the C prototype); `out` has room
        // for `len` bytes, and the module writes at most that many.
        let rv = unsafe {
            sign(
                session.handle(),
                data.as_ptr().cast_mut(),
                data_len,
                out.as_mut_ptr(),
                &mut len,
            )
        };
        Rv::from(rv).into_result(Function::Sign)?;
        Ok(usize::try_from(len)?)
    }
}

/// PKCS#11 calls per signature: 2 (`C_SignInit`, `C_Sign` into a buffer sized beforehand) or
/// 3 (cryptoki's `Session::sign`: the length first).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Calls {
    Two,
    Three,
}

impl Calls {
    fn parse(s: &str) -> Result<Self, String> {
        match s {
            "2" => Ok(Calls::Two),
            "3" => Ok(Calls::Three),
            _ => Err(format!("CALLS must be 2 or 3, got {s:?}")),
        }
    }
}

/// The CPU time this process has used (all threads), in seconds.
fn process_cpu() -> f64 {
    // SAFETY: a zeroed timespec is a valid value; clock_gettime writes one.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is a live, writable timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) } != 0 {
        return f64::NAN;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Alg {
    Rs256,
    Ps256,
    Es256,
    Es384,
    EdDsa,
    MlDsa65,
}

impl Alg {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "RS256" => Alg::Rs256,
            "PS256" => Alg::Ps256,
            "ES256" => Alg::Es256,
            "ES384" => Alg::Es384,
            "EdDSA" => Alg::EdDsa,
            "ML-DSA-65" => Alg::MlDsa65,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Ps256 => "PS256",
            Alg::Es256 => "ES256",
            Alg::Es384 => "ES384",
            Alg::EdDsa => "EdDSA",
            Alg::MlDsa65 => "ML-DSA-65",
        }
    }

    fn mechanism(self) -> Mechanism<'static> {
        match self {
            Alg::Rs256 => Mechanism::Sha256RsaPkcs,
            Alg::Ps256 => Mechanism::Sha256RsaPkcsPss(PkcsPssParams {
                hash_alg: MechanismType::SHA256,
                mgf: PkcsMgfType::MGF1_SHA256,
                s_len: 32u64.into(),
            }),
            Alg::Es256 | Alg::Es384 => Mechanism::Ecdsa,
            Alg::EdDsa => Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
            Alg::MlDsa65 => {
                Mechanism::MlDsa(SignAdditionalContext::new(HedgeType::Preferred, None))
            }
        }
    }

    /// One signature of `payload`, as a JOSE library would ask for it: in two calls into
    /// `out` (returns the length), or in cryptoki's three (the signature is copied to `out`).
    fn sign(
        self,
        signer: &Signer,
        calls: Calls,
        mech: &Mechanism,
        key: ObjectHandle,
        payload: &[u8],
        out: &mut [u8],
    ) -> Result<usize, Error> {
        let (d256, d384);
        let input: &[u8] = match self {
            Alg::Es256 => {
                d256 = Sha256::digest(payload);
                &d256[..]
            }
            Alg::Es384 => {
                d384 = Sha384::digest(payload);
                &d384[..]
            }
            _ => payload,
        };
        match calls {
            Calls::Two => signer.raw.sign(&signer.session, mech, key, input, out),
            Calls::Three => {
                let sig = signer.session.sign(mech, key, input)?;
                let n = sig.len().min(out.len());
                out[..n].copy_from_slice(&sig[..n]);
                Ok(sig.len())
            }
        }
    }
}

/// A signing thread's session, and how it signs.
struct Signer {
    session: Session,
    raw: Arc<Raw>,
}

/// How long one measurement runs, per thread.
#[derive(Clone, Copy)]
enum Until {
    Elapsed(Duration),
    Count(u64),
}

impl Until {
    fn parse(s: &str) -> Result<Self, String> {
        if let Some(n) = s.strip_suffix("ops") {
            return n
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .map(Until::Count)
                .ok_or_else(|| format!("bad signature count {s:?}"));
        }
        s.parse::<f64>()
            .ok()
            .filter(|v| *v > 0.0 && v.is_finite())
            .map(|v| Until::Elapsed(Duration::from_secs_f64(v)))
            .ok_or_else(|| format!("SECONDS must be a positive number or NNNops, got {s:?}"))
    }
}

/// A request to a signing thread.
struct Job {
    key: Arc<str>,
    alg: Alg,
    calls: Calls,
    until: Until,
    payload: Arc<Vec<u8>>,
}

/// A signing thread with its own session and the key handles it has found.
struct Worker {
    jobs: Sender<Option<Job>>,
    done: Receiver<Result<u64, String>>,
    handle: JoinHandle<()>,
}

/// A key found on a thread's session, with the length of its signatures.
#[derive(Clone, Copy)]
struct FoundKey {
    handle: ObjectHandle,
    sig_len: usize,
}

impl Worker {
    fn start(signer: Signer) -> Worker {
        let (jobs, job_rx) = channel::<Option<Job>>();
        let (done_tx, done) = channel();
        let handle = thread::spawn(move || {
            let mut keys: HashMap<(Arc<str>, &'static str), FoundKey> = HashMap::new();
            while let Ok(Some(job)) = job_rx.recv() {
                let r = Worker::run(&signer, &mut keys, &job);
                if done_tx.send(r).is_err() {
                    break;
                }
            }
        });
        Worker { jobs, done, handle }
    }

    fn run(
        signer: &Signer,
        keys: &mut HashMap<(Arc<str>, &'static str), FoundKey>,
        job: &Job,
    ) -> Result<u64, String> {
        let mech = job.alg.mechanism();
        let cache_key = (job.key.clone(), job.alg.name());
        let key = match keys.get(&cache_key) {
            Some(k) => *k,
            None => {
                let handle = find_key(&signer.session, &job.key)?;
                // The first use of a key on this session, outside the measurement: the
                // signature's length (asked once, the way cryptoki asks every time), then a
                // warm-up in both forms.
                let mut probe = [0u8; 1024];
                let sig_len = job
                    .alg
                    .sign(
                        signer,
                        Calls::Three,
                        &mech,
                        handle,
                        &job.payload,
                        &mut probe,
                    )
                    .map_err(|e| format!("warm-up sign: {e}"))?;
                let mut out = vec![0u8; sig_len];
                for calls in [Calls::Three, Calls::Two] {
                    for _ in 0..10 {
                        job.alg
                            .sign(signer, calls, &mech, handle, &job.payload, &mut out)
                            .map_err(|e| format!("warm-up sign: {e}"))?;
                    }
                }
                let k = FoundKey { handle, sig_len };
                keys.insert(cache_key, k);
                k
            }
        };
        let mut out = vec![0u8; key.sig_len];
        let start = Instant::now();
        let mut n = 0u64;
        while match job.until {
            Until::Count(c) => n < c,
            Until::Elapsed(d) => start.elapsed() < d,
        } {
            let len = job
                .alg
                .sign(signer, job.calls, &mech, key.handle, &job.payload, &mut out)
                .map_err(|e| format!("sign: {e}"))?;
            std::hint::black_box(&out[..len]);
            n += 1;
        }
        Ok(n)
    }
}

/// The logged-in module and the signing threads.
struct Limit {
    ctx: Pkcs11,
    slot: Slot,
    _login: Session,
    raw: Arc<Raw>,
    workers: Vec<Worker>,
}

impl Limit {
    fn open(module: &str, token: &str, pin: &str) -> Result<Limit, String> {
        let ctx = Pkcs11::new(module).map_err(|e| format!("loading {module}: {e}"))?;
        ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .map_err(|e| format!("C_Initialize: {e}"))?;
        let slot = find_slot(&ctx, token)?;
        // This session stays open for the whole run: closing the last session logs out.
        let login = ctx
            .open_ro_session(slot)
            .map_err(|e| format!("C_OpenSession: {e}"))?;
        match login.login(UserType::User, Some(&AuthPin::new(pin.to_string().into()))) {
            Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => return Err(format!("C_Login: {e}")),
        }
        let raw = Arc::new(Raw::load(module)?);
        Ok(Limit {
            ctx,
            slot,
            _login: login,
            raw,
            workers: Vec::new(),
        })
    }

    /// Signs on `threads` threads at once, in `calls` calls per signature; returns
    /// (signatures, seconds, CPU seconds of the process meanwhile).
    fn measure(
        &mut self,
        key: &str,
        alg: Alg,
        calls: Calls,
        threads: usize,
        until: Until,
        payload: &Arc<Vec<u8>>,
    ) -> Result<(u64, f64, f64), String> {
        while self.workers.len() < threads {
            let session = self
                .ctx
                .open_ro_session(self.slot)
                .map_err(|e| format!("C_OpenSession: {e}"))?;
            self.workers.push(Worker::start(Signer {
                session,
                raw: self.raw.clone(),
            }));
        }
        let key: Arc<str> = Arc::from(key);
        let workers = &self.workers[..threads];
        // Warm-up (first use of this key on a thread) happens before the clock starts.
        for w in workers {
            let warm = Job {
                key: key.clone(),
                alg,
                calls,
                until: Until::Count(1),
                payload: payload.clone(),
            };
            w.jobs
                .send(Some(warm))
                .map_err(|_| "a signing thread ended")?;
        }
        for w in workers {
            w.done.recv().map_err(|_| "a signing thread ended")??;
        }
        let (start, cpu) = (Instant::now(), process_cpu());
        for w in workers {
            let job = Job {
                key: key.clone(),
                alg,
                calls,
                until,
                payload: payload.clone(),
            };
            w.jobs
                .send(Some(job))
                .map_err(|_| "a signing thread ended")?;
        }
        let mut total = 0;
        for w in workers {
            total += w.done.recv().map_err(|_| "a signing thread ended")??;
        }
        Ok((total, start.elapsed().as_secs_f64(), process_cpu() - cpu))
    }

    fn close(self) {
        for w in &self.workers {
            let _ = w.jobs.send(None);
        }
        for w in self.workers {
            let _ = w.handle.join();
        }
    }
}

fn payload(len: usize) -> Arc<Vec<u8>> {
    Arc::new((0..len).map(|i| b'a' + (i % 26) as u8).collect())
}

fn find_slot(ctx: &Pkcs11, label: &str) -> Result<Slot, String> {
    let slots = ctx
        .get_slots_with_token()
        .map_err(|e| format!("C_GetSlotList: {e}"))?;
    for slot in slots {
        let info = ctx
            .get_token_info(slot)
            .map_err(|e| format!("C_GetTokenInfo: {e}"))?;
        if info.label() == label {
            return Ok(slot);
        }
    }
    Err(format!("no token labelled {label:?}"))
}

fn find_key(session: &Session, label: &str) -> Result<ObjectHandle, String> {
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .map_err(|e| format!("C_FindObjects: {e}"))?;
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(format!("no private key labelled {label:?}")),
        _ => Err(format!("several private keys labelled {label:?}")),
    }
}

const USAGE: &str = "usage: hsmkey-bench-limit [--calls 2|3] MODULE TOKEN_LABEL PIN KEY_LABEL \
    ALG(RS256|PS256|ES256|ES384|EdDSA) THREADS SECONDS|NNNops [REPETITIONS [PAYLOAD_BYTES]]\n\
    \x20      hsmkey-bench-limit MODULE TOKEN_LABEL PIN --serve [PAYLOAD_BYTES]";

fn positive(s: &str, what: &str) -> Result<usize, String> {
    s.parse::<usize>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("{what} must be a positive integer, got {s:?}"))
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The one-shot form: REPETITIONS measurements, one JSON object.
fn once(a: &[String]) -> Result<(), String> {
    let (calls, a) = match a {
        [flag, n, rest @ ..] if flag == "--calls" => (Calls::parse(n)?, rest),
        _ => (Calls::Two, a),
    };
    if a.len() < 7 || a.len() > 9 {
        return Err(USAGE.into());
    }
    let alg = Alg::parse(&a[4]).ok_or_else(|| format!("unknown algorithm {:?}", a[4]))?;
    let threads = positive(&a[5], "THREADS")?;
    let until = Until::parse(&a[6])?;
    let reps = a.get(7).map_or(Ok(5), |r| positive(r, "REPETITIONS"))?;
    let size = a.get(8).map_or(Ok(200), |p| positive(p, "PAYLOAD_BYTES"))?;
    let data = payload(size);
    let mut limit = Limit::open(&a[0], &a[1], &a[2])?;
    let mut rates = Vec::with_capacity(reps);
    for _ in 0..reps {
        let (n, secs, _) = limit.measure(&a[3], alg, calls, threads, until, &data)?;
        rates.push(n as f64 / secs);
    }
    limit.close();
    let seconds = match until {
        Until::Elapsed(d) => d.as_secs_f64(),
        Until::Count(_) => 0.0,
    };
    let reps_json: Vec<String> = rates.iter().map(|r| format!("{r:.1}")).collect();
    println!(
        "{{\"alg\": \"{}\", \"calls\": {}, \"threads\": {threads}, \"seconds\": {seconds}, \
         \"payload_bytes\": {size}, \"ops_per_sec\": {:.1}, \"reps\": [{}]}}",
        alg.name(),
        if calls == Calls::Two { 2 } else { 3 },
        median(&rates),
        reps_json.join(", ")
    );
    Ok(())
}

/// The `--serve` form: one measurement per line of stdin, one JSON line each on stdout.
fn serve(a: &[String]) -> Result<(), String> {
    let size = a.get(4).map_or(Ok(200), |p| positive(p, "PAYLOAD_BYTES"))?;
    let data = payload(size);
    let mut limit = Limit::open(&a[0], &a[1], &a[2])?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{{\"ready\": true}}");
    let _ = out.flush();
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| format!("reading stdin: {e}"))?;
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.is_empty() {
            continue;
        }
        let answer = (|| -> Result<(u64, f64, f64), String> {
            if f.len() != 4 && f.len() != 5 {
                return Err("expected: KEY_LABEL ALG THREADS SECONDS [CALLS]".into());
            }
            let alg = Alg::parse(f[1]).ok_or_else(|| format!("unknown algorithm {:?}", f[1]))?;
            let threads = positive(f[2], "THREADS")?;
            let calls = f.get(4).map_or(Ok(Calls::Two), |c| Calls::parse(c))?;
            limit.measure(f[0], alg, calls, threads, Until::parse(f[3])?, &data)
        })();
        let reply = match answer {
            Ok((n, secs, cpu)) => {
                format!("{{\"ops\": {n}, \"seconds\": {secs:.6}, \"cpu\": {cpu:.6}}}")
            }
            Err(e) => format!("{{\"error\": {:?}}}", e),
        };
        if writeln!(out, "{reply}").and_then(|_| out.flush()).is_err() {
            break;
        }
    }
    limit.close();
    Ok(())
}

fn main() -> ExitCode {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let result = if a.get(3).map(String::as_str) == Some("--serve") && a.len() <= 5 {
        serve(&a)
    } else {
        once(&a)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hsmkey-bench-limit: {e}");
            ExitCode::from(if e == USAGE { 2 } else { 1 })
        }
    }
}
