"""A throwaway SoftHSM2 installation for the test suite: config, tokens and keys.

SoftHSM2 reads ``SOFTHSM2_CONF`` once per process, in ``C_Initialize``, and a process sees only
the tokens that existed then. So :func:`build_softhsm` runs before anything in the test process
loads the module (``conftest.pytest_configure``), and only through subprocesses
(``softhsm2-util``, ``pkcs11-tool``, a Python child for what those tools cannot import).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import hsmkey.testing as hsmkey_testing

from .vectors import RFC7515_A2, RFC8037_A4, b64url_decode

# Where distributions put the modules; an environment variable of the same name wins. The
# SoftHSM2 paths live in hsmkey.testing (one list for the package and its tests).
SOFTHSM2_MODULE_CANDIDATES = hsmkey_testing.SOFTHSM2_MODULE_PATHS
PKCS11_SPY_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/pkcs11-spy.so",  # Debian, Ubuntu (opensc)
    "/usr/lib/x86_64-linux-gnu/pkcs11/pkcs11-spy.so",
    "/usr/lib64/pkcs11-spy.so",  # Fedora
    "/usr/lib/pkcs11-spy.so",
    "/usr/local/lib/pkcs11-spy.so",
    "/opt/homebrew/lib/pkcs11-spy.so",
)
INSTALL_HINT = "install them with: apt-get install -y softhsm2 opensc (dnf: softhsm opensc)"


class SoftHSMSetupError(RuntimeError):
    """The test token could not be created (tools missing, a command failed)."""


def find_module(env_var: str, candidates: Sequence[str], what: str) -> str:
    """The first existing file among ``$env_var`` and ``candidates``; raise naming them all."""
    override = os.environ.get(env_var)
    if override:
        if not Path(override).is_file():
            raise SoftHSMSetupError(f"{env_var}={override!r}: no such file")
        return override
    for path in candidates:
        if Path(path).is_file():
            return path
    raise SoftHSMSetupError(
        f"{what} not found (looked in {', '.join(candidates)}); set {env_var} to its path, "
        f"or {INSTALL_HINT}"
    )


def find_softhsm2_module() -> str:
    """``hsmkey.testing.find_softhsm2_module``, raising :class:`SoftHSMSetupError`."""
    try:
        return hsmkey_testing.find_softhsm2_module()
    except hsmkey_testing.SoftHSM2NotFound as exc:
        raise SoftHSMSetupError(str(exc)) from None


def find_spy_module() -> str | None:
    """OpenSC's pkcs11-spy module, or None when it is not installed."""
    try:
        return find_module("PKCS11_SPY_MODULE", PKCS11_SPY_CANDIDATES, "pkcs11-spy module")
    except SoftHSMSetupError:
        return None


@dataclass(frozen=True)
class KeySpec:
    """One private key that :func:`build_softhsm` puts in the token ``hsmkey-test``."""

    label: str
    id: bytes  # CKA_ID
    key_type: str  # "RSA", "EC", "EC_EDWARDS"
    curve: str | None  # JOSE curve name, None for RSA
    alg: str  # the JOSE algorithm a test signs with by default
    pkcs11_tool_type: str | None  # --key-type for pkcs11-tool --keypairgen; None: imported
    has_public_object: bool = True

    @property
    def id_hex(self) -> str:
        return self.id.hex()


