"""Fixtures of the hsmkey test suite: a throwaway SoftHSM2 token, call counting, faults.

SoftHSM2 reads ``SOFTHSM2_CONF`` once per process and sees only the tokens that exist at its
``C_Initialize``, so the tokens are built in ``pytest_configure``, before any test can load the
module, and ``SOFTHSM2_CONF`` (with ``HSM_MODULE``, ``HSM_TOKEN``, ``HSM_PIN``) is set in
``os.environ`` for the whole run. Set ``HSMKEY_KEEP_SOFTHSM=1`` to keep the directory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.faults import Faults
from helpers.softhsm import SoftHSM, SoftHSMSetupError, build_softhsm
from helpers.spy import Spy

_SOFTHSM = pytest.StashKey[SoftHSM]()


def pytest_configure(config: pytest.Config) -> None:
    tmp_dir = Path(tempfile.mkdtemp(prefix="hsmkey-softhsm-"))
    try:
        hsm = build_softhsm(tmp_dir)
    except SoftHSMSetupError as exc:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise pytest.UsageError(f"cannot create the SoftHSM2 test token: {exc}") from exc
    os.environ.update(hsm.env)
    config.stash[_SOFTHSM] = hsm


def pytest_unconfigure(config: pytest.Config) -> None:
    hsm = config.stash.get(_SOFTHSM, None)
    if hsm is not None and not os.environ.get("HSMKEY_KEEP_SOFTHSM"):
        shutil.rmtree(hsm.tmp_dir, ignore_errors=True)


def pytest_report_header(config: pytest.Config) -> list[str]:
    hsm = config.stash.get(_SOFTHSM, None)
    if hsm is None:
        return []
    return [
        f"PKCS#11 module: {hsm.module} (spy: {hsm.spy_module or 'not installed'})",
        f"tokens: {hsm.token.label!r} slot {hsm.token.slot_id} serial {hsm.token.serial}, "
        f"{hsm.token2.label!r} slot {hsm.token2.slot_id}; SOFTHSM2_CONF={hsm.conf_path}",
    ]


@pytest.fixture(autouse=True)
def _forget_failed_logins() -> Iterator[None]:
    """hsmkey tries a PIN once per process and token: a PIN that failed in one test (or a
    good PIN the fault module made fail) would stay refused for the rest of the run."""
    yield
    from hsmkey import _hsmkey

    _hsmkey._forget_failed_logins()


@pytest.fixture(scope="session")
def softhsm(pytestconfig: pytest.Config) -> SoftHSM:
    """The SoftHSM2 set-up: module path, tokens ``hsmkey-test`` / ``hsmkey-test-2``, PINs."""
    return pytestconfig.stash[_SOFTHSM]


@pytest.fixture
def spy(softhsm: SoftHSM, tmp_path: Path) -> Iterator[Spy]:
    """``spy(snippet)`` / ``spy.command(argv)``: run in a new process through pkcs11-spy and
    return a :class:`helpers.spy.SpyRun` (``run.calls["C_Login"]``, ``run.sequence``, ...)."""
    yield Spy(softhsm, tmp_path)


@pytest.fixture
def faults(softhsm: SoftHSM) -> Faults:
    """Close sessions or log out behind the code under test's back, in this process."""
    return Faults(softhsm.module, softhsm.slot_id)
