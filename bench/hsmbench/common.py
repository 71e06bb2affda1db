"""What every part of the benchmark shares: the token's keys, the payloads, the types."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

BENCH_DIR = Path(__file__).resolve().parent.parent
ENTRY = BENCH_DIR / "bench_sign.py"  # the peer processes run it with --worker
LIMIT_DIR = BENCH_DIR / "limit"
LIMIT_BIN = LIMIT_DIR / "target" / "release" / "hsmkey-bench-limit"

ALGS = ("RS256", "PS256", "ES256", "ES384", "EdDSA")
KEY_FOR = {
    "RS256": "rsa",
    "PS256": "rsa",
    "ES256": "p256",
    "ES384": "p384",
    "EdDSA": "ed25519",
    "ML-DSA-65": "mldsa65",  # on the kryoptic token of the pqc section
}
TOKEN_LABEL = "hsmkey-bench"
PIN = "1234"
# The payload of the raw layers: the same 200 bytes as bench/limit signs.
PAYLOAD = bytes(97 + i % 26 for i in range(200))
# The JWT claims of the JWS / PyJWT layers.
CLAIMS: dict[str, Any] = {
    "iss": "https://issuer.example.com",
    "sub": "user-0123456789",
    "aud": "https://api.example.com",
    "iat": 1700000000,
    "exp": 1700003600,
    "jti": "5f3c9d8e-1b2a-4c6d-8e7f-0a1b2c3d4e5f",
}
CLAIMS_JSON = json.dumps(CLAIMS, separators=(",", ":")).encode()
BATCH = 100  # payloads per sign_many call
SIGN_MANY_ALGS = ALGS
THREAD_ALGS = ("RS256", "ES256")
THREADS = (1, 2, 4)
SPIN_ALG = "ES256"
# Foreign CPU share from which a round is retaken and a section's figures are flagged.
NOISY = 0.10
MAX_RETAKES = 2  # per round

SignFn = Callable[[], object]
Values = dict[Any, Optional[float]]  # one round's measurements
Factory = Callable[[], SignFn]
Slice = tuple[int, float]  # (signatures, seconds)
Slicer = Callable[[float], Optional[Slice]]  # measures for about that many seconds
SLICE = 0.1  # seconds: layers take turns in slices this long, so they share the conditions
