"""Re-encryption throughput: rows per second moved by ``broker keys reencrypt``, as operators run it.

    .venv/bin/python -m bench.reencrypt [--rows 100000] [--tenants 100] [--batch-size 1000] [--processes 1]

One run: a throw-away database (``BENCH_DATABASE_URL``, else the local server, else the embedded one),
migrated; ``--tenants`` tenants, each with its data key wrapped by ring key ``k1``; ``--rows`` refresh
tokens spread over them, written as rows from before tenant data keys were (``v1`` envelopes sealed
directly under ``k1``, each with its own AAD), bulk-loaded with COPY. Then the ring rotates to ``k2``
and ``--processes`` ``broker keys reencrypt --json`` processes run at once: each data key is rewrapped
under ``k2`` and each row is decrypted and resealed under its tenant's data key. The figure is every
data key and row moved over the wall time of the whole step (process start included); the database
must show nothing left under ``k1``. Everything is dropped on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg

from bench.infra import BenchError, Database, _connect_kwargs, create_database
from broker.app import build_runtime
from broker.crypto import envelope, tokens
from broker.crypto.keyring import KeyRing, generate_key
from broker.db import migrate
from broker.keys import service as keys
from broker.settings import Settings
from broker.tenants import service as tenants


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.reencrypt", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="legacy v1 rows to move (default 100000)")
    parser.add_argument("--tenants", type=int, default=100, help="tenants, each with a data key (default 100)")
    parser.add_argument("--batch-size", type=int, default=1000, help="rows per transaction (default 1000)")
    parser.add_argument("--processes", type=int, default=1, help="reencrypt processes at once (default 1)")
    return parser.parse_args(argv)


async def _seed(database: Database, spec: str, hash_key: str, tenant_count: int, rows: int) -> None:
    runtime = build_runtime(Settings(database_url=database.url, keys=spec, hash_key=hash_key))
    tenant_ids: list[uuid.UUID] = []
    try:
        async with runtime.sessions() as session, session.begin():
            for i in range(tenant_count):
                tenant, _ = await tenants.create_tenant(
                    session, runtime.ring, tenants.TenantSpec(name=f"bench {i}"), actor="bench", request_id=None
                )
                tenant_ids.append(tenant.id)
    finally:
        await runtime.close()
    ring: KeyRing = runtime.ring
    now = datetime.now(UTC)
    grants = [(uuid.uuid4(), t) for t in tenant_ids]
    records = []
    for i in range(rows):
        grant_id, tenant_id = grants[i % len(grants)]
        row_id = uuid.uuid4()
        token = tokens.new_refresh_token()
        sealed = envelope.seal(ring, token.encode(), envelope.aad_for("refresh_tokens", "token", tenant_id, row_id))
        records.append(
            (row_id, tenant_id, grant_id, tokens.digest(ring.hash_key, token), sealed, now, now + timedelta(days=30))
        )
    connection = await asyncpg.connect(**_connect_kwargs(database.url))
    try:
        await connection.executemany(
            "INSERT INTO grants (id, tenant_id, kind, requester_tenant_id, holder_tenant_id, scopes, audience,"
            " access_token_ttl, refresh_token_ttl) VALUES ($1, $2, 'client_credentials', $2, $2, '{}', 'bench',"
            " 900, 2592000)",
            grants,
        )
        await connection.copy_records_to_table(
            "refresh_tokens",
            records=records,
            columns=["id", "tenant_id", "grant_id", "digest", "token_enc", "created_at", "expires_at"],
        )
        await connection.execute("ANALYZE refresh_tokens; ANALYZE tenant_keys")
    finally:
        await connection.close()


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the figures and one JSON line."""
    args = _parse(argv)
    k1, k2, hash_key = generate_key(), generate_key(), generate_key()
    database = create_database()
    try:
        migrate.upgrade(database.url)
        started = time.monotonic()
        asyncio.run(_seed(database, f"k1:{k1}", hash_key, args.tenants, args.rows))
        _say(f"seeded {args.tenants} tenants and {args.rows} v1 rows in {time.monotonic() - started:.1f}s")
        env = {
            **os.environ,
            "BROKER_ENV": "production",
            "BROKER_DATABASE_URL": database.url,
            "BROKER_KEYS": f"k2:{k2},k1:{k1}",
            "BROKER_HASH_KEY": hash_key,
            "BROKER_LOG_LEVEL": "WARNING",
        }
        command = [sys.executable, "-m", "broker", "keys", "reencrypt", "--json", "--batch-size", str(args.batch_size)]
        started = time.monotonic()
        runs = [
            subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # noqa: S603
            for _ in range(args.processes)
        ]
        outputs = [run.communicate(timeout=3600)[0] for run in runs]
        wall = time.monotonic() - started
        if any(run.returncode for run in runs):
            raise BenchError(f"reencrypt failed: {outputs}")
        results = [json.loads(out) for out in outputs]
        moved_keys = sum(r["data_keys"] for r in results)
        moved_rows = sum(r["rows"] for r in results)
        left = asyncio.run(_left(database.url, f"k2:{k2},k1:{k1}", hash_key))
        if left or moved_rows != args.rows or moved_keys != args.tenants:
            raise BenchError(f"moved {moved_keys} keys and {moved_rows} rows; {left} left")
        inner = max(r["seconds"] for r in results)
        report = {
            "rows": moved_rows,
            "data_keys": moved_keys,
            "processes": args.processes,
            "batch_size": args.batch_size,
            "wall_seconds": round(wall, 2),
            "rows_per_second_wall": round((moved_rows + moved_keys) / wall),
            "rows_per_second_reencrypting": round((moved_rows + moved_keys) / inner),
        }
        _say(
            f"reencrypt: {moved_keys} data keys and {moved_rows} rows in {wall:.1f}s wall "
            f"({report['rows_per_second_wall']} rows/s; {report['rows_per_second_reencrypting']} rows/s "
            f"excluding process start), {args.processes} process(es), batches of {args.batch_size}"
        )
        _say(json.dumps(report))
    finally:
        database.drop()
    return 0


async def _left(url: str, spec: str, hash_key: str) -> int:
    runtime = build_runtime(Settings(database_url=url, keys=spec, hash_key=hash_key))
    try:
        async with runtime.sessions() as session, session.begin():
            return (await keys.status(session, runtime.ring)).pending()
    finally:
        await runtime.close()


if __name__ == "__main__":
    sys.exit(main())
