"""What ``/user/*`` leaves in the database: sealed tokens and identity, revoked grants, audit, find_subject."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from sqlalchemy import select, text

from broker.crypto import envelope, tokens
from broker.db.models import AuditEvent, Grant, TenantKey, User
from broker.keys import sealing
from broker.users import service
from tests.users_helpers import add_grant, assert_ok, call, create_user, grant_state, user_row

IDENTITY = {
    "name": {"given_name": "Grace", "family_name": "Hopper"},
    "date_of_birth": "1906-12-09",
    "emails": [{"data": "grace.hopper@example.com", "primary": True}],
}
REPORT = {"first_name": "Grace", "last_name": "Hopper", "ssn_last_4": "4321"}


@pytest.fixture
async def lender(make_tenant):
    return await make_tenant("storing lender")


@pytest.fixture
async def other(make_tenant):
    return await make_tenant("storing other")


async def raw_row(sessions, user_id: str) -> dict[str, object]:
    async with sessions() as session:
        result = await session.execute(text("SELECT * FROM users WHERE user_id = :u"), {"u": user_id})
        return dict(result.mappings().one())


def as_text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


async def test_user_token_and_identity_are_sealed_at_rest(client, lender, sessions, runtime):
    created = await create_user(client, lender, "sealed", identity=IDENTITY, consumer_report_user_identity=REPORT)
    row = await raw_row(sessions, created["user_id"])
    dump = " ".join(as_text(v) for v in row.values())
    for secret in (created["user_token"], "Grace", "Hopper", "grace.hopper", "1906-12-09", "4321"):
        assert secret not in dump
    assert created["user_token"].split("-", 2)[2] not in dump  # not even the uuid part
    async with sessions() as session:
        dek_id = await session.scalar(select(TenantKey.id).where(TenantKey.tenant_id == lender.tenant_id))
    # sealed under the lender's data key, which the ring's active key wraps
    assert str(row["user_token_enc"]).startswith(f"v2.{dek_id}.")
    assert str(row["identity_enc"]).startswith(f"v2.{dek_id}.")
    assert row["user_token_digest"] == tokens.digest(runtime.ring.hash_key, created["user_token"])

    aad = envelope.aad_for("users", "user_token", lender.tenant_id, row["id"])
    async with sessions() as session:
        assert (await sealing.open_(session, runtime.ring, str(row["user_token_enc"]), aad)).decode() == created[
            "user_token"
        ]
        profile = await sealing.open_(
            session,
            runtime.ring,
            str(row["identity_enc"]),
            envelope.aad_for("users", "identity", lender.tenant_id, row["id"]),
        )
    assert json.loads(profile) == {"identity": IDENTITY, "consumer_report_user_identity": REPORT}


async def test_a_sealed_token_copied_to_another_row_does_not_open(client, lender, sessions, runtime):
    a = await raw_row(sessions, (await create_user(client, lender))["user_id"])
    b = await raw_row(sessions, (await create_user(client, lender))["user_id"])
    async with sessions() as session:
        aad = envelope.aad_for("users", "user_token", lender.tenant_id, a["id"])
        assert await sealing.open_(session, runtime.ring, str(a["user_token_enc"]), aad)
        moved = envelope.aad_for("users", "user_token", lender.tenant_id, b["id"])
        with pytest.raises(envelope.EnvelopeError):
            await sealing.open_(session, runtime.ring, str(a["user_token_enc"]), moved)


async def test_audit_events_carry_no_token_or_identity(client, lender, sessions):
    created = await create_user(client, lender, identity=IDENTITY)
    assert_ok(await call(client, "/user/update", lender, user_id=created["user_id"], identity={"date_of_birth": None}))
    assert_ok(await call(client, "/user/remove", lender, user_token=created["user_token"]))
    async with sessions() as session:
        events = list(
            (await session.execute(select(AuditEvent).where(AuditEvent.tenant_id == lender.tenant_id))).scalars()
        )
    assert {e.action for e in events} >= {"user.created", "user.updated", "user.removed"}
    dump = json.dumps([[e.actor, e.action, e.user_id, e.request_id, e.detail] for e in events])
    for secret in (created["user_token"], lender.secret, "Grace", "Hopper"):
        assert secret not in dump
    assert all(e.request_id for e in events if e.action.startswith("user."))


async def test_remove_drops_identity_and_leaves_a_tombstone(client, lender, sessions):
    created = await create_user(client, lender, "tomb", identity=IDENTITY)
    assert_ok(await call(client, "/user/remove", lender, user_id=created["user_id"]))
    row = await raw_row(sessions, created["user_id"])
    assert row["removed_at"] is not None
    assert row["identity_enc"] is None
    assert row["client_user_id"] == "tomb"


async def test_remove_revokes_every_grant_of_the_user_and_nothing_else(client, lender, other, sessions):
    created = await create_user(client, lender, "with-grants")
    bystander = await create_user(client, lender, "bystander")
    foreign = await create_user(client, other, "with-grants")
    user = await user_row(sessions, created["user_id"])
    root = await add_grant(sessions, lender.tenant_id, user.id)
    child = await add_grant(sessions, lender.tenant_id, user.id, parent=root, kind="exchange")
    grandchild = await add_grant(sessions, lender.tenant_id, user.id, parent=child, kind="party")
    earlier = await add_grant(sessions, lender.tenant_id, user.id, revoked_reason="revoked.by_client")
    bystander_grant = await add_grant(sessions, lender.tenant_id, (await user_row(sessions, bystander["user_id"])).id)
    foreign_grant = await add_grant(sessions, other.tenant_id, (await user_row(sessions, foreign["user_id"])).id)
    client_grant = await add_grant(sessions, lender.tenant_id, None, kind="client_credentials")
    earlier_revoked_at, _ = await grant_state(sessions, earlier.id)

    assert_ok(await call(client, "/user/remove", lender, user_id=created["user_id"]))

    for grant in (root, child, grandchild):
        revoked_at, reason = await grant_state(sessions, grant.id)
        assert revoked_at is not None
        assert reason == "user.removed"
    assert await grant_state(sessions, earlier.id) == (earlier_revoked_at, "revoked.by_client")
    for grant in (bystander_grant, foreign_grant, client_grant):
        assert await grant_state(sessions, grant.id) == (None, None)

    async with sessions() as session:
        event = (
            await session.execute(
                select(AuditEvent).where(AuditEvent.user_id == created["user_id"], AuditEvent.action == "user.removed")
            )
        ).scalar_one()
    assert event.detail == {"grants_revoked": 3}
    assert event.actor == lender.client_id


async def test_removal_attempt_by_another_tenant_leaves_user_and_grants_intact(client, lender, other, sessions):
    created = await create_user(client, lender)
    grant = await add_grant(sessions, lender.tenant_id, (await user_row(sessions, created["user_id"])).id)
    response = await call(client, "/user/remove", other, user_id=created["user_id"])
    assert response.json()["error_code"] == "USER_NOT_FOUND"
    response = await call(client, "/user/remove", other, user_token=created["user_token"])
    assert response.json()["error_code"] == "USER_NOT_FOUND"
    assert await grant_state(sessions, grant.id) == (None, None)
    row = await raw_row(sessions, created["user_id"])
    assert row["removed_at"] is None


# --- find_subject ----------------------------------------------------------------------------------


async def test_find_subject_by_user_id_or_token_within_the_tenant(client, lender, other, runtime):
    created = await create_user(client, lender)
    async with runtime.sessions() as session, session.begin():
        by_id = await service.find_subject(session, runtime.ring, lender.tenant_id, created["user_id"])
        by_token = await service.find_subject(session, runtime.ring, lender.tenant_id, created["user_token"])
        foreign = await service.find_subject(session, runtime.ring, other.tenant_id, created["user_id"])
        foreign_token = await service.find_subject(session, runtime.ring, other.tenant_id, created["user_token"])
        unknown = await service.find_subject(session, runtime.ring, lender.tenant_id, "usr_unknown")
        unlocked = await service.find_subject(session, runtime.ring, lender.tenant_id, created["user_id"], lock=False)
    assert isinstance(by_id, User)
    assert by_token is not None
    assert by_id.id == by_token.id
    assert by_id.user_id == created["user_id"]
    assert by_id.tenant_id == lender.tenant_id
    assert foreign is None
    assert foreign_token is None
    assert unknown is None
    assert unlocked is not None


async def test_find_subject_does_not_return_a_removed_user(client, lender, runtime):
    created = await create_user(client, lender)
    assert_ok(await call(client, "/user/remove", lender, user_id=created["user_id"]))
    async with runtime.sessions() as session, session.begin():
        assert await service.find_subject(session, runtime.ring, lender.tenant_id, created["user_id"]) is None
        assert await service.find_subject(session, runtime.ring, lender.tenant_id, created["user_token"]) is None


async def test_a_removal_waits_for_an_exchange_holding_the_subject_and_revokes_its_grant(client, lender, runtime):
    """An exchange that found the subject (FOR SHARE) and then adds a grant cannot outlive a removal."""
    created = await create_user(client, lender)

    async def remove() -> int:
        async with runtime.sessions() as other_session:
            return await service.remove_user(
                other_session,
                runtime.ring,
                tenant_id=lender.tenant_id,
                user_id=created["user_id"],
                user_token=None,
                actor=lender.client_id,
                request_id=None,
            )

    async with runtime.sessions() as session, session.begin():
        user = await service.find_subject(session, runtime.ring, lender.tenant_id, created["user_id"])
        assert user is not None
        removal = asyncio.create_task(remove())
        await asyncio.sleep(0.3)
        assert not removal.done()
        grant = await add_grant_in(session, lender.tenant_id, user.id)
    assert await removal == 1
    revoked_at, reason = await grant_state(runtime.sessions, grant)
    assert revoked_at is not None
    assert reason == "user.removed"


async def test_an_exchange_after_a_concurrent_removal_finds_no_subject(client, lender, runtime):
    created = await create_user(client, lender)
    async with runtime.sessions() as remover, remover.begin():
        user = await service.find_subject(remover, runtime.ring, lender.tenant_id, created["user_id"], lock=False)
        assert user is not None
        await remover.execute(text("UPDATE users SET removed_at = now() WHERE id = :id"), {"id": user.id})

        async def exchange() -> User | None:
            async with runtime.sessions() as session, session.begin():
                return await service.find_subject(session, runtime.ring, lender.tenant_id, created["user_id"])

        lookup = asyncio.create_task(exchange())
        await asyncio.sleep(0.3)
        assert not lookup.done()
    assert await lookup is None


async def add_grant_in(session, tenant_id, user_pk) -> uuid.UUID:
    grant = Grant(
        tenant_id=tenant_id,
        kind="user",
        requester_tenant_id=tenant_id,
        holder_tenant_id=tenant_id,
        user_pk=user_pk,
        scopes=["user:read"],
        audience="test",
        access_token_ttl=900,
        refresh_token_ttl=86_400,
    )
    session.add(grant)
    await session.flush()
    return grant.id


# --- concurrency in-process ------------------------------------------------------------------------


async def test_concurrent_service_creates_make_one_user(lender, runtime, sessions):
    async def one() -> service.CreatedUser:
        async with runtime.sessions() as session:
            return await service.create_user(
                session,
                runtime.ring,
                tenant_id=lender.tenant_id,
                client_user_id="racing",
                token_env="sandbox",
                actor=lender.client_id,
                request_id=None,
            )

    results = await asyncio.gather(*(one() for _ in range(10)))
    assert len({(r.user_id, r.user_token) for r in results}) == 1
    assert sum(r.created for r in results) == 1
    async with sessions() as session:
        count = (
            await session.execute(
                text("SELECT count(*) FROM users WHERE tenant_id = :t AND client_user_id = 'racing'"),
                {"t": lender.tenant_id},
            )
        ).scalar_one()
    assert count == 1
