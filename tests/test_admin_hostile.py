"""Hostile input on every admin endpoint: always a JSON 4xx (or a 2xx), never a 500."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from tests.admin_helpers import bearer, issue_key

WEIRD_STRINGS = ["", " ", "\u0000", "urn:", "urn:a:b", "a" * 5000, "\u202e", "😀", "%00", "../", "null", "0" * 24]
FIELDS = ["name", "kind", "status", "allowed_scopes", "default_scopes", "access_token_ttl", "refresh_token_ttl",
          "urn", "display_name", "target", "scope", "extra"]  # fmt: skip


def _value(rng: random.Random, depth: int = 0) -> Any:  # noqa: PLR0911
    choice = rng.randrange(9 if depth < 3 else 6)
    if choice == 0:
        return None
    if choice == 1:
        return rng.choice([True, False])
    if choice == 2:
        return rng.choice([0, -1, 1, 59, 900, 2**31, 2**63, 10**30, -(10**30)])
    if choice == 3:
        return rng.choice([0.5, -1.0, 1e300])
    if choice in {4, 5}:
        return rng.choice(WEIRD_STRINGS)
    if choice in {6, 7}:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(FIELDS): _value(rng, depth + 1) for _ in range(rng.randrange(4))}


def _bodies(seed: int, count: int) -> list[Any]:
    rng = random.Random(seed)
    bodies: list[Any] = []
    for _ in range(count):
        if rng.random() < 0.8:
            bodies.append({rng.choice(FIELDS): _value(rng) for _ in range(rng.randrange(1, 5))})
        else:
            bodies.append(_value(rng))
    return bodies


@pytest.fixture(scope="module")
async def headers(runtime):
    _, key = await issue_key(runtime, "write")
    return bearer(key)


@pytest.fixture(scope="module")
async def ids(client, headers, make_tenant):
    tenant = await make_tenant("hostile target")
    partner = await make_tenant("hostile partner", kind="partner")
    urn = "urn:test:hostile:" + tenant.client_id
    await client.post("/admin/v1/audiences", json={"urn": urn, "display_name": "h"}, headers=headers)
    return {"client_id": tenant.client_id, "partner": partner.client_id, "urn": urn}


def _endpoints(ids: dict[str, str]) -> list[tuple[str, str]]:
    return [
        ("POST", "/admin/v1/tenants"),
        ("PATCH", f"/admin/v1/tenants/{ids['client_id']}"),
        ("POST", "/admin/v1/audiences"),
        ("PATCH", f"/admin/v1/audiences/{ids['urn']}"),
        ("PUT", f"/admin/v1/tenants/{ids['client_id']}/policies"),
        ("POST", "/admin/v1/admin-keys"),
    ]


async def test_random_json_bodies_never_cause_a_server_error(client, headers, ids):
    for index, (method, path) in enumerate(_endpoints(ids)):
        for body in _bodies(seed=index, count=60):
            response = await client.request(method, path, content=json.dumps(body), headers=headers)
            assert response.status_code < 500, (method, path, body, response.text)
            assert "error" in response.json() or response.status_code < 300


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin/v1/tenants?limit=%00"),
        ("GET", "/admin/v1/tenants?kind=%ff%fe"),
        ("GET", "/admin/v1/tenants?after=" + "z" * 5000),
        ("GET", "/admin/v1/tenants/" + "a" * 5000),
        ("GET", "/admin/v1/tenants/%C0%AF"),
        ("GET", "/admin/v1/audiences/urn:x:%ff"),
        ("GET", "/admin/v1/audiences/urn:x:%2F"),
        ("DELETE", "/admin/v1/tenants/%00/policies/%00"),
        ("PUT", "/admin/v1/audiences/%00/members/%00"),
        ("DELETE", "/admin/v1/tenants"),
        ("POST", "/admin/v1/admin-keys/%ff/revoke"),
        ("POST", "/admin/v1/tenants/%ff/disable"),
    ],
)
async def test_hostile_paths_and_queries_are_4xx(client, headers, method, path):
    response = await client.request(method, path, headers=headers)
    assert 400 <= response.status_code < 500, response.text
    assert "error" in response.json()


async def test_undecodable_cursor_is_just_an_empty_page(client, headers):
    response = await client.get("/admin/v1/tenants?after=%ff", headers=headers)
    assert response.status_code == 200
    assert response.json() == {"data": [], "next_after": None}


async def test_hostile_authorization_headers_are_401(client):
    for value in ["Bearer " + "bka-" + "A" * 10_000, "Bearer\tbka-x", "bearer bka-" + "%00" * 10, "Bearer bka- x"]:
        response = await client.get("/admin/v1/tenants", headers={"Authorization": value})
        assert response.status_code == 401, (value[:40], response.text)
