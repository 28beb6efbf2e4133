"""``audiences.service.resolve_targets``: what the token exchange calls; all-or-nothing, at most two queries."""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event

from broker import errors
from broker.audiences import policies
from broker.audiences import service as audiences
from broker.tenants import service as tenants
from tests.admin_helpers import new_urn


async def _audience(runtime, *member_ids: str) -> str:
    urn = new_urn()
    async with runtime.sessions() as session, session.begin():
        await audiences.create_audience(session, urn, "test", actor="test", request_id=None)
        for client_id in member_ids:
            await audiences.add_member(session, urn, client_id, actor="test", request_id=None)
    return urn


async def _policy(runtime, owner: str, target: str, **spec: Any) -> None:
    async with runtime.sessions() as session, session.begin():
        await policies.upsert_policy(
            session, owner, policies.PolicySpec(target=target, **spec), actor="test", request_id=None
        )


async def _disable(runtime, client_id: str) -> None:
    async with runtime.sessions() as session, session.begin():
        await tenants.disable_tenant(session, client_id, actor="test", request_id=None)


async def _resolve(runtime, tenant_id: uuid.UUID, entries: list[str]) -> list[audiences.ResolvedTarget]:
    async with runtime.sessions() as session, session.begin():
        return await audiences.resolve_targets(session, tenant_id, entries)


@contextmanager
def _count_queries(runtime):
    statements: list[str] = []

    def before(_conn, _cursor, statement, *_args):
        statements.append(statement)

    event.listen(runtime.engine.sync_engine, "before_cursor_execute", before)
    try:
        yield statements
    finally:
        event.remove(runtime.engine.sync_engine, "before_cursor_execute", before)


@pytest.fixture
async def world(runtime, make_tenant):
    lender = await make_tenant("lender")
    second = await make_tenant("second client")
    p1, p2, p3 = [await make_tenant(f"partner {i}", kind="partner") for i in range(3)]
    urn_two = await _audience(runtime, p1.client_id, p2.client_id)
    urn_one = await _audience(runtime, p3.client_id)
    await _policy(runtime, lender.client_id, urn_two, allowed_scopes=("user:read",), refresh_token_ttl=2_592_000)
    await _policy(runtime, lender.client_id, urn_one)
    await _policy(runtime, lender.client_id, second.client_id, access_token_ttl=600)
    return {"lender": lender, "second": second, "partners": (p1, p2, p3), "urn_two": urn_two, "urn_one": urn_one}


async def test_mixed_client_ids_and_urns_resolve_in_order(runtime, world):
    lender, second = world["lender"], world["second"]
    p1, p2, p3 = world["partners"]
    entries = [world["urn_two"], second.client_id, world["urn_one"]]
    resolved = await _resolve(runtime, lender.tenant_id, entries)
    assert [r.entry for r in resolved] == entries
    two, client, one = resolved
    assert two.partner_tenant_ids == tuple(sorted([p1.tenant_id, p2.tenant_id]))
    assert two.allowed_scopes == ("user:read",)
    assert (two.access_token_ttl, two.refresh_token_ttl) == (None, 2_592_000)
    assert client == audiences.ResolvedTarget(
        entry=second.client_id,
        partner_tenant_ids=(second.tenant_id,),
        allowed_scopes=None,
        access_token_ttl=600,
        refresh_token_ttl=None,
    )
    assert one.partner_tenant_ids == (p3.tenant_id,)
    assert one.allowed_scopes is None


async def test_duplicates_resolve_once_and_empty_is_empty(runtime, world):
    lender, second = world["lender"], world["second"]
    resolved = await _resolve(runtime, lender.tenant_id, [second.client_id, world["urn_one"], second.client_id])
    assert [r.entry for r in resolved] == [second.client_id, world["urn_one"]]
    assert await _resolve(runtime, lender.tenant_id, []) == []


async def test_at_most_two_queries_whatever_the_number_of_entries(runtime, make_tenant):
    lender = await make_tenant("lender")
    entries = []
    for _ in range(5):
        partner = await make_tenant("p", kind="partner")
        urn = await _audience(runtime, partner.client_id)
        target = await make_tenant("c")
        await _policy(runtime, lender.client_id, urn)
        await _policy(runtime, lender.client_id, target.client_id)
        entries += [urn, target.client_id]
    async with runtime.sessions() as session, session.begin():
        with _count_queries(runtime) as statements:
            resolved = await audiences.resolve_targets(session, lender.tenant_id, entries)
    assert len(resolved) == 10
    assert len(statements) == 2
    assert all(s.lstrip().upper().startswith("SELECT") for s in statements)
    async with runtime.sessions() as session, session.begin():
        with _count_queries(runtime) as statements:
            await audiences.resolve_targets(session, lender.tenant_id, entries[1::2])
    assert len(statements) == 1


