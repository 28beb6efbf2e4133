"""The hot-pool rotation (broker.oauth.flows.rotation): it takes the common case and leaves every other case,
untouched, to the full refresh flow."""

from __future__ import annotations

from sqlalchemy import func, select

from broker.crypto import tokens
from broker.db.models import AuditEvent, Grant, RefreshToken
from broker.http.auth import Credentials
from broker.oauth.flows import rotation
from broker.tenants import clients
from tests.oauth_helpers import EXCHANGE, MULTI, build_world, introspect, post_token, token_ok


async def _authenticated(runtime, tenant):
    return await clients.authenticate(runtime, Credentials(tenant.client_id, tenant.secret))


def _params(refresh_token: str, **extra: str) -> dict[str, list[str]]:
    return {"grant_type": ["refresh_token"], "refresh_token": [refresh_token], **{k: [v] for k, v in extra.items()}}


async def _rows_of_grant(sessions, grant_id) -> int:
    async with sessions() as session:
        return await session.scalar(select(func.count()).where(RefreshToken.grant_id == grant_id))


async def test_a_first_use_by_its_holder_rotates_in_one_transaction(client, make_tenant, runtime, sessions):
    lender = await make_tenant("fast-rotation")
    first = await token_ok(client, lender, grant_type="client_credentials", scope="user:read")
    caller = await _authenticated(runtime, lender)
    issued = await rotation.try_rotate(runtime, caller, _params(first["refresh_token"]), "req-fast-1")
    assert issued is not None
    assert issued.refresh_token != first["refresh_token"]
    assert issued.scope == ("user:read",)
    assert (await introspect(client, lender, issued.access_token))["active"] is True
    assert (await introspect(client, lender, issued.refresh_token))["active"] is True
    assert (await introspect(client, lender, first["refresh_token"]))["active"] is False
    async with sessions() as session:
        old = await session.scalar(
            select(RefreshToken).where(
                RefreshToken.digest == tokens.digest(runtime.ring.hash_key, first["refresh_token"])
            )
        )
        new = await session.scalar(
            select(RefreshToken).where(
                RefreshToken.digest == tokens.digest(runtime.ring.hash_key, issued.refresh_token)
            )
        )
        event = await session.scalar(select(AuditEvent).where(AuditEvent.request_id == "req-fast-1"))
    assert old.rotated_at is not None
    assert old.successor_id == new.id
    assert old.retry_pair_enc is not None
    assert old.retry_pair_enc.startswith("v2.")
    assert new.parent_id == old.id
    assert new.token_enc.startswith("v2.")
    assert (event.action, event.actor, event.grant_id) == ("token.refreshed", lender.client_id, issued.grant_id)

    # The full flow opens the retry pair the fast path sealed: a retry inside the grace window gets the same pair.
    retry = await post_token(client, lender, grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert retry.status_code == 200, retry.text
    assert (retry.json()["access_token"], retry.json()["refresh_token"]) == (issued.access_token, issued.refresh_token)

    # Using the successor drops the predecessor's sealed pair in the same statement.
    again = await rotation.try_rotate(runtime, caller, _params(issued.refresh_token), "req-fast-2")
    assert again is not None
    async with sessions() as session:
        old_pair = await session.scalar(select(RefreshToken.retry_pair_enc).where(RefreshToken.id == old.id))
    assert old_pair is None


async def test_every_other_case_is_left_to_the_full_flow_with_nothing_written(client, make_tenant, runtime, sessions):
    lender = await make_tenant("fast-rotation-owner")
    stranger = await make_tenant("fast-rotation-stranger")
    first = await token_ok(client, lender, grant_type="client_credentials")
    caller = await _authenticated(runtime, lender)
    issued = await rotation.try_rotate(runtime, caller, _params(first["refresh_token"]), "req-fast-3")
    assert issued is not None
    rows = await _rows_of_grant(sessions, issued.grant_id)

    # a rotated token (retry or replay), a token of another holder, an unknown token, no token
    assert await rotation.try_rotate(runtime, caller, _params(first["refresh_token"]), "r") is None
    outsider = await _authenticated(runtime, stranger)
    assert await rotation.try_rotate(runtime, outsider, _params(issued.refresh_token), "r") is None
    assert await rotation.try_rotate(runtime, caller, _params("pdr-unknown"), "r") is None
    assert await rotation.try_rotate(runtime, caller, {"grant_type": ["refresh_token"]}, "r") is None
    assert await _rows_of_grant(sessions, issued.grant_id) == rows
    # ... and the successor is still unused: the stranger's attempt did not rotate it
    assert (await introspect(client, lender, issued.refresh_token))["active"] is True


async def test_a_revoked_grant_is_left_to_the_full_flow(client, make_tenant, runtime, sessions):
    lender = await make_tenant("fast-rotation-revoked")
    first = await token_ok(client, lender, grant_type="client_credentials")
    response = await client.post("/oauth/revoke", json={"token": first["refresh_token"]}, headers=lender.headers)
    assert response.status_code == 200
    caller = await _authenticated(runtime, lender)
    assert await rotation.try_rotate(runtime, caller, _params(first["refresh_token"]), "r") is None
    refused = await post_token(client, lender, grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert refused.json()["error"] == "invalid_grant"


async def test_a_party_forks_its_own_lineage_and_a_non_party_is_left_to_the_full_flow(
    client, make_tenant, runtime, sessions
):
    world = await build_world(client, sessions, make_tenant)
    shared = await token_ok(
        client,
        world.lender,
        grant_type=EXCHANGE,
        subject_token=world.user["user_id"],
        subject_token_type=MULTI,
        audience=f"{world.urn_a},{world.urn_b}",
    )
    partner = await _authenticated(runtime, world.partner_a)
    forked = await rotation.try_rotate(runtime, partner, _params(shared["refresh_token"]), "req-fork-1")
    assert forked is not None
    async with sessions() as session:
        grant = await session.get(Grant, forked.grant_id)
        parent = await session.get(Grant, grant.parent_id)
        event = await session.scalar(select(AuditEvent).where(AuditEvent.request_id == "req-fork-1"))
    assert (grant.kind, grant.holder_tenant_id, grant.requester_tenant_id) == (
        "party",
        world.partner_a.tenant_id,
        world.partner_a.tenant_id,
    )
    assert (grant.tenant_id, grant.user_pk, grant.audience) == (parent.tenant_id, parent.user_pk, parent.audience)
    assert parent.kind == "multi_party"
    assert grant.path == [*parent.path, parent.id]
    assert event.action == "token.party_forked"
    assert event.detail == {"shared_grant_id": str(parent.id), "scope": list(forked.scope)}
    assert (await introspect(client, world.partner_a, forked.access_token))["active"] is True
    # the shared token does not rotate: a second fork works, and the party's own lineage rotates
    assert await rotation.try_rotate(runtime, partner, _params(shared["refresh_token"]), "req-fork-2") is not None
    assert await rotation.try_rotate(runtime, partner, _params(forked.refresh_token), "req-fork-3") is not None

    outsider = await _authenticated(runtime, world.outsider)
    assert await rotation.try_rotate(runtime, outsider, _params(shared["refresh_token"]), "r") is None
    refused = await post_token(
        client, world.outsider, grant_type="refresh_token", refresh_token=shared["refresh_token"]
    )
    assert refused.json()["error"] == "invalid_grant"

    # the lender revokes the shared token: no party can fork any more, and the forks are dead
    response = await client.post("/oauth/revoke", json={"token": shared["refresh_token"]}, headers=world.lender.headers)
    assert response.status_code == 200
    assert await rotation.try_rotate(runtime, partner, _params(shared["refresh_token"]), "r") is None
    assert (await introspect(client, world.partner_a, forked.access_token))["active"] is False
