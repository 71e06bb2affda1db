"""Developer tasks for hsmkey: ``bash scripts/nox -s <session>`` (or ``nox -s <session>``).

- ``tests``: install the package, ``cargo test`` (the core's unit tests, without Python), ``pytest``
- ``pqc``: the post-quantum tests (ML-DSA keys: JOSE, cryptography, X.509, the CLI) against
  kryoptic built with PQC (``scripts/build-kryoptic``, cached outside the clone), with
  cryptography >= 50.0.2
- ``remote``: the pool, key, JWK, asyncio and recovery tests through a real remote token
  (p11-kit's RPC: a p11-kit server in front of SoftHSM2, p11-kit-client.so in the tests)
- ``backends``: the pool, key, JOSE, decryption and recovery tests (tests/test_backends.py)
  on three more PKCS#11 implementations: kryoptic (built once per machine by
  scripts/build-kryoptic), Debian's NSS softokn and opencryptoki's soft token (``kryoptic``,
  ``nss``, ``opencryptoki``: one of them)
- ``lint``: ruff (check, format), the GitHub workflows' schema, ``cargo fmt --check``,
  ``cargo clippy -D warnings``
- ``typecheck``: ``mypy --strict`` over the package and its stubs
- ``demo``: sign and verify a JWT with a key in a throwaway SoftHSM2 token
- ``wheels``: build the sdist and from it the manylinux2014 abi3 wheel into ``dist/``, check
  them (auditwheel, twine), install the wheel into fresh virtual environments of every Python
  found and run the ``hsmkey`` command, the demo and the pytest plugin from there
- ``docs``: build the Sphinx documentation (``docs/_build/html``), warnings as errors

The tests need SoftHSM2, OpenSC's ``pkcs11-tool`` and p11-kit (Debian: ``softhsm2``,
``opensc``, ``p11-kit``, ``p11-kit-modules``); run as root, the sessions install them with
apt-get.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import nox

nox.needs_version = ">=2024.4.15"
nox.options.sessions = ["tests", "pqc", "remote", "backends", "lint", "typecheck", "wheels"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

ROOT = Path(__file__).parent
# Keep in step with the ruff used to format the code: formatting changes between versions.
RUFF = "ruff==0.17.6"
# mypy 2 no longer checks for Python 3.9, the oldest this package supports.
MYPY = "mypy>=1.11,<2"
TEST_EXTRAS = ".[test]"
# The PQC tests (cryptography >= 50.0.2 has ML-DSA) in a session of their own: it builds
# kryoptic, installs the newest cryptography (the client libraries of TEST_DEPS hold it
# below 51 through pyOpenSSL) and fails instead of skipping when anything is missing.
PQC_EXTRAS = ".[test,pqc]"
PQC_TESTS = ["tests/test_pqc.py", "tests/test_docs.py::test_page_examples_run[pqc.rst]"]
# The client libraries hsmkey.adapters and the recipes are tested against (docs/clients.rst).
CLIENT_DEPS = ["joserfc", "Authlib", "josepy", "acme", "signxml", "securesystemslib", "tuf"]
# The monitoring libraries hsmkey.metrics exports to (PoolGroup metrics, docs/groups.rst).
METRICS_DEPS = ["opentelemetry-api", "opentelemetry-sdk", "prometheus-client"]
TEST_DEPS = ["hypothesis", *CLIENT_DEPS, *METRICS_DEPS]  # beyond the [test] extra
LINT_PATHS = ["python", "tests", "noxfile.py", "bench", "docs"]

# command -> Debian package that provides it
SYSTEM_TOOLS = {
    "softhsm2-util": "softhsm2",
    "pkcs11-tool": "opensc",
    "p11-kit": "p11-kit",
}
# p11-kit's client module (the remote token of the tests), where Debian and others put it
P11KIT_CLIENT = (
    "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so",
    "/usr/lib/aarch64-linux-gnu/pkcs11/p11-kit-client.so",
    "/usr/lib64/pkcs11/p11-kit-client.so",
    "/usr/lib/pkcs11/p11-kit-client.so",
)
SYSTEM_PACKAGES = ["softhsm2", "opensc", "p11-kit", "p11-kit-modules"]
# The tests that run again through the remote token (``remote``): those that need a second
# client of the module in the test process (tests/helpers/faults.py) cannot reach a remote
# token's state that way; the recovery tests through it are in tests/test_remote.py.
REMOTE_TESTS = [
    "tests/test_pool.py",
    "tests/test_keys.py",
    "tests/test_jwk.py",
    "tests/test_async.py",
    "tests/test_remote.py",
]


def apt_get_install(session: nox.Session, packages: list[str]) -> None:
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    session.run("apt-get", "update", external=True, env=env)
    session.run(
        "apt-get", "install", "-y", "--no-install-recommends", *packages, external=True, env=env
    )


def can_apt_get() -> bool:
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


def p11kit_client_missing() -> bool:
    return not any(Path(p).is_file() for p in P11KIT_CLIENT)


def ensure_system_packages(session: nox.Session) -> None:
    """SoftHSM2, OpenSC's pkcs11-tool and p11-kit: install them as root, or say what to
    install."""
    missing = sorted(tool for tool in SYSTEM_TOOLS if shutil.which(tool) is None)
    if p11kit_client_missing():
        missing.append("p11-kit-client.so")
    if not missing:
        return
    if can_apt_get():
        session.log(f"{', '.join(missing)} not found: installing {' '.join(SYSTEM_PACKAGES)}")
        apt_get_install(session, SYSTEM_PACKAGES)
        still = [tool for tool in SYSTEM_TOOLS if shutil.which(tool) is None]
        if p11kit_client_missing():
            still.append("p11-kit-client.so")
        if still:
            session.error(f"{', '.join(still)} still missing after apt-get install")
        return
    packages = " ".join(sorted({SYSTEM_TOOLS.get(tool, "p11-kit-modules") for tool in missing}))
    session.error(
        f"{', '.join(missing)} not found. hsmkey's tests need SoftHSM2, OpenSC and p11-kit. "
        f"Install them first: `sudo apt-get install -y {packages}` (Debian/Ubuntu), "
        "`sudo dnf install -y softhsm opensc p11-kit-server` (Fedora)."
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


def kryoptic_module(session: nox.Session) -> str:
    """kryoptic with PQC, built once per machine (cached outside the clone): its path."""
    ensure_cargo(session)
    out = session.run("bash", "scripts/build-kryoptic", external=True, silent=True)
    lines = str(out or "").strip().splitlines()
    path = lines[-1] if lines else ""
    if not Path(path).is_file():
        session.error(f"scripts/build-kryoptic did not give a module:\n{out}")
    return path


@nox.session
def pqc(session: nox.Session) -> None:
    """ML-DSA keys in a PKCS#11 3.2 token: the PQC tests against kryoptic (built by
    scripts/build-kryoptic) with cryptography >= 50.0.2. Nothing skips here: a missing piece
    fails the session (HSMKEY_REQUIRE_PQC=1)."""
    ensure_system_packages(session)
    module = kryoptic_module(session)
    session.install(PQC_EXTRAS)
    session.run(
        "pytest",
        *(session.posargs or PQC_TESTS),
        env={"HSMKEY_TEST_KRYOPTIC": module, "HSMKEY_REQUIRE_PQC": "1"},
    )


@nox.session
def remote(session: nox.Session) -> None:
    """The pool, key, JWK, asyncio and recovery tests again, through a real remote token:
    a p11-kit server (started and stopped by the tests) in front of the SoftHSM2 tokens, and
    p11-kit-client.so as the module (HSMKEY_TEST_REMOTE=p11-kit, see tests/conftest.py)."""
    ensure_system_packages(session)
    ensure_cargo(session)
    session.install(TEST_EXTRAS, *TEST_DEPS)
    session.run("pytest", *(session.posargs or REMOTE_TESTS), env={"HSMKEY_TEST_REMOTE": "p11-kit"})


# The other implementations (tests/helpers/backends.py): Debian packages each needs.
BACKEND_PACKAGES = {
    "kryoptic": [],  # built from crates.io by scripts/build-kryoptic (cached in ~/.cache/hsmkey)
    "nss": ["libnss3", "libnss3-tools"],
    "opencryptoki": ["opencryptoki", "libopencryptoki0"],
}
BACKEND_TOOLS = {"nss": "certutil", "opencryptoki": "pkcsconf"}


def backend_tests(session: nox.Session, names: list[str]) -> None:
    """tests/test_backends.py once per implementation, each in its own pytest process (a
    module is initialized once per process)."""
    ensure_system_packages(session)
    ensure_cargo(session)
    for name in names:
        tool = BACKEND_TOOLS.get(name)
        if tool and shutil.which(tool) is None:
            if not can_apt_get():
                session.error(
                    f"{tool} not found: install {' '.join(BACKEND_PACKAGES[name])} "
                    "(Debian/Ubuntu) first"
                )
            apt_get_install(session, BACKEND_PACKAGES[name])
    env = {}
    if "kryoptic" in names:
        # ~3.5 min the first time on 2 cores; instant afterwards (cached outside the clone).
        out = session.run("bash", "scripts/build-kryoptic", external=True, silent=True)
        env["HSMKEY_KRYOPTIC"] = str(out).strip().splitlines()[-1]
    session.install(TEST_EXTRAS, *TEST_DEPS)
    for name in names:
        started = time.monotonic()
        session.run(
            "pytest",
            *(session.posargs or ["tests/test_backends.py", "-rs"]),
            env={**env, "HSMKEY_TEST_TOKEN": name},
        )
        session.log(f"{name}: {time.monotonic() - started:.0f} s")


@nox.session
def backends(session: nox.Session) -> None:
    """The pool, key, JOSE, decryption and recovery tests (tests/test_backends.py) on kryoptic,
    NSS softokn and opencryptoki, one after the other in one environment (what CI runs; the
    sessions below run one each)."""
    backend_tests(session, list(BACKEND_PACKAGES))


@nox.session(default=False)
def kryoptic(session: nox.Session) -> None:
    """tests/test_backends.py on kryoptic (a PKCS#11 3.2 soft token in Rust, built from
    crates.io with a vendored OpenSSL by scripts/build-kryoptic, cached in ~/.cache/hsmkey)."""
    backend_tests(session, ["kryoptic"])


@nox.session(default=False)
def nss(session: nox.Session) -> None:
    """tests/test_backends.py on Debian's NSS softokn (a key database made with certutil; the
    module initialized with init_args)."""
    backend_tests(session, ["nss"])


@nox.session(default=False)
def opencryptoki(session: nox.Session) -> None:
    """tests/test_backends.py on opencryptoki's soft token (its daemon pkcsslotd started by
    the tests and stopped by its pid; the token state at its fixed paths is wiped: root)."""
    backend_tests(session, ["opencryptoki"])


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint and format) over the Python, rustfmt and clippy over the Rust."""
    ensure_cargo(session)
    session.install(RUFF)
    paths = [p for p in LINT_PATHS if (ROOT / p).exists()]
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)
    # The GitHub workflows, against GitHub's schema (vendored in check-jsonschema: offline).
    session.install("check-jsonschema")
    workflows = sorted(str(p) for p in (ROOT / ".github" / "workflows").glob("*.y*ml"))
    session.run("check-jsonschema", "--builtin-schema", "vendor.github-workflows", *workflows)
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
    # hsmkey.adapters imports joserfc, Authlib and josepy, hsmkey.metrics the monitoring
    # libraries: mypy checks them against those.
    session.install(
        ".", MYPY, "joserfc", "Authlib", "josepy", "opentelemetry-api", "prometheus-client"
    )
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


