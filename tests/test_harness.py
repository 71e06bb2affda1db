"""The test harness itself works: tokens and keys, the spy, the fault helpers.

Only pkcs11-tool and PyKCS11 here, no hsmkey. In-process PyKCS11 logins use the token
``hsmkey-harness`` so that they never change the login state of the tokens hsmkey's tests use.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import PyKCS11
import pytest
from helpers import (
    RFC7515_A2,
    RFC7515_KEY,
    RFC8037_A4,
    RFC8037_KEY,
    TEST_KEYS,
    TOKEN2_KEYS,
    Faults,
    Pkcs11CallError,
    SoftHSM,
    Spy,
    parse_spy_log,
    pykcs11_lib,
)
from helpers.faults import CKS_RO_PUBLIC_SESSION, CKS_RO_USER_FUNCTIONS, CKS_RW_USER_FUNCTIONS

TESTS_DIR = Path(__file__).parent


def private_key_labels(listing: str) -> list[tuple[str, str, str]]:
    """(key type, label, id) of every private key in ``pkcs11-tool -O`` output."""
    keys = []
    for block in re.split(r"\n(?=\S)", listing):
        if block.startswith("Private Key Object"):
            kind = block.split(";")[1].split()[0]
            label = re.search(r"label:\s+(.*)", block)
            key_id = re.search(r"ID:\s+(\w+)", block)
            assert label and key_id, block
            keys.append((kind, label.group(1).strip(), key_id.group(1)))
    return keys


# -- the tokens -------------------------------------------------------------------------------


def test_environment_points_at_the_test_token(softhsm: SoftHSM) -> None:
    assert os.environ["SOFTHSM2_CONF"] == str(softhsm.conf_path)
    assert os.environ["HSM_MODULE"] == softhsm.module
    assert os.environ["HSM_TOKEN"] == "hsmkey-test"
    assert os.environ["HSM_PIN"] == softhsm.pin == "123456"
    assert softhsm.so_pin == "1234"
    assert softhsm.conf_path.is_file()
    assert softhsm.conf_path.parent == softhsm.tmp_dir
    assert Path(softhsm.module).is_file()


def test_tokens_have_their_labels_and_random_slot_ids(softhsm: SoftHSM) -> None:
    lib = pykcs11_lib(softhsm.module)
    labels = {
        slot: lib.getTokenInfo(slot).label.strip() for slot in lib.getSlotList(tokenPresent=True)
    }
    assert labels[softhsm.slot_id] == "hsmkey-test"
    assert labels[softhsm.token2.slot_id] == "hsmkey-test-2"
    assert labels[softhsm.harness_token.slot_id] == "hsmkey-harness"
    assert lib.getTokenInfo(softhsm.slot_id).serialNumber.strip() == softhsm.token.serial
    assert len({softhsm.slot_id, softhsm.token2.slot_id, softhsm.harness_token.slot_id}) == 3


def test_first_token_holds_every_test_key(softhsm: SoftHSM) -> None:
    listing = softhsm.pkcs11_tool("--list-objects", "--type", "privkey")
    found = sorted(private_key_labels(listing))
    kinds = {"RSA": "RSA", "EC": "EC", "EC_EDWARDS": "EC_EDWARDS"}
    expected = sorted((kinds[k.key_type], k.label, k.id_hex) for k in TEST_KEYS)
    assert found == expected


def test_public_objects_sit_beside_all_but_the_imported_rsa_key(softhsm: SoftHSM) -> None:
    listing = softhsm.pkcs11_tool("--list-objects", "--type", "pubkey")
    ids = sorted(re.findall(r"ID:\s+(\w+)", listing))
    assert ids == sorted(k.id_hex for k in TEST_KEYS if k.has_public_object)
    assert RFC7515_KEY.id_hex not in ids


def test_ed25519_params_come_in_both_forms(softhsm: SoftHSM) -> None:
    listing = softhsm.pkcs11_tool("--list-objects", "--type", "pubkey")
    # pkcs11-tool's own key: PrintableString "edwards25519"; the RFC 8037 key: the OID.
    assert "EC_PARAMS:  130c656477617264733235353139" in listing
    assert "EC_PARAMS:  06032b6570" in listing


def test_second_token_has_its_own_pin_and_key(softhsm: SoftHSM) -> None:
    assert softhsm.token2.pin == "654321"
    listing = softhsm.pkcs11_tool("--list-objects", "--type", "privkey", token=softhsm.token2)
    assert private_key_labels(listing) == [("EC", k.label, k.id_hex) for k in TOKEN2_KEYS]


def test_private_keys_are_hidden_without_login(softhsm: SoftHSM) -> None:
    listing = softhsm.pkcs11_tool("--list-objects", "--type", "privkey", login=False)
    assert private_key_labels(listing) == []


# -- the spy ----------------------------------------------------------------------------------


def test_spy_counts_a_pkcs11_tool_listing(softhsm: SoftHSM, spy: Spy) -> None:
    run = spy.command(
        [
            *("pkcs11-tool", "--module", "{module}", "--slot", str(softhsm.slot_id)),
            *("--login", "--pin", softhsm.pin, "-O"),
        ]
    )
    assert "rsa-key" in run.stdout
    assert run["C_Initialize"] == 1
    assert run["C_Login"] == 1
    assert run.returned("C_Login") == ["CKR_OK"]
    assert run["C_OpenSession"] == 1
    assert run["C_FindObjectsInit"] >= 1
    assert run["C_Sign"] == 0
    assert run.sequence[1].function == "C_Initialize"
    # pkcs11-tool asks for attributes some objects lack; nothing else fails
    assert {c.rv for c in run.failed_calls()} <= {"CKR_ATTRIBUTE_TYPE_INVALID"}


def test_spy_runs_python_and_reproduces_the_rfc_signatures(softhsm: SoftHSM, spy: Spy) -> None:
    run = spy(
        f"""
        import os
        import PyKCS11 as P

        lib = P.PyKCS11Lib().load(os.environ["HSM_MODULE"])
        slot = next(s for s in lib.getSlotList(tokenPresent=True)
                    if lib.getTokenInfo(s).label.strip() == os.environ["HSM_TOKEN"])
        session = lib.openSession(slot)
        session.login(os.environ["HSM_PIN"])

        def key(label):
            [handle] = session.findObjects(
                [(P.CKA_CLASS, P.CKO_PRIVATE_KEY), (P.CKA_LABEL, label)])
            return handle

        rsa = session.sign(key({RFC7515_KEY.label!r}), {RFC7515_A2.signing_input!r},
                           P.Mechanism(P.CKM_SHA256_RSA_PKCS))
        ed = session.sign(key({RFC8037_KEY.label!r}), {RFC8037_A4.signing_input!r},
                          P.Mechanism(P.CKM_EDDSA))
        print(bytes(rsa).hex())
        print(bytes(ed).hex())
        session.logout()
        session.closeSession()
        """
    )
    rsa_sig, ed_sig = run.stdout.split()
    assert bytes.fromhex(rsa_sig) == RFC7515_A2.signature_bytes
    assert bytes.fromhex(ed_sig) == RFC8037_A4.signature_bytes
    assert run["C_Login"] == 1
    assert run["C_SignInit"] == 2
    assert run["C_Sign"] >= 2  # PyKCS11 asks for the length first
    assert run["C_FindObjectsInit"] == 2
    assert run["C_Logout"] == 1
    assert run.failed_calls() == []


def test_spy_reports_a_failing_snippet(spy: Spy) -> None:
    with pytest.raises(pytest.fail.Exception, match=r"(?s)exit code 3.*boom"):
        spy("import sys; print('boom'); sys.exit(3)")
    run = spy("import sys; sys.exit(3)", check=False)
    assert run.returncode == 3
    assert sum(run.calls.values()) == 0


def test_spy_sees_os_locking_in_the_fault_helpers_initialize(spy: Spy) -> None:
    run = spy(
        f"""
        import os, sys
        sys.path.insert(0, {str(TESTS_DIR)!r})
        from helpers.faults import cryptoki
        print(cryptoki(os.environ["HSM_MODULE"]).slot_list())
        """
    )
    assert run["C_Initialize"] == 1
    assert run["C_Finalize"] == 0
    block = run.log_path.read_text().split(": C_Initialize\n", 1)[1].split("Returned:")[0]
    assert re.search(r"flags: 2\b", block), block


def test_parse_spy_log() -> None:
    log = (
        "\n\n*************** OpenSC PKCS#11 spy *****************\n"
        'Loaded: "/usr/lib/softhsm/libsofthsm2.so"\n\n'
        "0: C_GetFunctionList\n2026-11-28 21:25:42.759\nReturned:  0 CKR_OK\n\n"
        "1: C_Login\n2026-11-28 21:25:42.761\n[in] hSession = 0x1\n"
        "Returned:  160 CKR_PIN_INCORRECT\n\n"
        "2: C_Sign\n2026-11-28 21:25:42.762\n"
    )
    calls = parse_spy_log(log)
    assert [(c.function, c.rv) for c in calls] == [
        ("C_GetFunctionList", "CKR_OK"),
        ("C_Login", "CKR_PIN_INCORRECT"),
        ("C_Sign", None),
    ]


# -- the fault helpers, checked with PyKCS11 in this process ----------------------------------


@pytest.fixture
def harness_session(softhsm: SoftHSM) -> Iterator[Any]:
    """A logged-in PyKCS11 session on the harness token; logged out and closed afterwards."""
    lib = pykcs11_lib(softhsm.module)
    token = softhsm.harness_token
    session = lib.openSession(token.slot_id)
    session.login(token.pin)
    yield session
    lib.closeAllSessions(token.slot_id)


@pytest.fixture
def harness_faults(softhsm: SoftHSM) -> Faults:
    return Faults(softhsm.module, softhsm.harness_token.slot_id)


def handle_of(session: Any) -> int:
    return int(session.session.value())


def test_logout_logs_every_session_out_and_keeps_them(
    harness_session: Any, harness_faults: Faults
) -> None:
    assert harness_session.getSessionInfo().state == CKS_RO_USER_FUNCTIONS
    assert harness_faults.is_logged_in()
    harness_faults.logout()
    assert harness_session.getSessionInfo().state == CKS_RO_PUBLIC_SESSION
    assert not harness_faults.is_logged_in()
    harness_faults.logout()  # not logged in: still fine


def test_logout_invalidates_private_key_handles(
    softhsm: SoftHSM, harness_session: Any, harness_faults: Faults
) -> None:
    [key] = harness_session.findObjects(
        [(PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY), (PyKCS11.CKA_LABEL, "ec-key")]
    )
    harness_faults.logout()
    harness_session.login(softhsm.harness_token.pin)
    with pytest.raises(PyKCS11.PyKCS11Error) as exc_info:
        harness_session.sign(key, b"\x00" * 32, PyKCS11.Mechanism(PyKCS11.CKM_ECDSA))
    assert exc_info.value.value in (
        PyKCS11.CKR_OBJECT_HANDLE_INVALID,
        PyKCS11.CKR_KEY_HANDLE_INVALID,
    )


def test_close_all_sessions_closes_them_and_ends_the_login(
    softhsm: SoftHSM, harness_session: Any, harness_faults: Faults
) -> None:
    rw = pykcs11_lib(softhsm.module).openSession(
        softhsm.harness_token.slot_id, PyKCS11.CKF_SERIAL_SESSION | PyKCS11.CKF_RW_SESSION
    )
    assert rw.getSessionInfo().state == CKS_RW_USER_FUNCTIONS
    handle = handle_of(harness_session)
    assert harness_faults.session_info(handle).logged_in

    harness_faults.close_all_sessions()

    for session in (harness_session, rw):
        with pytest.raises(PyKCS11.PyKCS11Error) as exc_info:
            session.getSessionInfo()
        assert exc_info.value.value == PyKCS11.CKR_SESSION_HANDLE_INVALID
    with pytest.raises(Pkcs11CallError) as call_error:
        harness_faults.session_info(handle)
    assert call_error.value.rv_name == "CKR_SESSION_HANDLE_INVALID"
    assert not harness_faults.is_logged_in()


def test_faults_leave_other_tokens_alone(
    softhsm: SoftHSM, harness_session: Any, harness_faults: Faults
) -> None:
    lib = pykcs11_lib(softhsm.module)
    other = lib.openSession(softhsm.token2.slot_id)
    try:
        harness_faults.close_all_sessions()
        assert other.getSessionInfo().state == CKS_RO_PUBLIC_SESSION
    finally:
        other.closeSession()
