"""Fuzzing: schemathesis over broker's own OpenAPI document, for every OAuth, user and admin operation.

Every generated request (valid and invalid bodies, parameters and headers, with real credentials so
the services are reached) must get no 5xx and a response whose status and body the document declares.
The server runs with its real stack (granian, two workers) on a database of its own.

``make test`` runs ``BROKER_FUZZ_EXAMPLES`` (default 10) derandomized examples per operation;
``make fuzz`` runs 1 000 per operation.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import httpx
import hypothesis
import pytest
import requests
import schemathesis
from schemathesis import GenerationMode
from schemathesis import checks as st_checks
from schemathesis.specs.openapi import checks as openapi_checks

from broker.admin_keys import service as admin_keys
from broker.app import build_runtime, create_app
from broker.http import openapi
from broker.settings import Settings
from broker.tenants import service as tenants
from tests.fault_helpers import fresh_database, report, running

EXAMPLES = int(os.environ.get("BROKER_FUZZ_EXAMPLES", "10"))
CHECKS = [
    st_checks.not_a_server_error,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_schema_conformance,
    openapi_checks.response_headers_conformance,
]
STATS: dict[str, int] = {"requests": 0, "server_errors": 0}
SESSION = requests.Session()  # keep-alive: one connection, not one per example


async def _credentials(url: str) -> dict[str, str]:
    runtime = build_runtime(Settings(database_url=url))
    try:
        async with runtime.sessions() as session, session.begin():
            tenant, secret = await tenants.create_tenant(
                session, runtime.ring, tenants.TenantSpec(name="fuzz"), actor="test", request_id=None
            )
            _, key = await admin_keys.create_key(
                session, runtime.ring, name="fuzz", scope="write", actor="test", request_id=None
            )
    finally:
        await runtime.close()
    return {"client_id": tenant.client_id, "secret": secret, "admin_key": key}


@pytest.fixture(scope="module")
def fuzz_target() -> Iterator[dict[str, Any]]:
    async def _enter(stack: Any) -> tuple[str, dict[str, str]]:
        url = await stack.enter_async_context(fresh_database(os.environ["BROKER_DATABASE_URL"]))
        return url, await _credentials(url)

    loop = asyncio.new_event_loop()
    from contextlib import AsyncExitStack  # noqa: PLC0415

    stack = AsyncExitStack()
    try:
        url, creds = loop.run_until_complete(_enter(stack))
        env = {
            "BROKER_DATABASE_URL": url,
            # fuzzed credentials would otherwise be throttled after a few failures
            "BROKER_AUTH_FAILURES_PER_CLIENT_ADDRESS": "1000000000",
            "BROKER_AUTH_FAILURES_PER_ADDRESS": "1000000000",
            "BROKER_AUTH_FAILURES_PER_CLIENT": "1000000000",
        }
        with running(env) as server:
            document = httpx.get(f"{server.url}/schema/openapi.json", timeout=10).json()
            yield {"url": server.url, "creds": creds, "document": document}
        report(f"fuzz: {STATS['requests']} requests, {STATS['server_errors']} server errors (5xx)")
    finally:
        loop.run_until_complete(stack.aclose())
        loop.close()


def _operations() -> list[Any]:
    """Every OAuth, user and admin operation of the document the app serves (built here, as at /schema)."""
    document = openapi.augment(create_app(Settings()).openapi_schema.to_schema())
    loaded = schemathesis.openapi.from_dict(document).include(path_regex=r"^/(oauth|user|admin)/")
    return [result.ok() for result in loaded.get_all_operations()]  # type: ignore[union-attr]


OPERATIONS = _operations()


def _auth(path: str, creds: dict[str, str]) -> dict[str, str]:
    if path.startswith("/admin/"):
        return {"Authorization": f"Bearer {creds['admin_key']}"}
    return {"PLAID-CLIENT-ID": creds["client_id"], "PLAID-SECRET": creds["secret"]}


def test_every_oauth_user_and_admin_operation_is_fuzzed():
    paths = {operation.path for operation in OPERATIONS}
    assert {"/oauth/token", "/oauth/introspect", "/oauth/revoke", "/user/create", "/user/remove"} <= paths
    assert sum(path.startswith("/admin/v1/") for path in paths) >= 20
    for operation in OPERATIONS:
        if (
            operation.method.upper() in {"POST", "PUT", "PATCH"}
            and not operation.path.endswith(("/revoke", "/disable", "/redeliver", "/test"))
            and "/members/" not in operation.path
        ):
            assert operation.body, f"{operation.label} documents no request body"


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda operation: operation.label)
def test_no_operation_answers_5xx_or_breaks_its_documented_contract(
    operation: Any, fuzz_target: dict[str, Any]
) -> None:
    strategy = hypothesis.strategies.one_of(
        operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)
    )

    @hypothesis.given(case=strategy)
    @hypothesis.settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(hypothesis.HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
    )
    def fuzz(case: Any) -> None:
        headers = {**(case.headers or {}), **_auth(case.path, fuzz_target["creds"])}
        response = case.call(base_url=fuzz_target["url"], session=SESSION, headers=headers, timeout=30)
        STATS["requests"] += 1
        if response.status_code >= 500:
            STATS["server_errors"] += 1
        case.validate_response(response, checks=CHECKS)

    fuzz()
