"""A throwaway kryoptic token (PKCS#11 3.2, with ML-DSA and SLH-DSA) for the PQC tests.

kryoptic is built once per machine by ``scripts/build-kryoptic`` (cached outside the clone).
``HSMKEY_TEST_KRYOPTIC`` (or ``HSMKEY_KRYOPTIC``, as for the kryoptic backend of
``tests/helpers/backends.py``) names the module (``nox -s pqc`` sets it); without
it the cached build is used if there is one, else the PQC tests skip, saying how to build
it. ``HSMKEY_REQUIRE_PQC=1`` (set by ``nox -s pqc``) turns every such skip into a failure.

kryoptic reads ``KRYOPTIC_CONF`` (a TOML file naming its sqlite database) in
``C_Initialize``: :func:`build_kryoptic` writes the file, initializes the token with
``pkcs11-tool`` (SO PIN and user PIN of at least 8 characters) and sets the variable before
this process loads the module. Keys "put in by another tool" are made by PyKCS11 in a child
process (``C_GenerateKeyPair`` and ``C_CreateObject`` with ``CKA_SEED``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KRYOPTIC_VERSION = "1.5.4"
TOKEN_LABEL = "hsmkey-pqc"
SO_PIN = "so-pin-12345"
PIN = "user-pin-12345"

# The keys PyKCS11 (not hsmkey) puts in the token: (label, id, parameter set, how).
EXTERNAL_KEYS = (
    ("ext-mldsa44-gen", bytes.fromhex("e44a"), "ML-DSA-44", "generate"),
    ("ext-mldsa65-gen", bytes.fromhex("e65a"), "ML-DSA-65", "generate"),
    ("ext-mldsa87-gen", bytes.fromhex("e87a"), "ML-DSA-87", "generate"),
    # Imported from a seed: CKA_SEED on the private object, CKA_VALUE on the public one.
    ("ext-mldsa65-seed", bytes.fromhex("e65b"), "ML-DSA-65", "seed"),
)
EXTERNAL_SEED = bytes(range(32))


class KryopticMissing(Exception):
    """kryoptic with PQC is not built here (and HSMKEY_TEST_KRYOPTIC does not name it)."""


def find_kryoptic() -> str:
    """The kryoptic module: ``$HSMKEY_TEST_KRYOPTIC``, else the cached build."""
    # HSMKEY_KRYOPTIC is the name tests/helpers/backends.py reads (the kryoptic backend).
    for var in ("HSMKEY_TEST_KRYOPTIC", "HSMKEY_KRYOPTIC"):
        named = os.environ.get(var)
        if named:
            if not Path(named).is_file():
                raise FileNotFoundError(f"{var}={named!r}: no such file")
            return named
    cache = Path(
        os.environ.get("HSMKEY_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hsmkey"
    )
    lib = cache / f"kryoptic-{KRYOPTIC_VERSION}-pqc" / "libkryoptic_pkcs11.so"
    if lib.is_file():
        return str(lib)
    raise KryopticMissing(
        "kryoptic with PQC is not built: run `bash scripts/build-kryoptic` (or `nox -s pqc`)"
    )


@dataclass(frozen=True)
class Kryoptic:
    module: str
    conf: Path
    token_label: str
    pin: str
    so_pin: str

    @property
    def env(self) -> dict[str, str]:
        return {"KRYOPTIC_CONF": str(self.conf)}


def _run(argv: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(
        argv, env={**os.environ, **env}, capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stdout}\n{done.stderr}")
    return done.stdout


# A child process that puts keys in the token through PyKCS11 (a second PKCS#11 library).
# PyKCS11 1.5.20 knows the 3.2 constants but packs CKA_PARAMETER_SET as bytes.
_EXTERNAL = textwrap.dedent(
    """
    import struct, sys, json
    import PyKCS11 as P
    from cryptography.hazmat.primitives.asymmetric import mldsa
    module, label, pin, keys, seed = sys.argv[1], sys.argv[2], sys.argv[3], \\
        json.loads(sys.argv[4]), bytes.fromhex(sys.argv[5])
    CKP = {"ML-DSA-44": 1, "ML-DSA-65": 2, "ML-DSA-87": 3}
    CLS = {"ML-DSA-44": mldsa.MLDSA44PrivateKey, "ML-DSA-65": mldsa.MLDSA65PrivateKey,
           "ML-DSA-87": mldsa.MLDSA87PrivateKey}
    lib = P.PyKCS11Lib()
    lib.load(module)
    slot = next(s for s in lib.getSlotList(tokenPresent=True)
                if lib.getTokenInfo(s).label.strip() == label)
    session = lib.openSession(slot, P.CKF_SERIAL_SESSION | P.CKF_RW_SESSION)
    session.login(pin)
    for key_label, key_id, pset, how in keys:
        key_id = bytes.fromhex(key_id)
        ps = struct.pack("=Q", CKP[pset])
        common = [(P.CKA_TOKEN, True), (P.CKA_LABEL, key_label), (P.CKA_ID, key_id)]
        if how == "generate":
            session.generateKeyPair(
                common + [(P.CKA_PARAMETER_SET, ps), (P.CKA_VERIFY, True)],
                common + [(P.CKA_PRIVATE, True), (P.CKA_SENSITIVE, True),
                          (P.CKA_SIGN, True)],
                mecha=P.Mechanism(P.CKM_ML_DSA_KEY_PAIR_GEN, None),
            )
        else:
            sw = CLS[pset].from_seed_bytes(seed)
            session.createObject(common + [
                (P.CKA_CLASS, P.CKO_PRIVATE_KEY), (P.CKA_KEY_TYPE, P.CKK_ML_DSA),
                (P.CKA_PARAMETER_SET, ps), (P.CKA_SEED, seed), (P.CKA_PRIVATE, True),
                (P.CKA_SENSITIVE, True), (P.CKA_SIGN, True)])
            session.createObject(common + [
                (P.CKA_CLASS, P.CKO_PUBLIC_KEY), (P.CKA_KEY_TYPE, P.CKK_ML_DSA),
                (P.CKA_PARAMETER_SET, ps), (P.CKA_VALUE, sw.public_key().public_bytes_raw()),
                (P.CKA_VERIFY, True)])
    session.logout()
    session.closeSession()
    """
)


def build_kryoptic(
    tmp_dir: Path,
    *,
    label: str = TOKEN_LABEL,
    pin: str = PIN,
    external_keys: tuple[tuple[str, bytes, str, str], ...] = EXTERNAL_KEYS,
    set_env: bool = True,
) -> Kryoptic:
    """A new kryoptic token in ``tmp_dir`` with ``external_keys`` in it (made by PyKCS11);
    with ``set_env``, sets ``KRYOPTIC_CONF`` in this process (before hsmkey loads the
    module: kryoptic reads it once, in ``C_Initialize``)."""
    import json

    module = find_kryoptic()
    tmp_dir.mkdir(parents=True, exist_ok=True)
    conf = tmp_dir / "kryoptic.toml"
    conf.write_text(f'[[slots]]\nslot = 0\ndbtype = "sqlite"\ndbargs = "{tmp_dir / "token.sql"}"\n')
    k = Kryoptic(module, conf, label, pin, SO_PIN)
    tool = ["pkcs11-tool", "--module", module]
    _run([*tool, "--init-token", "--label", label, "--so-pin", SO_PIN], k.env)
    _run(
        [
            *(*tool, "--token-label", label, "--login", "--login-type", "so"),
            *("--so-pin", SO_PIN, "--init-pin", "--pin", pin),
        ],
        k.env,
    )
    if external_keys:
        keys = [(name, kid.hex(), pset, how) for name, kid, pset, how in external_keys]
        _run(
            [
                *(sys.executable, "-c", _EXTERNAL, module, label, pin),
                *(json.dumps(keys), EXTERNAL_SEED.hex()),
            ],
            k.env,
        )
    if set_env:
        os.environ.update(k.env)
    return k
