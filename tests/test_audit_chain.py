"""The audit log's per-tenant hash chains: sealing in blocks (also concurrent and in the background) and
tamper evidence, including chains begun before blocks (rows sealed one by one)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import httpx
from click.testing import CliRunner
from sqlalchemy import delete, select, text, update

from broker.app import build_runtime
from broker.audit import chain, repository, sealer
from broker.audit import service as audit
from broker.cli.main import cli
from broker.db import migrate
from broker.db.models import AuditBlock, AuditChain, AuditEvent
from broker.db.models.audit import GLOBAL_CHAIN
from tests import dbsetup
from tests.conftest import serve
from tests.oauth_helpers import token_ok


async def _events(runtime, tenant_id, n: int) -> list[int]:
    async with runtime.sessions() as session, session.begin():
        for i in range(n):
            await audit.record(
                session, action="test.event", actor="test", tenant_id=tenant_id, request_id=f"r{i}", detail={"i": i}
            )
        result = await session.execute(
            select(AuditEvent.id).where(AuditEvent.tenant_id == tenant_id).order_by(AuditEvent.id.desc()).limit(n)
        )
        return sorted(result.scalars())


async def _event_ids(sessions, tenant_id) -> list[int]:
    async with sessions() as session:
        result = await session.execute(
            select(AuditEvent.id).where(AuditEvent.tenant_id == tenant_id).order_by(AuditEvent.id)
        )
        return list(result.scalars())


async def _blocks(sessions, tenant_id) -> list[Any]:
    async with sessions() as session:
        result = await session.execute(
            select(AuditBlock.seq, AuditBlock.event_ids, AuditBlock.digests, AuditBlock.hash)
            .where(AuditBlock.chain_id == tenant_id)
            .order_by(AuditBlock.seq)
        )
        return list(result.all())


async def _seal(runtime) -> int:
    async with runtime.sessions() as session:
        return await chain.seal_pending(session, runtime.ring, wait=True)  # as broker audit seal does


async def _verify(runtime, tenant_id) -> chain.Verification:
    async with runtime.sessions() as session:
        await chain.seal_pending(session, runtime.ring, wait=True)  # as broker audit verify does
        return await chain.verify(session, runtime.ring, tenant_id=tenant_id)


async def _unsealed(runtime, tenant_id) -> int:
    async with runtime.sessions() as session, session.begin():
        return await repository.count_unsealed(session, tenant_id, scoped=True)


async def test_sealing_links_every_event_of_a_tenant_in_blocks_in_order(make_tenant, runtime, sessions):
    lender = await make_tenant("chained")
    await _events(runtime, lender.tenant_id, 5)
    result = await _verify(runtime, lender.tenant_id)
    assert result.ok, result.problems
    assert result.rows == 6  # tenant.created and the five events
    assert await _unsealed(runtime, lender.tenant_id) == 0
    blocks = await _blocks(sessions, lender.tenant_id)
    assert [b.seq for b in blocks] == list(range(1, len(blocks) + 1))
    sealed = [i for b in blocks for i in b.event_ids]
    assert sealed == await _event_ids(sessions, lender.tenant_id)  # each once, in the order they were written
    assert all(len(b.digests) == chain.DIGEST_SIZE * len(b.event_ids) and len(b.hash) == 32 for b in blocks)
    async with sessions() as session:
        head = (await session.execute(select(AuditChain).where(AuditChain.chain_id == lender.tenant_id))).scalar_one()
    assert (head.blocks, head.block_hash) == (blocks[-1].seq, blocks[-1].hash)
    async with sessions() as session:  # sealing never updates an event
        assert await session.scalar(select(AuditEvent.seq).where(AuditEvent.id == sealed[0])) is None


async def test_verify_detects_an_edited_row(make_tenant, runtime, sessions):
    lender = await make_tenant("edited")
    other = await make_tenant("untouched")
    await _events(runtime, lender.tenant_id, 4)
    await _events(runtime, other.tenant_id, 4)
    assert (await _verify(runtime, lender.tenant_id)).ok
    victim = (await _event_ids(sessions, lender.tenant_id))[2]
    async with sessions() as session, session.begin():
        await session.execute(update(AuditEvent).where(AuditEvent.id == victim).values(actor="someone-else"))
    result = await _verify(runtime, lender.tenant_id)
    assert [(p.kind, p.event_id) for p in result.problems] == [("edited", victim)]
    assert (await _verify(runtime, other.tenant_id)).ok  # other tenants' chains are unaffected


async def test_verify_detects_a_deleted_row_and_a_deleted_block(make_tenant, runtime, sessions):
    lender = await make_tenant("deleted")
    await _events(runtime, lender.tenant_id, 5)
    assert (await _verify(runtime, lender.tenant_id)).ok
    ids = await _event_ids(sessions, lender.tenant_id)
    async with sessions() as session, session.begin():
        await session.execute(delete(AuditEvent).where(AuditEvent.id == ids[2]))
    result = await _verify(runtime, lender.tenant_id)
    assert [(p.kind, p.event_id) for p in result.problems] == [("deleted", ids[2])]

    await _events(runtime, lender.tenant_id, 2)  # a later block, then cut from the end of the chain
    await _seal(runtime)
    last = (await _blocks(sessions, lender.tenant_id))[-1]
    async with sessions() as session, session.begin():
        await session.execute(delete(AuditEvent).where(AuditEvent.id.in_(last.event_ids)))
        await session.execute(
            delete(AuditBlock).where(AuditBlock.chain_id == lender.tenant_id, AuditBlock.seq == last.seq)
        )
    result = await _verify(runtime, lender.tenant_id)
    assert [p.kind for p in result.problems] == ["deleted", "deleted"]
    assert "head says" in result.problems[-1].detail


async def test_verify_detects_a_block_deleted_from_the_middle(make_tenant, runtime, sessions):
    lender = await make_tenant("gap")
    for _ in range(3):  # three rounds: three blocks
        await _events(runtime, lender.tenant_id, 2)
        await _seal(runtime)
    blocks = await _blocks(sessions, lender.tenant_id)
    assert len(blocks) >= 3
    middle = blocks[1]
    async with sessions() as session, session.begin():
        await session.execute(delete(AuditEvent).where(AuditEvent.id.in_(middle.event_ids)))
        await session.execute(
            delete(AuditBlock).where(AuditBlock.chain_id == lender.tenant_id, AuditBlock.seq == middle.seq)
        )
    result = await _verify(runtime, lender.tenant_id)
    assert [(p.kind, p.seq) for p in result.problems] == [("deleted", middle.seq)]
    assert "missing before block" in result.problems[0].detail


async def test_rewriting_a_block_over_a_deletion_is_still_detected(make_tenant, runtime, sessions):
    lender = await make_tenant("renumbered")
    await _events(runtime, lender.tenant_id, 3)
    assert (await _verify(runtime, lender.tenant_id)).ok
    block = (await _blocks(sessions, lender.tenant_id))[-1]
    victim = block.event_ids[1]
    size = chain.DIGEST_SIZE
    async with sessions() as session, session.begin():  # drop the event and its entry from the block
        await session.execute(delete(AuditEvent).where(AuditEvent.id == victim))
        await session.execute(
            update(AuditBlock)
            .where(AuditBlock.chain_id == lender.tenant_id, AuditBlock.seq == block.seq)
            .values(
                event_ids=[i for i in block.event_ids if i != victim],
                digests=block.digests[:size] + block.digests[2 * size :],
            )
        )
    result = await _verify(runtime, lender.tenant_id)
    assert [(p.kind, p.seq) for p in result.problems] == [("edited", block.seq)]
    assert "block" in result.problems[0].detail


async def test_an_open_transaction_holds_sealing_back_and_nothing_written_meanwhile_is_skipped(
    make_tenant, runtime, sessions
):
    # Event ids are not in commit order: an event written early by a transaction that commits late
    # must still be sealed, and so must the events committed while it was open.
    lender = await make_tenant("late commit")
    await _seal(runtime)
    async with sessions() as slow, slow.begin():
        await audit.record(slow, action="test.slow", actor="test", tenant_id=lender.tenant_id, request_id="slow")
        early = await slow.scalar(select(AuditEvent.id).where(AuditEvent.request_id == "slow"))
        later = await _events(runtime, lender.tenant_id, 2)  # committed, with greater ids
        assert all(i > early for i in later)
        await _seal(runtime)
        sealed = {i for b in await _blocks(sessions, lender.tenant_id) for i in b.event_ids}
        assert not sealed & set(later)  # held back behind the open transaction, not skipped for good
    await _seal(runtime)
    blocks = await _blocks(sessions, lender.tenant_id)
    sealed_now = [i for b in blocks for i in b.event_ids]
    assert set(sealed_now) >= {early, *later}
    assert sealed_now.index(early) < sealed_now.index(later[0])  # in the order the transactions wrote them
    result = await _verify(runtime, lender.tenant_id)
    assert result.ok, result.problems
    assert await _unsealed(runtime, lender.tenant_id) == 0


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
        blocks = await _blocks(sessions, lender.tenant_id)
        assert [b.seq for b in blocks] == list(range(1, len(blocks) + 1))
        sealed = [i for b in blocks for i in b.event_ids]
        assert sorted(sealed) == await _event_ids(sessions, lender.tenant_id)  # all 201, none twice
        assert len(sealed) == 201
    finally:
        for runtime in replicas:
            await runtime.close()


async def test_an_explicit_seal_waits_for_a_sealer_holding_the_mark_and_a_background_one_skips_it(
    make_tenant, runtime, sessions
):
    lender = await make_tenant("contended")
    await _events(runtime, lender.tenant_id, 3)
    async with sessions() as holder, holder.begin():  # another sealer, mid-round
        assert await repository.lock_mark(holder, wait=True) is not None
        async with runtime.sessions() as session:
            assert await chain.seal_pending(session, runtime.ring) == 0  # skips, returns at once
        assert await _blocks(sessions, lender.tenant_id) == []

        waiting = asyncio.create_task(_seal(runtime))
        await asyncio.sleep(0.2)
        assert not waiting.done()  # queued behind the holder's lock, not returned early
    assert await waiting >= 4  # tenant.created and the three events, once the holder committed
    assert [i for b in await _blocks(sessions, lender.tenant_id) for i in b.event_ids] == await _event_ids(
        sessions, lender.tenant_id
    )


async def test_serving_processes_seal_in_the_background(make_tenant, settings, runtime):
    lender = await make_tenant("background")
    server = build_runtime(settings.model_copy(update={"audit_seal_interval_seconds": 0.05}))
    try:
        await _events(server, lender.tenant_id, 3)
        async with chain.sealing(server):
            for _ in range(100):
                unsealed = await _unsealed(runtime, lender.tenant_id)
                if unsealed == 0:
                    break
                await asyncio.sleep(0.05)
        assert unsealed == 0
    finally:
        await server.close()


def _verify_cli(*args: str) -> Any:
    return CliRunner().invoke(cli, ["audit", "verify", *args], catch_exceptions=False)


async def test_audit_verify_on_the_cli(client, make_tenant, sessions):
    lender = await make_tenant("cli audited")
    await token_ok(client, lender, grant_type="client_credentials")
    ok = await asyncio.to_thread(_verify_cli, "--client-id", lender.client_id)
    assert ok.exit_code == 0, ok.output
    assert "ok: no tampering found" in ok.output
    first = (await _event_ids(sessions, lender.tenant_id))[0]
    async with sessions() as session, session.begin():
        await session.execute(update(AuditEvent).where(AuditEvent.id == first).values(detail={"forged": True}))
    bad = await asyncio.to_thread(_verify_cli, "--client-id", lender.client_id, "--json")
    assert bad.exit_code == 1
    assert '"kind": "edited"' in bad.output
    assert (await asyncio.to_thread(_verify_cli, "--client-id", "000000000000000000000000")).exit_code == 1


async def test_sealing_a_large_batch_hands_the_event_loop_back_between_slices(make_tenant, runtime, monkeypatch):
    # Sealing runs inside serving processes: a batch must not hold the event loop for all its digests at once.
    lender = await make_tenant("sliced")
    digested = 0
    original = chain.digest

    def counting_digest(*args: Any) -> bytes:
        nonlocal digested
        digested += 1
        return original(*args)

    monkeypatch.setattr(chain, "digest", counting_digest)
    seen_midway: set[int] = set()
    done = asyncio.Event()

    async def other_request() -> None:  # stands for a request served by the same loop
        while not done.is_set():
            if 0 < digested < 400:
                seen_midway.add(digested)
            await asyncio.sleep(0)

    sealed = 0
    for _ in range(3):  # the test app's own background sealer may take the events first: then seal anew
        await _events(runtime, lender.tenant_id, 400)
        digested = 0
        task = asyncio.create_task(other_request())
        async with runtime.sessions() as session, session.begin():
            sealed = await chain._seal_round(session, chain.chain_key(runtime.ring), 1000, wait=True)
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


async def test_a_chain_sealed_row_by_row_before_blocks_goes_on_in_blocks(settings):
    # A database sealed by the per-row sealer (before migration 0005): its rows keep their seq and hash,
    # the migration leaves the rest to the first block round, and that block links to the last row.
    url = await asyncio.to_thread(dbsetup.create_database, os.environ["BROKER_DATABASE_URL"], "broker_legacy")
    old = build_runtime(settings.model_copy(update={"database_url": url}))
    try:
        await asyncio.to_thread(migrate.upgrade, url, "0004")
        key = chain.chain_key(old.ring)
        async with old.sessions() as session, session.begin():
            for i in range(3):
                await session.execute(
                    text(
                        "INSERT INTO audit_events (actor, action, outcome, detail) VALUES ('admin', 'x', 'success', :d)"
                    ),
                    {"d": f'{{"i": {i}}}'},
                )
            rows = (await session.execute(text("SELECT * FROM audit_events ORDER BY id"))).all()
            previous = None
            for seq, row in enumerate(rows[:2], 1):  # the old sealer linked two; the third was still pending
                previous = chain.link(key, previous, seq, row)
                await session.execute(
                    text("UPDATE audit_events SET seq = :s, hash = :h WHERE id = :i"),
                    {"s": seq, "h": previous, "i": row.id},
                )
            await session.execute(
                text("INSERT INTO audit_chains (chain_id, seq, hash) VALUES (:c, 2, :h)"),
                {"c": GLOBAL_CHAIN, "h": previous},
            )
        await asyncio.to_thread(migrate.upgrade, url, "head")
        async with old.sessions() as session:
            assert await chain.seal_pending(session, old.ring, wait=True) == 1
            result = await chain.verify(session, old.ring, only_global=True)
        assert result.ok, result.problems
        assert result.rows == 3
        async with old.sessions() as session:
            block = (await session.execute(select(AuditBlock))).one()[0]
        assert block.event_ids == [rows[2].id]
        assert block.hash == chain.block_link(
            key, previous, GLOBAL_CHAIN, 1, event_ids=block.event_ids, digests=block.digests
        )
        async with old.sessions() as session, session.begin():  # the rows sealed one by one are still guarded
            await session.execute(update(AuditEvent).where(AuditEvent.id == rows[0].id).values(action="forged"))
        async with old.sessions() as session:
            result = await chain.verify(session, old.ring, only_global=True)
        assert [(p.kind, p.event_id) for p in result.problems] == [("edited", rows[0].id)]
    finally:
        await old.close()
        await asyncio.to_thread(dbsetup.drop_database, url)


def _children(pid: int) -> dict[int, str]:
    """The child processes of ``pid``, with their kernel names."""
    found: dict[int, str] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found[int(child)] = Path(f"/proc/{child}/comm").read_text().strip()
    return found


def _running(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie awaiting its parent's wait has ended)."""
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


