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


# The first release of each distribution whose glibc is 2.17 or newer (manylinux2014): RHEL 7
# has 2.17, Debian 8 and Ubuntu 14.04 2.19, SUSE 12 2.19 (RHEL 6: 2.12, Debian 7: 2.13,
# Ubuntu 12.04: 2.15, SUSE 11: 2.11).
FIRST_WITH_GLIBC_2_17 = {
    "RHEL": "7",
    "Debian": "8",
    "Ubuntu": "14.04",
    "SUSE Linux Enterprise": "12",
}


def _glibc_statement(text: str) -> str:
    """The sentence that says where the manylinux2014 wheels run (up to its closing
    parenthesis or the end of the paragraph), on one line."""
    start = text.index("glibc 2.17")
    return " ".join(text[start : start + 600].split())


def test_the_supported_distributions_are_stated_once() -> None:
    """README.md and docs/deployment.rst give the same (and true) oldest releases for the
    glibc wheels."""
    deployment = (README.parent / "docs" / "deployment.rst").read_text()
    for name, text in (("README.md", README.read_text()), ("deployment.rst", deployment)):
        statement = _glibc_statement(text)
        for distribution, first in FIRST_WITH_GLIBC_2_17.items():
            assert f"{distribution} {first} and newer" in statement or (
                distribution == "RHEL" and f"RHEL and CentOS {first} and newer" in statement
            ), (name, distribution, statement)
