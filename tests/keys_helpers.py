"""Helpers for key ring tests: scratch databases, rings, the CLI with another ring, legacy (v1) rows."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from sqlalchemy import delete, func, select, text

from broker.app import build_runtime
from broker.context import Runtime
from broker.crypto import envelope
from broker.crypto.keyring import generate_key
from broker.db.models import RefreshToken, TenantKey, User
from broker.keys import sealing
from broker.keys.columns import TENANT_DATA
from broker.settings import Settings

HASH_KEY = generate_key()


def ring_env(url: str, keys: str, **extra: str) -> dict[str, str]:
    """Environment for a process on ``url`` with the ring ``keys`` (``kid:key,...``, first active)."""
    return {
        "BROKER_DATABASE_URL": url,
        "BROKER_KEYS": keys,
        "BROKER_HASH_KEY": HASH_KEY,
        "BROKER_WORKERS": "1",
        **extra,
    }


def runtime_for(url: str, keys: str) -> Runtime:
    """A runtime on ``url`` with the ring ``keys`` (dispose its engine when done)."""
    return build_runtime(Settings(database_url=url, keys=keys, hash_key=HASH_KEY))


def cli(env: dict[str, str], *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "broker", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def popen(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "broker", *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


_AAD_COLUMNS = {
    "token_enc": "token",
    "retry_pair_enc": "retry_pair",
    "user_token_enc": "user_token",
    "identity_enc": "identity",
}


async def make_legacy(runtime: Runtime, tenant_id: Any, *, drop_data_key: bool) -> int:
    """Rewrite a tenant's sealed values as ``v1`` envelopes under the ring's active key, as rows written
    before tenant data keys were; with ``drop_data_key``, the tenant also loses its data key."""
    changed = 0
    async with runtime.sessions() as session, session.begin():
        models: tuple[tuple[Any, str], ...] = ((RefreshToken, "refresh_tokens"), (User, "users"))
        for model, table in models:
            for row in (await session.execute(select(model).where(model.tenant_id == tenant_id))).scalars():
                for column, aad_column in _AAD_COLUMNS.items():
                    value = getattr(row, column, None)
                    if value is None or not value.startswith("v2."):
                        continue
                    aad = envelope.aad_for(table, aad_column, tenant_id, row.id)
                    plaintext = await sealing.open_(session, runtime.ring, value, aad)
                    setattr(row, column, envelope.seal(runtime.ring, plaintext, aad))
                    changed += 1
        if drop_data_key:
            await session.execute(delete(TenantKey).where(TenantKey.tenant_id == tenant_id))
    return changed


async def v1_rows(runtime: Runtime) -> int:
    """Rows still holding a ``v1`` value (through the partial indexes)."""
    total = 0
    async with runtime.sessions() as session:
        for table in TENANT_DATA:
            statement = text(f"SELECT count(*) FROM {table.name} WHERE {table.v1_predicate}")  # noqa: S608
            total += int((await session.execute(statement)).scalar_one())
    return total


async def open_everything(runtime: Runtime) -> dict[str, int]:
    """Open every sealed value in the database with ``runtime``'s ring; count them per column."""
    counts: dict[str, int] = {}
    async with runtime.sessions() as session, session.begin():
        models: tuple[tuple[Any, str], ...] = ((RefreshToken, "refresh_tokens"), (User, "users"))
        for model, table in models:
            for row in (await session.execute(select(model))).scalars():
                for column, aad_column in _AAD_COLUMNS.items():
                    value = getattr(row, column, None)
                    if value is None or value == "shredded":
                        continue
                    aad = envelope.aad_for(table, aad_column, row.tenant_id, row.id)
                    await sealing.open_(session, runtime.ring, value, aad)
                    counts[f"{table}.{column}"] = counts.get(f"{table}.{column}", 0) + 1
    return counts


async def count(runtime: Runtime, model: Any) -> int:
    async with runtime.sessions() as session:
        return int((await session.execute(select(func.count()).select_from(model))).scalar_one())
