"""PKCS#11 calls counted at the boundary through pkcs11-spy, in fresh processes."""

from __future__ import annotations

from helpers import Spy

SIGN_FROM_THREADS = """
import os, threading
from hsmkey import SessionPool

pool = SessionPool(os.environ["HSM_MODULE"], os.environ["HSM_TOKEN"], os.environ["HSM_PIN"])
key = pool.find_key(key_label="ec-key")
rsa = pool.find_key(key_label="rsa-key")

def work():
    for i in range(25):
        key.sign("ES256", b"payload %d" % i)
        with pool.session() as s:
            s.find_key(key_label="rsa-key").sign("RS256", b"x")

threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
stats = pool.stats()
assert stats["logins"] == 1, stats
print("MAX_IN_USE", stats["max_in_use"], "CREATED", stats["created"])
pool.close()
"""


def test_one_login_and_no_key_search_per_signature(spy: Spy) -> None:
    run = spy(SIGN_FROM_THREADS)
    # 200 signatures (100 ES256 with a pool-bound key, 100 RS256 in short blocks), 4 threads.
    assert run.calls["C_Sign"] >= 200
    # 200 signatures, plus one probe signature that proves the EC key's public-key object
    # (SoftHSM2 keeps the point there only) when the key is first found: a lookup cost, once
    # per key and login epoch, never one per signature.
    assert run.calls["C_SignInit"] == 200 + 1
    assert run.calls["C_Login"] == 1
    assert run.calls["C_Logout"] == 1
    # Two keys found once each (EC also looks up its public-key object): no search per
    # signature, nor per `with pool.session()` block.
    assert run.calls["C_FindObjectsInit"] <= 3, run.calls
    created = int(run.stdout.split("CREATED")[1])
    # One anchor session holds the login; the rest are the pool's.
    assert run.calls["C_OpenSession"] == created + 1
    assert run.calls["C_CloseSession"] == run.calls["C_OpenSession"]
    assert run.calls["C_Initialize"] == 1


def test_every_session_is_closed_at_close(spy: Spy) -> None:
    run = spy(
        """
        import os
        from hsmkey import SessionPool
        pool = SessionPool(os.environ["HSM_MODULE"], os.environ["HSM_TOKEN"],
                           os.environ["HSM_PIN"])
        with pool.session() as a, pool.session() as b, pool.session(rw=True) as c:
            pass
        pool.close()
        """
    )
    assert run.calls["C_OpenSession"] == 4
    assert run.calls["C_CloseSession"] == 4
    assert run.calls["C_Logout"] == 1


def test_garbage_collected_pool_closes_its_sessions(spy: Spy) -> None:
    run = spy(
        """
        import os, gc
        from hsmkey import SessionPool
        pool = SessionPool(os.environ["HSM_MODULE"], os.environ["HSM_TOKEN"],
                           os.environ["HSM_PIN"])
        with pool.session(), pool.session():
            pass
        del pool
        gc.collect()
        print("DONE")
        """
    )
    assert run.calls["C_OpenSession"] == 3
    assert run.calls["C_CloseSession"] == 3
    assert run.calls["C_Logout"] == 1


def test_interpreter_exit_closes_live_pools(spy: Spy) -> None:
    run = spy(
        """
        import os
        from hsmkey import SessionPool
        POOL = SessionPool(os.environ["HSM_MODULE"], os.environ["HSM_TOKEN"],
                           os.environ["HSM_PIN"])
        KEY = POOL.find_key(key_label="ec-key")
        with POOL.session(), POOL.session(rw=True):
            KEY.sign("ES256", b"x")
        # no close(): the pool and key stay referenced by module globals until exit
        """
    )
    assert run.calls["C_OpenSession"] >= 3
    assert run.calls["C_CloseSession"] == run.calls["C_OpenSession"]
    assert run.calls["C_Logout"] == 1


