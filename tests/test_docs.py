"""Every Python example in docs/*.rst runs, page by page, against a throwaway SoftHSM2 token.

How the examples are found and run (keep the docs to these rules):

- A block runs when it is a ``.. code-block:: python`` (or ``python3``, ``py``) directive, or a
  bare ``::`` literal block while the page's ``.. highlight::`` language is Python. conf.py
  sets ``highlight_language = "text"``, so a bare ``::`` block is text unless a page says
  ``.. highlight:: python``. Shell commands, configuration files and output use other
  languages (``bash``, ``console``, ``ini``, ``yaml``, ``text``) and are not run; any other
  language is an error here, so that a typo (``pyhton``) cannot hide an example.
- The blocks of one page run in order, in a fresh interpreter (``python -W error``), each in a
  fresh namespace: a reader may copy any one block and run it alone. A block that goes on
  from the one before it (using its names) says so with a comment line right above it,
  invisible in the rendered page::

      .. docs-test: continues

  and then runs in the namespace of the block before it.
- Before the first block, the prelude makes a SoftHSM2 token labelled ``my-token`` with user
  PIN ``123456`` (:func:`hsmkey.testing.softhsm2_token`), sets ``SOFTHSM2_CONF``,
  ``HSM_MODULE``, ``HSM_TOKEN`` and ``HSM_PIN``, and generates with hsmkey the keys the page
  names in a comment line (invisible in the rendered page)::

      .. docs-test: keys signing-key=EC:P-256 rsa-key=RSA:2048 ed-key=Ed25519

  Key specs are ``EC:<curve>``, ``RSA:<bits>``, ``Ed25519``, ``Ed448`` and (on a PQC page)
  ``ML-DSA-44``, ``ML-DSA-65``, ``ML-DSA-87``.
- A page with the comment line ``.. docs-test: pqc`` (post-quantum keys) runs against a
  kryoptic token with PQC (``tests/helpers/kryoptic.py``: label ``my-token``, user PIN
  ``12345678``) instead of SoftHSM2, with cryptography >= 50.0.2: in ``nox -s pqc``. Where
  kryoptic or cryptography's ML-DSA is missing the page skips, saying why (a failure under
  ``HSMKEY_REQUIRE_PQC=1``).
- The literal SoftHSM2 path ``/usr/lib/softhsm/libsofthsm2.so`` in a block is replaced by the
  path of the SoftHSM2 module found on this machine (the same path on Debian and Ubuntu).
- A block whose last non-blank line is ``# raises SomeError`` must raise an exception with a
  class of that name in its MRO (``# raises HSMPinError``, ``# raises HSMError``); the page
  then goes on with the next block. Any other exception fails the page, naming the page and
  the line of the block in the ``.rst`` file.
- On a page with the comment line ``.. docs-test: check-output``, a ``print(...)`` line with a
  comment (``print(e)  # no private key with label ...``) must print what the comment says,
  where ``...`` stands for any text: the messages the docs quote are the code's.
- A ``console`` block right under the comment line ``.. docs-test: run`` is run: each
  ``$ command`` line runs in bash with the page's token (``hsmkey`` on ``PATH``), and what it
  prints on stdout and stderr must be the lines under it (``...`` stands for any text).
- A Python block with ``:caption: test_<name>.py`` is a pytest module: besides running with
  its page (which only defines its tests), it is written to that file name in an empty
  directory and run by pytest in a fresh process, with the hsmkey plugin's fixtures.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hsmkey.testing import SoftHSM2NotFound, find_softhsm2_module

DOCS = Path(__file__).resolve().parent.parent / "docs"
DOC_SOFTHSM2_PATH = "/usr/lib/softhsm/libsofthsm2.so"

PYTHON_LANGS = {"python", "python3", "py"}
OTHER_LANGS = {"bash", "console", "shell", "ini", "toml", "yaml", "text", "none", "json"}

_DIRECTIVE = re.compile(r"^(\s*)\.\.\s+code-block::\s*(\S*)\s*$")
_HIGHLIGHT = re.compile(r"^\.\.\s+highlight::\s*(\S+)\s*$")
_KEYS = re.compile(r"^\.\.\s+docs-test:\s+keys\b(.*)$")
_RAISES = re.compile(r"^#\s*raises\s+([A-Za-z_][A-Za-z0-9_.]*)\s*$")
_MARK = re.compile(r"^\.\.\s+docs-test:\s+(continues|run|check-output)\s*$")
# print(...)  # what it prints  (the comment after the last "  # " of the line)
_PRINT_COMMENT = re.compile(r"^\s*print\(.*\)\s+#\s(.*)$")


@dataclass
class Block:
    page: str
    line: int  # 1-based line of the first line of code in the .rst file
    language: str
    code: str
    caption: str = ""
    continues: bool = False  # runs in the namespace of the block before it
    run: bool = False  # a console block whose commands run and whose output is checked

    @property
    def raises(self) -> str | None:
        lines = [ln.strip() for ln in self.code.splitlines() if ln.strip()]
        m = _RAISES.match(lines[-1]) if lines else None
        return m.group(1).rsplit(".", 1)[-1] if m else None


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _body(
    lines: list[str], start: int, parent_indent: int, options: dict[str, str] | None = None
) -> tuple[int, list[str], int]:
    """The indented body after a directive or ``::`` line at ``start - 1``: (first line of
    code, dedented lines, index after the body). Directive options go to ``options``."""
    i = start
    while i < len(lines) and not lines[i].strip():
        i += 1
    # directive options (":caption: ...") sit right under the directive
    while i < len(lines) and lines[i].strip().startswith(":") and _indent(lines[i]) > parent_indent:
        name, _, value = lines[i].strip()[1:].partition(":")
        if options is not None:
            options[name.strip()] = value.strip()
        i += 1
    while i < len(lines) and not lines[i].strip():
        i += 1
    body: list[str] = []
    first = i
    indent = None
    while i < len(lines):
        line = lines[i]
        if line.strip():
            if _indent(line) <= parent_indent:
                break
            indent = _indent(line) if indent is None else min(indent, _indent(line))
        body.append(line)
        i += 1
    while body and not body[-1].strip():
        body.pop()
    cut = indent or 0
    return first + 1, [ln[cut:] for ln in body], i


def extract(path: Path) -> tuple[list[Block], list[str]]:
    """The code blocks of one page, and the key specs it asks for."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    keys: list[str] = []
    highlight = "text"
    marks: set[str] = set()  # docs-test marks for the next block
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _MARK.match(line)
        if m:
            if m.group(1) != "check-output":
                marks.add(m.group(1))
            i += 1
            continue
        m = _KEYS.match(line)
        if m:
            keys.extend(m.group(1).split())
            i += 1
            continue
        m = _HIGHLIGHT.match(line)
        if m:
            highlight = m.group(1).lower()
            i += 1
            continue
        m = _DIRECTIVE.match(line)
        if m:
            lang = m.group(2).lower()
            options: dict[str, str] = {}
            first, body, i = _body(lines, i + 1, _indent(line), options)
            code = "\n".join(body) + "\n"
            caption = options.get("caption", "")
            blocks.append(Block(path.name, first, lang, code, caption, **_flags(marks)))
            marks = set()
            continue
        stripped = line.rstrip()
        if stripped.endswith("::") and not stripped.lstrip().startswith(".."):
            first, body, i = _body(lines, i + 1, _indent(line))
            if body:
                code = "\n".join(body) + "\n"
                blocks.append(Block(path.name, first, highlight, code, **_flags(marks)))
                marks = set()
            continue
        i += 1
    return blocks, keys


