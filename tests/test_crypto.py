from __future__ import annotations

import base64
import json
import re

import pytest

from broker.crypto import envelope, tokens
from broker.crypto.keyring import KeyRing, KeyRingError, ensure_dev_key_file, generate_key


def _ring(*kids: str) -> KeyRing:
    return KeyRing.parse(",".join(f"{kid}:{generate_key()}" for kid in kids), generate_key())


def test_seal_open_round_trip_names_the_active_key():
    ring = _ring("k2", "k1")
    aad = envelope.aad_for("refresh_tokens", "token", "tenant", "row")
    sealed = envelope.seal(ring, b"pdr-secret", aad)
    assert sealed.startswith("v1.k2.")
    assert envelope.key_id_of(sealed) == "k2"
    assert b"pdr-secret" not in sealed.encode()
    assert envelope.open_(ring, sealed, aad) == b"pdr-secret"


def test_nonces_are_fresh():
    ring = _ring("k1")
    aad = b"x"
    assert envelope.seal(ring, b"same", aad) != envelope.seal(ring, b"same", aad)


def test_ciphertext_moved_to_another_row_or_tenant_does_not_open():
    ring = _ring("k1")
    sealed = envelope.seal(ring, b"token", envelope.aad_for("users", "user_token", "tenant-a", "row-1"))
    for aad in (
        envelope.aad_for("users", "user_token", "tenant-b", "row-1"),
        envelope.aad_for("users", "user_token", "tenant-a", "row-2"),
        envelope.aad_for("users", "identity", "tenant-a", "row-1"),
    ):
        with pytest.raises(envelope.EnvelopeError):
            envelope.open_(ring, sealed, aad)


def test_tampering_and_unknown_keys_are_detected():
    ring = _ring("k1")
    sealed = envelope.seal(ring, b"token", b"aad")
    version, kid, nonce, ct = sealed.split(".")
    flipped = ct[:-2] + ("A" if ct[-2] != "A" else "B") + ct[-1]
    for bad in (f"{version}.{kid}.{nonce}.{flipped}", f"v2.{kid}.{nonce}.{ct}", f"v1.k9.{nonce}.{ct}", "garbage"):
        with pytest.raises(envelope.EnvelopeError):
            envelope.open_(ring, bad, b"aad")


def test_rotation_keeps_old_ciphertexts_readable():
    old = _ring("k1")
    sealed = envelope.seal(old, b"token", b"aad")
    rotated = KeyRing(
        active_kid="k2", keys={**old.keys, "k2": base64.urlsafe_b64decode(generate_key())}, hash_key=old.hash_key
    )
    assert envelope.open_(rotated, sealed, b"aad") == b"token"
    assert envelope.key_id_of(envelope.seal(rotated, b"token", b"aad")) == "k2"


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ("", "no encryption key"),
        ("k1", "kid:base64key"),
        ("k1:" + base64.urlsafe_b64encode(b"short").decode(), "32 bytes"),
        ("k1:!!!notbase64!!!", "base64"),
        (f"k1:{generate_key()},k1:{generate_key()}", "twice"),
        (f"bad kid:{generate_key()}", "key id"),
    ],
)
def test_malformed_key_rings_are_refused(keys, message):
    with pytest.raises(KeyRingError, match=message):
        KeyRing.parse(keys, generate_key())


def test_key_ring_repr_hides_key_material():
    ring = _ring("k1")
    assert "***" in repr(ring)
    assert base64.urlsafe_b64encode(ring.keys["k1"]).decode()[:10] not in repr(ring)


def test_dev_key_file_is_private_and_loadable(tmp_path):
    path = tmp_path / "keyring.json"
    assert ensure_dev_key_file(path) is True
    assert ensure_dev_key_file(path) is False
    assert path.stat().st_mode & 0o777 == 0o600
    ring = KeyRing.load_file(path)
    assert ring.active_kid == json.loads(path.read_text())["active"]


def test_token_shapes_and_entropy():
    access = {tokens.new_access_token() for _ in range(200)}
    assert len(access) == 200
    assert all(re.fullmatch(r"pda-[A-Za-z0-9_-]{22}==", t) for t in access)
    assert re.fullmatch(r"pdr-[A-Za-z0-9_-]{22}==", tokens.new_refresh_token())
    assert re.fullmatch(r"user-sandbox-[0-9a-f-]{36}", tokens.new_user_token("sandbox"))
    assert re.fullmatch(r"usr_[0-9A-Za-z]{22}", tokens.new_user_id())
    assert re.fullmatch(r"[0-9a-f]{24}", tokens.new_client_id())
    assert re.fullmatch(r"[0-9a-f]{32}", tokens.new_client_secret())


def test_secret_hashes_name_their_algorithm_and_verify():
    key = base64.urlsafe_b64decode(generate_key())
    stored = tokens.hash_secret(key, "s3cret")
    assert stored.startswith("hmac-sha256$")
    assert "s3cret" not in stored
    assert tokens.verify_secret(key, "s3cret", stored)
    assert not tokens.verify_secret(key, "other", stored)
    assert not tokens.verify_secret(key, "s3cret", stored.replace("hmac-sha256", "md5"))
    other_key = base64.urlsafe_b64decode(generate_key())
    assert not tokens.verify_secret(other_key, "s3cret", stored)
    assert tokens.digest(key, "a") != tokens.digest(other_key, "a")
