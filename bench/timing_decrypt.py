"""End-to-end timing of RSA decryption with a key in a throwaway SoftHSM2 token: is a valid
ciphertext distinguishable from an invalid one by how long ``decrypt`` takes?

dudect's method (Reparaz et al., 2017): two classes of inputs, measured in pairs in a random
order, compared with Welch's t-test, raw and after cropping the slowest measurements at
several percentiles. |t| above ~4.5 says a difference is detectable with that many samples.
This measures everything a caller sees: the Python call, the pool, the token's raw RSA (or
its own unpadding) and hsmkey's unpadding. The Rust-level test of the unpadding alone is
``cargo run --release --no-default-features --example timing_unpad``.

Run (SoftHSM2 installed, hsmkey installed in the environment)::

    python bench/timing_decrypt.py [--samples 3000]

Cases:

- ``RSA_PKCS`` on a key that allows ``CKM_RSA_X_509`` (hsmkey's own keys): raw RSA in the
  token, implicit rejection in hsmkey. Expected: no detectable difference.
- ``RSA_PKCS`` on a key restricted to ``CKM_RSA_PKCS`` (CKA_ALLOWED_MECHANISMS, made with
  OpenSC's ``pkcs11-tool`` when it is installed): the token removes the padding, hsmkey maps
  its refusal to the synthetic message. What the token's own code leaks stays visible here.
- ``RSA_OAEP`` SHA-256 (software unpadding) valid vs invalid: an OAEP failure raises, so
  a difference is expected and harmless (the caller learns "invalid" from the exception
  anyway); shown for scale.

Not a test (timing on a shared machine is no pass/fail); docs/security.rst reports numbers.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hsmkey import Key
from hsmkey.exceptions import HSMError
from hsmkey.testing import softhsm2_token

PERCENTILES = (100.0, 99.0, 95.0, 90.0, 75.0, 50.0)


def welch(a: Sequence[float], b: Sequence[float]) -> float:
    va, vb = statistics.variance(a), statistics.variance(b)
    return (statistics.fmean(a) - statistics.fmean(b)) / math.sqrt(va / len(a) + vb / len(b))


def measure(
    fn: Callable[[bytes], object], classes: tuple[list[bytes], list[bytes]], samples: int
) -> tuple[list[float], list[float]]:
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(min(200, samples)):  # warm-up
        fn(classes[i % 2][i % len(classes[i % 2])])
    clock = time.perf_counter_ns
    for i in range(samples):
        first = random.getrandbits(1)
        for cls in (first, 1 - first):
            data = classes[cls][i % len(classes[cls])]
            start = clock()
            fn(data)
            times[cls].append(clock() - start)
    return times


def report(name: str, times: tuple[list[float], list[float]]) -> float:
    both = sorted(times[0] + times[1])
    parts = []
    worst = 0.0
    for pct in PERCENTILES:
        cut = both[max(0, min(len(both), int(len(both) * pct / 100)) - 1)]
        a = [t for t in times[0] if t <= cut]
        b = [t for t in times[1] if t <= cut]
        if len(a) < 50 or len(b) < 50:
            continue
        t = welch(a, b)
        worst = max(worst, abs(t))
        parts.append(f"t@{pct:.0f}%={t:+.2f}")
    med = [statistics.median(x) / 1000 for x in times]
    verdict = "no leak detected" if worst < 4.5 else "DIFFERENCE DETECTED"
    print(f"{name:<58} max|t|={worst:6.2f}  {verdict}")
    print(
        f"    n={len(times[0])}+{len(times[1])} median {med[0]:.1f} vs {med[1]:.1f} µs; "
        + " ".join(parts)
    )
    return worst


def public(key: Key) -> rsa.RSAPublicKey:
    return rsa.RSAPublicNumbers(
        int.from_bytes(key.public_exponent or b"", "big"), int.from_bytes(key.modulus or b"", "big")
    ).public_key()


def invalid_v15(pub: rsa.RSAPublicKey, count: int) -> list[bytes]:
    """Random ciphertexts below n: their raw decryption is random, so its v1.5 padding is
    wrong (all but ~1 in 65,000)."""
    n = pub.public_numbers().n
    k = (pub.key_size + 7) // 8
    return [(int.from_bytes(os.urandom(k), "big") % n).to_bytes(k, "big") for _ in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=3000, help="measurements per class")
    args = parser.parse_args()
    samples = args.samples
    with softhsm2_token(label="hsmkey-timing") as token, token.pool() as pool:
        with pool.session(rw=True) as s:
            s.generate_key_pair("RSA", label="timing-rsa", key_id=b"\x01", bits=2048)
        restricted = None
        if shutil.which("pkcs11-tool"):
            subprocess.run(
                [
                    "pkcs11-tool", "--module", token.module_path, "--token-label", token.label,
                    "--login", "--pin", token.pin, "--keypairgen", "--key-type", "rsa:2048",
                    "--label", "timing-pkcs-only", "--id", "02",
                    "--allowed-mechanisms", "RSA-PKCS,SHA256-RSA-PKCS",
                ],
                check=True,
                capture_output=True,
                env={**os.environ, **token.env},
            )  # fmt: skip
            restricted = pool.find_key(key_label="timing-pkcs-only")
        print(
            f"SoftHSM2, RSA-2048, {samples} measurements per class, in pairs; |t| < 4.5: no "
            "detectable difference"
        )
        key = pool.find_key(key_label="timing-rsa")
        pub = public(key)
        valid = [pub.encrypt(os.urandom(16 + 16 * (i % 2)), padding.PKCS1v15()) for i in range(64)]
        report(
            "RSA_PKCS, raw RSA + implicit rejection: valid vs invalid",
            measure(lambda c: key.decrypt("RSA_PKCS", c), (valid, invalid_v15(pub, 64)), samples),
        )
        if restricted is not None:
            rpub = public(restricted)
            rvalid = [rpub.encrypt(os.urandom(16), padding.PKCS1v15()) for _ in range(64)]
            report(
                "RSA_PKCS, token unpads (CKM_RSA_PKCS only): valid vs invalid",
                measure(
                    lambda c: restricted.decrypt("RSA_PKCS", c),
                    (rvalid, invalid_v15(rpub, 64)),
                    samples,
                ),
            )
        else:
            print("(pkcs11-tool not found: the CKM_RSA_PKCS-only case is skipped)")
        h = hashes.SHA256()
        ovalid = [
            pub.encrypt(os.urandom(32), padding.OAEP(padding.MGF1(h), h, None)) for _ in range(64)
        ]

        def oaep(c: bytes) -> object:
            try:
                return key.decrypt("RSA_OAEP", c, hash="sha256")
            except HSMError as exc:  # an invalid ciphertext raises
                return exc

        report(
            "RSA_OAEP SHA-256 (raises when invalid): valid vs invalid",
            measure(oaep, (ovalid, invalid_v15(pub, 64)), samples),
        )


if __name__ == "__main__":
    main()