def _flags(marks: set[str]) -> dict[str, bool]:
    return {"continues": "continues" in marks, "run": "run" in marks}


def uses_pqc_token(path: Path) -> bool:
    """Whether the page's examples run against the PQC token (``.. docs-test: pqc``)."""
    text = path.read_text(encoding="utf-8")
    return re.search(r"^\.\.\s+docs-test:\s+pqc\s*$", text, re.M) is not None


def checks_output(path: Path) -> bool:
    """Whether the page asks for its print comments to be checked (``check-output``)."""
    text = path.read_text(encoding="utf-8")
    return re.search(r"^\.\.\s+docs-test:\s+check-output\s*$", text, re.M) is not None


def expected_prints(block: Block) -> dict[int, str]:
    """``print(...)  # comment`` lines of a block: .rst line number -> the comment."""
    found = {}
    for n, line in enumerate(block.code.splitlines()):
        m = _PRINT_COMMENT.match(line)
        if m:
            found[block.line + n] = m.group(1).strip()
    return found


def console_commands(block: Block) -> list[tuple[str, list[str]]]:
    """The ``$ command`` lines of a console block, each with the output lines under it."""
    commands: list[tuple[str, list[str]]] = []
    for line in block.code.splitlines():
        if line.startswith("$ "):
            commands.append((line[2:], []))
        elif commands:
            commands[-1][1].append(line)
    return commands


