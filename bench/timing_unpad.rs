//! dudect-style timing test of hsmkey's software RSA unpadding (Reparaz, Balasch, Verbauwhede,
//! "Dude, is my code constant time?", 2017): two classes of inputs, measured in pairs in a
//! random order, compared with Welch's t-test, raw and after cropping the slowest
//! measurements at several percentiles. |t| above ~4.5 means "a difference is detectable".
//!
//! ```text
//! cargo run --release --no-default-features --example timing_unpad [-- SAMPLES]
//! ```
//!
//! Targets (each with the two classes it compares):
//! - `pkcs1v15::decode_fixed` (implicit rejection): valid v1.5 blocks vs random blocks
//!   (invalid: the synthetic message path), the per-ciphertext KDK included;
//! - `oaep::decode_fixed`: valid OAEP blocks vs random blocks (invalid);
//! - a deliberately leaky early-exit v1.5 check, valid vs random: the control that shows the
//!   harness does find a leak when there is one.
//!
//! Not a test (timing on a shared machine is no pass/fail): docs/security.rst reports its
//! numbers.

use std::hint::black_box;
use std::time::Instant;

use _hsmkey::core::decrypt::{oaep, pkcs1v15};
use _hsmkey::core::mechanism::HashAlg;
use subtle::Choice;

const K: usize = 256; // RSA-2048

/// splitmix64: reproducible inputs and class order without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn fill(&mut self, out: &mut [u8]) {
        for b in out {
            *b = self.next() as u8;
        }
    }
    fn nonzero(&mut self, out: &mut [u8]) {
        for b in out {
            *b = (self.next() % 255) as u8 + 1;
        }
    }
}

/// Welch's t and the mean of each class, in nanoseconds.
fn welch(a: &[f64], b: &[f64]) -> (f64, f64, f64) {
    fn stats(x: &[f64]) -> (f64, f64) {
        let n = x.len() as f64;
        let mean = x.iter().sum::<f64>() / n;
        let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0);
        (mean, var)
    }
    let (ma, va) = stats(a);
    let (mb, vb) = stats(b);
    let t = (ma - mb) / (va / a.len() as f64 + vb / b.len() as f64).sqrt();
    (t, ma, mb)
}

/// Measures `f` on the inputs of both classes in a random interleaved order; prints Welch's t
/// raw and with the measurements above each percentile (of both classes together) cropped.
fn dudect(name: &str, samples: usize, rng: &mut Rng, inputs: [&[Vec<u8>]; 2], f: &dyn Fn(&[u8])) {
    // Warm up caches and the branch predictor on both classes.
    for i in 0..2000 {
        f(&inputs[i % 2][i % inputs[i % 2].len()]);
    }
    // One measurement of each class per round, in a random order: a burst of load from
    // another process then hits both classes alike (the machine is shared).
    let mut times: [Vec<f64>; 2] = [Vec::with_capacity(samples), Vec::with_capacity(samples)];
    for i in 0..samples {
        let first = (rng.next() & 1) as usize;
        for class in [first, 1 - first] {
            let input = &inputs[class][i % inputs[class].len()];
            let start = Instant::now();
            f(black_box(input));
            let ns = start.elapsed().as_nanos() as f64;
            times[class].push(ns);
        }
    }
    let mut all: Vec<f64> = times.iter().flatten().copied().collect();
    all.sort_by(|a, b| a.total_cmp(b));
    let mut worst = 0.0f64;
    let mut line = String::new();
    for pct in [100.0, 99.0, 95.0, 90.0, 75.0, 50.0] {
        let idx = ((all.len() as f64 * pct / 100.0) as usize).clamp(1, all.len()) - 1;
        let cut = all[idx];
        let a: Vec<f64> = times[0].iter().copied().filter(|t| *t <= cut).collect();
        let b: Vec<f64> = times[1].iter().copied().filter(|t| *t <= cut).collect();
        if a.len() < 100 || b.len() < 100 {
            continue;
        }
        let (t, ma, mb) = welch(&a, &b);
        if pct == 100.0 {
            line.push_str(&format!(
                "n={}+{} mean {:.0} vs {:.0} ns; ",
                a.len(),
                b.len(),
                ma,
                mb
            ));
        }
        line.push_str(&format!("t@{pct:.0}%={t:+.2} "));
        worst = worst.max(t.abs());
    }
    let verdict = if worst < 4.5 {
        "no leak detected"
    } else {
        "LEAK DETECTED"
    };
    println!("{name:<48} max|t|={worst:6.2}  {verdict}\n    {line}");
}

