"""The algorithm matrix, as measured: every JOSE algorithm signed in a throwaway SoftHSM2 token
through jwcrypto, PyJWT, joserfc and the cryptography interface (each verified with software
public keys), and JWE decryption in the token.

    python scripts/alg_matrix.py      # hsmkey, jwcrypto, PyJWT and joserfc installed
"""

from __future__ import annotations

import json
from typing import Any, Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from hsmkey.testing import softhsm2_token

KEYS = {
    "rsa": ("RSA", {"bits": 2048}),
    "p256": ("EC", {"curve": "P-256"}),
    "p384": ("EC", {"curve": "P-384"}),
    "p521": ("EC", {"curve": "P-521"}),
    "k1": ("EC", {"curve": "secp256k1"}),
    "ed25519": ("Ed25519", {}),
    "ed448": ("Ed448", {}),
}
ALGS = [(a, "rsa") for a in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")] + [
    ("ES256", "p256"),
    ("ES384", "p384"),
    ("ES512", "p521"),
    ("ES256K", "k1"),
    ("EdDSA", "ed25519"),
    ("EdDSA", "ed448"),
]
HASHES = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}


def outcome(check: Callable[[], None]) -> str:
    try:
        check()
    except Exception as e:
        return f"FAIL {type(e).__name__}"
    return "pass"


def sign_checks(key: Any, alg: str) -> list[Callable[[], None]]:
    import jwt as pyjwt
    from joserfc import jwk as fjwk
    from joserfc import jws as fjws
    from jwcrypto import jwk, jwt

    public = jwk.JWK.from_json(key.export_public())
    private = key.hsm_private_key

    def with_jwcrypto() -> None:
        token = jwt.JWT(header={"alg": alg}, claims={"sub": "x"})
        token.make_signed_token(key)
        jwt.JWT(jwt=token.serialize(), key=public, algs=[alg])

    def with_pyjwt() -> None:
        token = pyjwt.encode({"sub": "x"}, private, algorithm=alg)
        pyjwt.decode(token, private.public_key(), algorithms=[alg])

    def with_joserfc() -> None:
        kind = {"RSA": fjwk.RSAKey, "EC": fjwk.ECKey, "OKP": fjwk.OKPKey}[key["kty"]]
        signer = kind(private, key.export_public(as_dict=True))
        compact = fjws.serialize_compact({"alg": alg}, b"payload", signer, algorithms=[alg])
        verifier = kind.import_key(key.export_public(as_dict=True))
        fjws.deserialize_compact(compact, verifier, algorithms=[alg])

    def with_cryptography() -> None:
        data = b"x"
        if alg[0] in "RP":
            h = HASHES[alg[2:]]
            pad = (
                padding.PKCS1v15() if alg[0] == "R" else padding.PSS(padding.MGF1(h), h.digest_size)
            )
            private.public_key().verify(private.sign(data, pad, h), data, pad, h)
        elif alg.startswith("ES"):
            scheme = ec.ECDSA(HASHES[alg[2:5]])
            private.public_key().verify(private.sign(data, scheme), data, scheme)
        else:
            private.public_key().verify(private.sign(data), data)

    return [with_jwcrypto, with_pyjwt, with_joserfc, with_cryptography]


def jwe_check(key: Any, alg: str, enc: str) -> Callable[[], None]:
    from jwcrypto import jwe, jwk

    public = jwk.JWK.from_json(key.export_public())
    algs = [alg, enc]

    def check() -> None:
        sealed = jwe.JWE(b"secret", json.dumps({"alg": alg, "enc": enc}), algs=algs)
        sealed.add_recipient(public)
        opened = jwe.JWE(algs=algs)
        opened.deserialize(sealed.serialize(compact=True), key=key)
        assert opened.payload == b"secret"

    return check


def main() -> None:
    with softhsm2_token(label="matrix") as token:
        from hsmkey import HSMJWK, SessionPool

        with SessionPool(token.module_path, token.label, token.pin) as pool:
            with pool.session(rw=True) as session:
                for label, (key_type, kwargs) in KEYS.items():
                    session.generate_key_pair(key_type, label=label, **kwargs)
            print(f"{'algorithm':<16} {'jwcrypto':<9} {'PyJWT':<9} {'joserfc':<9} cryptography")
            for alg, label in ALGS:
                key = HSMJWK.from_hsm(pool, key_label=label)
                name = alg if alg != "EdDSA" else f"EdDSA ({KEYS[label][0]})"
                cells = [outcome(check) for check in sign_checks(key, alg)]
                print(f"{name:<16} " + " ".join(f"{c:<9}" for c in cells))
            print(f"\n{'JWE (jwcrypto)':<16} {'key':<9} decrypted in the HSM")
            rsa = HSMJWK.from_hsm(pool, key_label="rsa")
            for alg in ("RSA-OAEP", "RSA-OAEP-256", "RSA1_5"):
                print(f"{alg:<16} {'RSA 2048':<9} {outcome(jwe_check(rsa, alg, 'A256GCM'))}")
            for label in ("p256", "p384", "p521"):
                key = HSMJWK.from_hsm(pool, key_label=label)
                for alg in ("ECDH-ES", "ECDH-ES+A128KW", "ECDH-ES+A192KW", "ECDH-ES+A256KW"):
                    result = outcome(jwe_check(key, alg, "A128GCM"))
                    print(f"{alg:<16} {KEYS[label][1]['curve']:<9} {result}")


if __name__ == "__main__":
    main()
