"""Standard Webhooks signing (server) and verification (broker.client), against the specification's vector."""

from __future__ import annotations

import base64
import json
import time
import uuid

import pytest

from broker.client import WebhookVerificationError, WebhookVerifier, sign, verify_webhook
from broker.webhooks import signing
from broker.webhooks.delivery import WorkerConfig, render_body
from broker.webhooks.repository import ClaimedDelivery

# The test vector of the Standard Webhooks reference libraries.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_server_signs_the_standard_vector():
    key = signing.secret_key(VECTOR_SECRET)
    assert signing.signature(key, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE
    assert sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE


def test_the_client_verifies_the_standard_vector():
    headers = {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TIMESTAMP),
        "webhook-signature": VECTOR_SIGNATURE,
    }
    with pytest.raises(WebhookVerificationError, match="not a broker event"):
        verify_webhook(VECTOR_BODY, headers, VECTOR_SECRET, now=VECTOR_TIMESTAMP)  # signature fine, not our shape


def _event(secret, *, msg_id="evt_1", sent_at=None, body=None, extra_secrets=()):
    body = body or json.dumps({"type": "grant.shared", "timestamp": "2026-11-28T00:00:00.000Z", "data": {"a": 1}})
    raw = body.encode()
    stamp = int(time.time()) if sent_at is None else sent_at
    headers = signing.headers(msg_id, stamp, raw, [secret, *extra_secrets])
    return raw, headers


def test_secrets_are_whsec_and_32_random_bytes():
    one, two = signing.new_secret(), signing.new_secret()
    assert one != two
    assert one.startswith("whsec_")
    assert len(base64.b64decode(one.removeprefix("whsec_"))) == 32


def test_verify_roundtrip_and_header_case():
    secret = signing.new_secret()
    raw, headers = _event(secret)
    event = verify_webhook(raw, {k.upper(): v for k, v in headers.items()}, secret)
    assert (event.id, event.type, event.data) == ("evt_1", "grant.shared", {"a": 1})
    assert verify_webhook(raw.decode(), headers, secret).id == "evt_1"


@pytest.mark.parametrize("offset", [-301, 301, -10_000])
def test_timestamps_outside_the_tolerance_are_refused(offset):
    secret = signing.new_secret()
    raw, headers = _event(secret, sent_at=int(time.time()) + offset)
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify_webhook(raw, headers, secret)
    assert verify_webhook(raw, headers, secret, tolerance=20_000).id == "evt_1"


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda h: h.pop("webhook-id"), "missing"),
        (lambda h: h.pop("webhook-timestamp"), "missing"),
        (lambda h: h.pop("webhook-signature"), "missing"),
        (lambda h: h.update({"webhook-timestamp": "soon"}), "Unix time"),
        (lambda h: h.update({"webhook-timestamp": "1e9"}), "Unix time"),
        (lambda h: h.update({"webhook-id": "evt_2"}), "no signature matches"),
        (lambda h: h.update({"webhook-signature": "v2," + h["webhook-signature"][3:]}), "no signature matches"),
        (lambda h: h.update({"webhook-signature": "v1,!!!"}), "no signature matches"),
        (lambda h: h.update({"webhook-signature": "garbage"}), "no signature matches"),
    ],
)
def test_tampered_headers_are_refused(change, fragment):
    secret = signing.new_secret()
    raw, headers = _event(secret)
    change(headers)
    with pytest.raises(WebhookVerificationError, match=fragment):
        verify_webhook(raw, headers, secret)


def test_a_changed_body_or_another_secret_is_refused():
    secret = signing.new_secret()
    raw, headers = _event(secret)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(raw.replace(b'"a": 1', b'"a": 2'), headers, secret)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(raw, headers, signing.new_secret())


def test_several_signatures_and_several_secrets():
    old, new = signing.new_secret(), signing.new_secret()
    raw, headers = _event(new, extra_secrets=[old])  # during a rotation overlap
    assert len(headers["webhook-signature"].split()) == 2
    assert verify_webhook(raw, headers, old).id == "evt_1"
    assert verify_webhook(raw, headers, new).id == "evt_1"
    raw, headers = _event(new)
    verifier = WebhookVerifier([old, new])  # a receiver switching secrets accepts both
    assert verifier.verify(raw, headers).id == "evt_1"


def test_malformed_secrets_are_refused():
    bad_secrets: list[str | list[str]] = ["", "whsec_", "whsec_***", []]
    for bad in bad_secrets:
        with pytest.raises(ValueError, match="secret"):
            WebhookVerifier(bad)
    with pytest.raises(ValueError, match="whsec_"):
        signing.secret_key("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")


def test_the_body_is_stable_and_carries_the_token_only_when_opened():
    claimed = ClaimedDelivery(
        id=uuid.uuid4(),
        claim_id=uuid.uuid4(),
        event_id="evt_x",
        event_type="grant.shared",
        payload={"type": "grant.shared", "timestamp": "t", "data": {"b": 2, "a": 1}},
        token_enc="v2.sealed",
        tenant_id=None,
        failures=0,
        endpoint_id=uuid.uuid4(),
        endpoint_owner_id=uuid.uuid4(),
        url="https://x.example/h",
        secret_enc="v1.x",
        previous_secret_enc=None,
        previous_secret_expires_at=None,
    )
    plain = render_body(claimed, None)
    assert plain == b'{"data":{"a":1,"b":2},"timestamp":"t","type":"grant.shared"}'
    assert render_body(claimed, None) == plain
    with_token = json.loads(render_body(claimed, "pdr-secret"))
    assert with_token["data"]["refresh_token"] == "pdr-secret"
    assert "refresh_token" not in claimed.payload["data"]


def test_backoff_grows_with_jitter_and_a_cap():
    config = WorkerConfig(
        timeout=10,
        lease=60,
        poll=1,
        concurrency=1,
        max_attempts=10,
        backoff_base=10,
        backoff_max=300,
        allow_private=False,
        allow_http=False,
    )
    for failures, ceiling in ((1, 10), (2, 20), (3, 40), (5, 160), (6, 300), (20, 300)):
        delays = [config.backoff(failures) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jittered
    assert config.backoff(1, retry_after=120) == 120
    assert config.backoff(1, retry_after=10_000) == 300
