"""The audit log's per-tenant hash chains: sealing (also concurrent and in the background) and tamper evidence."""

from __future__ import annotations

import asyncio
from typing import Any

from click.testing import CliRunner
from sqlalchemy import delete, func, select, update

from broker.app import build_runtime
from broker.audit import chain, repository
from broker.audit import service as audit
from broker.cli.main import cli
from broker.db.models import AuditChain, AuditEvent
from tests.oauth_helpers import token_ok


async def _events(runtime, tenant_id, n: int) -> None:
    async with runtime.sessions() as session, session.begin():
        for i in range(n):
            await audit.record(
                session, action="test.event", actor="test", tenant_id=tenant_id, request_id=f"r{i}", detail={"i": i}
            )


async def _chain(sessions, tenant_id) -> list[Any]:
    async with sessions() as session:
        result = await session.execute(
            select(AuditEvent.id, AuditEvent.seq, AuditEvent.hash)
            .where(AuditEvent.tenant_id == tenant_id)
            .order_by(AuditEvent.seq)
        )
        return list(result.all())


async def _verify(runtime, tenant_id) -> chain.Verification:
    async with runtime.sessions() as session:
        await chain.seal_pending(session, runtime.ring, wait=True)  # as broker audit verify does
        return await chain.verify(session, runtime.ring, tenant_id=tenant_id)


async def test_sealing_links_every_event_of_a_tenant_in_order(make_tenant, runtime, sessions):
    lender = await make_tenant("chained")
    await _events(runtime, lender.tenant_id, 5)
    result = await _verify(runtime, lender.tenant_id)
    assert result.ok, result.problems
    rows = await _chain(sessions, lender.tenant_id)
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1))  # tenant.created and the five events
    assert len(rows) == 6
    assert all(len(r.hash) == 32 for r in rows)
    async with sessions() as session:
        head = (await session.execute(select(AuditChain).where(AuditChain.chain_id == lender.tenant_id))).scalar_one()
    assert (head.seq, head.hash) == (rows[-1].seq, rows[-1].hash)


async def test_verify_detects_an_edited_row(make_tenant, runtime, sessions):
    lender = await make_tenant("edited")
    other = await make_tenant("untouched")
    await _events(runtime, lender.tenant_id, 4)
    await _events(runtime, other.tenant_id, 4)
    assert (await _verify(runtime, lender.tenant_id)).ok
    victim = (await _chain(sessions, lender.tenant_id))[2]
    async with sessions() as session, session.begin():
        await session.execute(update(AuditEvent).where(AuditEvent.id == victim.id).values(actor="someone-else"))
    result = await _verify(runtime, lender.tenant_id)
    assert [(p.kind, p.event_id) for p in result.problems] == [("edited", victim.id)]
    assert (await _verify(runtime, other.tenant_id)).ok  # other tenants' chains are unaffected


async def test_verify_detects_a_deleted_row_in_the_middle_and_at_the_end(make_tenant, runtime, sessions):
    lender = await make_tenant("deleted")
    await _events(runtime, lender.tenant_id, 5)
    assert (await _verify(runtime, lender.tenant_id)).ok
    rows = await _chain(sessions, lender.tenant_id)
    async with sessions() as session, session.begin():
        await session.execute(delete(AuditEvent).where(AuditEvent.id == rows[2].id))
    result = await _verify(runtime, lender.tenant_id)
    assert [(p.kind, p.seq) for p in result.problems] == [("deleted", rows[2].seq)]

    async with sessions() as session, session.begin():
        await session.execute(delete(AuditEvent).where(AuditEvent.id == rows[-1].id))
    result = await _verify(runtime, lender.tenant_id)
    assert [p.kind for p in result.problems] == ["deleted", "deleted"]
    assert "head says" in result.problems[-1].detail


async def test_renumbering_over_a_deletion_is_still_detected(make_tenant, runtime, sessions):
    lender = await make_tenant("renumbered")
    await _events(runtime, lender.tenant_id, 3)
    assert (await _verify(runtime, lender.tenant_id)).ok
    rows = await _chain(sessions, lender.tenant_id)
    async with sessions() as session, session.begin():
        await session.execute(delete(AuditEvent).where(AuditEvent.id == rows[1].id))
        for row in rows[2:]:
            await session.execute(update(AuditEvent).where(AuditEvent.id == row.id).values(seq=row.seq - 1))
        await session.execute(
            update(AuditChain).where(AuditChain.chain_id == lender.tenant_id).values(seq=rows[-1].seq - 1)
        )
    result = await _verify(runtime, lender.tenant_id)
    assert not result.ok
    assert {p.kind for p in result.problems} == {"edited"}


