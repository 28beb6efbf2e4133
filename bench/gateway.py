"""What gateway mode adds per request: the same calls, directly at an upstream and through a gateway.

    .venv/bin/python -m bench.gateway [--seconds 10] [--connections 1,8] [--workers 1]

One run: two throw-away databases (``BENCH_DATABASE_URL``, else the local server, else the embedded one),
migrated; an **upstream** (``broker serve`` in issuer mode, production settings) and a **gateway**
(``broker serve`` whose tenant has that upstream, held mode), each with ``--workers`` granian workers;
then, with wrk and ``bench/load.lua``, each scenario straight at the upstream (with the tenant's upstream
credentials) and through the gateway (with its broker credentials), at each connection count:

* ``client_credentials``: the gateway authenticates, forwards, and records the grant, the sealed upstream
  refresh token, the pair and the audit event in one transaction;
* ``introspect``: an upstream access token; the gateway judges it locally first (one query), then asks
  the upstream.

The overhead is the gateway's latency minus the direct latency (p50 and p99). Both servers, wrk and
PostgreSQL share the machine, so a gateway run also pays for the upstream it calls: read the figures as
an upper bound, and expect noise on a shared machine. Everything started is stopped, and the databases
dropped, on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import secrets
import sys
from dataclasses import dataclass
from urllib.parse import urlencode

import httpx

# ruff: noqa: T201 - a command-line report
from bench.infra import BENCH, Broker, Database, create_database, run_tool, tool
from broker.app import build_runtime
from broker.db import migrate
from broker.gateway import upstreams
from broker.settings import Settings
from broker.tenants import service as tenants


def _new_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def _env(database: Database) -> dict[str, str]:
    return {
        "BROKER_ENV": "production",
        "BROKER_DATABASE_URL": database.url,
        "BROKER_KEYS": f"bench-1:{_new_key()}",
        "BROKER_HASH_KEY": _new_key(),
        "BROKER_LOG_LEVEL": "WARNING",
        "BROKER_WEBHOOK_WORKER": "false",
        "BROKER_UPSTREAM_ALLOW_HTTP": "true",  # the upstream is on 127.0.0.1
        "BROKER_DB_POOL_SIZE": "8",
    }


def _settings(env: dict[str, str]) -> Settings:
    return Settings(
        env="production",
        database_url=env["BROKER_DATABASE_URL"],
        keys=env["BROKER_KEYS"],
        hash_key=env["BROKER_HASH_KEY"],
        upstream_allow_http=True,
    )


@dataclass(frozen=True)
class Creds:
    """A client's credentials as a form body fragment."""

    client_id: str
    secret: str

    @property
    def form(self) -> str:
        """``client_id=...&secret=...``."""
        return urlencode({"client_id": self.client_id, "secret": self.secret})


async def _create_tenant(env: dict[str, str], name: str) -> Creds:
    runtime = build_runtime(_settings(env))
    try:
        async with runtime.sessions() as session, session.begin():
            tenant, secret = await tenants.create_tenant(
                session, runtime.ring, tenants.TenantSpec(name=name), actor="bench", request_id=None
            )
        return Creds(tenant.client_id, secret)
    finally:
        await runtime.close()


async def _set_upstream(env: dict[str, str], local: Creds, base_url: str, upstream: Creds) -> None:
    runtime = build_runtime(_settings(env))
    try:
        async with runtime.sessions() as session, session.begin():
            await upstreams.set_upstream(
                session,
                runtime.ring,
                runtime.settings,
                local.client_id,
                upstreams.UpstreamSpec(base_url=base_url, client_id=upstream.client_id, secret=upstream.secret),
                actor="bench",
                request_id=None,
            )
    finally:
        await runtime.close()


