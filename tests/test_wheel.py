"""The release artifacts as users get them: the abi3 wheel (manylinux2014 on glibc Linux,
musllinux_1_2 on musl) and the sdist, checked (auditwheel, twine), installed into fresh
virtual environments of several interpreters, and run there.

Slow (release builds unless ``HSMKEY_WHEEL`` and ``HSMKEY_SDIST`` name the artifacts, new
virtual environments, pip installing the dependencies), so it only runs with
``HSMKEY_TEST_WHEEL=1``. ``nox -s wheels`` builds both into ``dist/`` and runs this file
against them, with ``HSMKEY_WHEEL_PYTHONS`` (os.pathsep-separated) naming the interpreters
to install the wheel into (default: this one).

Everything in the new environments runs from a temporary directory with a clean environment,
so that neither the source tree nor the development install can be imported by accident; the
wheel is installed with no Rust toolchain on PATH and nothing built from source.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    os.environ.get("HSMKEY_TEST_WHEEL") != "1",
    reason="slow: set HSMKEY_TEST_WHEEL=1 (nox -s wheels does) to build and install the wheel",
)

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 900
DIST_NAME = "hsmkey-rs"  # the distribution; the import name is hsmkey
DIST_FILE = "hsmkey_rs"  # the distribution's name in file names
WHEEL_NAME = re.compile(rf"^{DIST_FILE}-(?P<version>[^-]+)-cp39-abi3-(?P<platform>[^-]+)\.whl$")
ARCH = platform.machine().lower().replace("arm64", "aarch64")
GLIBC = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"
MUSL = sys.platform == "linux" and not GLIBC
# The platform tags of the wheels built here (nox -s wheels) and by the release workflow.
# manylinux2014 = glibc 2.17 (CentOS 7): RHEL 8 (2.28), Debian 11 and Ubuntu 20.04 (2.31),
# Amazon Linux 2 (2.26) all install it; the legacy alias keeps pip < 20.3 working.
EXPECTED_PLATFORMS = (
    {f"manylinux2014_{ARCH}", f"manylinux_2_17_{ARCH}"}
    if GLIBC
    else {f"musllinux_1_2_{ARCH}"}
    if MUSL
    else None
)
PYTHONS = [p for p in os.environ.get("HSMKEY_WHEEL_PYTHONS", "").split(os.pathsep) if p] or [
    sys.executable
]

# Variables that could point the new environment back at the source tree, the test token or
# a Rust toolchain.
UNSET = (
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "VIRTUAL_ENV",
    "SOFTHSM2_CONF",
    "HSM_MODULE",
    "HSM_TOKEN",
    "HSM_PIN",
    "PYTEST_ADDOPTS",
    "PYTEST_PLUGINS",
    "CARGO_TARGET_DIR",
    "CARGO_HOME",
    "RUSTUP_HOME",
    "RUSTUP_TOOLCHAIN",
    "PIP_FIND_LINKS",
    "PIP_NO_INDEX",
)


def cargo_version() -> str:
    """Cargo.toml's package version, the one version of everything (no tomllib on 3.9)."""
    manifest = (ROOT / "Cargo.toml").read_text(encoding="utf-8")
    package = manifest.split("[package]", 1)[1].split("\n[", 1)[0]
    m = re.search(r'^version\s*=\s*"([^"]+)"', package, re.M)
    assert m, "no version in Cargo.toml's [package]"
    return m.group(1)


def environment(venv: Path, rust: bool) -> dict[str, str]:
    """A clean environment whose PATH starts with the venv; without ``rust``, no directory
    with cargo or rustc stays on it."""
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    path = [str(venv / "bin")]
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        if entry and (rust or not any((Path(entry) / t).exists() for t in ("cargo", "rustc"))):
            path.append(entry)
    env["PATH"] = os.pathsep.join(path)
    if not rust:
        assert shutil.which("cargo", path=env["PATH"]) is None
        assert shutil.which("rustc", path=env["PATH"]) is None
    return env


