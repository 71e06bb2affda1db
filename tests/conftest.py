"""Fixtures of the hsmkey test suite: a throwaway SoftHSM2 token, call counting, faults.

SoftHSM2 reads ``SOFTHSM2_CONF`` once per process and sees only the tokens that exist at its
``C_Initialize``, so the tokens are built in ``pytest_configure``, before any test can load the
module, and ``SOFTHSM2_CONF`` (with ``HSM_MODULE``, ``HSM_TOKEN``, ``HSM_PIN``) is set in
``os.environ`` for the whole run. Set ``HSMKEY_KEEP_SOFTHSM=1`` to keep the directory.

``HSMKEY_TEST_REMOTE=p11-kit`` runs the tests through a real remote token: a p11-kit server in
front of the SoftHSM2 tokens, started here and stopped at the end, and ``softhsm.module`` (with
``HSM_MODULE``) naming p11-kit-client.so (``nox -s remote``). Tests that need to reach the
module's state from a second client in this process (``faults``, ``faultmod``) cannot work
that way (each p11-kit client is a connection of its own): those files are not run remotely.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.faults import Faults
from helpers.p11kit import P11KitMissing, P11KitServer, client_slots
from helpers.softhsm import SoftHSM, SoftHSMSetupError, Token, build_softhsm, run
from helpers.spy import Spy

_SOFTHSM = pytest.StashKey[SoftHSM]()
_SERVER = pytest.StashKey[P11KitServer]()
_MISSING = pytest.StashKey[dict[str, str]]()
# Mechanisms the tests use that a remote may not forward (p11-kit 0.24's RPC forwards only the
# mechanisms it can marshal: not EdDSA, not ECDH), with what hsmkey then raises.
REMOTE_OPTIONAL = {
    "CKM_EDDSA": "does not offer CKM_EDDSA",
    "CKM_ECDH1_DERIVE": "the token does not offer CKM_ECDH1_DERIVE",
    "CKM_EC_EDWARDS_KEY_PAIR_GEN": "C_GenerateKeyPair returned CKR_MECHANISM_INVALID",
}


def through_p11_kit(hsm: SoftHSM, config: pytest.Config) -> SoftHSM:
    """The same tokens, served by p11-kit and seen through p11-kit-client."""
    try:
        server = P11KitServer(hsm, hsm.tmp_dir / "p11-kit.sock")
    except P11KitMissing as exc:
        raise pytest.UsageError(f"HSMKEY_TEST_REMOTE=p11-kit: {exc}") from exc
    server.start()
    config.stash[_SERVER] = server
    os.environ["P11_KIT_SERVER_ADDRESS"] = server.address
    slots = client_slots(server.client, {**hsm.env, "P11_KIT_SERVER_ADDRESS": server.address})

    listed = run(
        ["pkcs11-tool", "--module", server.client, "--slot", str(slots[hsm.token.label]), "-M"],
        env={**hsm.env, "P11_KIT_SERVER_ADDRESS": server.address},
    ).stdout
    config.stash[_MISSING] = {m: e for m, e in REMOTE_OPTIONAL.items() if m[4:] not in listed}

    def remote(token: Token) -> Token:
        return dataclasses.replace(token, slot_id=slots[token.label])

    return dataclasses.replace(
        hsm,
        module=server.client,
        softhsm_module=hsm.module,
        token=remote(hsm.token),
        token2=remote(hsm.token2),
        harness_token=remote(hsm.harness_token),
    )


def pytest_configure(config: pytest.Config) -> None:
    tmp_dir = Path(tempfile.mkdtemp(prefix="hsmkey-softhsm-"))
    try:
        hsm = build_softhsm(tmp_dir)
    except SoftHSMSetupError as exc:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise pytest.UsageError(f"cannot create the SoftHSM2 test token: {exc}") from exc
    remote = os.environ.get("HSMKEY_TEST_REMOTE", "")
    if remote == "p11-kit":
        hsm = through_p11_kit(hsm, config)
    elif remote:
        raise pytest.UsageError(f"HSMKEY_TEST_REMOTE={remote!r}: the one remote is p11-kit")
    os.environ.update(hsm.env)
    config.stash[_SOFTHSM] = hsm


def pytest_unconfigure(config: pytest.Config) -> None:
    server = config.stash.get(_SERVER, None)
    if server is not None:
        server.stop()
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


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Through a remote that does not forward a mechanism (checked at start-up: the token
    seen through it does not list it), a test of that mechanism reports a skip, saying so,
    when what it got is hsmkey's HSMMechanismError naming exactly that mechanism."""
    report: pytest.TestReport = yield
    missing = item.config.stash.get(_MISSING, {})
    if missing and report.failed and call.excinfo is not None:
        text = str(call.excinfo.getrepr(style="short"))
        for mech, raised in missing.items():
            if raised in text:
                report.outcome = "skipped"
                reason = f"the remote token does not forward {mech} (hsmkey says so)"
                report.longrepr = (str(item.path), item.location[1] or 0, reason)
                break
    return report