# The distribution's name as it appears in file names (PEP 427/625: hsmkey-rs -> hsmkey_rs).
DIST_FILE_NAME = "hsmkey_rs"
WHEEL_TOOLS = ["maturin>=1.9.4,<2", "ziglang", "auditwheel>=6", "twine>=6.1", "pytest"]
# Oldest CPython the abi3 wheel supports (pyo3's abi3-py39).
OLDEST_PYTHON = (3, 9)


def python_identity(python: str) -> tuple[str, tuple[int, int, int]] | None:
    """(sys.base_prefix, version) of an interpreter, or None if it does not run or cannot
    make virtual environments."""
    code = (
        "import ensurepip, sys; ensurepip.version(); "
        "print(sys.base_prefix); print(*sys.version_info[:3])"
    )
    try:
        out = subprocess.run(
            [python, "-c", code], capture_output=True, text=True, timeout=60, check=True
        ).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return None
    major, minor, micro = (int(p) for p in out[1].split())
    return out[0], (major, minor, micro)


def wheel_test_pythons(session: nox.Session) -> list[str]:
    """The interpreters to install the wheel into, each a different CPython >= 3.9: the
    default ``python3`` (the one scripts/nox runs), Debian's ``/usr/bin/python3``, and the
    oldest and newest that pyenv has (when it is there)."""
    candidates = [shutil.which("python3") or "", "/usr/bin/python3"]
    if shutil.which("pyenv"):
        root = subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=False)
        found = []
        for python in Path(root.stdout.strip() or "/nonexistent").glob("versions/*/bin/python3"):
            m = re.fullmatch(r"3\.(\d+)\.(\d+)", python.parent.parent.name)
            if m and (3, int(m[1])) >= OLDEST_PYTHON:
                found.append(((int(m[1]), int(m[2])), str(python)))
        found.sort()
        candidates += [p for _, p in found[:1] + found[-1:]]
    chosen: dict[str, str] = {}
    for python in candidates:
        identity = python and python_identity(python)
        if python == "/usr/bin/python3" and identity is None and can_apt_get():
            # Debian's python3 has no ensurepip (so no venv) until python3-venv is installed.
            apt_get_install(session, ["python3-venv"])
            identity = python_identity(python)
        if identity and identity[1][:2] >= OLDEST_PYTHON and identity[0] not in chosen:
            chosen[identity[0]] = python
            session.log(f"wheel test interpreter: {python} ({'.'.join(map(str, identity[1]))})")
    return list(chosen.values())


