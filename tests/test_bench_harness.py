"""The benchmark's SQL still fits the schema: bulk seeding, lineage trees and the pgbench floor scripts.

``make bench`` is not part of the suite (it takes minutes and needs wrk), so these checks run the same
statements on the test database: a migration that adds a NOT NULL column or renames one fails here,
not in the middle of a benchmark run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import asyncpg

from bench import seed
from tests import dbsetup

BENCH = Path(__file__).resolve().parents[1] / "bench"
PGBENCH_VARIABLE = re.compile(r"(?<!:):([a-z_]+)")


async def _forget(connection, tenant_ids: list[str]) -> None:
    """Delete what a check seeded (the cascade takes grants, tokens and users): the dummy ciphertexts name a
    key the test ring does not hold, and servers started later by other tests refuse such a database."""
    await connection.execute("DELETE FROM tenants WHERE id = ANY($1::uuid[])", tenant_ids)


async def _world(make_tenant, connection, created: list[str]) -> seed.World:
    def as_client(creds) -> seed.Client:
        return seed.Client(creds.client_id, creds.secret, str(creds.tenant_id))

    lender, partner = await make_tenant("bench lender"), await make_tenant("bench partner", kind="partner")
    owner, filler = await make_tenant("bench owner"), await make_tenant("bench filler")
    await connection.execute(
        "INSERT INTO users (id, tenant_id, user_id, client_user_id, user_token_digest, user_token_enc) "
        "VALUES (gen_random_uuid(), $1::uuid, 'usr_' || md5(random()::text), 'bench', "
        "sha256(random()::text::bytea), 'v1.x.y.z')",
        str(lender.tenant_id),
    )
    created.extend(str(t.tenant_id) for t in (lender, partner, owner, filler))
    world = seed.World(
        lender=as_client(lender),
        partner_a=as_client(partner),
        partner_b=as_client(partner),
        tree_owner=as_client(owner),
        fillers=[as_client(filler)],
        urns=("urn:bench:a", "urn:bench:b"),
    )
    rows = await connection.fetch("SELECT id::text FROM users WHERE tenant_id = $1::uuid", world.lender.tenant_id)
    world.user_pks = [row[0] for row in rows]
    return world


async def _run(connection, statements) -> None:
    for statement, args in statements:
        await connection.execute(statement, *args)


async def test_seeding_and_a_lineage_tree_fit_the_schema(make_tenant, settings):
    connection = await asyncpg.connect(**dbsetup._asyncpg_kwargs(settings.database_url))
    created: list[str] = []
    try:
        world = await _world(make_tenant, connection, created)
        # Seeded grant numbers are global (md5 of the number): start past anything another test seeded.
        first = 10_000_000 + int(await connection.fetchval("SELECT count(*) FROM grants"))
        await _run(connection, seed.seed_statements(world, first, first + 39))
        request_ids = [f"seed-{n}" for n in range(first, first + 40)]
        rows = await connection.fetch(
            "SELECT id::text, kind FROM grants WHERE request_id = ANY($1::text[])", request_ids
        )
        assert len(rows) == 40
        assert {row["kind"] for row in rows} == {"client_credentials", "user", "exchange"}
        tokens = await connection.fetchval(
            "SELECT count(*) FROM refresh_tokens r JOIN grants g ON g.id = r.grant_id WHERE g.request_id = ANY($1)",
            request_ids,
        )
        assert tokens == 40 + 10  # one each, and one rotated predecessor in four
        root = rows[0]["id"]  # any seeded grant; it may already have a seeded exchange child
        below = "SELECT count(*) FROM grants WHERE path @> ARRAY[$1::uuid]"
        before = await connection.fetchval(below, root)
        await _run(connection, seed.tree_statements(world, root, tag=f"t{first}", width=2, per_child=3))
        assert await connection.fetchval(below, root) - before == 2 * (1 + 3)
    finally:
        await _forget(connection, created)
        await connection.close()


async def test_pgbench_floor_scripts_run_against_the_schema(make_tenant, settings):
    tenant = await make_tenant("bench floor")
    values = {
        "g": "424242",
        "i": "1",
        "tenant": f"'{tenant.tenant_id}'",
        "client": f"'{tenant.client_id}'",
        "scopes": "'{exchange,user:read,user:write}'",
        "detail": "'" + json.dumps({"grant_type": "client_credentials"}) + "'",
    }
    connection = await asyncpg.connect(**dbsetup._asyncpg_kwargs(settings.database_url))
    try:
        for script in ("floor_issue.sql", "floor_issue_single.sql", "floor_read.sql"):
            lines = (BENCH / script).read_text().splitlines()
            sql = "\n".join(line for line in lines if not line.startswith(("--", "\\")))
            # An unknown name (say ':read' inside 'user:read') is what pgbench would also take as a variable.
            sql = PGBENCH_VARIABLE.sub(lambda match: values[match.group(1)], sql)
            values["g"] = str(int(values["g"]) + 1)
            await connection.execute(sql)
    finally:
        await _forget(connection, [str(tenant.tenant_id)])
        await connection.close()
