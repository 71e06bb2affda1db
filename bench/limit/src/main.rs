//! The raw signing limit of a PKCS#11 token: what a plain Rust loop over cryptoki reaches.
//!
//! Each thread opens its own session (after one `C_Login` for the process), finds the key
//! once, then loops `C_SignInit` + `C_Sign` (cryptoki's `Session::sign`) for the given time.
//! ES256/ES384 hash locally and sign with `CKM_ECDSA` (SoftHSM2 has no ECDSA-with-hash).
//! ML-DSA-65 signs the payload with `CKM_ML_DSA` and NULL parameters (hedged, empty context:
//! RFC 9964's JWS), on a PKCS#11 3.2 token such as kryoptic.
//!
//! Usage:
//!
//!     hsmkey-bench-limit MODULE TOKEN_LABEL PIN KEY_LABEL ALG THREADS SECONDS
//!         [REPETITIONS [PAYLOAD_BYTES]]
//!     hsmkey-bench-limit MODULE TOKEN_LABEL PIN --serve [PAYLOAD_BYTES]
//!
//! The first form prints one JSON object: `ops_per_sec` (the median over the repetitions,
//! default 5), `reps` (ops/s of each repetition) and the parameters. SECONDS may instead be
//! a count such as `1000ops`: each thread then signs exactly that many times per repetition
//! (for instruction counts under `valgrind --tool=callgrind`).
//!
//! `--serve` keeps the module loaded and logged in, and measures on request: it reads lines
//! `KEY_LABEL ALG THREADS SECONDS` on stdin and answers each with one JSON line
//! `{"ops": N, "seconds": S}`. The benchmark driver uses it to interleave short slices of
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

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::dsa::{HedgeType, SignAdditionalContext};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use sha2::{Digest, Sha256, Sha384};

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

    /// One signature of `payload`, as a JOSE library would ask for it.
    fn sign(
        self,
        session: &Session,
        mech: &Mechanism,
        key: ObjectHandle,
        payload: &[u8],
    ) -> Result<Vec<u8>, Error> {
        match self {
            Alg::Es256 => session.sign(mech, key, &Sha256::digest(payload)),
            Alg::Es384 => session.sign(mech, key, &Sha384::digest(payload)),
            _ => session.sign(mech, key, payload),
        }
    }
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
    until: Until,
    payload: Arc<Vec<u8>>,
}

/// A signing thread with its own session and the key handles it has found.
struct Worker {
    jobs: Sender<Option<Job>>,
    done: Receiver<Result<u64, String>>,
    handle: JoinHandle<()>,
}

impl Worker {
    fn start(session: Session) -> Worker {
        let (jobs, job_rx) = channel::<Option<Job>>();
        let (done_tx, done) = channel();
        let handle = thread::spawn(move || {
            let mut keys: HashMap<(Arc<str>, &'static str), ObjectHandle> = HashMap::new();
            while let Ok(Some(job)) = job_rx.recv() {
                let r = Worker::run(&session, &mut keys, &job);
                if done_tx.send(r).is_err() {
                    break;
                }
            }
        });
        Worker { jobs, done, handle }
    }

    fn run(
        session: &Session,
        keys: &mut HashMap<(Arc<str>, &'static str), ObjectHandle>,
        job: &Job,
    ) -> Result<u64, String> {
        let mech = job.alg.mechanism();
        let cache_key = (job.key.clone(), job.alg.name());
        let key = match keys.get(&cache_key) {
            Some(k) => *k,
            None => {
                let k = find_key(session, &job.key)?;
                // The first use of a key on this session: warm up, outside the measurement.
                for _ in 0..20 {
                    job.alg
                        .sign(session, &mech, k, &job.payload)
                        .map_err(|e| format!("warm-up sign: {e}"))?;
                }
                keys.insert(cache_key, k);
                k
            }
        };
        let start = Instant::now();
        let mut n = 0u64;
        while match job.until {
            Until::Count(c) => n < c,
            Until::Elapsed(d) => start.elapsed() < d,
        } {
            let sig = job
                .alg
                .sign(session, &mech, key, &job.payload)
                .map_err(|e| format!("sign: {e}"))?;
            std::hint::black_box(sig);
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
        Ok(Limit {
            ctx,
            slot,
            _login: login,
            workers: Vec::new(),
        })
    }

    /// Signs on `threads` threads at once; returns (signatures, seconds).
    fn measure(
        &mut self,
        key: &str,
        alg: Alg,
        threads: usize,
        until: Until,
        payload: &Arc<Vec<u8>>,
    ) -> Result<(u64, f64), String> {
        while self.workers.len() < threads {
            let session = self
                .ctx
                .open_ro_session(self.slot)
                .map_err(|e| format!("C_OpenSession: {e}"))?;
            self.workers.push(Worker::start(session));
        }
        let key: Arc<str> = Arc::from(key);
        let workers = &self.workers[..threads];
        // Warm-up (first use of this key on a thread) happens before the clock starts.
        for w in workers {
            let warm = Job {
                key: key.clone(),
                alg,
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
        let start = Instant::now();
        for w in workers {
            let job = Job {
                key: key.clone(),
                alg,
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
        Ok((total, start.elapsed().as_secs_f64()))
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

const USAGE: &str = "usage: hsmkey-bench-limit MODULE TOKEN_LABEL PIN KEY_LABEL \
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
        let (n, secs) = limit.measure(&a[3], alg, threads, until, &data)?;
        rates.push(n as f64 / secs);
    }
    limit.close();
    let seconds = match until {
        Until::Elapsed(d) => d.as_secs_f64(),
        Until::Count(_) => 0.0,
    };
    let reps_json: Vec<String> = rates.iter().map(|r| format!("{r:.1}")).collect();
    println!(
        "{{\"alg\": \"{}\", \"threads\": {threads}, \"seconds\": {seconds}, \
         \"payload_bytes\": {size}, \"ops_per_sec\": {:.1}, \"reps\": [{}]}}",
        alg.name(),
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
        let answer = (|| -> Result<(u64, f64), String> {
            if f.len() != 4 {
                return Err("expected: KEY_LABEL ALG THREADS SECONDS".into());
            }
            let alg = Alg::parse(f[1]).ok_or_else(|| format!("unknown algorithm {:?}", f[1]))?;
            let threads = positive(f[2], "THREADS")?;
            limit.measure(f[0], alg, threads, Until::parse(f[3])?, &data)
        })();
        let reply = match answer {
            Ok((n, secs)) => format!("{{\"ops\": {n}, \"seconds\": {secs:.6}}}"),
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