@nox.session
def wheels(session: nox.Session) -> None:
    """Build the release artifacts into dist/ and prove them: the sdist, then from it (as
    ``python -m build`` does, so that a file missing from the sdist fails here) one abi3 wheel
    for CPython >= 3.9: on glibc Linux a manylinux2014 wheel (glibc 2.17 and newer, linked
    with zig). tests/test_wheel.py then checks both with auditwheel and twine, installs the
    wheel into fresh virtual environments of several interpreters with no Rust toolchain on
    PATH, and runs ``hsmkey --version``, the demo against SoftHSM2 and the pytest plugin from
    there. (Its test of ``pip install`` of the sdist, a second release build, runs in the
    release workflow.) Other platforms' wheels: .github/workflows/release.yml."""
    ensure_system_packages(session)
    ensure_cargo(session)
    session.install(*WHEEL_TOOLS)
    dist = ROOT / "dist"
    dist.mkdir(exist_ok=True)
    for old in [*dist.glob("hsmkey*.whl"), *dist.glob("hsmkey*.tar.gz")]:
        old.unlink()
    session.run("maturin", "sdist", "--out", str(dist))
    sdists = sorted(dist.glob(f"{DIST_FILE_NAME}-*.tar.gz"))
    if len(sdists) != 1:
        session.error(f"expected one sdist in {dist}, found {[p.name for p in sdists]}")
    # Unpacked at a fixed place, so that cargo's cache (CARGO_TARGET_DIR) stays valid for the
    # dependencies. The sdist's files all carry one fixed old mtime (reproducible sdists),
    # which would let cargo take them for unchanged: they get the present time instead, so
    # the crate itself is always compiled from the sdist's sources.
    unpacked = ROOT / "target" / "sdist-build"
    shutil.rmtree(unpacked, ignore_errors=True)
    with tarfile.open(sdists[0]) as tf:
        tf.extractall(unpacked, filter="data")
    for path in unpacked.rglob("*"):
        os.utime(path)
    (source,) = unpacked.iterdir()
    build = ["maturin", "build", "--release", "--locked", "--out", str(dist)]
    if sys.platform == "linux" and platform.libc_ver()[0] == "glibc":
        # zig links against glibc 2.17's symbols; maturin checks the result against the
        # manylinux2014 policy (auditwheel's rules) and tags it
        build += ["--zig", "--compatibility", "manylinux2014"]
    started = time.monotonic()
    with session.chdir(source):
        session.run(*build, env={"CARGO_TARGET_DIR": str(ROOT / "target")})
    session.log(f"wheel built from the sdist in {time.monotonic() - started:.0f} s")
    wheels = sorted(dist.glob(f"{DIST_FILE_NAME}-*.whl"))
    if len(wheels) != 1:
        session.error(f"expected one wheel in {dist}, found {[p.name for p in wheels]}")
    session.log(f"built {sdists[0].name} and {wheels[0].name}")
    pythons = wheel_test_pythons(session)
    # --noconftest: the test suite's conftest needs hsmkey itself installed; this file does not.
    session.run(
        "pytest",
        "--noconftest",
        "-p",
        "no:cacheprovider",
        "-v",
        "tests/test_wheel.py",
        "--deselect",
        "tests/test_wheel.py::test_sdist_builds_a_working_install",
        *session.posargs,
        env={
            "HSMKEY_TEST_WHEEL": "1",
            "HSMKEY_WHEEL": str(wheels[0]),
            "HSMKEY_SDIST": str(sdists[0]),
            "HSMKEY_WHEEL_PYTHONS": os.pathsep.join(pythons),
        },
    )


