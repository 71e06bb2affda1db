"""Package metadata: one version everywhere, the distribution name, the license, classifiers
that agree with ``requires-python``, a changelog entry for the version being built.

The version has one source, ``Cargo.toml``; pyproject.toml declares it dynamic, maturin copies
it into the wheel's metadata and the Rust core exports it as ``hsmkey.__version__``, which
``hsmkey --version`` prints.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import hsmkey
import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib (Python 3.11+) reads the manifests")

ROOT = Path(__file__).resolve().parent.parent
DIST_NAME = "hsmkey-rs"
# The oldest CPython the abi3 wheel is built for (pyo3's abi3-py39) and the newest the
# classifiers claim.
OLDEST, NEWEST = (3, 9), (3, 14)


def toml(name: str) -> dict[str, Any]:
    data: dict[str, Any] = tomllib.loads((ROOT / name).read_text(encoding="utf-8"))
    return data


def cargo_version() -> str:
    version: str = toml("Cargo.toml")["package"]["version"]
    return version


def test_one_version_cargo_toml_is_its_source() -> None:
    project = toml("pyproject.toml")["project"]
    assert "version" not in project and project["dynamic"] == ["version"]
    version = cargo_version()
    assert hsmkey.__version__ == version
    assert importlib.metadata.version(DIST_NAME) == version


def test_python_m_hsmkey_prints_the_version() -> None:
    # (the console script's --version: tests/test_cli.py)
    proc = subprocess.run(
        [sys.executable, "-m", "hsmkey", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"hsmkey {cargo_version()}"


def test_distribution_name_and_import_name() -> None:
    project = toml("pyproject.toml")["project"]
    assert project["name"] == DIST_NAME
    assert toml("pyproject.toml")["tool"]["maturin"]["module-name"] == "hsmkey._hsmkey"
    dist = importlib.metadata.distribution(DIST_NAME)
    files = [str(f) for f in dist.files or ()]
    assert "hsmkey/__init__.py" in files
    assert re.search(r"^hsmkey/_hsmkey[.\w-]*\.(so|pyd)$", "\n".join(files), re.M), files


def test_license_is_an_spdx_expression_with_its_file() -> None:
    project = toml("pyproject.toml")["project"]
    assert project["license"] == toml("Cargo.toml")["package"]["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    # PEP 639: a license expression replaces the "License ::" classifiers.
    assert not [c for c in project["classifiers"] if c.startswith("License ::")]
    meta = importlib.metadata.metadata(DIST_NAME)
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta["Metadata-Version"] >= "2.4"


def test_python_classifiers_match_requires_python() -> None:
    project = toml("pyproject.toml")["project"]
    assert project["requires-python"] == f">={OLDEST[0]}.{OLDEST[1]}"
    cargo = (ROOT / "Cargo.toml").read_text(encoding="utf-8")
    assert f'"abi3-py{OLDEST[0]}{OLDEST[1]}"' in cargo
    versions = sorted(
        tuple(int(p) for p in m.group(1).split("."))
        for c in project["classifiers"]
        if (m := re.fullmatch(r"Programming Language :: Python :: (3\.\d+)", c))
    )
    expected = [(3, minor) for minor in range(OLDEST[1], NEWEST[1] + 1)]
    assert versions == expected
    for required in (
        "Typing :: Typed",
        "Programming Language :: Rust",
        "Programming Language :: Python :: Implementation :: CPython",
        "Operating System :: POSIX :: Linux",
        "Operating System :: MacOS",
    ):
        assert required in project["classifiers"], required


def test_project_urls() -> None:
    urls = toml("pyproject.toml")["project"]["urls"]
    assert set(urls) >= {"Homepage", "Documentation", "Repository", "Issues", "Changelog"}
    assert all(u.startswith("https://") for u in urls.values()), urls
    assert toml("Cargo.toml")["package"]["repository"] == urls["Repository"]


def test_changelog_has_the_version() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    version = re.escape(cargo_version())
    assert re.search(rf"^## \[{version}\] - (\d{{4}}-\d\d-\d\d|Unreleased)$", changelog, re.M), (
        f"CHANGELOG.md has no '## [{cargo_version()}] - <date>' section"
    )


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run runs exactly the test command the README gives, wheels included."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = re.findall(r"^    (bash scripts/nox -s tests\b.*)$", readme, re.M)
    assert len(commands) == 1, commands
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    runs = [line for line in ci.splitlines() if line.startswith("bash scripts/nox")]
    assert runs == commands
    assert "wheels" in commands[0].split()
