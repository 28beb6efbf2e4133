"""AES-256-GCM envelopes in two versions.

* ``v1.<kid>.<nonce>.<ciphertext>``: sealed directly under the key ring's key ``kid``. Used to wrap
  tenant data keys, for operator-level secrets, and by rows written before per-tenant data keys.
* ``v2.<dek_id>.<nonce>.<ciphertext>``: sealed under a tenant data key (DEK, see
  :mod:`broker.crypto.datakeys`), itself stored wrapped by a ring key. Rotating the ring key rewraps
  the DEKs, not the rows; deleting a DEK makes its rows unrecoverable (crypto-shredding).

Invariants:
    * A fresh 96-bit random nonce per seal (NIST SP 800-38D §8.2.2); a key seals far fewer than
      2**32 messages before rotation is due.
    * The additional authenticated data binds a ciphertext to its table, column, tenant and row, so a
      ciphertext copied into another row or tenant fails to open instead of decrypting.
    * The envelope names the key that sealed it, so rotation re-encrypts rows instead of swapping keys.
"""

from __future__ import annotations

import base64
import binascii
import os
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

if TYPE_CHECKING:
    from broker.crypto.keyring import KeyRing

VERSION = "v1"
DATA_KEY_VERSION = "v2"
_PARTS = 4


class EnvelopeError(Exception):
    """A ciphertext could not be opened: unknown key, wrong context, or tampering."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def aad_for(table: str, column: str, tenant_id: object, row_id: object) -> bytes:
    """The additional authenticated data binding a ciphertext to one row of one tenant."""
    return f"{table}.{column}|{tenant_id}|{row_id}".encode()


def seal(ring: KeyRing, plaintext: bytes, aad: bytes) -> str:
    """Encrypt ``plaintext`` under the ring's active key."""
    kid, key = ring.active
    nonce = os.urandom(12)
    ciphertext = AESGCM(key).encrypt(nonce, plaintext, aad)
    return ".".join((VERSION, kid, _b64(nonce), _b64(ciphertext)))


def open_(ring: KeyRing, envelope: str, aad: bytes) -> bytes:
    """Decrypt an envelope made by :func:`seal` with the same ``aad``."""
    parts = envelope.split(".")
    if len(parts) != _PARTS or parts[0] != VERSION:
        raise EnvelopeError("not a v1 envelope")
    _, kid, nonce_b64, ct_b64 = parts
    key = ring.get(kid)
    if key is None:
        raise EnvelopeError(f"unknown key id {kid!r}")
    return _decrypt(key, nonce_b64, ct_b64, aad)


def seal_with_data_key(dek_id: str, key: bytes, plaintext: bytes, aad: bytes) -> str:
    """Encrypt ``plaintext`` under a tenant data key: ``v2.<dek_id>.<nonce>.<ct>``."""
    nonce = os.urandom(12)
    ciphertext = AESGCM(key).encrypt(nonce, plaintext, aad)
    return ".".join((DATA_KEY_VERSION, dek_id, _b64(nonce), _b64(ciphertext)))


def open_with_data_key(key: bytes, envelope: str, aad: bytes) -> bytes:
    """Decrypt a ``v2`` envelope with the data key it names (the caller found it by :func:`key_id_of`)."""
    parts = envelope.split(".")
    if len(parts) != _PARTS or parts[0] != DATA_KEY_VERSION:
        raise EnvelopeError("not a v2 envelope")
    return _decrypt(key, parts[2], parts[3], aad)


def _decrypt(key: bytes, nonce_b64: str, ct_b64: str, aad: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(_unb64(nonce_b64), _unb64(ct_b64), aad)
    except (InvalidTag, ValueError, binascii.Error) as exc:
        raise EnvelopeError("ciphertext does not open under its key and context") from exc


def version_of(envelope: str) -> str:
    """``v1``, ``v2``, or whatever else the first field says (never trusted: opening checks it)."""
    return envelope.split(".", 1)[0]


def key_id_of(envelope: str) -> str:
    """The key an envelope names: a ring key id (v1) or a data key id (v2)."""
    parts = envelope.split(".", 2)
    if len(parts) < 2:  # noqa: PLR2004
        raise EnvelopeError("not an envelope")
    return parts[1]