@nox.session
def docs(session: nox.Session) -> None:
    """Build the HTML documentation with Sphinx, warnings as errors (autodoc reads the
    installed package, compiled core included). The examples in the pages run in the tests
    session (tests/test_docs.py)."""
    ensure_cargo(session)
    session.install(".", "sphinx>=7.2", *METRICS_DEPS)
    html = "docs/_build/html"
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", html, *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Signing throughput on a throwaway SoftHSM2 token: the raw PKCS#11 limit (bench/limit,
    Rust) against hsmkey at each layer, python-pkcs11, PyKCS11 and jwcrypto with a software
    key, with threads, a busy neighbour thread, session blocks, memory, worker processes and a
    simulated network HSM (0/1/2/5 ms round trips, the two-call Rust loop against threads and
    asyncio, client CPU per signature; section ``remote``) and ML-DSA-65 on kryoptic against
    the limit on the same token (section ``pqc``; it builds kryoptic with scripts/build-kryoptic
    the first time) (about 12 minutes on 2 cores; ``nox -s bench -- --quick``: about 1.5
    minutes). See docs/performance.rst."""
    ensure_system_packages(session)
    ensure_cargo(session)
    session.install(".", "jwcrypto", "PyJWT", "python-pkcs11", "PyKCS11")
    session.run("python", "bench/bench_sign.py", *session.posargs)