async def test_two_sealers_at_once_build_one_consistent_chain(make_tenant, settings, sessions):
    lender = await make_tenant("busy")
    replicas = [build_runtime(settings) for _ in range(2)]
    try:

        async def write_and_seal(runtime: Any) -> None:
            for _ in range(5):
                await _events(runtime, lender.tenant_id, 20)
                async with runtime.sessions() as session:
                    await chain.seal_pending(session, runtime.ring, batch=7)

        await asyncio.gather(*(write_and_seal(r) for r in replicas))
        result = await _verify(replicas[0], lender.tenant_id)
        assert result.ok, result.problems
        rows = await _chain(sessions, lender.tenant_id)
        assert [r.seq for r in rows] == list(range(1, 202))
    finally:
        for runtime in replicas:
            await runtime.close()


async def test_an_explicit_seal_waits_for_a_sealer_holding_the_chain_and_a_background_one_skips_it(
    make_tenant, runtime, sessions
):
    lender = await make_tenant("contended")
    await _events(runtime, lender.tenant_id, 3)
    async with sessions() as session, session.begin():
        await repository.lock_head(session, lender.tenant_id)  # the chain's head row exists (and is committed)
    async with sessions() as holder, holder.begin():  # another sealer, mid-transaction on this chain
        assert await repository.lock_head(holder, lender.tenant_id) is not None
        async with runtime.sessions() as session:
            await chain.seal_pending(session, runtime.ring)  # skips the locked chain and returns
        assert {r.seq for r in await _chain(sessions, lender.tenant_id)} == {None}

        async def explicit() -> int:
            async with runtime.sessions() as session:
                return await chain.seal_pending(session, runtime.ring, wait=True)

        waiting = asyncio.create_task(explicit())
        await asyncio.sleep(0.2)
        assert not waiting.done()  # queued behind the holder's lock, not returned early
    assert await waiting >= 4  # tenant.created and the three events, once the holder committed
    assert [r.seq for r in await _chain(sessions, lender.tenant_id)] == [1, 2, 3, 4]


async def test_serving_processes_seal_in_the_background(make_tenant, settings, sessions):
    lender = await make_tenant("background")
    runtime = build_runtime(settings.model_copy(update={"audit_seal_interval_seconds": 0.05}))
    try:
        await _events(runtime, lender.tenant_id, 3)
        async with chain.sealing(runtime):
            for _ in range(100):
                async with sessions() as session:
                    unsealed = await session.scalar(
                        select(func.count()).where(AuditEvent.tenant_id == lender.tenant_id, AuditEvent.seq.is_(None))
                    )
                if unsealed == 0:
                    break
                await asyncio.sleep(0.05)
        assert unsealed == 0
    finally:
        await runtime.close()


def _verify_cli(*args: str) -> Any:
    return CliRunner().invoke(cli, ["audit", "verify", *args], catch_exceptions=False)


async def test_audit_verify_on_the_cli(client, make_tenant, sessions):
    lender = await make_tenant("cli audited")
    await token_ok(client, lender, grant_type="client_credentials")
    ok = await asyncio.to_thread(_verify_cli, "--client-id", lender.client_id)
    assert ok.exit_code == 0, ok.output
    assert "ok: no tampering found" in ok.output
    rows = await _chain(sessions, lender.tenant_id)
    async with sessions() as session, session.begin():
        await session.execute(update(AuditEvent).where(AuditEvent.id == rows[0].id).values(detail={"forged": True}))
    bad = await asyncio.to_thread(_verify_cli, "--client-id", lender.client_id, "--json")
    assert bad.exit_code == 1
    assert '"kind": "edited"' in bad.output
    assert (await asyncio.to_thread(_verify_cli, "--client-id", "000000000000000000000000")).exit_code == 1


async def test_sealing_a_large_batch_hands_the_event_loop_back_between_slices(make_tenant, runtime, monkeypatch):
    # Sealing runs inside serving processes: a batch must not hold the event loop for all its links at once.
    lender = await make_tenant("sliced")
    linked = 0
    original = chain.link

    def counting_link(*args: Any) -> bytes:
        nonlocal linked
        linked += 1
        return original(*args)

    monkeypatch.setattr(chain, "link", counting_link)
    seen_midway: set[int] = set()
    done = asyncio.Event()

    async def other_request() -> None:  # stands for a request served by the same loop
        while not done.is_set():
            if 0 < linked < 400:
                seen_midway.add(linked)
            await asyncio.sleep(0)

    sealed = 0
    for _ in range(3):  # the test app's own background sealer may take the chain first: then seal anew
        await _events(runtime, lender.tenant_id, 400)
        linked = 0
        task = asyncio.create_task(other_request())
        async with runtime.sessions() as session, session.begin():  # this tenant's chain only
            sealed = await chain._seal_chain(session, chain.chain_key(runtime.ring), lender.tenant_id, 1000, wait=False)
        done.set()
        await task
        if sealed >= 400:
            break
        done.clear()
        seen_midway.clear()
    assert sealed >= 400
    assert len(seen_midway) >= 400 // chain.YIELD_EVERY - 1
    assert max(seen_midway) - min(seen_midway) >= 300
    result = await _verify(runtime, lender.tenant_id)
    assert result.ok, result.problems