async def _refused(runtime, tenant_id: uuid.UUID, entries: list[str], entry: str) -> errors.InvalidTarget:
    with pytest.raises(errors.InvalidTarget) as caught:
        await _resolve(runtime, tenant_id, entries)
    assert caught.value.error == "invalid_target"
    assert caught.value.description == f"audience {entry!r} is not allowed for this client"
    return caught.value


async def test_unknown_entries_are_refused(runtime, world):
    lender = world["lender"]
    for entry in ["0" * 24, "urn:test:never:registered", "not a client", "URN:test:x"]:
        refused = await _refused(runtime, lender.tenant_id, [entry], entry)
        assert refused.debug == "unknown client id or audience"


async def test_registered_targets_without_a_policy_are_refused(runtime, world, make_tenant):
    lender = world["lender"]
    stranger = await make_tenant("no policy toward me")
    partner = await make_tenant("p", kind="partner")
    urn = await _audience(runtime, partner.client_id)
    assert (await _refused(runtime, lender.tenant_id, [stranger.client_id], stranger.client_id)).debug == (
        "no policy toward this client"
    )
    assert (await _refused(runtime, lender.tenant_id, [urn], urn)).debug == "no policy toward this audience"
    seeded = "urn:plaid:params:cra-partner:freddie-mac"
    await _refused(runtime, lender.tenant_id, [seeded], seeded)


async def test_another_tenants_policy_does_not_count(runtime, world, make_tenant):
    outsider = await make_tenant("outsider")
    await _refused(runtime, outsider.tenant_id, [world["urn_one"]], world["urn_one"])
    await _refused(runtime, outsider.tenant_id, [world["second"].client_id], world["second"].client_id)


async def test_a_tenant_cannot_target_itself(runtime, world):
    lender = world["lender"]
    await _refused(runtime, lender.tenant_id, [lender.client_id], lender.client_id)


async def test_audience_without_members_is_refused(runtime, make_tenant):
    lender = await make_tenant("lender")
    urn = await _audience(runtime)
    await _policy(runtime, lender.client_id, urn)
    assert (await _refused(runtime, lender.tenant_id, [urn], urn)).debug == "audience has no active member"


async def test_disabled_client_target_is_refused(runtime, world):
    lender, second = world["lender"], world["second"]
    await _disable(runtime, second.client_id)
    refused = await _refused(runtime, lender.tenant_id, [second.client_id], second.client_id)
    assert refused.debug == "target client is disabled"


async def test_disabled_members_are_left_out_and_an_all_disabled_audience_is_refused(runtime, world):
    lender = world["lender"]
    p1, p2, p3 = world["partners"]
    await _disable(runtime, p1.client_id)
    (two,) = await _resolve(runtime, lender.tenant_id, [world["urn_two"]])
    assert two.partner_tenant_ids == (p2.tenant_id,)
    await _disable(runtime, p3.client_id)
    await _refused(runtime, lender.tenant_id, [world["urn_one"]], world["urn_one"])


async def test_all_or_nothing(runtime, world):
    lender, second = world["lender"], world["second"]
    bad = "urn:test:never:registered"
    good = [world["urn_two"], second.client_id]
    for entries in ([*good, bad], [bad, *good], [good[0], bad, good[1]]):
        await _refused(runtime, lender.tenant_id, entries, bad)


@pytest.mark.parametrize("entry", ["a\u0000b", "\ud800", "", "x" * 300, "urn:" + "x" * 300])
async def test_unstorable_entries_are_refused_without_a_database_error(runtime, world, entry):
    lender = world["lender"]
    with pytest.raises(errors.InvalidTarget) as caught:
        await _resolve(runtime, lender.tenant_id, [world["urn_one"], entry])
    assert caught.value.debug == "malformed audience entry"
    assert len(caught.value.description) < 200


async def test_refusal_never_names_the_reason(runtime, world, make_tenant):
    lender = world["lender"]
    stranger = await make_tenant("exists")
    unknown = "e" * 24
    existing = await _refused(runtime, lender.tenant_id, [stranger.client_id], stranger.client_id)
    missing = await _refused(runtime, lender.tenant_id, [unknown], unknown)
    assert existing.description.replace(stranger.client_id, "X") == missing.description.replace(unknown, "X")
