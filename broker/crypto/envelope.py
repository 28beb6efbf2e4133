"""AES-256-GCM envelopes: ``v1.<kid>.<nonce>.<ciphertext>``.

Invariants:
    * A fresh 96-bit random nonce per seal (NIST SP 800-38D §8.2.2); a key seals far fewer than
      2**32 messages before rotation is due.
    * The additional authenticated data binds a ciphertext to its table, column, tenant and row, so a
      ciphertext copied into another row or tenant fails to open instead of decrypting.
    * The envelope names the key id, so rotation re-encrypts rows instead of swapping keys.
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
    if len(parts) != 4 or parts[0] != VERSION:  # noqa: PLR2004
        raise EnvelopeError("not a v1 envelope")
    _, kid, nonce_b64, ct_b64 = parts
    key = ring.get(kid)
    if key is None:
        raise EnvelopeError(f"unknown key id {kid!r}")
    try:
        return AESGCM(key).decrypt(_unb64(nonce_b64), _unb64(ct_b64), aad)
    except (InvalidTag, ValueError, binascii.Error) as exc:
        raise EnvelopeError("ciphertext does not open under its key and context") from exc


def key_id_of(envelope: str) -> str:
    """The key id an envelope names (for key status and re-encryption)."""
    return envelope.split(".", 2)[1]