def pages() -> list[Path]:
    return sorted(DOCS.glob("*.rst"))


def runnable(path: Path) -> bool:
    return any(b.language in PYTHON_LANGS or b.run for b in extract(path)[0])


RUNNER = r"""
import json, os, re, subprocess, sys, traceback
from pathlib import Path

from hsmkey.testing import softhsm2_token

page = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
directory = Path(sys.argv[2])

with softhsm2_token(label="my-token", pin="123456", directory=directory) as token:
    os.environ["HSM_MODULE"] = token.module_path
    os.environ["HSM_TOKEN"] = token.label
    os.environ["HSM_PIN"] = token.pin
    if page.get("pqc"):  # the kryoptic token the test made (.. docs-test: pqc)
        os.environ.update(page["pqc"])
    if page["keys"]:
        from hsmkey import SessionPool

        env = os.environ
        with SessionPool(env["HSM_MODULE"], env["HSM_TOKEN"], env["HSM_PIN"]) as setup:
            with setup.session(rw=True) as session:
                for spec in page["keys"]:
                    label, _, kind = spec.partition("=")
                    kind, _, arg = kind.partition(":")
                    if kind == "RSA":
                        session.generate_key_pair("RSA", label=label, bits=int(arg or 2048))
                    elif kind == "EC":
                        session.generate_key_pair("EC", label=label, curve=arg or "P-256")
                    else:
                        session.generate_key_pair(kind, label=label)
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
    namespace = {}
    printed = {}  # .rst line of a print() call in a block -> what it printed

    def recording_print(*args, sep=" ", end="\n", file=None, flush=False):
        print(*args, sep=sep, end=end, file=file, flush=flush)
        caller = sys._getframe(1)
        if file is None and caller.f_code.co_filename == block["page"]:
            text = sep.join(str(a) for a in args)
            printed.setdefault(caller.f_lineno, []).append(text)

    def matches(pattern, text):
        parts = [re.escape(p) for p in pattern.split("...")]
        return re.fullmatch(".*".join(parts), text, re.S) is not None

    def fail(message):
        print(f"\nFAILED: {message}", file=sys.stderr)
        sys.exit(1)

    for block in page["blocks"]:
        where = f"{block['page']}:{block['line']}"
        if block["console"]:
            for command, expected in block["commands"]:
                proc = subprocess.run(
                    ["bash", "-c", command], capture_output=True, text=True, timeout=60
                )
                got = (proc.stdout + proc.stderr).splitlines()
                if len(got) != len(expected) or not all(map(matches, expected, got)):
                    fail(
                        f"the console block at {where}: `{command}` printed\n"
                        + "\n".join(got) + "\nnot\n" + "\n".join(expected)
                    )
            continue
        if not block["continues"]:
            namespace = {"__name__": "__main__", "print": recording_print}
        source = "\n" * (block["line"] - 1) + block["code"]
        code = compile(source, block["page"], "exec")
        expected = block["raises"]
        printed.clear()
        try:
            exec(code, namespace)
        except BaseException as exc:
            names = [cls.__name__ for cls in type(exc).__mro__]
            if not (expected and expected in names):
                traceback.print_exc()
                fail(f"the block at {where} raised {type(exc).__name__}")
        else:
            if expected:
                fail(f"the block at {where} should raise {expected}")
        for line, comment in block["prints"].items():
            outputs = printed.get(int(line), [])
            if not outputs or not all(matches(comment, out) for out in outputs):
                fail(
                    f"{block['page']}:{line} printed {outputs!r}, but its comment says "
                    f"{comment!r} (... stands for any text)"
                )
print("page ran", len(page["blocks"]), "blocks")
"""