def wrk(url: str, path: str, body: str, connections: int, seconds: int) -> dict[str, float]:
    """One wrk run with a constant form body; requests per second, p50 and p99 in milliseconds, errors."""
    env = {"BENCH_PATH": path, "BENCH_BODY": body, "BENCH_METHOD": "POST"}
    threads = max(1, min(connections, 2))
    command = [tool("wrk"), "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--timeout", "5s"]
    command += ["-s", str(BENCH / "load.lua"), url]
    out = run_tool(command, timeout=seconds + 60, env=env)
    raw = json.loads(next(line for line in out.splitlines() if line.startswith("BENCH_RESULT "))[13:])
    elapsed = raw["duration_us"] / 1e6
    errors = raw["bad"] + raw["connect"] + raw["read"] + raw["write"] + raw["timeout"]
    return {
        "rps": round(raw["requests"] / elapsed, 1) if elapsed else 0.0,
        "p50_ms": round(raw["p50_us"] / 1000, 2),
        "p99_ms": round(raw["p99_us"] / 1000, 2),
        "errors": errors,
    }


def main() -> int:
    """Run the comparison and print a table (and one JSON line per row with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=int(os.environ.get("BENCH_SECONDS", "10")))
    parser.add_argument("--connections", default=os.environ.get("BENCH_CONNECTIONS", "1,8"))
    parser.add_argument("--workers", type=int, default=int(os.environ.get("BENCH_WORKERS", "1")))
    parser.add_argument("--json", action="store_true", help="also print one JSON object per row")
    args = parser.parse_args()
    connections = [int(c) for c in args.connections.split(",") if c.strip()]

    with contextlib.ExitStack() as stack:
        databases = [create_database(), create_database()]
        for database in databases:
            stack.callback(database.drop)
            migrate.upgrade(database.url)
        up_env, gw_env = _env(databases[0]), _env(databases[1])
        upstream, gateway = Broker(up_env, args.workers), Broker(gw_env, args.workers)
        for server in (upstream, gateway):
            stack.callback(server.stop)
            stack.push(server.show_log_on_failure)
            server.start()
        lender_up = asyncio.run(_create_tenant(up_env, "bench lender (upstream)"))
        lender = asyncio.run(_create_tenant(gw_env, "bench lender (gateway)"))
        asyncio.run(_set_upstream(gw_env, lender, upstream.url, lender_up))

        issued = httpx.post(
            f"{gateway.url}/oauth/token",
            data={"grant_type": "client_credentials", "client_id": lender.client_id, "secret": lender.secret},
            timeout=10,
        )
        issued.raise_for_status()
        access = issued.json()["access_token"]
        scenarios = {
            "client_credentials": ("/oauth/token", "grant_type=client_credentials&"),
            "introspect": ("/oauth/introspect", f"token={access}&"),
        }
        rows = []
        print(f"gateway overhead, {args.seconds}s per run, {args.workers} worker(s) per server")
        print(
            f"{'scenario':<20}{'conns':>6}{'direct p50':>12}{'p99':>9}{'gateway p50':>13}{'p99':>9}"
            f"{'+p50':>9}{'+p99':>9}{'direct rps':>12}{'gw rps':>9}"
        )
        for name, (path, body) in scenarios.items():
            for conns in connections:
                direct = wrk(upstream.url, path, body + lender_up.form, conns, args.seconds)
                through = wrk(gateway.url, path, body + lender.form, conns, args.seconds)
                row = {
                    "scenario": name,
                    "connections": conns,
                    "direct": direct,
                    "gateway": through,
                    "overhead_p50_ms": round(through["p50_ms"] - direct["p50_ms"], 2),
                    "overhead_p99_ms": round(through["p99_ms"] - direct["p99_ms"], 2),
                }
                rows.append(row)
                print(
                    f"{name:<20}{conns:>6}{direct['p50_ms']:>12}{direct['p99_ms']:>9}{through['p50_ms']:>13}"
                    f"{through['p99_ms']:>9}{row['overhead_p50_ms']:>9}{row['overhead_p99_ms']:>9}"
                    f"{direct['rps']:>12}{through['rps']:>9}"
                    + (
                        f"  errors {direct['errors']}/{through['errors']}"
                        if direct["errors"] or through["errors"]
                        else ""
                    ),
                    flush=True,
                )
                if args.json:
                    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
