"""hsmkey's pytest plugin (``hsmkey.testing``, the ``pytest11`` entry point ``hsmkey``), as a
user meets it: a small test file of their own, run by pytest in a new process, with an
environment that knows nothing of hsmkey's own test token (no ``SOFTHSM2_CONF``, no
``HSM_*``)."""

from __future__ import annotations

import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CLEAN = ("SOFTHSM2_CONF", "HSM_MODULE", "HSM_TOKEN", "HSM_PIN", "PYTEST_DISABLE_PLUGIN_AUTOLOAD")

USER_TESTS = """
import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from jwcrypto import jwk, jwt

from hsmkey import HSMJWK, SessionPool
from hsmkey.testing import TEST_KEYS, softhsm2_loaded


def test_the_token(hsm_token):
    assert hsm_token.label == "hsmkey-pytest"
    assert os.environ["SOFTHSM2_CONF"] == str(hsm_token.conf_path)
    assert hsm_token.conf_path.parent == hsm_token.directory
    assert softhsm2_loaded(hsm_token.module_path)
    Path("token-dir.txt").write_text(str(hsm_token.directory))


def test_the_labels(hsm_key_labels):
    assert dict(hsm_key_labels) == {
        "rsa": "RS256", "ec256": "ES256", "ec384": "ES384", "ec521": "ES512",
        "ed25519": "EdDSA",
    }


def test_the_pool_lists_the_keys(hsm_pool):
    keys = {k.label: k for k in hsm_pool.list_keys()}
    assert set(keys) == {"rsa", "ec256", "ec384", "ec521", "ed25519"}
    assert keys["rsa"].key_size == 2048
    assert [keys[n].curve for n in ("ec256", "ec384", "ec521", "ed25519")] == [
        "P-256", "P-384", "P-521", "Ed25519"
    ]
    assert keys["ec256"].id == bytes([2])


@pytest.mark.parametrize(("label", "alg"), TEST_KEYS.items())
def test_sign_a_jwt_with_each_key(hsm_pool, label, alg):
    key = HSMJWK.from_hsm(hsm_pool, key_label=label)
    token = jwt.JWT(header={"alg": alg, "kid": key["kid"]}, claims={"sub": label})
    token.make_signed_token(key)
    public = jwk.JWK.from_json(key.export_public())
    checked = jwt.JWT(jwt=token.serialize(), key=public, algs=[alg])
    assert json.loads(checked.claims) == {"sub": label}


def test_cryptography_interface(hsm_pool):
    key = HSMJWK.from_hsm(hsm_pool, key_label="ec384").get_op_key("sign")
    signature = key.sign(b"data", ec.ECDSA(hashes.SHA384()))
    key.public_key().verify(signature, b"data", ec.ECDSA(hashes.SHA384()))


def test_from_env(hsm_env, hsm_token):
    assert hsm_env["HSM_TOKEN"] == hsm_token.label == os.environ["HSM_TOKEN"]
    with SessionPool.from_env() as pool:
        assert HSMJWK.from_hsm(pool, key_label="ed25519")["kty"] == "OKP"


def test_a_pool_of_ones_own(hsm_token):
    with hsm_token.pool() as pool, pool.session() as session:
        assert session.find_key(key_label="rsa").key_type == "RSA"
"""


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CLEAN:
        monkeypatch.delenv(name, raising=False)


def test_entry_point_is_registered() -> None:
    if sys.version_info >= (3, 10):
        found = entry_points(group="pytest11")
    else:  # pragma: no cover
        found = entry_points().get("pytest11", [])
    assert {(e.name, e.value) for e in found} >= {("hsmkey", "hsmkey.testing")}


def test_fixtures_in_a_users_test_suite(pytester: pytest.Pytester, clean_env: None) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=11)
    # The token's directory went away with the session.
    token_dir = Path((pytester.path / "token-dir.txt").read_text())
    assert token_dir.name.startswith("hsmkey-softhsm2-")
    assert not token_dir.exists()


def test_nothing_happens_unless_a_fixture_is_requested(
    pytester: pytest.Pytester, clean_env: None
) -> None:
    pytester.makepyfile(
        test_plain="""
        import os

        from hsmkey.testing import softhsm2_loaded


        def test_untouched():
            assert "SOFTHSM2_CONF" not in os.environ
            assert not softhsm2_loaded()
        """
    )
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    # The fixtures are documented where users look for them.
    fixtures = pytester.runpytest_subprocess("--fixtures", "-p", "no:cacheprovider")
    text = fixtures.stdout.str()
    for name in ("hsm_token", "hsm_pool", "hsm_key_labels", "hsm_env"):
        assert name in text, name
    assert "throwaway SoftHSM2 token" in text


WITHOUT_SOFTHSM2 = """
def test_one(hsm_pool):
    raise AssertionError("not reached")


def test_two(hsm_token):
    raise AssertionError("not reached")


def test_three():
    pass
"""


@pytest.fixture
def no_softhsm2(pytester: pytest.Pytester, clean_env: None) -> None:
    """SoftHSM2 is installed here: make the plugin look in places where it is not."""
    pytester.makeconftest(
        """
        import hsmkey.testing

        hsmkey.testing.SOFTHSM2_MODULE_PATHS = ("/nonexistent/libsofthsm2.so",)
        """
    )
    pytester.makepyfile(test_without=WITHOUT_SOFTHSM2)