GENERATED_KEYS = (
    KeySpec("rsa-key", b"\x01", "RSA", None, "RS256", "rsa:2048"),
    KeySpec("ec-key", b"\x02", "EC", "P-256", "ES256", "EC:prime256v1"),
    KeySpec("ec384-key", b"\x03", "EC", "P-384", "ES384", "EC:secp384r1"),
    # pkcs11-tool writes CKA_EC_PARAMS as the PrintableString "edwards25519", not an OID.
    KeySpec("ed-key", b"\x04", "EC_EDWARDS", "Ed25519", "EdDSA", "EC:edwards25519"),
    KeySpec("ec521-key", b"\x05", "EC", "P-521", "ES512", "EC:secp521r1"),
    # Two keys under one label: finding "dup-key" by label alone is ambiguous.
    KeySpec("dup-key", b"\x07", "EC", "P-256", "ES256", "EC:prime256v1"),
    KeySpec("dup-key", b"\x08", "EC", "P-256", "ES256", "EC:prime256v1"),
    KeySpec("k1-key", b"\x0a", "EC", "secp256k1", "ES256K", "EC:secp256k1"),
)
# RFC 7515 A.2, imported with pkcs11-tool --write-object: a private-key object only.
RFC7515_KEY = KeySpec("rfc7515-rsa", b"\x06", "RSA", None, "RS256", None, has_public_object=False)
# RFC 8037 A.1, created with C_CreateObject: CKA_EC_PARAMS is the OID 1.3.101.112.
RFC8037_KEY = KeySpec("rfc8037-ed25519", b"\x09", "EC_EDWARDS", "Ed25519", "EdDSA", None)
TEST_KEYS = (*GENERATED_KEYS, RFC7515_KEY, RFC8037_KEY)
# Labels that name exactly one key (dup-key names two).
UNIQUE_KEYS = {k.label: k for k in TEST_KEYS if k.label != "dup-key"}

# The second token holds one P-256 key, with the same label as a key of the first token.
TOKEN2_KEYS = (KeySpec("ec-key", b"\x02", "EC", "P-256", "ES256", "EC:prime256v1"),)
# The harness token is for tests of the helpers themselves (tests/test_harness.py), which log
# in with PyKCS11 inside the test process: login state is per process and token, so they
# keep off the tokens that hsmkey's tests use.
HARNESS_KEYS = TOKEN2_KEYS


@dataclass(frozen=True)
class Token:
    label: str
    pin: str = field(repr=False)
    so_pin: str = field(repr=False)
    slot_id: int
    serial: str


@dataclass(frozen=True)
class SoftHSM:
    """What the ``softhsm`` fixture returns: a SoftHSM2 set-up with two initialized tokens.

    ``token`` (``hsmkey-test``) holds :data:`TEST_KEYS`; ``token2`` (``hsmkey-test-2``) holds
    :data:`TOKEN2_KEYS`; ``harness_token`` (``hsmkey-harness``) is for the harness's own tests.
    The flat properties describe ``token``.
    """

    module: str  # path of libsofthsm2.so
    conf_path: Path  # the SOFTHSM2_CONF file
    tmp_dir: Path  # everything lives under it
    token: Token
    token2: Token
    harness_token: Token
    spy_module: str | None  # pkcs11-spy.so, or None when OpenSC does not ship it here
    # libsofthsm2.so itself; differs from ``module`` when the tests run through a remote
    # token (HSMKEY_TEST_REMOTE=p11-kit: ``module`` is then p11-kit-client.so).
    softhsm_module: str = ""

    @property
    def library(self) -> str:
        """The SoftHSM2 library (what a server, a fault module or a copy is made from)."""
        return self.softhsm_module or self.module

    @property
    def token_label(self) -> str:
        return self.token.label

    @property
    def pin(self) -> str:
        return self.token.pin

    @property
    def so_pin(self) -> str:
        return self.token.so_pin

    @property
    def slot_id(self) -> int:
        return self.token.slot_id

    @property
    def env(self) -> dict[str, str]:
        """``SOFTHSM2_CONF`` and the ``HSM_*`` variables of ``SessionPool.from_env()``."""
        return {
            "SOFTHSM2_CONF": str(self.conf_path),
            "HSM_MODULE": self.module,
            "HSM_TOKEN": self.token.label,
            "HSM_PIN": self.token.pin,
        }

    def pkcs11_tool(self, *args: str, token: Token | None = None, login: bool = True) -> str:
        """Run ``pkcs11-tool`` on a token of this set-up; return its stdout."""
        token = token or self.token
        # --slot, not --token-label: pkcs11-tool 0.23 matches labels by prefix, so
        # "hsmkey-test" would also pick "hsmkey-test-2" when that slot comes first.
        argv = ["pkcs11-tool", "--module", self.module, "--slot", str(token.slot_id)]
        if login:
            argv += ["--login", "--pin", token.pin]
        return run([*argv, *args], env=self.env).stdout