async def test_broker_serve_seals_in_a_process_beside_its_workers(make_tenant, sessions):
    """`broker serve` seals in a child of its own (the workers are told not to) and stops it with the server."""
    lender = await make_tenant("sealed-by-serve")
    with serve({"BROKER_AUDIT_SEAL_INTERVAL_SECONDS": "0.2"}) as server:
        children = _children(server.process.pid)
        assert len(children) == 3  # two granian workers and the sealer
        assert list(children.values()).count(sealer.PROCESS_NAME) == 1
        async with httpx.AsyncClient(base_url=server.url) as client:
            answer = await client.post("/oauth/token", data={"grant_type": "client_credentials", **lender.body})
        assert answer.status_code == 200
        request_id = answer.json()["request_id"]
        for _ in range(100):
            async with sessions() as session:
                event_id = await session.scalar(select(AuditEvent.id).where(AuditEvent.request_id == request_id))
                blocks = await session.scalars(
                    select(AuditBlock.event_ids).where(AuditBlock.chain_id == lender.tenant_id)
                )
                if event_id is not None and any(event_id in ids for ids in blocks):
                    break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the event of a request served by `broker serve` was not sealed within 10 s")
    assert not [pid for pid in children if _running(pid)]  # the sealer ends with the server, like the workers


def test_the_sealer_process_hands_its_workers_no_sealing_and_stops_with_the_block(settings):
    """Inside the block the environment tells forked workers not to seal; after it, both are as before."""
    variable = "BROKER_AUDIT_SEAL_INTERVAL_SECONDS"
    before = os.environ.get(variable)
    with sealer.sealing_process(settings.model_copy(update={"audit_seal_interval_seconds": 0.2})):
        for _ in range(100):  # the child names itself as its first step
            children = _children(os.getpid())
            if sealer.PROCESS_NAME in children.values():
                break
            time.sleep(0.05)
        assert list(children.values()).count(sealer.PROCESS_NAME) == 1
        assert os.environ[variable] == "0"
    assert os.environ.get(variable) == before
    assert not [pid for pid in children if _running(pid)]
    with sealer.sealing_process(settings.model_copy(update={"audit_seal_interval_seconds": 0})):
        assert sealer.PROCESS_NAME not in _children(os.getpid()).values()  # sealing off: no process at all
