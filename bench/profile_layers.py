#!/usr/bin/env python3
"""Instructions per signature at each layer, counted by ``valgrind --tool=callgrind``.

Wall-clock figures move with whatever else the machine runs; instruction counts do not.
This runs each layer of ``bench_sign.py`` in its own process under callgrind twice (with
N1 and N2 signatures) and prints (Ir(N2) - Ir(N1)) / (N2 - N1): the instructions one more
signature costs, start-up excluded. System calls are not counted (SoftHSM2 makes about 20
per signature, the same for every layer).

    python bench/profile_layers.py                 # ES256, every layer (~3 minutes)
    python bench/profile_layers.py --alg RS256 EdDSA --n 20 220

``--child`` is internal.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hsmbench import common as bs
from hsmbench.limit import build_limit
from hsmbench.peers import WORKER_LIBS

LAYERS = ("limit", "raw", "many", "crypto", "jws", "pyjwt", "python-pkcs11", "pykcs11", "soft")


def child(layer: str, alg: str, n: int, module: str, token: str, pin: str) -> None:
    """Signs ``n`` times at one layer (after 3 warm-up signatures)."""
    if layer in ("python-pkcs11", "pykcs11"):
        factories, _ = WORKER_LIBS[layer](module, token, pin)
        fn = factories[alg]()
    elif layer == "soft":
        from jwcrypto.jwk import JWK

        kty = {
            "RS256": ("RSA", None),
            "PS256": ("RSA", None),
            "ES256": ("EC", "P-256"),
            "ES384": ("EC", "P-384"),
            "EdDSA": ("OKP", "Ed25519"),
        }[alg]
        soft = (
            JWK.generate(kty="RSA", size=2048)
            if kty[0] == "RSA"
            else JWK.generate(kty=kty[0], crv=kty[1])
        )
        fn = _jws(soft, alg)
    else:
        import hsmkey

        pool = hsmkey.SessionPool(module, token, pin)
        key = pool.find_key(key_label=bs.KEY_FOR[alg])
        jwk = hsmkey.HSMJWK.from_hsm(pool, key_label=bs.KEY_FOR[alg])
        priv = jwk.hsm_private_key
        if layer == "raw":
            fn = lambda: key.sign(alg, bs.PAYLOAD)  # noqa: E731
        elif layer == "many":
            batch = [bs.PAYLOAD] * 10
            n = max(1, n // 10)
            fn = lambda: key.sign_many(alg, batch)  # noqa: E731
        elif layer == "crypto":
            args = _crypto_args(alg)
            fn = lambda: priv.sign(bs.PAYLOAD, *args)  # noqa: E731
        elif layer == "jws":
            fn = _jws(jwk, alg)
        elif layer == "pyjwt":
            import jwt

            headers = {"kid": jwk["kid"]}
            fn = lambda: jwt.encode(bs.CLAIMS, priv, algorithm=alg, headers=headers)  # noqa: E731
        else:
            raise SystemExit(f"unknown layer {layer}")
    for _ in range(3):
        fn()
    for _ in range(n):
        fn()


def _crypto_args(alg: str) -> tuple[Any, ...]:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding

    return {
        "RS256": (padding.PKCS1v15(), hashes.SHA256()),
        "PS256": (padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32), hashes.SHA256()),
        "ES256": (ec.ECDSA(hashes.SHA256()),),
        "ES384": (ec.ECDSA(hashes.SHA384()),),
        "EdDSA": (),
    }[alg]


def _jws(key: Any, alg: str) -> bs.SignFn:
    import json

    from jwcrypto.jws import JWS

    protected = json.dumps({"alg": alg, "kid": key.get("kid", "software-key")})

    def sign() -> str:
        jws = JWS(bs.CLAIMS_JSON)
        jws.add_signature(key, alg=alg, protected=protected)
        return str(jws.serialize(compact=True))

    return sign


def instructions(cmd: list[str], env: dict[str, str]) -> int:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "callgrind.out"
        run = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        m = re.search(r"Collected : (\d+)", run.stderr)
        if run.returncode != 0 or m is None:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{run.stderr[-2000:]}")
        return int(m.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--alg", nargs="+", default=["ES256"], choices=bs.ALGS)
    parser.add_argument("--layers", nargs="+", default=list(LAYERS), choices=LAYERS)
    parser.add_argument("--n", nargs=2, type=int, default=[20, 520], metavar=("N1", "N2"))
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        layer, alg, n, module, token, pin = args.child
        child(layer, alg, int(n), module, token, pin)
        return 0
    if shutil.which("valgrind") is None:
        sys.exit("valgrind not found (Debian: apt-get install valgrind)")
    limit = build_limit()
    from hsmkey.testing import softhsm2_token

    n1, n2 = args.n
    with softhsm2_token(label=bs.TOKEN_LABEL, pin=bs.PIN) as tok:
        import hsmkey

        pool = hsmkey.SessionPool(tok.module_path, tok.label, tok.pin)
        with pool.session(rw=True) as s:
            s.generate_key_pair("RSA", label="rsa", bits=2048)
            s.generate_key_pair("EC", label="p256", curve="P-256")
            s.generate_key_pair("EC", label="p384", curve="P-384")
            s.generate_key_pair("Ed25519", label="ed25519")
        pool.close()
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        print(f"instructions per signature (callgrind), N = {n1} and {n2}")
        print(f"{'layer':16}" + "".join(f"{a:>12}" for a in args.alg))
        for layer in args.layers:
            cells = []
            for alg in args.alg:
                counts = []
                for n in (n1, n2):
                    where = [tok.module_path, tok.label, tok.pin]
                    if layer == "limit":
                        size = str(len(bs.PAYLOAD))
                        cmd = [str(limit), *where, bs.KEY_FOR[alg], alg, "1", f"{n}ops", "1", size]
                    else:
                        me = str(Path(__file__).resolve())
                        cmd = [sys.executable, me, "--child", layer, alg, str(n), *where]
                    counts.append(instructions(cmd, env))
                per = (counts[1] - counts[0]) / (n2 - n1)
                cells.append(f"{per / 1000:>11,.1f}k")
            print(f"{layer:16}" + "".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
