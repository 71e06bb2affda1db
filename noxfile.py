"""Developer tasks for hsmkey: ``bash scripts/nox -s <session>`` (or ``nox -s <session>``).

- ``tests``: install the package, ``cargo test`` (the core's unit tests, without Python), ``pytest``
- ``lint``: ruff (check, format), ``cargo fmt --check``, ``cargo clippy -D warnings``
- ``typecheck``: ``mypy --strict`` over the package and its stubs
- ``demo``: sign and verify a JWT with a key in a throwaway SoftHSM2 token
- ``wheel``: build one abi3 wheel into ``dist/``, install it into a fresh virtual environment
  and run the demo, the ``hsmkey`` command and the pytest plugin from it
- ``docs``: build the Sphinx documentation (``docs/_build/html``), warnings as errors

The tests need SoftHSM2 and OpenSC's ``pkcs11-tool`` (Debian: ``softhsm2``, ``opensc``); run
as root, the sessions install them with apt-get.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nox

nox.needs_version = ">=2024.4.15"
nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

ROOT = Path(__file__).parent
# Keep in step with the ruff used to format the code: formatting changes between versions.
RUFF = "ruff==0.17.6"
# mypy 2 no longer checks for Python 3.9, the oldest this package supports.
MYPY = "mypy>=1.11,<2"
TEST_EXTRAS = ".[test]"
# The client libraries hsmkey.adapters and the recipes are tested against (docs/clients.rst).
CLIENT_DEPS = ["joserfc", "Authlib", "josepy", "acme", "signxml", "securesystemslib", "tuf"]
TEST_DEPS = ["hypothesis", *CLIENT_DEPS]  # beyond the [test] extra
LINT_PATHS = ["python", "tests", "noxfile.py", "bench", "docs"]

# command -> Debian package that provides it
SYSTEM_TOOLS = {"softhsm2-util": "softhsm2", "pkcs11-tool": "opensc"}
SYSTEM_PACKAGES = ["softhsm2", "opensc"]


def apt_get_install(session: nox.Session, packages: list[str]) -> None:
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    session.run("apt-get", "update", external=True, env=env)
    session.run(
        "apt-get", "install", "-y", "--no-install-recommends", *packages, external=True, env=env
    )


def can_apt_get() -> bool:
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


def ensure_system_packages(session: nox.Session) -> None:
    """SoftHSM2 and OpenSC's pkcs11-tool: install them as root, or say what to install."""
    missing = sorted(tool for tool in SYSTEM_TOOLS if shutil.which(tool) is None)
    if not missing:
        return
    if can_apt_get():
        session.log(f"{', '.join(missing)} not found: installing {' '.join(SYSTEM_PACKAGES)}")
        apt_get_install(session, SYSTEM_PACKAGES)
        still = [tool for tool in missing if shutil.which(tool) is None]
        if still:
            session.error(f"{', '.join(still)} still missing after apt-get install")
        return
    packages = " ".join(sorted({SYSTEM_TOOLS[tool] for tool in missing}))
    session.error(
        f"{', '.join(missing)} not found. hsmkey's tests need SoftHSM2 and OpenSC. Install "
        f"them first: `sudo apt-get install -y {packages}` (Debian/Ubuntu), "
        "`sudo dnf install -y softhsm opensc` (Fedora), `brew install softhsm opensc` (macOS)."
    )


def ensure_cargo(session: nox.Session) -> None:
    if shutil.which("cargo") is None:
        session.error(
            "cargo not found: hsmkey's core is Rust. Install a toolchain with rustup "
            "(https://rustup.rs), then make sure ~/.cargo/bin is on PATH."
        )


# The fault-injection PKCS#11 module the reliability tests load (its own crate).
FAULTMOD = "tests/faultmod/Cargo.toml"


