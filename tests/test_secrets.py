"""The PIN never shows: not in repr or str of any object, not in exceptions or their
tracebacks, not in log records, whatever happens (success, wrong PIN, different PIN,
closed pools). Runs in its own process with a token whose PIN is distinctive."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = r"""
import logging, traceback
from hsmkey.testing import softhsm2_token

PIN, WRONG = "Zq9-secret-PIN-7781", "Wx4-wrong-PIN-0365"
records = []

class Keep(logging.Handler):
    def emit(self, record):
        records.append(self.format(record))

log = logging.getLogger("hsmkey")
log.setLevel(logging.DEBUG)
log.addHandler(Keep())
seen = []

def look(obj):
    seen.append(repr(obj)); seen.append(str(obj))

def fail(fn):
    try:
        fn()
    except BaseException as e:
        look(e); seen.append("".join(traceback.format_exception(e)))
        seen.append(repr(getattr(e, "args", ())))
        return e
    raise SystemExit(f"no error from {fn}")

with softhsm2_token(label="secret-token", pin=PIN) as token:
    from hsmkey import HSMJWK, SessionPool, hsm_session
    pool = SessionPool(token.module_path, token.label, PIN)
    look(pool)
    with pool.session(rw=True) as s:
        look(s)
        key = s.generate_key_pair("EC", label="k")
        look(key); look(HSMJWK.from_hsm(s, key_label="k"))
    look(pool.stats())
    with hsm_session(token.module_path, token.label, PIN) as s:
        look(s)
    # A second pool with another PIN, a wrong PIN, unknown keys, closed pools.
    other = SessionPool(token.module_path, token.label, WRONG)
    look(fail(other.check))
    look(fail(lambda: pool.find_key(key_label="missing")))
    key = pool.find_key(key_label="k")
    pool.close()
    look(fail(lambda: key.sign("ES256", b"x")))
    wrong = SessionPool(token.module_path, token.label, WRONG)
    look(fail(wrong.check)); look(fail(wrong.check))
    look(wrong)
    wrong.close(); other.close()

text = "\n".join(seen + records)
assert records, "no log records were captured"
for secret in (PIN, WRONG, PIN.encode().hex(), WRONG.encode().hex()):
    assert secret not in text, f"{secret!r} leaked"
print("SCANNED", len(seen), "strings and", len(records), "log records")
"""


def test_pin_never_shows() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SCANNED" in proc.stdout
    for secret in ("Zq9-secret-PIN-7781", "Wx4-wrong-PIN-0365"):
        assert secret not in proc.stderr
