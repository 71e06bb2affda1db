"""The README's Python example runs as written, against a throwaway token with the names it
uses (token ``my-token``, PIN ``123456``, an EC key ``signing-key``)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"

PRELUDE = """
from hsmkey.testing import find_softhsm2_module, softhsm2_token
with softhsm2_token(label="my-token", pin="123456") as _token:
    from hsmkey import SessionPool as _Pool
    with _Pool(_token.module_path, "my-token", "123456") as _p, _p.session(rw=True) as _s:
        _s.generate_key_pair("EC", label="signing-key", curve="P-256")
{body}
"""


def test_readme_python_example_runs(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "the README has no Python example"
    for block in blocks:
        body = block.replace('"/usr/lib/softhsm/libsofthsm2.so"', "find_softhsm2_module()")
        script = tmp_path / "readme.py"
        script.write_text(PRELUDE.format(body=textwrap.indent(body, "    ")))
        proc = subprocess.run(
            [sys.executable, "-W", "error", str(script)],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
