"""The wheel: one abi3 wheel that installs into a fresh virtual environment and works there.

Slow (a release build unless ``HSMKEY_WHEEL`` names a wheel, a new virtual environment, pip
installing the dependencies), so it only runs with ``HSMKEY_TEST_WHEEL=1``; ``nox -s wheel``
builds the wheel into ``dist/`` and runs this file against it.

Everything in the new environment runs from a temporary directory with a clean environment,
so that neither the source tree nor the development install can be imported by accident.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import venv
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    os.environ.get("HSMKEY_TEST_WHEEL") != "1",
    reason="slow: set HSMKEY_TEST_WHEEL=1 (nox -s wheel does) to build and install the wheel",
)

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 900
WHEEL_NAME = re.compile(r"^hsmkey-(?P<version>[^-]+)-cp39-abi3-(?P<platform>[^-]+)\.whl$")

# Variables that could point the new environment back at the source tree or the test token.
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
)


def run(argv: Sequence[str | Path], cwd: Path, **kwargs: object) -> str:
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    proc = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert proc.returncode == 0, f"{argv} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``$HSMKEY_WHEEL``, or a wheel built now with maturin."""
    given = os.environ.get("HSMKEY_WHEEL")
    if given:
        path = Path(given)
        assert path.is_file(), f"HSMKEY_WHEEL={given}: no such file"
        return path
    out = tmp_path_factory.mktemp("wheel")
    try:
        import maturin  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        pytest.fail("maturin is needed to build the wheel: pip install maturin, or nox -s wheel")
    run([sys.executable, "-m", "maturin", "build", "--release", "--locked", "--out", out], ROOT)
    (path,) = out.glob("hsmkey-*.whl")
    return path


@pytest.fixture(scope="module")
def env_dir(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Path:
    """A new virtual environment with the wheel (and pytest, for the plugin) installed."""
    root = tmp_path_factory.mktemp("wheel-venv")
    venv.create(root / "venv", with_pip=True, clear=True)
    run(
        [python(root), "-m", "pip", "install", "--disable-pip-version-check", wheel, "pytest"],
        root,
    )
    return root


def python(root: Path) -> Path:
    scripts = "Scripts" if os.name == "nt" else "bin"
    return root / "venv" / scripts / ("python.exe" if os.name == "nt" else "python")


def test_wheel_is_one_abi3_wheel(wheel: Path) -> None:
    match = WHEEL_NAME.match(wheel.name)
    assert match, f"{wheel.name} is not an abi3 wheel for CPython >= 3.9"
    with zipfile.ZipFile(wheel) as zf:
        info = zf.read(f"hsmkey-{match['version']}.dist-info/WHEEL").decode()
    assert "Root-Is-Purelib: false" in info
    tags = [line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("Tag:")]
    assert tags and all(t.startswith("cp39-abi3-") for t in tags), tags


def test_wheel_contents(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (dist_info,) = {n.split("/")[0] for n in names if ".dist-info/" in n}
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
    for required in (
        "hsmkey/__init__.py",
        "hsmkey/__main__.py",
        "hsmkey/_hsmkey.abi3.so",
        "hsmkey/_hsmkey.pyi",
        "hsmkey/py.typed",
        "hsmkey/cli/__init__.py",
        "hsmkey/testing.py",
        "hsmkey/demo.py",
    ):
        assert required in names, required
    # One compiled module, the abi3 one; nothing from the source tree but the package.
    assert [n for n in names if n.endswith((".so", ".pyd"))] == ["hsmkey/_hsmkey.abi3.so"]
    assert {n.split("/")[0] for n in names} == {"hsmkey", dist_info}
    assert re.search(r"^hsmkey\s*=\s*hsmkey\.cli:main$", entry_points, re.M), entry_points
    assert re.search(r"^\[pytest11\]\s*\nhsmkey\s*=\s*hsmkey\.testing$", entry_points, re.M)


def test_installed_wheel_runs_the_demo(env_dir: Path) -> None:
    py = python(env_dir)
    location = run([py, "-c", "import hsmkey; print(hsmkey.__file__)"], env_dir).strip()
    assert Path(location).is_relative_to(env_dir / "venv"), location
    assert not Path(location).is_relative_to(ROOT), location

    out = run([py, "-m", "hsmkey.demo"], env_dir)
    rows = [line.split() for line in out.splitlines()]
    for alg in ("RS256", "PS256", "ES256", "ES384", "ES512", "EdDSA"):
        assert any(r and r[0] == alg and r[-2:] == ["yes", "yes"] for r in rows), (alg, out)
    assert out.splitlines()[-1].count(".") == 2  # the JWT

    # The console script and `python -m hsmkey` come with it.
    version = run([py, "-c", "import hsmkey; print(hsmkey.__version__)"], env_dir).strip()
    script = py.parent / ("hsmkey.exe" if os.name == "nt" else "hsmkey")
    assert run([script, "--version"], env_dir).strip() == f"hsmkey {version}"
    assert "sign" in run([py, "-m", "hsmkey", "--help"], env_dir)


def test_installed_wheel_brings_the_pytest_plugin(env_dir: Path) -> None:
    project = env_dir / "user-project"
    project.mkdir()
    (project / "test_signing.py").write_text(
        "from hsmkey import HSMJWK\n\n\n"
        "def test_sign(hsm_pool, hsm_key_labels):\n"
        "    for label in hsm_key_labels:\n"
        "        assert HSMJWK.from_hsm(hsm_pool, key_label=label)['kid']\n"
    )
    out = run([python(env_dir), "-m", "pytest", "-q", "-p", "no:cacheprovider"], project)
    assert "1 passed" in out, out