RSA_DECRYPTIONS = """
import os
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hsmkey import SessionPool

pool = SessionPool(os.environ["HSM_MODULE"], os.environ["HSM_TOKEN"], os.environ["HSM_PIN"])
key = pool.find_key(key_label="rsa-key")
public = rsa.RSAPublicNumbers(
    int.from_bytes(key.public_exponent, "big"), int.from_bytes(key.modulus, "big")
).public_key()
oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
for i in range(20):
    data = b"secret %d" % i
    assert key.decrypt("RSA_OAEP", public.encrypt(data, oaep), hash="sha1") == data
    assert key.decrypt("RSA_PKCS", public.encrypt(data, padding.PKCS1v15())) == data
pool.close()
"""


def test_rsa_decryption_makes_two_calls(spy: Spy) -> None:
    """A decryption is ``C_DecryptInit`` and one ``C_Decrypt`` into a buffer of the modulus'
    size: two round trips on a network HSM, not three (no length query)."""
    run = spy(RSA_DECRYPTIONS)
    assert run.calls["C_DecryptInit"] >= 40, run.calls
    # One C_Decrypt per C_DecryptInit; at most one more, for the per-key secret of PKCS#1
    # v1.5's implicit rejection (derived once per key and process). Three calls per
    # decryption would be 40 more.
    assert run.calls["C_Decrypt"] - run.calls["C_DecryptInit"] <= 1, run.calls


ECDH_EXCHANGES = """
import os
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hsmkey import SessionPool

pool = SessionPool(os.environ["HSM_MODULE"], os.environ["HSM_TOKEN"], os.environ["HSM_PIN"])
key = pool.find_key(key_label="ec-key")
for _ in range(20):
    peer = ec.generate_private_key(ec.SECP256R1())
    point = peer.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    assert len(key.ecdh(point)) == 32
pool.close()
"""


def test_ecdh_makes_three_calls(spy: Spy) -> None:
    """An ECDH exchange is ``C_DeriveKey``, one ``C_GetAttributeValue`` of the derived
    secret into a buffer of the field's size (no length query) and ``C_DestroyObject`` (the
    secret must not outlive the call in a session that goes back to the pool): three round
    trips on a network HSM, the fewest PKCS#11 allows for a secret the caller gets."""
    run = spy(ECDH_EXCHANGES)
    assert run.calls["C_DeriveKey"] == 20, run.calls
    assert run.calls["C_DestroyObject"] == 20, run.calls
    # The key's lookup reads attributes too (a few calls, once); each exchange reads one.
    lookup = run.calls["C_GetAttributeValue"] - 20
    assert 0 <= lookup <= 6, run.calls


ASYNC_BLOCKS = """
import asyncio, os
from hsmkey import SessionPool

async def main():
    pool = SessionPool(os.environ["HSM_MODULE"], os.environ["HSM_TOKEN"], os.environ["HSM_PIN"],
                       max_sessions=2)
    pool.find_key(key_label="ec-key")  # found once, for the login epoch

    async def work():
        for i in range(10):
            async with pool.session() as s:
                await s.find_key(key_label="ec-key").sign_async("ES256", b"item %d" % i)

    await asyncio.gather(*(work() for _ in range(5)))
    pool.close()

asyncio.run(main())
"""


def test_async_blocks_look_keys_up_in_the_cache(spy: Spy) -> None:
    """``async with pool.session() as s: await s.find_key(...).sign_async(...)`` per item, from
    more tasks than sessions: the key lookup in the block makes no PKCS#11 call (the key was
    found before, in this login epoch), and each item makes the signature's two calls."""
    run = spy(ASYNC_BLOCKS)
    # 50 signatures, plus the probe signature that proves the EC key's public-key object
    # when it is first found.
    assert run.calls["C_SignInit"] == 50 + 1, run.calls
    assert run.calls["C_Sign"] == 50 + 1, run.calls
    # The key and its public-key object, looked up once.
    assert run.calls["C_FindObjectsInit"] <= 2, run.calls
    assert run.calls["C_OpenSession"] <= 3, run.calls  # the anchor and the pool's two
