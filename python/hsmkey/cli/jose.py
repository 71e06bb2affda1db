"""``hsmkey jwks`` and ``hsmkey sign``: the token's public JWK Set, and JWTs signed in it."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ._common import (
    CLIError,
    Command,
    UsageError,
    find_key,
    key_id_arg,
    open_pool,
    print_json,
    sorted_keys,
)

# The JOSE algorithm `sign` uses when --alg is not given.
DEFAULT_ALGS = {
    "RSA": "RS256",
    "P-256": "ES256",
    "P-384": "ES384",
    "P-521": "ES512",
    "secp256k1": "ES256K",
    "Ed25519": "EdDSA",
    "Ed448": "EdDSA",
    "ML-DSA-44": "ML-DSA-44",
    "ML-DSA-65": "ML-DSA-65",
    "ML-DSA-87": "ML-DSA-87",
}
SIGN_ALGS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "ES256K",
    "EdDSA",
    "ML-DSA-44",
    "ML-DSA-65",
    "ML-DSA-87",
)


def register(command: Command) -> None:
    """Add the commands of this module to the parser."""
    p = command(
        "jwks",
        "print the public JWK Set of a token",
        "Print the public keys of the token as a JSON Web Key Set (RFC 7517), each with its "
        "kid (the RFC 7638 thumbprint).",
    )
    p.set_defaults(func=cmd_jwks)

    p = command(
        "sign",
        "sign a JWT with claims read from stdin",
        "Read a JSON object of claims from stdin, sign it as a JWT with a key in the token "
        "and print the compact serialization. The header has alg, kid and typ.",
    )
    p.add_argument("--label", help="CKA_LABEL of the key")
    p.add_argument("--id", dest="key_id", type=key_id_arg, help="CKA_ID of the key, in hex")
    p.add_argument(
        "--alg",
        help="JWS algorithm (default from the key: RS256, ES256/384/512, ES256K, EdDSA)",
    )
    p.add_argument("--kid", help="kid of the header (default: the key's RFC 7638 thumbprint)")
    p.set_defaults(func=cmd_sign)


def cmd_jwks(args: argparse.Namespace) -> int:
    from ..jwk import HSMJWK

    keys = []
    with open_pool(args) as pool:
        for key in sorted_keys(pool.list_keys()):
            try:
                jwk = HSMJWK.from_hsm(key)
            except Exception as exc:
                print(
                    f"hsmkey: warning: key {key.label!r} (id {key.id.hex()}) left out: {exc}",
                    file=sys.stderr,
                )
                continue
            keys.append(json.loads(jwk.export_public()))
    print_json({"keys": keys})
    return 0


def _read_claims() -> dict[str, Any]:
    if sys.stdin.isatty():
        print("reading the JWT claims (a JSON object) from stdin; end with Ctrl-D", file=sys.stderr)
    text = sys.stdin.read()
    if not text.strip():
        raise CLIError(
            "no claims on stdin: pipe a JSON object in, as in "
            """echo '{"sub": "alice"}' | hsmkey sign --label KEY"""
        )
    try:
        claims = json.loads(text)
    except ValueError as exc:
        raise CLIError(f"the claims on stdin are not JSON: {exc}") from None
    if not isinstance(claims, dict):
        raise CLIError(f"the claims must be a JSON object, not {type(claims).__name__}")
    return claims


def cmd_sign(args: argparse.Namespace) -> int:
    from jwcrypto import jwt  # type: ignore[import-untyped]

    from ..exceptions import HSMError
    from ..jwk import HSMJWK

    if args.label is None and args.key_id is None:
        raise UsageError("sign needs --label and/or --id")
    if args.alg is not None and args.alg not in SIGN_ALGS:
        raise UsageError(
            f"--alg {args.alg} is not a signing algorithm of hsmkey: " + ", ".join(SIGN_ALGS)
        )
    claims = _read_claims()
    with open_pool(args) as pool:
        key = HSMJWK.from_hsm(find_key(pool, args.label, args.key_id, "sign"))
        hsm_key = key.hsm_key
        alg = args.alg or DEFAULT_ALGS.get(
            hsm_key.curve or hsm_key.parameter_set or hsm_key.key_type
        )
        if alg is None:
            raise CLIError(f"no default algorithm for this key ({hsm_key.curve}): pass --alg")
        header = {"alg": alg, "kid": args.kid or key["kid"], "typ": "JWT"}
        token = jwt.JWT(header=header, claims=claims)
        try:
            token.make_signed_token(key)
        except HSMError:
            raise
        except Exception as exc:  # jwcrypto: algorithm not allowed for this key type
            raise CLIError(f"cannot sign with {alg}: {exc}") from None
        compact = token.serialize()
    if args.json:
        print_json({"jwt": compact, "alg": alg, "kid": header["kid"]})
    else:
        print(compact)
    return 0