def _pqc_token(directory: Path) -> dict[str, str]:
    """A kryoptic token for a PQC page: the environment its examples run with."""
    from helpers.kryoptic import KryopticMissing, build_kryoptic

    def unavailable(reason: str) -> None:
        if os.environ.get("HSMKEY_REQUIRE_PQC") == "1":
            pytest.fail(f"HSMKEY_REQUIRE_PQC=1 but {reason}")
        pytest.skip(reason)

    try:
        from cryptography.hazmat.primitives.asymmetric import mldsa  # noqa: F401
    except ImportError:
        unavailable(
            "this cryptography has no ML-DSA (it needs >= 50.0.2): PQC pages run in `nox -s pqc`"
        )
    try:
        token = build_kryoptic(
            directory, label="my-token", pin="12345678", external_keys=(), set_env=False
        )
    except KryopticMissing as exc:
        unavailable(str(exc))
        raise
    return {
        **token.env,
        "HSM_MODULE": token.module,
        "HSM_TOKEN": token.token_label,
        "HSM_PIN": token.pin,
    }


@pytest.mark.parametrize("path", [p for p in pages() if runnable(p)], ids=lambda p: p.name)
def test_page_examples_run(path: Path, tmp_path: Path) -> None:
    try:
        module = find_softhsm2_module()
    except SoftHSM2NotFound as e:
        pytest.skip(str(e))
    blocks, keys = extract(path)
    check = checks_output(path)
    pqc = _pqc_token(tmp_path / "kryoptic") if uses_pqc_token(path) else None
    page = {
        "pqc": pqc,
        "keys": keys,
        "blocks": [
            {
                "page": b.page,
                "line": b.line,
                "code": b.code.replace(DOC_SOFTHSM2_PATH, module),
                "raises": b.raises,
                "continues": b.continues,
                "prints": expected_prints(b) if check else {},
                "console": b.run,
                "commands": console_commands(b) if b.run else [],
            }
            for b in blocks
            if b.language in PYTHON_LANGS or b.run
        ],
    }
    spec = tmp_path / "page.json"
    spec.write_text(json.dumps(page), encoding="utf-8")
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HSM_", "SOFTHSM2_CONF"))}
    env.pop("PKCS11SPY", None)
    proc = subprocess.run(
        [sys.executable, "-W", "error", str(runner), str(spec), str(tmp_path / "softhsm")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, (
        f"the examples of docs/{path.name} failed\n--- stdout\n{proc.stdout}\n"
        f"--- stderr\n{proc.stderr}"
    )


def pytest_modules() -> list[Block]:
    return [
        b
        for p in pages()
        for b in extract(p)[0]
        if b.language in PYTHON_LANGS and re.fullmatch(r"test_\w+\.py", b.caption)
    ]


@pytest.mark.parametrize("block", pytest_modules(), ids=lambda b: f"{b.page}:{b.caption}")
def test_pytest_modules_pass(block: Block, tmp_path: Path) -> None:
    try:
        find_softhsm2_module()
    except SoftHSM2NotFound as e:
        pytest.skip(str(e))
    (tmp_path / block.caption).write_text(block.code, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HSM_", "SOFTHSM2_CONF"))}
    env.pop("PKCS11SPY", None)
    env.pop("PYTEST_ADDOPTS", None)
    command = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error", block.caption]
    proc = subprocess.run(
        [sys.executable, *command],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, (
        f"the pytest module at docs/{block.page}:{block.line} failed\n{proc.stdout}\n{proc.stderr}"
    )
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout


@pytest.mark.parametrize("path", pages(), ids=lambda p: p.name)
def test_code_blocks_name_a_known_language(path: Path) -> None:
    blocks, keys = extract(path)
    unknown = [
        f"line {b.line}: {b.language or '(none)'}"
        for b in blocks
        if b.language not in PYTHON_LANGS | OTHER_LANGS
    ]
    assert not unknown, f"docs/{path.name}: code blocks in an unknown language: {unknown}"
    for spec in keys:
        label, _, kind = spec.partition("=")
        assert label and re.fullmatch(
            r"(RSA(:\d+)?|EC(:[\w-]+)?|Ed25519|Ed448|ML-DSA-(44|65|87))", kind
        ), spec


def test_bare_literal_blocks_are_text() -> None:
    """conf.py keeps bare ``::`` blocks as text, the rule the extractor relies on."""
    conf = (DOCS / "conf.py").read_text(encoding="utf-8")
    assert re.search(r'^highlight_language\s*=\s*"text"', conf, re.M)


def test_extractor_understands_the_rules(tmp_path: Path) -> None:
    page = tmp_path / "sample.rst"
    page.write_text(
        "Title\n=====\n\n"
        ".. docs-test: keys a=EC:P-256 b=RSA:2048\n\n"
        "Text::\n\n    not python\n\n"
        ".. code-block:: python\n   :caption: x\n\n    x = 1\n    if x:\n        y = 2\n\n"
        ".. code-block:: bash\n\n    ls\n\n"
        ".. highlight:: python\n\n"
        "Then::\n\n    z = 3\n    # raises ValueError\n\nEnd.\n",
        encoding="utf-8",
    )
    blocks, keys = extract(page)
    assert keys == ["a=EC:P-256", "b=RSA:2048"]
    assert [(b.language, b.code, b.raises) for b in blocks] == [
        ("text", "not python\n", None),
        ("python", "x = 1\nif x:\n    y = 2\n", None),
        ("bash", "ls\n", None),
        ("python", "z = 3\n# raises ValueError\n", "ValueError"),
    ]
    assert blocks[1].line == 13


def test_extractor_understands_the_marks(tmp_path: Path) -> None:
    page = tmp_path / "marks.rst"
    page.write_text(
        "Title\n=====\n\n"
        ".. docs-test: check-output\n\n"
        ".. code-block:: python\n\n    x = 1\n    print(x)  # 1\n\n"
        ".. docs-test: continues\n\n"
        ".. code-block:: python\n\n    print(x + 1)  # ...2\n\n"
        ".. code-block:: python\n\n    y = 3\n\n"
        ".. docs-test: run\n\n"
        ".. code-block:: console\n\n    $ echo a\n    a\n    $ true\n\n"
        ".. code-block:: console\n\n    $ not run\n",
        encoding="utf-8",
    )
    blocks, _ = extract(page)
    assert [(b.language, b.continues, b.run) for b in blocks] == [
        ("python", False, False),
        ("python", True, False),
        ("python", False, False),
        ("console", False, True),
        ("console", False, False),
    ]
    assert checks_output(page) and not checks_output(DOCS / "index.rst")
    assert expected_prints(blocks[0]) == {blocks[0].line + 1: "1"}
    assert expected_prints(blocks[1]) == {blocks[1].line: "...2"}
    assert console_commands(blocks[3]) == [("echo a", ["a"]), ("true", [])]


def test_blocks_run_alone_unless_marked(tmp_path: Path) -> None:
    """A block that uses a name of the block before it fails unless it says it continues;
    a print comment that the output does not match fails a check-output page."""
    try:
        find_softhsm2_module()
    except SoftHSM2NotFound as e:
        pytest.skip(str(e))
    cases = {
        "alone.rst": ("x = 1\n", "print(x)\n", False, "NameError"),
        "continued.rst": ("x = 1\n", "print(x)\n", True, None),
        "prints.rst": ("x = 1\n", "print(x)  # 2\n", True, "printed ['1']"),
    }
    for name, (first, second, continues, failure) in cases.items():
        page = tmp_path / name
        text = "T\n=\n\n.. docs-test: check-output\n\n.. code-block:: python\n\n    " + first
        if continues:
            text += "\n.. docs-test: continues\n"
        text += "\n.. code-block:: python\n\n    " + second
        page.write_text(text, encoding="utf-8")
        run_dir = tmp_path / f"run-{page.stem}"
        run_dir.mkdir()
        if failure is None:
            test_page_examples_run(page, run_dir)
        else:
            with pytest.raises(AssertionError, match=re.escape(failure)):
                test_page_examples_run(page, run_dir)
