"""Logs: the redaction layer by field name and by token prefix, and one request id shared by the
response, the audit row and every log line of the request.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from sqlalchemy import select

from broker.db.models import AuditEvent
from broker.http.logging import REDACTED, redact
from tests.conftest import serve


def test_redaction_by_field_name_at_any_depth_and_any_case():
    event = {
        "event": "x",
        "secret": "s3cr3t-value",
        "Client_Secret": "abc",
        "PLAID-SECRET": "abc",
        "body": {"refresh_token": "opaque", "nested": [{"subject_token": "opaque2", "ok": "kept"}]},
        "authorization": "Basic Zm9vOmJhcg==",
    }
    out = redact(None, "info", event)
    assert out["secret"] == out["Client_Secret"] == out["PLAID-SECRET"] == out["authorization"] == REDACTED
    assert out["body"]["refresh_token"] == REDACTED
    assert out["body"]["nested"][0] == {"subject_token": REDACTED, "ok": "kept"}
    assert out["event"] == "x"


@pytest.mark.parametrize(
    ("token", "prefix"),
    [
        ("pda-rXEpze_B9KvzZ4c1DIZ8ZA==", "pda-"),
        ("pdr-EalPvuOU7q25Hj-lsm0dBg==", "pdr-"),
        ("user-sandbox-a1bb1c71-f0da-477e-b028-752e4fe66917", "user-sandbox-"),
        ("bka-0123456789abcdef0123", "bka-"),
    ],
)
def test_redaction_by_token_prefix_inside_any_value(token, prefix):
    event = {"event": f"presented {token} twice", "detail": ["x", f"({token})"], "deep": {"why": token}}
    out = redact(None, "info", event)
    rendered = json.dumps(out)
    assert token not in rendered
    assert out["event"] == f"presented {prefix}{REDACTED} twice"
    assert out["detail"] == ["x", f"({prefix}{REDACTED})"]
    assert out["deep"]["why"] == f"{prefix}{REDACTED}"


def test_short_or_unprefixed_values_are_left_alone():
    event = {"event": "pda-short user-x pdrive", "client_id": "d3d4b32ad3617d94797c63c4"}
    assert redact(None, "info", dict(event)) == event


@pytest.fixture
def logged_server(tmp_path):
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log, serve({"BROKER_WORKERS": "1", "BROKER_LOG_LEVEL": "DEBUG"}, output=log) as server:
        yield server.url, log_path


async def test_one_request_id_in_the_response_the_audit_row_and_every_log_line(logged_server, make_tenant, sessions):
    url, log_path = logged_server
    lender = await make_tenant("request id lender")
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        first = (
            await http.post("/oauth/token", json={"grant_type": "client_credentials"}, headers=lender.headers)
        ).json()
        rotated = await http.post(
            "/oauth/token",
            json={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
            headers=lender.headers,
        )
        assert rotated.status_code == 200
        await http.post(
            "/oauth/token",
            json={"grant_type": "refresh_token", "refresh_token": rotated.json()["refresh_token"]},
            headers=lender.headers,
        )
        # a replay (outside the retry window: the successor was used): refused, audited and logged
        replay = await http.post(
            "/oauth/token",
            json={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
            headers=lender.headers,
        )
    assert replay.status_code == 400
    request_id = replay.json()["request_id"]
    assert replay.headers["x-request-id"] == request_id

    async with sessions() as session:
        audited = (
            await session.execute(select(AuditEvent).where(AuditEvent.action == "token.replay_detected"))
        ).scalars()
        assert request_id in {event.request_id for event in audited}

    await asyncio.sleep(0.2)
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    mine = [line for line in lines if line.get("request_id") == request_id]
    events = [line["event"] for line in mine]
    assert "request refused" in events  # the error handler's line, inside the request
    access = [line for line in mine if line["event"] == "request"]
    assert len(access) == 1
    assert access[0] | {"duration_ms": 0} == access[0] | {
        "method": "POST",
        "path": "/oauth/token",
        "status": 400,
        "client_id": lender.client_id,
        "duration_ms": 0,
    }
    # every line written while serving a request carries its id (the rest come from background tasks)
    for line in lines:
        if line["event"] in {"request", "request refused", "database unavailable", "unhandled error"}:
            assert len(line.get("request_id", "")) == 16, line