def test_without_softhsm2_the_tests_fail(pytester: pytest.Pytester, no_softhsm2: None) -> None:
    # A CI image that lacks SoftHSM2 must not pass by skipping every test.
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=2)
    result.stdout.fnmatch_lines(["*a SoftHSM2 test token needs SoftHSM2*not installed*"])
    text = result.stdout.str()
    assert "apt-get install softhsm2" in text and "--hsmkey-skip-without-softhsm2" in text
    assert "Traceback" not in text


@pytest.mark.parametrize(
    "ask",
    [
        ["--hsmkey-skip-without-softhsm2"],
        ["-o", "hsmkey_skip_without_softhsm2=true"],
    ],
)
def test_skip_without_softhsm2_when_asked(
    pytester: pytest.Pytester, no_softhsm2: None, ask: list[str]
) -> None:
    result = pytester.runpytest_subprocess("-rs", "-p", "no:cacheprovider", *ask)
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["*SKIPPED*a SoftHSM2 test token needs SoftHSM2*not installed*"])
    assert "apt-get install softhsm2" in result.stdout.str()


def test_skip_setting_in_the_ini_file(pytester: pytest.Pytester, no_softhsm2: None) -> None:
    pytester.makeini("[pytest]\nhsmkey_skip_without_softhsm2 = true\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=2)
    # The option is documented in pytest's help.
    help_text = pytester.runpytest_subprocess("--help").stdout.str()
    assert "--hsmkey-skip-without-softhsm2" in help_text
    assert "hsmkey_skip_without_softhsm2" in help_text


def test_a_wrong_softhsm2_module_fails_even_when_skipping_is_asked(
    pytester: pytest.Pytester, clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOFTHSM2_MODULE", "/opt/typo/libsofthsm2.so")
    pytester.makepyfile(test_without=WITHOUT_SOFTHSM2)
    for ask in ([], ["--hsmkey-skip-without-softhsm2"]):
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *ask)
        result.assert_outcomes(passed=1, errors=2)
        result.stdout.fnmatch_lines(["*SOFTHSM2_MODULE=/opt/typo/libsofthsm2.so does not exist*"])


def test_keys_of_one_test_with_hsm_key_label(pytester: pytest.Pytester, clean_env: None) -> None:
    pytester.makepyfile(
        test_labels="""
        LABELS = []


        def test_first(hsm_pool, hsm_key_label):
            assert hsm_key_label.startswith("test-test_first-")
            with hsm_pool.session(rw=True) as session:
                session.generate_key_pair("EC", label=hsm_key_label)
            assert hsm_pool.find_key(key_label=hsm_key_label).label == hsm_key_label
            LABELS.append(hsm_key_label)


        def test_second(hsm_pool, hsm_key_label):
            assert hsm_key_label != LABELS[0]
            # The first test's key went away with it; the token's own keys stay.
            labels = {k.label for k in hsm_pool.list_keys()}
            assert LABELS[0] not in labels
            assert labels == {"rsa", "ec256", "ec384", "ec521", "ed25519"}


        def test_the_token_attributes(hsm_token):
            assert hsm_token.module_path.endswith("libsofthsm2.so")
            assert (hsm_token.label, hsm_token.pin, hsm_token.so_pin) == (
                "hsmkey-pytest", "123456", "12345678"
            )
            assert hsm_token.conf_path.parent == hsm_token.directory
            assert set(hsm_token.env) == {"SOFTHSM2_CONF", "HSM_MODULE", "HSM_TOKEN", "HSM_PIN"}
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


def test_the_documented_token_attributes_exist() -> None:
    """docs/testing.rst's table of SoftHSM2Token attributes is the class's."""
    import dataclasses
    import re

    from hsmkey.testing import SoftHSM2Token

    page = (Path(__file__).parent.parent / "docs" / "testing.rst").read_text()
    documented = set(re.findall(r"^``(\w+)(?:\(\*\*kwargs\))?``  ", page, re.M))
    actual = {f.name for f in dataclasses.fields(SoftHSM2Token)} | {"env", "pool"}
    assert documented == actual
    token = SoftHSM2Token("/x/libsofthsm2.so", "t", "1", "2", Path("/x"), Path("/x/c.conf"))
    with pytest.raises(AttributeError, match=r"no attribute 'module'; did you mean 'module_path'"):
        token.module  # noqa: B018
    with pytest.raises(AttributeError, match=r"\(it has module_path, label, pin"):
        token.xyz  # noqa: B018


def test_softhsm2_loaded_too_early_is_explained(pytester: pytest.Pytester, clean_env: None) -> None:
    pytester.makeconftest(
        """
        import ctypes

        from hsmkey.testing import find_softhsm2_module

        ctypes.CDLL(find_softhsm2_module())  # some other code loads SoftHSM2 at import
        """
    )
    pytester.makepyfile(
        test_early="""
        def test_token(hsm_token):
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*was loaded in this process before the throwaway token*"])
    assert "Traceback" not in result.stdout.str()
