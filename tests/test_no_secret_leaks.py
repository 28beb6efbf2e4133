"""Run a full scenario against a live server logging at DEBUG, then look for every secret it saw.

Every token, secret and user token the scenario handled must be absent from the server's log output,
from every audit row, and from every database column in plaintext.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from sqlalchemy import text

from tests.conftest import serve
from tests.oauth_helpers import EXCHANGE, MULTI, USER, add_member, allow, new_audience

TABLES = [
    "tenants",
    "client_secrets",
    "admin_keys",
    "audiences",
    "audience_members",
    "audience_policies",
    "users",
    "grants",
    "grant_parties",
    "refresh_tokens",
    "access_tokens",
    "audit_events",
]


@pytest.fixture
def logged_server(tmp_path):
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log, serve({"BROKER_WORKERS": "1", "BROKER_LOG_LEVEL": "DEBUG"}, output=log) as server:
        yield server.url, log_path


async def test_no_token_or_secret_reaches_logs_audit_rows_or_plaintext_columns(logged_server, make_tenant, sessions):
    url, log_path = logged_server
    lender, partner = await make_tenant("lender"), await make_tenant("partner", kind="partner")
    urn = await new_audience(sessions)
    await add_member(sessions, urn, partner.tenant_id)
    await allow(sessions, lender.tenant_id, urn=urn)
    seen: set[str] = {lender.secret, partner.secret}

    async with httpx.AsyncClient(base_url=url, timeout=30) as http:

        async def call(path, creds, **body):
            response = await http.post(path, json=body, headers=creds.headers)
            for key in ("access_token", "refresh_token", "user_token"):
                value = (
                    response.json().get(key)
                    if response.headers.get("content-type", "").startswith("application/json")
                    else None
                )
                if value:
                    seen.add(value)
            return response

        user = (await call("/user/create", lender, client_user_id="leak-check")).json()
        await call("/oauth/token", lender, grant_type="client_credentials")
        own = (
            await call(
                "/oauth/token",
                lender,
                grant_type=EXCHANGE,
                subject_token=user["user_token"],
                subject_token_type=USER,
                audience=lender.client_id,
            )
        ).json()
        shared = (
            await call(
                "/oauth/token",
                lender,
                grant_type=EXCHANGE,
                subject_token=user["user_id"],
                subject_token_type=MULTI,
                audience=urn,
            )
        ).json()
        forked = (
            await call("/oauth/token", partner, grant_type="refresh_token", refresh_token=shared["refresh_token"])
        ).json()
        rotated = (
            await call("/oauth/token", partner, grant_type="refresh_token", refresh_token=forked["refresh_token"])
        ).json()
        await call(
            "/oauth/token", partner, grant_type="refresh_token", refresh_token=forked["refresh_token"]
        )  # grace retry
        await call("/oauth/token", partner, grant_type="refresh_token", refresh_token=rotated["refresh_token"])
        await call("/oauth/token", partner, grant_type="refresh_token", refresh_token=forked["refresh_token"])  # replay
        await call("/oauth/introspect", partner, token=shared["access_token"])
        await call("/oauth/introspect", lender, token=own["refresh_token"])
        wrong = "0123456789abcdef0123456789abcdef"
        seen.add(wrong)
        bad = await http.post(
            "/oauth/token",
            json={"grant_type": "client_credentials"},
            headers={"PLAID-CLIENT-ID": lender.client_id, "PLAID-SECRET": wrong},
        )
        assert bad.status_code == 401
        await http.post(
            "/oauth/token",
            content=f"grant_type=refresh_token&refresh_token={own['refresh_token']}&scope=bad\x7f",
            headers={"content-type": "application/x-www-form-urlencoded", **lender.headers},
        )
        await call("/oauth/revoke", lender, token=own["refresh_token"])
        await call("/oauth/revoke", lender, token=shared["refresh_token"])
        await call("/user/remove", lender, user_id=user["user_id"])

    assert len(seen) >= 12
    await asyncio.sleep(0.2)
    log_text = log_path.read_text()
    assert '"path": "/oauth/token"' in log_text  # the server did log the requests
    async with sessions() as session:
        dumps = {
            table: "\n".join((await session.execute(text(f"SELECT t::text FROM {table} t"))).scalars())  # noqa: S608
            for table in TABLES
        }
    assert dumps["audit_events"]  # the scenario was audited
    for value in seen:
        assert value not in log_text, "a secret reached the server log"
        for table, dump in dumps.items():
            assert value not in dump, f"a secret is stored in plaintext in {table}"
