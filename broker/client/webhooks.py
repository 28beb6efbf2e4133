"""Verify broker's webhooks (Standard Webhooks: ``webhook-id``, ``webhook-timestamp``, ``webhook-signature``).

Only the standard library is used, so a receiver can verify without anything else from broker::

    from broker.client import verify_webhook, WebhookVerificationError

    try:
        event = verify_webhook(raw_body, request_headers, secret="whsec_...")
    except WebhookVerificationError:
        return 400
    if seen_before(event.id):   # at-least-once delivery: de-duplicate on the event id
        return 200
    handle(event.type, event.data)
    return 200

Always verify the *raw* body bytes, before any JSON parsing or re-serialisation.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from broker.client.errors import WebhookVerificationError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE_SECONDS = 300
"""How far a ``webhook-timestamp`` may be from the receiver's clock (Standard Webhooks: 5 minutes)."""


@dataclass(frozen=True)
class WebhookEvent:
    """A verified event.

    Attributes:
        id: The ``webhook-id``: stable across retries and redeliveries; de-duplicate on it.
        type: ``grant.shared``, ``grant.revoked``, ``party.removed``, ``user.removed`` or ``webhook.test``.
        timestamp: When the event happened (ISO 8601, UTC), from the body.
        data: The event's fields (see ``docs/partners.md``). ``grant.shared`` may carry a
            ``refresh_token``; treat it like a password.
        sent_at: The ``webhook-timestamp`` of this attempt (Unix seconds).
    """

    id: str
    type: str
    timestamp: str
    data: dict[str, Any] = field(repr=False)
    sent_at: int


def _key(secret: str) -> bytes:
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret is whsec_ followed by base64") from None
    if not key:
        raise ValueError("empty webhook secret")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes | str) -> str:
    """The ``v1,<base64>`` signature broker would send (useful to test a receiver)."""
    raw = body.encode() if isinstance(body, str) else body
    digest = hmac.new(_key(secret), f"{msg_id}.{timestamp}.".encode() + raw, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


class WebhookVerifier:
    """Verifies webhooks for one endpoint; give every secret currently valid (e.g. during a rotation)."""

    def __init__(self, secrets: str | Sequence[str], *, tolerance: int = DEFAULT_TOLERANCE_SECONDS) -> None:
        """Keep the HMAC keys of ``secrets`` (``whsec_...``).

        Raises:
            ValueError: no secret, or one that is not ``whsec_`` + base64.
        """
        values = [secrets] if isinstance(secrets, str) else list(secrets)
        if not values:
            raise ValueError("at least one webhook secret is required")
        self._keys = [_key(s) for s in values]
        self.tolerance = tolerance

    def verify(self, body: bytes | str, headers: Mapping[str, str], *, now: float | None = None) -> WebhookEvent:
        """Check the headers and signature of one delivery and return the event.

        Args:
            body: The request body exactly as received.
            headers: The request headers (any case).
            now: The current Unix time (defaults to the clock).

        Raises:
            WebhookVerificationError: a header is missing, the timestamp is outside the tolerance, no
                signature matches, or the body is not a broker event.
        """
        raw = body.encode() if isinstance(body, str) else bytes(body)
        lowered = {k.lower(): v for k, v in headers.items()}
        msg_id = lowered.get("webhook-id")
        stamp = lowered.get("webhook-timestamp")
        signatures = lowered.get("webhook-signature")
        if not msg_id or not stamp or not signatures:
            raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
        if not stamp.isascii() or not stamp.isdigit():
            raise WebhookVerificationError("webhook-timestamp is not a Unix time")
        sent_at = int(stamp)
        clock = time.time() if now is None else now
        if abs(clock - sent_at) > self.tolerance:
            raise WebhookVerificationError("webhook-timestamp is outside the tolerance (replayed or clock skew)")
        signed = f"{msg_id}.{sent_at}.".encode() + raw
        expected = [hmac.new(key, signed, hashlib.sha256).digest() for key in self._keys]
        if not any(_matches(candidate, expected) for candidate in signatures.split()):
            raise WebhookVerificationError("no signature matches")
        try:
            payload = json.loads(raw)
            return WebhookEvent(msg_id, str(payload["type"]), str(payload["timestamp"]), dict(payload["data"]), sent_at)
        except (ValueError, KeyError, TypeError):
            raise WebhookVerificationError("the body is not a broker event") from None


def _matches(candidate: str, expected: list[bytes]) -> bool:
    version, _, encoded = candidate.partition(",")
    if version != "v1":
        return False
    try:
        given = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return False
    return any(hmac.compare_digest(given, digest) for digest in expected)


def verify_webhook(
    body: bytes | str,
    headers: Mapping[str, str],
    secret: str | Sequence[str],
    *,
    tolerance: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> WebhookEvent:
    """Verify one delivery with ``secret`` (or several) and return the event (see :class:`WebhookVerifier`).

    Raises:
        WebhookVerificationError: the delivery does not verify.
        ValueError: a secret is malformed.
    """
    return WebhookVerifier(secret, tolerance=tolerance).verify(body, headers, now=now)
