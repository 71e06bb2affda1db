//! The raw signing limit of a PKCS#11 token: what a plain Rust loop over cryptoki reaches.
//!
//! Each thread opens its own session (after one `C_Login` for the process), finds the key
//! once, then loops `C_SignInit` + `C_Sign` (cryptoki's `Session::sign`) for the given time.
//! ES256/ES384 hash locally and sign with `CKM_ECDSA` (SoftHSM2 has no ECDSA-with-hash).
//!
//! Usage: hsmkey-bench-limit MODULE TOKEN_LABEL PIN KEY_LABEL ALG THREADS SECONDS
//!            [REPETITIONS [PAYLOAD_BYTES]]
//!
//! SECONDS may instead be a count such as `1000ops`: each thread then signs exactly that
//! many times per repetition (for instruction counts under `valgrind --tool=callgrind`).
//!
//! Prints one JSON object: `ops_per_sec` (median over repetitions), `reps` (ops/s of each
//! repetition), and the parameters. Repetitions are separated by a barrier so that every
//! thread measures the same window.

use std::process::ExitCode;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
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
}

impl Alg {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "RS256" => Alg::Rs256,
            "PS256" => Alg::Ps256,
            "ES256" => Alg::Es256,
            "ES384" => Alg::Es384,
            "EdDSA" => Alg::EdDsa,
            _ => return None,
        })
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

struct Args {
    module: String,
    token: String,
    pin: String,
    key: String,
    alg: Alg,
    alg_name: String,
    threads: usize,
    seconds: f64,
    /// Signatures per thread per repetition, instead of a duration.
    count: Option<u64>,
    reps: usize,
    payload: usize,
}

fn parse_args() -> Result<Args, String> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() < 7 || a.len() > 9 {
        return Err("usage: hsmkey-bench-limit MODULE TOKEN_LABEL PIN KEY_LABEL \
                    ALG(RS256|PS256|ES256|ES384|EdDSA) THREADS SECONDS [REPETITIONS [PAYLOAD_BYTES]]"
            .into());
    }
    let alg = Alg::parse(&a[4]).ok_or_else(|| format!("unknown algorithm {:?}", a[4]))?;
    let count = match a[6].strip_suffix("ops") {
        Some(n) => Some(
            n.parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("SECONDS: bad count {:?}", a[6]))?,
        ),
        None => None,
    };
    let num = |i: usize, what: &str| -> Result<f64, String> {
        a[i].parse::<f64>()
            .ok()
            .filter(|v| *v > 0.0)
            .ok_or_else(|| format!("{what} must be a positive number, got {:?}", a[i]))
    };
    Ok(Args {
        module: a[0].clone(),
        token: a[1].clone(),
        pin: a[2].clone(),
        key: a[3].clone(),
        alg,
        alg_name: a[4].clone(),
        threads: num(5, "THREADS")? as usize,
        seconds: if count.is_some() {
            0.0
        } else {
            num(6, "SECONDS")?
        },
        count,
        reps: if a.len() > 7 {
            num(7, "REPETITIONS")? as usize
        } else {
            5
        },
        payload: if a.len() > 8 {
            num(8, "PAYLOAD_BYTES")? as usize
        } else {
            200
        },
    })
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

fn run(args: &Args) -> Result<(), String> {
    let ctx = Pkcs11::new(&args.module).map_err(|e| format!("loading {}: {e}", args.module))?;
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(|e| format!("C_Initialize: {e}"))?;
    let slot = find_slot(&ctx, &args.token)?;
    // The login session stays open for the whole run: closing the last session logs out.
    let login = ctx
        .open_ro_session(slot)
        .map_err(|e| format!("C_OpenSession: {e}"))?;
    match login.login(UserType::User, Some(&AuthPin::new(args.pin.clone().into()))) {
        Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => return Err(format!("C_Login: {e}")),
    }
    let payload: Arc<Vec<u8>> =
        Arc::new((0..args.payload).map(|i| b'a' + (i % 26) as u8).collect());
    let duration = Duration::from_secs_f64(args.seconds);
    // Start and end of each repetition: all threads wait at the barrier, then run.
    let barrier = Arc::new(Barrier::new(args.threads + 1));
    let mut workers = Vec::new();
    for _ in 0..args.threads {
        let session = ctx
            .open_ro_session(slot)
            .map_err(|e| format!("C_OpenSession: {e}"))?;
        let key = find_key(&session, &args.key)?;
        let (alg, reps, count) = (args.alg, args.reps, args.count);
        let (barrier, payload) = (barrier.clone(), payload.clone());
        workers.push(thread::spawn(move || -> Result<Vec<u64>, String> {
            let mech = alg.mechanism();
            for _ in 0..20 {
                alg.sign(&session, &mech, key, &payload)
                    .map_err(|e| format!("warm-up sign: {e}"))?;
            }
            let mut counts = Vec::with_capacity(reps);
            for _ in 0..reps {
                barrier.wait();
                let start = Instant::now();
                let mut n = 0u64;
                while match count {
                    Some(c) => n < c,
                    None => start.elapsed() < duration,
                } {
                    let sig = alg
                        .sign(&session, &mech, key, &payload)
                        .map_err(|e| format!("sign: {e}"))?;
                    std::hint::black_box(sig);
                    n += 1;
                }
                counts.push(n);
                barrier.wait();
            }
            Ok(counts)
        }));
    }
    let mut rates = Vec::with_capacity(args.reps);
    let mut starts = Vec::with_capacity(args.reps);
    for _ in 0..args.reps {
        barrier.wait();
        starts.push(Instant::now());
        barrier.wait();
        rates.push(
            starts
                .last()
                .map(|s| s.elapsed().as_secs_f64())
                .unwrap_or(args.seconds),
        );
    }
    let mut totals = vec![0u64; args.reps];
    for w in workers {
        let counts = w
            .join()
            .map_err(|_| "a signing thread panicked".to_string())??;
        for (t, c) in totals.iter_mut().zip(counts) {
            *t += c;
        }
    }
    let per_rep: Vec<f64> = totals
        .iter()
        .zip(&rates)
        .map(|(n, secs)| *n as f64 / secs)
        .collect();
    let mut sorted = per_rep.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let median = if sorted.len() % 2 == 1 {
        sorted[sorted.len() / 2]
    } else {
        (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
    };
    let reps_json: Vec<String> = per_rep.iter().map(|r| format!("{r:.1}")).collect();
    println!(
        "{{\"alg\": \"{}\", \"threads\": {}, \"seconds\": {}, \"payload_bytes\": {}, \
         \"ops_per_sec\": {median:.1}, \"reps\": [{}]}}",
        args.alg_name,
        args.threads,
        args.seconds,
        args.payload,
        reps_json.join(", ")
    );
    drop(login);
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hsmkey-bench-limit: {e}");
            ExitCode::FAILURE
        }
    }
}