def run(
    argv: Sequence[str], *, env: dict[str, str] | None = None, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command with ``env`` added to os.environ; raise with its output if it fails."""
    full_env = {**os.environ, **(env or {})}
    try:
        proc = subprocess.run(
            list(argv), env=full_env, input=input, capture_output=True, text=True, timeout=120
        )
    except FileNotFoundError as exc:
        raise SoftHSMSetupError(f"{argv[0]} not found: {INSTALL_HINT}") from exc
    if proc.returncode != 0:
        raise SoftHSMSetupError(
            f"command failed ({proc.returncode}): {' '.join(argv)}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def write_conf(tmp_dir: Path) -> Path:
    """A SoftHSM2 config whose token directory is inside ``tmp_dir``."""
    token_dir = tmp_dir / "tokens"
    token_dir.mkdir(parents=True, exist_ok=True)
    conf = tmp_dir / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {token_dir}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
        "slots.removable = false\n"
    )
    return conf


_REASSIGNED = re.compile(r"reassigned to slot (\d+)")
_SLOT = re.compile(r"^Slot (\d+)\s*$")
_FIELD = re.compile(r"^\s+(Serial number|Label):\s*(.*?)\s*$")


def init_token(conf: Path, label: str, so_pin: str, pin: str) -> int:
    """Initialize the first free token slot; return the token's (random) slot id."""
    out = run(
        [
            "softhsm2-util",
            "--init-token",
            "--free",
            "--label",
            label,
            "--so-pin",
            so_pin,
            "--pin",
            pin,
        ],
        env={"SOFTHSM2_CONF": str(conf)},
    ).stdout
    match = _REASSIGNED.search(out)
    if match is None:
        raise SoftHSMSetupError(f"no slot id in softhsm2-util's output:\n{out}")
    return int(match.group(1))


def show_slots(conf: Path) -> dict[int, dict[str, str]]:
    """``softhsm2-util --show-slots`` parsed: slot id -> {"Label": .., "Serial number": ..}."""
    out = run(["softhsm2-util", "--show-slots"], env={"SOFTHSM2_CONF": str(conf)}).stdout
    slots: dict[int, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in out.splitlines():
        slot = _SLOT.match(line)
        if slot:
            current = slots.setdefault(int(slot.group(1)), {})
            continue
        field = _FIELD.match(line)
        if field and current is not None:
            current[field.group(1)] = field.group(2)
    return slots


def make_token(conf: Path, label: str, so_pin: str, pin: str) -> Token:
    slot_id = init_token(conf, label, so_pin, pin)
    serial = show_slots(conf)[slot_id].get("Serial number", "")
    return Token(label=label, pin=pin, so_pin=so_pin, slot_id=slot_id, serial=serial)


def rfc7515_private_key_der() -> bytes:
    """The RFC 7515 A.2 RSA key as PKCS#8 DER, for ``pkcs11-tool --write-object``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    def num(name: str) -> int:
        return int.from_bytes(b64url_decode(RFC7515_A2.jwk[name]), "big")

    public = rsa.RSAPublicNumbers(num("e"), num("n"))
    private = rsa.RSAPrivateNumbers(
        p=num("p"),
        q=num("q"),
        d=num("d"),
        dmp1=num("dp"),
        dmq1=num("dq"),
        iqmp=num("qi"),
        public_numbers=public,
    ).private_key()
    return private.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


# pkcs11-tool refuses to import Ed25519 private keys, so a child process creates the RFC 8037
# key pair with PyKCS11 (a child: this process must not load SoftHSM2 before the tests do).
_CREATE_ED25519 = textwrap.dedent(
    """
    import sys
    import PyKCS11 as P

    module, slot, pin, label, key_id, seed, public = sys.argv[1:]
    lib = P.PyKCS11Lib().load(module)
    session = lib.openSession(int(slot), P.CKF_SERIAL_SESSION | P.CKF_RW_SESSION)
    session.login(pin)
    oid = bytes.fromhex("06032b6570")  # 1.3.101.112, id-Ed25519
    common = [
        (P.CKA_TOKEN, True),
        (P.CKA_KEY_TYPE, P.CKK_EC_EDWARDS),
        (P.CKA_LABEL, label),
        (P.CKA_ID, bytes.fromhex(key_id)),
        (P.CKA_EC_PARAMS, oid),
    ]
    session.createObject(common + [
        (P.CKA_CLASS, P.CKO_PRIVATE_KEY),
        (P.CKA_PRIVATE, True),
        (P.CKA_SENSITIVE, True),
        (P.CKA_EXTRACTABLE, False),
        (P.CKA_SIGN, True),
        (P.CKA_VALUE, bytes.fromhex(seed)),
    ])
    session.createObject(common + [
        (P.CKA_CLASS, P.CKO_PUBLIC_KEY),
        (P.CKA_PRIVATE, False),
        (P.CKA_VERIFY, True),
        (P.CKA_EC_POINT, bytes([0x04, 32]) + bytes.fromhex(public)),
    ])
    session.logout()
    session.closeSession()
    """
)


def build_softhsm(tmp_dir: Path) -> SoftHSM:
    """Create the config, both tokens and every key of :data:`TEST_KEYS` under ``tmp_dir``."""
    for tool in ("softhsm2-util", "pkcs11-tool"):
        if shutil.which(tool) is None:
            raise SoftHSMSetupError(f"{tool} not found on PATH: {INSTALL_HINT}")
    module = find_softhsm2_module()
    conf = write_conf(tmp_dir)
    hsm = SoftHSM(
        module=module,
        conf_path=conf,
        tmp_dir=tmp_dir,
        token=make_token(conf, "hsmkey-test", "1234", "123456"),
        token2=make_token(conf, "hsmkey-test-2", "4321", "654321"),
        harness_token=make_token(conf, "hsmkey-harness", "9999", "111111"),
        spy_module=find_spy_module(),
    )
    for spec in GENERATED_KEYS:
        generate_key(hsm, spec)
    for spec in TOKEN2_KEYS:
        generate_key(hsm, spec, token=hsm.token2)
    for spec in HARNESS_KEYS:
        generate_key(hsm, spec, token=hsm.harness_token)

    der = tmp_dir / "rfc7515-a2.der"
    der.write_bytes(rfc7515_private_key_der())
    hsm.pkcs11_tool(
        "--write-object",
        str(der),
        "--type",
        "privkey",
        "--id",
        RFC7515_KEY.id_hex,
        "--label",
        RFC7515_KEY.label,
        "--usage-sign",
        "--usage-decrypt",
    )
    der.unlink()

    run(
        [
            sys.executable,
            "-c",
            _CREATE_ED25519,
            module,
            str(hsm.slot_id),
            hsm.pin,
            RFC8037_KEY.label,
            RFC8037_KEY.id_hex,
            b64url_decode(RFC8037_A4.jwk["d"]).hex(),
            b64url_decode(RFC8037_A4.jwk["x"]).hex(),
        ],
        env=hsm.env,
    )
    return hsm


def generate_key(hsm: SoftHSM, spec: KeySpec, *, token: Token | None = None) -> None:
    """``pkcs11-tool --keypairgen`` for one :class:`KeySpec`."""
    assert spec.pkcs11_tool_type is not None, spec
    hsm.pkcs11_tool(
        "--keypairgen",
        "--key-type",
        spec.pkcs11_tool_type,
        "--label",
        spec.label,
        "--id",
        spec.id_hex,
        token=token,
    )
