"""Dependencies: the floors of pyproject.toml are past every release with a published
vulnerability, the Rust crate lists no dependency it does not use, and every release runs a
supply-chain audit (cargo audit, pip-audit) before it publishes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# name -> (first fixed release, the advisories it closes). A floor below the fixed release
# lets pip install a vulnerable version on systems that have one (old pins, old Pythons).
FIXED = {
    "cryptography": (
        (50, 0, 0),
        "CVE-2024-26130 (42.0.4), CVE-2024-12797 (44.0.1), CVE-2026-26007 (46.0.5), "
        "CVE-2026-34073 (46.0.6), CVE-2026-39892 (46.0.7), CVE-2026-34180 (48.0.1), "
        "CVE-2026-69247 (50.0.0)",
    ),
    "jwcrypto": (
        (1, 6, 0),
        "CVE-2024-28102 (1.5.6), CVE-2026-39373 (1.5.8), CVE-2026-80179 (1.5.9), "
        "CVE-2026-84185 (1.6.0)",
    ),
}


def floors() -> dict[str, tuple[int, ...]]:
    text = (ROOT / "pyproject.toml").read_text()
    deps = re.search(r"^dependencies = \[(.*?)\]", text, re.M | re.S)
    assert deps, "pyproject.toml has no dependencies list"
    found = {}
    for name, floor in re.findall(r'"([\w.-]+)\s*>=\s*([\d.]+)"', deps.group(1)):
        found[name] = tuple(int(p) for p in floor.split("."))
    return found


@pytest.mark.parametrize("name", sorted(FIXED))
def test_dependency_floors_are_past_known_vulnerabilities(name: str) -> None:
    fixed, advisories = FIXED[name]
    floor = floors().get(name)
    assert floor is not None, f"{name} has no floor (>=) in pyproject.toml"
    assert floor >= fixed, f"{name}>={floor} admits releases affected by {advisories}"


def test_no_unused_rust_dependency() -> None:
    """``secrecy`` came in with cryptoki's AuthPin and was never used by hsmkey itself (PINs
    are held in zeroize types); cryptoki still brings it in for its own use."""
    manifest = (ROOT / "Cargo.toml").read_text()
    deps = manifest.split("[dependencies]", 1)[1].split("\n[", 1)[0]
    names = re.findall(r"^([\w-]+)\s*=", deps, re.M)
    sources = "\n".join(p.read_text() for p in (ROOT / "src").rglob("*.rs"))
    for name in names:
        ident = name.replace("-", "_")
        if name in ("pyo3", "pyo3-async-runtimes", "tokio"):  # the bindings (optional)
            continue
        assert re.search(rf"\b{ident}::", sources) or f"use {ident}" in sources, (
            f"Cargo.toml depends on {name}, which nothing in src/ uses"
        )


def test_every_release_runs_a_supply_chain_audit() -> None:
    workflow = (ROOT / ".github" / "workflows" / "release.yml").read_text()
    job = re.search(r"^  supply-chain:\n(.*?)(?=^  \w[\w-]*:\n)", workflow, re.M | re.S)
    assert job, "release.yml has no supply-chain job"
    assert "cargo audit" in job.group(1) or "cargo deny" in job.group(1)
    assert "pip-audit" in job.group(1)
    publish = re.search(r"^  publish:\n(.*?)(?=^  \w[\w-]*:\n)", workflow, re.M | re.S)
    assert publish
    assert re.search(r"needs: \[[^\]]*\bsupply-chain\b", publish.group(1))
    assert "needs.supply-chain.result == 'success'" in publish.group(1)