def run(argv: Sequence[str | Path], cwd: Path, env: Mapping[str, str] | None = None) -> str:
    if env is None:
        env = {k: v for k, v in os.environ.items() if k not in UNSET}
    proc = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert proc.returncode == 0, f"{argv} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def tool(name: str) -> Path:
    """A command installed beside this interpreter (nox -s wheels installs them)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        pytest.fail(f"{name} is needed: pip install {name}, or run nox -s wheels")
    return path


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``$HSMKEY_WHEEL``, or a wheel built now the way nox -s wheels builds it."""
    given = os.environ.get("HSMKEY_WHEEL")
    if given:
        path = Path(given).resolve()
        assert path.is_file(), f"HSMKEY_WHEEL={given}: no such file"
        return path
    out = tmp_path_factory.mktemp("wheel")
    argv = [tool("maturin"), "build", "--release", "--locked", "--out", out]
    if GLIBC:
        argv += ["--zig", "--compatibility", "manylinux2014"]
    run(argv, ROOT)
    (path,) = out.glob(f"{DIST_FILE}-*.whl")
    return path


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``$HSMKEY_SDIST``, or an sdist built now."""
    given = os.environ.get("HSMKEY_SDIST")
    if given:
        path = Path(given).resolve()
        assert path.is_file(), f"HSMKEY_SDIST={given}: no such file"
        return path
    out = tmp_path_factory.mktemp("sdist")
    run([tool("maturin"), "sdist", "--out", out], ROOT)
    (path,) = out.glob(f"{DIST_FILE}-*.tar.gz")
    return path


def new_venv(root: Path, python: str) -> Path:
    venv = root / "venv"
    run([python, "-m", "venv", "--clear", venv], root, environment(venv, rust=False))
    return venv


def pip_install(venv: Path, *args: str | Path, rust: bool = False) -> None:
    pip = [venv / "bin" / "python", "-m", "pip", "install", "--disable-pip-version-check"]
    run([*pip, *args], venv.parent, environment(venv, rust=rust))


def check_install(venv: Path, rust: bool = False) -> None:
    """The installed package, its commands and the demo, run from outside the source tree."""
    env = environment(venv, rust=rust)
    py = venv / "bin" / "python"
    where = venv.parent
    location = run([py, "-c", "import hsmkey; print(hsmkey.__file__)"], where, env).strip()
    assert Path(location).is_relative_to(venv), location
    assert not Path(location).is_relative_to(ROOT), location

    # One version: Cargo.toml's, in the metadata, the module and both forms of the command.
    version = cargo_version()
    code = f"import importlib.metadata as m, hsmkey; print(m.version({DIST_NAME!r}))"
    code += "; print(hsmkey.__version__)"
    assert run([py, "-c", code], where, env).split() == [version, version]
    assert run([venv / "bin" / "hsmkey", "--version"], where, env).strip() == f"hsmkey {version}"
    assert run([py, "-m", "hsmkey", "--version"], where, env).strip() == f"hsmkey {version}"
    assert "sign" in run([py, "-m", "hsmkey", "--help"], where, env)

    out = run([py, "-m", "hsmkey.demo"], where, env)
    rows = [line.split() for line in out.splitlines()]
    for alg in ("RS256", "PS256", "ES256", "ES384", "ES512", "EdDSA"):
        assert any(r and r[0] == alg and r[-2:] == ["yes", "yes"] for r in rows), (alg, out)
    assert out.splitlines()[-1].count(".") == 2  # the JWT


def test_wheel_name_and_tags(wheel: Path) -> None:
    match = WHEEL_NAME.match(wheel.name)
    assert match, f"{wheel.name} is not an abi3 wheel of {DIST_NAME} for CPython >= 3.9"
    assert match["version"] == cargo_version()
    with zipfile.ZipFile(wheel) as zf:
        info = zf.read(f"{DIST_FILE}-{match['version']}.dist-info/WHEEL").decode()
    assert "Root-Is-Purelib: false" in info
    tags = [line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("Tag:")]
    assert tags and all(t.startswith("cp39-abi3-") for t in tags), tags
    platforms = set(match["platform"].split("."))
    assert platforms == {t.rsplit("-", 1)[1] for t in tags}
    if EXPECTED_PLATFORMS is not None:
        assert platforms == EXPECTED_PLATFORMS, f"{wheel.name}: not {EXPECTED_PLATFORMS}"


def test_wheel_contents_and_metadata(wheel: Path) -> None:
    version = cargo_version()
    dist_info = f"{DIST_FILE}-{version}.dist-info"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
        metadata = zf.read(f"{dist_info}/METADATA").decode()
    for required in (
        "hsmkey/__init__.py",
        "hsmkey/__main__.py",
        "hsmkey/_hsmkey.pyi",
        "hsmkey/py.typed",
        "hsmkey/cli/__init__.py",
        "hsmkey/testing.py",
        "hsmkey/demo.py",
        f"{dist_info}/licenses/LICENSE",
    ):
        assert required in names, required
    # One compiled module, the abi3 one; nothing from the source tree but the package.
    native = [n for n in names if n.endswith((".so", ".pyd"))]
    assert native == ["hsmkey/_hsmkey.pyd" if os.name == "nt" else "hsmkey/_hsmkey.abi3.so"]
    assert {n.split("/")[0] for n in names} == {"hsmkey", dist_info}
    assert re.search(r"^hsmkey\s*=\s*hsmkey\.cli:main$", entry_points, re.M), entry_points
    assert re.search(r"^\[pytest11\]\s*\nhsmkey\s*=\s*hsmkey\.testing$", entry_points, re.M)

    headers = metadata.split("\n\n", 1)[0]
    for line in (
        f"Name: {DIST_NAME}",
        f"Version: {version}",
        "License-Expression: Apache-2.0",
        "License-File: LICENSE",
        "Requires-Python: >=3.9",
        "Classifier: Typing :: Typed",
    ):
        assert re.search(rf"^{re.escape(line)}$", headers, re.M), line
    assert re.search(r"^Metadata-Version: 2\.[4-9]$", headers, re.M), headers
    assert re.search(r"^Project-URL: Repository, https://", headers, re.M), headers


@pytest.mark.skipif(not GLIBC, reason="the manylinux policy is for glibc Linux")
def test_auditwheel_accepts_it_as_manylinux2014(wheel: Path) -> None:
    out = " ".join(run([tool("auditwheel"), "show", wheel], ROOT).split())
    tag = f'is consistent with the following platform tag: "manylinux_2_17_{ARCH}"'
    assert tag in out, out
    # No glibc symbol newer than 2.17.
    glibc = [tuple(map(int, v.split("."))) for v in re.findall(r"GLIBC_(\d+\.\d+)", out)]
    assert glibc and max(glibc) <= (2, 17), out


def test_twine_check(wheel: Path, sdist: Path) -> None:
    out = run([tool("twine"), "check", "--strict", wheel, sdist], ROOT)
    assert out.count("PASSED") == 2, out


def test_sdist_contents(sdist: Path) -> None:
    version = cargo_version()
    assert sdist.name == f"{DIST_FILE}-{version}.tar.gz"
    top = f"{DIST_FILE}-{version}"
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
        member = tf.extractfile(f"{top}/PKG-INFO")
        assert member is not None
        pkg_info = member.read().decode()
    for required in (
        "PKG-INFO",
        "pyproject.toml",
        "Cargo.toml",
        "Cargo.lock",
        "LICENSE",
        "README.md",
        "CHANGELOG.md",
        "src/lib.rs",
        "python/hsmkey/__init__.py",
        "python/hsmkey/py.typed",
        "python/hsmkey/_hsmkey.pyi",
        "tests/test_wheel.py",
        "tests/faultmod/Cargo.toml",
        "tests/faultmod/src/lib.rs",
    ):
        assert required in names, required
    for name in names:
        first = name.split("/", 1)[0]
        assert first not in {"target", "dist", ".nox", ".venv", ".git"}, name
        assert "/target/" not in name and not name.endswith((".so", ".pyd", ".whl")), name
    assert re.search(rf"^Name: {DIST_NAME}$", pkg_info, re.M)
    assert re.search(rf"^Version: {re.escape(version)}$", pkg_info, re.M)


@pytest.fixture(scope="module")
def wheel_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """A new virtual environment per interpreter with the wheel installed: no Rust toolchain
    on PATH, nothing built from source (the dependencies included)."""
    made: dict[str, Path] = {}

    def get(python: str) -> Path:
        if python not in made:
            venv = new_venv(tmp_path_factory.mktemp("wheel-venv"), python)
            pip_install(venv, "--only-binary", ":all:", wheel)
            made[python] = venv
        return made[python]

    return get


@pytest.mark.parametrize("python", PYTHONS)
def test_installed_wheel_runs_the_demo(python: str, wheel_venv: Callable[[str], Path]) -> None:
    check_install(wheel_venv(python))


def test_installed_wheel_works_with_its_oldest_dependencies(wheel: Path, tmp_path: Path) -> None:
    """The floors of Requires-Dist are true: on the oldest interpreter given, the wheel works
    with the oldest releases its metadata allows (``cryptography>=50.0.0`` ->
    ``cryptography==50.0.0``), which is what pip picks on old systems and old Pythons."""
    with zipfile.ZipFile(wheel) as zf:
        metadata = zf.read(f"{DIST_FILE}-{cargo_version()}.dist-info/METADATA").decode()
    floors = re.findall(r"^Requires-Dist: ([\w.-]+)\s*>=\s*([\d.]+)\s*$", metadata, re.M)
    assert {name for name, _ in floors} >= {"cryptography", "jwcrypto"}, metadata
    code = "import sys; print(*sys.version_info[:2])"
    python = min(PYTHONS, key=lambda p: [int(v) for v in run([p, "-c", code], tmp_path).split()])
    venv = new_venv(tmp_path, python)
    pins = [f"{name}=={floor}" for name, floor in floors]
    pip_install(venv, "--only-binary", ":all:", wheel, *pins)
    installed = run([venv / "bin" / "python", "-m", "pip", "list"], tmp_path)
    for name, floor in floors:
        assert re.search(rf"^{name}\s+{re.escape(floor)}\s*$", installed, re.M | re.I), installed
    check_install(venv)


def test_installed_wheel_brings_the_pytest_plugin(
    wheel_venv: Callable[[str], Path], tmp_path: Path
) -> None:
    venv = wheel_venv(PYTHONS[0])
    pip_install(venv, "--only-binary", ":all:", "pytest")
    project = tmp_path / "user-project"
    project.mkdir()
    (project / "test_signing.py").write_text(
        "from hsmkey import HSMJWK\n\n\n"
        "def test_sign(hsm_pool, hsm_key_labels):\n"
        "    for label in hsm_key_labels:\n"
        "        assert HSMJWK.from_hsm(hsm_pool, key_label=label)['kid']\n"
    )
    argv = [venv / "bin" / "python", "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    out = run(argv, project, environment(venv, rust=False))
    assert "1 passed" in out, out


def test_sdist_builds_a_working_install(sdist: Path, tmp_path: Path) -> None:
    """pip builds the sdist (cargo on PATH: that is what an sdist needs) into a working
    install. ``HSMKEY_SDIST_TARGET_DIR`` lets the build reuse compiled dependencies."""
    if shutil.which("cargo") is None:
        pytest.fail("cargo is needed to build the sdist")
    venv = new_venv(tmp_path, PYTHONS[0])
    env = environment(venv, rust=True)
    if os.environ.get("HSMKEY_SDIST_TARGET_DIR"):
        env["CARGO_TARGET_DIR"] = os.environ["HSMKEY_SDIST_TARGET_DIR"]
    pip = [venv / "bin" / "python", "-m", "pip", "install", "--disable-pip-version-check"]
    run([*pip, "--no-binary", DIST_NAME, sdist], tmp_path, env)
    check_install(venv, rust=True)