@nox.session
def tests(session: nox.Session) -> None:
    """Build and install hsmkey, run the Rust unit tests, then pytest."""
    ensure_system_packages(session)
    ensure_cargo(session)
    session.install(TEST_EXTRAS, *TEST_DEPS)
    # The core's unit tests: plain Rust, no pyo3 (the `python` feature off), no interpreter.
    session.run("cargo", "test", "--locked", "--no-default-features", external=True)
    session.run("cargo", "test", "--locked", "--manifest-path", FAULTMOD, external=True)
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint and format) over the Python, rustfmt and clippy over the Rust."""
    ensure_cargo(session)
    session.install(RUFF)
    paths = [p for p in LINT_PATHS if (ROOT / p).exists()]
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)
    session.run("cargo", "fmt", "--all", "--", "--check", external=True)
    session.run("cargo", "fmt", "--manifest-path", FAULTMOD, "--", "--check", external=True)
    session.run(
        "cargo",
        "clippy",
        "--locked",
        "--manifest-path",
        FAULTMOD,
        "--all-targets",
        "--",
        "-D",
        "warnings",
        external=True,
    )
    # The core alone (no pyo3), then the crate with its Python bindings.
    for features in (["--no-default-features"], []):
        session.run(
            "cargo",
            "clippy",
            "--locked",
            "--all-targets",
            *features,
            "--",
            "-D",
            "warnings",
            external=True,
            env={"PYO3_PYTHON": str(Path(session.bin) / "python")},
        )


@nox.session
def stress(session: nox.Session) -> None:
    """The stress test for minutes (HSMKEY_STRESS_SECONDS, default 300): 16 threads, every
    algorithm, injected faults."""
    ensure_system_packages(session)
    ensure_cargo(session)
    session.install(TEST_EXTRAS, *TEST_DEPS)
    seconds = os.environ.get("HSMKEY_STRESS_SECONDS", "300")
    session.run("pytest", "-s", "tests/test_stress.py", env={"HSMKEY_STRESS_SECONDS": seconds})


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over python/ (the package, its stubs), with the package installed, and
    mypy.stubtest of the Rust core's stubs against the compiled module."""
    # hsmkey.adapters imports joserfc, Authlib and josepy: mypy checks it against them.
    session.install(".", MYPY, "joserfc", "Authlib", "josepy")
    session.run("mypy", "--strict", "python/")
    # The docs' examples, the way users write them (jwcrypto has no type information).
    session.install("PyJWT", "joserfc", "pytest")
    session.run("python", "scripts/typecheck_docs.py")
    # The stubs of the Rust core, checked against the compiled module.
    session.run(
        "python",
        "-m",
        "mypy.stubtest",
        "hsmkey._hsmkey",
        "--allowlist",
        "tests/stubtest_allowlist.txt",
        "--ignore-unused-allowlist",
    )


@nox.session
def demo(session: nox.Session) -> None:
    """Create a throwaway SoftHSM2 token, sign a JWT with a key in it, verify it."""
    ensure_system_packages(session)
    session.install(".")
    session.run("python", "-m", "hsmkey.demo", *session.posargs)


@nox.session
def wheel(session: nox.Session) -> None:
    """Build one abi3 wheel into dist/ (maturin build --release), then install it into a
    fresh virtual environment, away from the source tree, and run the demo, the command and
    the pytest plugin from there (tests/test_wheel.py)."""
    ensure_system_packages(session)
    ensure_cargo(session)
    session.install("maturin>=1.5,<2", "pytest")
    dist = ROOT / "dist"
    for old in dist.glob("hsmkey-*.whl"):
        old.unlink()
    session.run("maturin", "build", "--release", "--locked", "--out", str(dist))
    wheels = sorted(dist.glob("hsmkey-*.whl"))
    if len(wheels) != 1:
        session.error(f"expected one wheel in {dist}, found {[w.name for w in wheels]}")
    session.log(f"built {wheels[0].name}")
    # --noconftest: the test suite's conftest needs hsmkey itself installed; this file does not.
    session.run(
        "pytest",
        "--noconftest",
        "-p",
        "no:cacheprovider",
        "tests/test_wheel.py",
        *session.posargs,
        env={"HSMKEY_TEST_WHEEL": "1", "HSMKEY_WHEEL": str(wheels[0])},
    )


@nox.session
def docs(session: nox.Session) -> None:
    """Build the HTML documentation with Sphinx, warnings as errors (autodoc reads the
    installed package, compiled core included). The examples in the pages run in the tests
    session (tests/test_docs.py)."""
    ensure_cargo(session)
    session.install(".", "sphinx>=7.2")
    html = "docs/_build/html"
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", html, *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Signing throughput on a throwaway SoftHSM2 token: the raw PKCS#11 limit (bench/limit,
    Rust) against hsmkey at each layer, python-pkcs11, PyKCS11 and jwcrypto with a software
    key, with threads, a busy neighbour thread, session blocks, memory and worker processes
    (about 9 minutes on 2 cores; ``nox -s bench -- --quick``: under a minute). See
    docs/performance.rst."""
    ensure_system_packages(session)
    ensure_cargo(session)
    session.install(".", "jwcrypto", "PyJWT", "python-pkcs11", "PyKCS11")
    session.run("python", "bench/bench_sign.py", *session.posargs)
