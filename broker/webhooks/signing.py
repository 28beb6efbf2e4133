"""Standard Webhooks signing (https://www.standardwebhooks.com): ``webhook-id``, ``-timestamp``, ``-signature``.

Invariants:
    * A signing secret is ``whsec_`` followed by the standard base64 of 32 random bytes; the HMAC key is
      the decoded bytes, as every Standard Webhooks library expects.
    * The signed content is ``"{webhook-id}.{webhook-timestamp}.{body}"`` with the body's exact bytes; the
      signature is ``v1,<base64 HMAC-SHA256>``. Several signatures travel space-separated, so during a
      secret rotation a receiver holding either the old or the new secret can verify.
    * ``webhook-id`` is the event's id: the same on every retry and redelivery, so receivers de-duplicate.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
SIGNATURE_VERSION = "v1"


def new_secret() -> str:
    """A fresh signing secret, ``whsec_<base64 of 32 random bytes>``."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret: the base64-decoded part after the prefix.

    Raises:
        ValueError: the secret is not ``whsec_`` followed by base64.
    """
    if not secret.startswith(SECRET_PREFIX):
        msg = "a signing secret starts with whsec_"
        raise ValueError(msg)
    encoded = secret[len(SECRET_PREFIX) :]
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        msg = "a signing secret is whsec_ followed by base64"
        raise ValueError(msg) from None
    if not key:
        msg = "empty signing secret"
        raise ValueError(msg)
    return key


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256(key, "{msg_id}.{timestamp}.{body}")>``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


def headers(msg_id: str, timestamp: int, body: bytes, signing_secrets: Sequence[str]) -> dict[str, str]:
    """The three Standard Webhooks headers, signed with every secret given (newest first)."""
    signatures = " ".join(signature(secret_key(s), msg_id, timestamp, body) for s in signing_secrets)
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp), "webhook-signature": signatures}