fn v15_block(rng: &mut Rng, msg_len: usize) -> Vec<u8> {
    let mut em = vec![0u8; K];
    em[1] = 2;
    rng.nonzero(&mut em[2..K - msg_len - 1]);
    em[K - msg_len - 1] = 0;
    rng.fill(&mut em[K - msg_len..]);
    em
}

fn random_block(rng: &mut Rng) -> Vec<u8> {
    let mut em = vec![0u8; K];
    rng.fill(&mut em);
    em
}

/// The kind of check implicit rejection replaces: returns as soon as a byte is wrong.
fn leaky_v15(em: &[u8]) -> Option<usize> {
    if em[0] != 0 || em[1] != 2 {
        return None;
    }
    let zero = em[2..].iter().position(|b| *b == 0)? + 2;
    if zero < 10 {
        return None;
    }
    Some(em.len() - zero - 1)
}

fn main() {
    let samples: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let mut rng = Rng(0x5eed);
    println!(
        "dudect: {samples} measurements per class, k = {K} bytes (RSA-2048); |t| < 4.5: no \
         detectable difference"
    );

    // PKCS#1 v1.5: valid blocks (a 16- or 32-byte CEK, as JWE RSA1_5 carries) vs random ones.
    let valid: Vec<Vec<u8>> = (0..512)
        .map(|i| v15_block(&mut rng, if i % 2 == 0 { 16 } else { 32 }))
        .collect();
    let invalid: Vec<Vec<u8>> = (0..512).map(|_| random_block(&mut rng)).collect();
    let secret = [0x42u8; 32];
    dudect(
        "pkcs1v15::decode_fixed: valid vs invalid",
        samples,
        &mut rng,
        [&valid, &invalid],
        &|em| {
            // The ciphertext stands in for itself here: any k bytes, the same work.
            let kdk = pkcs1v15::kdk(&secret, em);
            let out = pkcs1v15::decode_fixed(em, &kdk, Choice::from(0));
            black_box(&out);
        },
    );
    // Invalid in different ways: wrong block type vs padding too short (a classic oracle).
    let short: Vec<Vec<u8>> = (0..512)
        .map(|_| {
            let mut em = v15_block(&mut rng, K - 11);
            em[9] = 0; // the separator after 7 bytes of padding
            em
        })
        .collect();
    dudect(
        "pkcs1v15::decode_fixed: bad type vs short padding",
        samples,
        &mut rng,
        [&invalid, &short],
        &|em| {
            let kdk = pkcs1v15::kdk(&secret, em);
            black_box(pkcs1v15::decode_fixed(em, &kdk, Choice::from(0)).ok());
        },
    );

    // OAEP (SHA-256, as RSA-OAEP-256): valid vs random blocks, the constant-time part (the
    // final "raise or return" follows it, as OAEP requires).
    let hash = HashAlg::Sha256;
    let oaep_valid: Vec<Vec<u8>> = (0..512)
        .map(|_| {
            let mut seed = [0u8; 32];
            rng.fill(&mut seed);
            let mut cek = [0u8; 32];
            rng.fill(&mut cek);
            oaep_encode(hash, &cek, &seed)
        })
        .collect();
    dudect(
        "oaep::decode_fixed (SHA-256): valid vs invalid",
        samples,
        &mut rng,
        [&oaep_valid, &invalid],
        &|em| {
            black_box(oaep::decode_fixed(hash, hash, b"", em).map(|(g, _, n)| (bool::from(g), n)));
        },
    );

    // The control: an early-exit check must be caught.
    dudect(
        "control: early-exit v1.5 check (must leak)",
        samples,
        &mut rng,
        [&valid, &invalid],
        &|em| {
            black_box(leaky_v15(em));
        },
    );
}

fn oaep_encode(hash: HashAlg, msg: &[u8], seed: &[u8]) -> Vec<u8> {
    let h_len = hash.len();
    let mut db = hash.digest(b"");
    db.extend(std::iter::repeat_n(0u8, K - msg.len() - 2 * h_len - 2));
    db.push(1);
    db.extend_from_slice(msg);
    oaep::mgf1_xor(hash, seed, &mut db);
    let mut masked_seed = seed.to_vec();
    oaep::mgf1_xor(hash, &db, &mut masked_seed);
    let mut em = vec![0u8];
    em.extend(masked_seed);
    em.extend(db);
    em
}
