"""``python -m hsmkey.demo``: sign a JWT with every algorithm on a throwaway SoftHSM2 token,
and verify each with the public key alone, in software."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from jwcrypto import jwk, jwt  # type: ignore[import-untyped]

from . import HSMJWK, SessionPool
from .testing import SoftHSM2NotFound, softhsm2_token

# (algorithm, key type, generation arguments)
ALGORITHMS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("RS256", "RSA", {"bits": 2048}),
    ("PS256", "RSA", {"bits": 2048}),
    ("ES256", "EC", {"curve": "P-256"}),
    ("ES384", "EC", {"curve": "P-384"}),
    ("ES512", "EC", {"curve": "P-521"}),
    ("ES256K", "EC", {"curve": "secp256k1"}),
    ("EdDSA", "Ed25519", {}),
    ("EdDSA", "Ed448", {}),
)


def main() -> int:
    try:
        token_cm = softhsm2_token(label="hsmkey-demo")
        token = token_cm.__enter__()
    except SoftHSM2NotFound as e:
        print(f"hsmkey demo: {e}", file=sys.stderr)
        return 2
    try:
        pool = SessionPool(token.module_path, token.label, token.pin)
        claims = {"sub": "demo-user", "iss": "hsmkey-demo", "iat": int(time.time())}
        print(f"throwaway SoftHSM2 token {token.label!r} in {token.directory}")
        print(f"{'algorithm':<10} {'key':<16} {'signed in HSM':<14} verified in software")
        first = None
        with pool:
            for alg, key_type, kwargs in ALGORITHMS:
                label = f"demo-{alg}-{key_type}".lower()
                with pool.session(rw=True) as session:
                    session.generate_key_pair(key_type, label=label, **kwargs)
                key = HSMJWK.from_hsm(pool, key_label=label)
                token_jwt = jwt.JWT(header={"alg": alg, "kid": key["kid"]}, claims=claims)
                token_jwt.make_signed_token(key)
                compact = token_jwt.serialize()
                # Verify with nothing but the published public key.
                public = jwk.JWK.from_json(key.export_public())
                checked = jwt.JWT(jwt=compact, key=public, algs=[alg])
                ok = json.loads(checked.claims) == claims
                desc = f"{key_type} {kwargs.get('bits') or kwargs.get('curve') or ''}".strip()
                print(f"{alg:<10} {desc:<16} {'yes':<14} {'yes' if ok else 'NO'}")
                if not ok:
                    return 1
                first = first or compact
        print("\nan RS256 JWT signed by the token:")
        print(first)
        return 0
    finally:
        token_cm.__exit__(None, None, None)


if __name__ == "__main__":
    sys.exit(main())
