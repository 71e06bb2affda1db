"""The peer libraries (python-pkcs11, PyKCS11), each in a process of its own that answers JSON
commands (``bench_sign.py --worker``)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

from .common import ALGS, ENTRY, KEY_FOR, PAYLOAD, SPIN_ALG, Factory, SignFn, Slice
from .measure import spinner_run, threaded_count, warm
from .report import say


def _pykcs11_signers(module: str, token: str, pin: str) -> tuple[dict[str, Factory], str]:
    import PyKCS11
    from PyKCS11 import (
        CKA_CLASS,
        CKA_LABEL,
        CKG_MGF1_SHA256,
        CKM_ECDSA,
        CKM_EDDSA,
        CKM_SHA256,
        CKM_SHA256_RSA_PKCS,
        CKM_SHA256_RSA_PKCS_PSS,
        CKO_PRIVATE_KEY,
    )

    lib = PyKCS11.PyKCS11Lib()
    lib.load(module)
    slot = next(
        s for s in lib.getSlotList(tokenPresent=True) if lib.getTokenInfo(s).label.strip() == token
    )
    first = lib.openSession(slot)
    first.login(pin)
    sessions = [first]  # keep every session open (closing the last one logs out)

    mechs = {
        "RS256": PyKCS11.Mechanism(CKM_SHA256_RSA_PKCS),
        "PS256": PyKCS11.RSA_PSS_Mechanism(
            CKM_SHA256_RSA_PKCS_PSS, CKM_SHA256, CKG_MGF1_SHA256, 32
        ),
        "ES256": PyKCS11.Mechanism(CKM_ECDSA),
        "ES384": PyKCS11.Mechanism(CKM_ECDSA),
        "EdDSA": PyKCS11.Mechanism(CKM_EDDSA),
    }
    digests = {"ES256": hashlib.sha256, "ES384": hashlib.sha384}

    def factory_for(alg: str) -> Factory:
        first_use = [True]

        def factory() -> SignFn:
            # The first signer uses the login session; each further one (one per thread)
            # opens its own session: a PKCS#11 session serves one thread at a time.
            if first_use[0]:
                first_use[0] = False
                session = first
            else:
                session = lib.openSession(slot)
                sessions.append(session)
            key = session.findObjects([(CKA_CLASS, CKO_PRIVATE_KEY), (CKA_LABEL, KEY_FOR[alg])])[0]
            mech = mechs[alg]
            digest = digests.get(alg)
            if digest is None:
                return lambda: bytes(session.sign(key, PAYLOAD, mech))
            return lambda: bytes(session.sign(key, digest(PAYLOAD).digest(), mech))

        return factory

    from importlib.metadata import version

    return {alg: factory_for(alg) for alg in ALGS}, f"PyKCS11 {version('pykcs11')}"


def _python_pkcs11_signers(module: str, token: str, pin: str) -> tuple[dict[str, Factory], str]:
    from importlib.metadata import version

    import pkcs11
    from pkcs11 import MGF, Mechanism, ObjectClass

    lib = pkcs11.lib(module)
    session = lib.get_token(token_label=token).open(user_pin=pin)

    def key(label: str) -> Any:
        return session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=label)

    rsa, p256, p384, ed = key("rsa"), key("p256"), key("p384"), key("ed25519")
    sha256, sha384 = hashlib.sha256, hashlib.sha384
    pss = (Mechanism.SHA256, MGF.SHA256, 32)
    signers: dict[str, SignFn] = {
        "RS256": lambda: rsa.sign(PAYLOAD, mechanism=Mechanism.SHA256_RSA_PKCS),
        "PS256": lambda: rsa.sign(
            PAYLOAD, mechanism=Mechanism.SHA256_RSA_PKCS_PSS, mechanism_param=pss
        ),
        "ES256": lambda: p256.sign(sha256(PAYLOAD).digest(), mechanism=Mechanism.ECDSA),
        "ES384": lambda: p384.sign(sha384(PAYLOAD).digest(), mechanism=Mechanism.ECDSA),
        "EdDSA": lambda: ed.sign(PAYLOAD, mechanism=Mechanism.EDDSA),
    }
    # One session, one thread: python-pkcs11 calls C_Initialize with NULL arguments, which
    # turns SoftHSM2's locking off; the driver never asks for more than one signing thread.
    return {alg: _same(fn) for alg, fn in signers.items()}, (
        f"python-pkcs11 {version('python-pkcs11')}"
    )


def _same(fn: SignFn) -> Factory:
    """A factory that always gives ``fn`` (for signers that are safe in any thread)."""
    return lambda: fn


def _hsmkey_signers(module: str, token: str, pin: str) -> tuple[dict[str, Factory], str]:
    import hsmkey

    pool = hsmkey.SessionPool(module, token, pin)
    keys = {alg: pool.find_key(key_label=KEY_FOR[alg]) for alg in ALGS}
    factories = {alg: _same(partial(keys[alg].sign, alg, PAYLOAD)) for alg in ALGS}
    return factories, f"hsmkey {hsmkey.__version__}"


WORKER_LIBS = {
    "pykcs11": _pykcs11_signers,
    "python-pkcs11": _python_pkcs11_signers,
    "hsmkey": _hsmkey_signers,
}


def worker_main(lib: str, module: str, token: str, pin: str) -> None:
    """A peer process: JSON commands on stdin, one JSON answer per line on stdout."""
    out = sys.stdout
    try:
        factories, version = WORKER_LIBS[lib](module, token, pin)
    except Exception as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), file=out, flush=True)
        return
    print(json.dumps({"ready": version}), file=out, flush=True)
    signers: dict[str, SignFn] = {}
    per_thread: dict[str, list[SignFn]] = {}
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            alg = cmd.get("alg", SPIN_ALG)
            if alg not in signers:
                signers[alg] = factories[alg]()
                warm(signers[alg])
            answer: dict[str, Any]
            if cmd["cmd"] == "slice":
                threads = cmd.get("threads", 1)
                # one signer per thread, made once (PyKCS11: each on its own session)
                made = per_thread.setdefault(alg, [signers[alg]])
                while len(made) < threads:
                    made.append(factories[alg]())
                n, elapsed = threaded_count(iter(made).__next__, threads, cmd["seconds"])
                answer = {"ops": n, "seconds": elapsed}
            elif cmd["cmd"] == "spinner":
                alone, _ = spinner_run(cmd["seconds"], None)
                beside, rate = spinner_run(cmd["seconds"], signers[alg])
                answer = {"alone": alone, "beside": beside, "signer": rate}
            elif cmd["cmd"] == "quit":
                break
            else:
                answer = {"error": f"unknown command {cmd['cmd']!r}"}
        except Exception as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), file=out, flush=True)


def _peer_slice(
    peer_slice: Callable[[str, float, int], Slice | None], alg: str, threads: int, seconds: float
) -> Slice | None:
    return peer_slice(alg, seconds, threads)


class Peer:
    """A peer library in its own process."""

    def __init__(self, lib: str, tok: Any) -> None:
        self.lib = lib
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(ENTRY),
                "--worker",
                lib,
                tok.module_path,
                tok.label,
                tok.pin,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=os.environ.copy(),
        )
        hello = self._read()
        self.error: str | None = hello.get("error")
        self.version = hello.get("ready", lib)
        self.failed: dict[str, str] = {}  # alg -> error

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            return {"error": f"{self.lib} process ended (exit code {self.proc.wait()})"}
        return dict(json.loads(line))

    def ask(self, **cmd: Any) -> dict[str, Any] | None:
        """The answer, or None when this peer cannot do it (the reason kept in .failed)."""
        alg = cmd.get("alg", SPIN_ALG)
        if self.error or alg in self.failed or self.proc.poll() is not None:
            if self.proc.poll() is not None and not self.error:
                self.error = f"{self.lib} process ended (exit code {self.proc.returncode})"
            return None
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        answer = self._read()
        if "error" in answer:
            self.failed[alg] = answer["error"]
            say(f"  {self.lib} {alg}: {answer['error']}")
            return None
        return answer

    def slice(self, alg: str, seconds: float, threads: int = 1) -> Slice | None:
        answer = self.ask(cmd="slice", alg=alg, seconds=seconds, threads=threads)
        return None if answer is None else (int(answer["ops"]), float(answer["seconds"]))

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
            except BrokenPipeError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
