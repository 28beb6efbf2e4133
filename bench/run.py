"""``make bench`` and ``make bench-growth``: broker under wrk beside pgbench's floor, in one run.

One run: a fresh database (the local server or the embedded one), broker served by granian in its
production configuration, a seeded world, then every scenario at each connection count, each figure
printed beside the floor PostgreSQL itself reaches on the same machine in the same run. Results go to
``bench-results/<timestamp>.json``. Everything it starts is stopped, and the database dropped, on the way
out, also after a failure or a SIGTERM.

Configuration (environment, or the matching option): ``BENCH_SECONDS`` (per load run, at most 20),
``BENCH_CONNECTIONS`` (``1,8,32``), ``BENCH_TOKENS`` (seeded grants, each with its tokens; 200000),
``BENCH_WORKERS`` (granian workers; one per core), ``BENCH_SERVERS`` (separate ``broker serve`` processes
on one port, each with ``BENCH_WORKERS`` workers; 1), ``BENCH_SCENARIOS`` (a comma-separated subset),
``BENCH_DATABASE_URL`` (the server to create the throw-away database on).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import math
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import httpx

from bench import seed
from bench.infra import BENCH, ROOT, BenchError, Broker, Database, Sampler, create_database, dump_json, run_tool, tool

if TYPE_CHECKING:
    from types import FrameType

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
MULTI_USER = "urn:plaid:params:credit:multi-user"
MAX_SECONDS = 20
DEFAULT_SCOPES = ["exchange", "user:read", "user:write"]  # what the lender's tokens carry (pgbench rows too)
POOL_MARGIN = 2.0  # a once-only pool holds 2x what the matching client_credentials run issued
INTROSPECTION_POOL = 2000
SCENARIOS = ("client_credentials", "refresh_token", "revoke", "multi_user_exchange", "fork_shared", "introspect")
GROWTH_SIZES = (10_000, 1_000_000)
NOISY_PERCENT = 20.0  # CPU used by other processes (percent of one core) above which a figure is flagged


@dataclass(frozen=True)
class Config:
    """What one run measures."""

    seconds: int
    connections: tuple[int, ...]
    tokens: int
    workers: int
    threads: int
    users: int
    scenarios: tuple[str, ...]
    servers: int = 1


@dataclass
class Result:
    """One load run."""

    scenario: str
    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    seconds: float
    floor: str | None = None
    floor_rps: float | None = None
    ratio: float | None = None
    peak_rss_mib: float | None = None
    cpu_percent: dict[str, float] = field(default_factory=dict)
    cpu_ms_per_request: float | None = None
    """broker's and PostgreSQL's CPU time per request: unlike req/s, barely moved by other load."""
    notes: list[str] = field(default_factory=list)


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


def parse_config(argv: list[str] | None) -> tuple[Config, str]:
    """Options (defaults from ``BENCH_*``) and the mode: ``standard``, ``growth`` or ``serve-only``."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--growth", action="store_true", help="issuance/introspection at 10k and 1M, lineage revoke")
    mode.add_argument("--serve-only", action="store_true", help="set up and seed, then wait (for profiling)")
    parser.add_argument("--seconds", type=int, default=_env_int("BENCH_SECONDS", 15))
    parser.add_argument("--connections", default=os.environ.get("BENCH_CONNECTIONS", "1,8,32"))
    parser.add_argument("--tokens", type=int, default=_env_int("BENCH_TOKENS", 200_000))
    parser.add_argument("--workers", type=int, default=_env_int("BENCH_WORKERS", os.cpu_count() or 1))
    parser.add_argument("--servers", type=int, default=_env_int("BENCH_SERVERS", 1), help="broker serve processes")
    parser.add_argument("--threads", type=int, default=_env_int("BENCH_THREADS", 1), help="wrk/pgbench threads")
    parser.add_argument("--scenarios", default=os.environ.get("BENCH_SCENARIOS", ",".join(SCENARIOS)))
    args = parser.parse_args(argv)
    scenarios = tuple(s.strip() for s in args.scenarios.split(",") if s.strip())
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")
    if not 1 <= args.seconds <= MAX_SECONDS:
        parser.error(f"--seconds must be between 1 and {MAX_SECONDS}")
    config = Config(
        seconds=args.seconds,
        connections=tuple(int(c) for c in args.connections.split(",")),
        tokens=args.tokens,
        workers=args.workers,
        threads=max(1, args.threads),
        servers=max(1, args.servers),
        users=50,
        scenarios=scenarios,
    )
    return config, "growth" if args.growth else "serve-only" if args.serve_only else "standard"


def say(text: str) -> None:
    """Print a line of the report at once (wrk and pgbench runs take seconds each)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _form(**params: str) -> str:
    return urlencode(params)


@dataclass(frozen=True)
class Load:
    """One wrk load: what to POST where, with which pool of tokens, and what a good answer contains."""

    name: str
    path: str
    body: str
    """Form body; ``{token}`` stands for the next pool entry."""
    pool: list[str] | None = None
    once: bool = False
    """Use each pool entry once (a reused refresh token would take the replay path)."""
    expect: str | None = None
    capture: bool = False
    """Keep the token pairs of the responses."""
    quota: int = 0
    """With ``capture``: stop after this many pairs."""
    seconds: float | None = None
    floor: str | None = "issue"
    record: bool = True
    method: str = "POST"


class Bench:
    """Drives the load tools against one server and database, and keeps the results."""

    def __init__(self, config: Config, database: Database, server: Broker, world: seed.World, workdir: Path) -> None:
        self.config = config
        self.database = database
        self.server = server
        self.world = world
        self.workdir = workdir
        self.results: list[Result] = []
        self.floors: dict[tuple[str, int], float] = {}
        self._files = 0

    # ------------------------------------------------------------------ tools

    def _sessions(self) -> int:
        """Connections ever opened to the database: growth during a run is connection-pool churn."""
        return int(self.database.scalar("SELECT sessions FROM pg_stat_database WHERE datname = current_database()"))

    def _threads(self, connections: int) -> int:
        return min(self.config.threads, connections)

    def _write_pool(self, entries: list[str], threads: int) -> str:
        self._files += 1
        prefix = str(self.workdir / f"pool{self._files}")
        for n in range(threads):
            Path(f"{prefix}.{n + 1}").write_text("\n".join(entries[n::threads]) + "\n")
        return prefix

    def _record(self, result: Result, usage: list[Any], floor: str | None, *, rss: bool = True) -> Result:
        if usage:
            used = usage[0]
            result.peak_rss_mib = max(used.peak_rss_mib, default=None) if rss else None
            result.cpu_percent = {
                "server": used.server,
                "postgres": used.postgres,
                "load_tool": used.load_tool,
                "other": used.other,
            }
            if result.requests:
                busy = (used.server + used.postgres) / 100 * result.seconds
                result.cpu_ms_per_request = round(1000 * busy / result.requests, 3)
            if used.other > NOISY_PERCENT:
                result.notes.append(f"noisy: other processes used {used.other:.0f}% of a core")
        if floor is not None and (floor, result.connections) in self.floors:
            result.floor = floor
            result.floor_rps = self.floors[(floor, result.connections)]
            result.ratio = round(result.rps / result.floor_rps, 3) if result.floor_rps else None
        self.results.append(result)
        say(format_row(result))
        return result

    def _wrk_env(self, scenario: Load, threads: int) -> tuple[dict[str, str], str | None]:
        env = {"BENCH_PATH": scenario.path, "BENCH_BODY": scenario.body, "BENCH_METHOD": scenario.method}
        if scenario.pool is not None:
            env["BENCH_POOL"] = self._write_pool(scenario.pool, threads)
            env["BENCH_POOL_MODE"] = "once" if scenario.once else "cycle"
        if scenario.expect:
            env["BENCH_EXPECT"] = scenario.expect
        if not scenario.capture:
            return env, None
        self._files += 1
        prefix = str(self.workdir / f"capture{self._files}")
        env["BENCH_CAPTURE"] = prefix
        if scenario.quota:
            env["BENCH_QUOTA"] = str(math.ceil(scenario.quota / threads))
        return env, prefix

    def wrk(self, connections: int, scenario: Load) -> tuple[Result, list[tuple[str, str]]]:
        """One wrk run; returns its result and the token pairs captured from responses (if asked)."""
        threads = self._threads(connections)
        duration = math.ceil(scenario.seconds or self.config.seconds)
        env, capture_prefix = self._wrk_env(scenario, threads)
        self._files += 1
        env["BENCH_DONE"] = str(self.workdir / f"done{self._files}")
        done = [Path(f"{env['BENCH_DONE']}.{n + 1}") for n in range(threads)]
        command = [tool("wrk"), "-t", str(threads), "-c", str(connections), "-d", f"{duration}s"]
        command += ["--timeout", "5s", "-s", str(BENCH / "load.lua"), self.server.url]
        sampler = Sampler(self.server, self.database.name)
        sessions = self._sessions()
        with sampler.measure() as usage:
            out = run_tool(command, timeout=duration + 60, env=env, done=done)
        opened = self._sessions() - sessions - 1  # less the connection that asks
        raw = json.loads(next(line for line in out.splitlines() if line.startswith("BENCH_RESULT "))[13:])
        elapsed = raw["duration_us"] / 1e6
        result = Result(
            scenario=scenario.name,
            connections=connections,
            rps=round(raw["requests"] / elapsed, 1) if elapsed else 0.0,
            p50_ms=round(raw["p50_us"] / 1000, 2),
            p99_ms=round(raw["p99_us"] / 1000, 2),
            errors=raw["bad"] + raw["connect"] + raw["read"] + raw["write"] + raw["timeout"],
            requests=raw["requests"],
            seconds=round(elapsed, 2),
        )
        if raw["exhausted"]:
            result.notes.append(f"pool used up after {elapsed:.1f}s")
        if opened > 0:
            result.notes.append(f"{opened} new database connections")
        if scenario.record:
            self._record(result, usage, scenario.floor)
        return result, _read_pairs(capture_prefix, threads)

    def pgbench(self, name: str, kind: str, connections: int, script: str, *, record_floor: bool = True) -> Result:
        """One pgbench run of ``bench/<script>``; its rate becomes the ``kind`` floor at ``connections``."""
        world = self.world
        defines = {
            "tenant": world.lender.tenant_id,
            "client": world.lender.client_id,
            "seeded": str(world.seeded),
            "scopes": "{" + ",".join(DEFAULT_SCOPES) + "}",
            "detail": json.dumps({"grant_type": "client_credentials", "scope": DEFAULT_SCOPES}),
        }
        with tempfile.TemporaryDirectory(dir=self.workdir) as logs:
            command = [tool("pgbench"), "-n", "-M", "prepared", "-c", str(connections)]
            command += ["-j", str(self._threads(connections)), "-T", str(self.config.seconds)]
            command += ["-f", str(BENCH / script), "-l", f"--log-prefix={logs}/tx"]
            for key, value in defines.items():
                command += ["-D", f"{key}={value}"]
            command.append(self.database.url)
            sampler = Sampler(self.server, self.database.name)
            with sampler.measure() as usage:
                out = run_tool(command, timeout=self.config.seconds + 60)
            latencies: list[int] = []
            for path in Path(logs).iterdir():
                for line in path.read_text().splitlines():
                    parts = line.split()
                    if len(parts) > 2 and parts[2].isdigit():  # noqa: PLR2004 - the latency column
                        latencies.append(int(parts[2]))
        tps = _pgbench_value(out, "tps = ")
        failed = int(_pgbench_value(out, "number of failed transactions: "))
        latencies.sort()
        result = Result(
            scenario=name,
            connections=connections,
            rps=round(tps, 1),
            p50_ms=round(_percentile(latencies, 50) / 1000, 2),
            p99_ms=round(_percentile(latencies, 99) / 1000, 2),
            errors=failed,
            requests=len(latencies),
            seconds=float(self.config.seconds),
        )
        if record_floor:
            self.floors[(kind, connections)] = result.rps
        return self._record(result, usage, None, rss=False)  # broker's workers idle during a floor run

    # -------------------------------------------------------------- scenarios

    def mint(self, count: int, connections: int, rate_hint: float) -> list[tuple[str, str]]:
        """``count`` fresh client_credentials pairs of the lender, minted by wrk (not measured)."""
        budget = min(600.0, 30 + 3 * count / max(rate_hint, 50.0))
        load = Load(
            "mint",
            "/oauth/token",
            f"grant_type=client_credentials&{self.world.lender.form}",
            capture=True,
            quota=count,
            seconds=budget,
            record=False,
        )
        return self.wrk(connections, load)[1]

    def rotate(self, refresh_tokens: list[str], connections: int, rate_hint: float) -> list[tuple[str, str]]:
        """Refresh each token once (not measured), so that a pool holds second-generation tokens."""
        budget = min(600.0, 30 + 3 * len(refresh_tokens) / max(rate_hint, 50.0))
        load = Load(
            "rotate",
            "/oauth/token",
            f"grant_type=refresh_token&{self.world.lender.form}&refresh_token={{token}}",
            pool=refresh_tokens,
            once=True,
            capture=True,
            seconds=budget,
            record=False,
        )
        return self.wrk(connections, load)[1]


def _read_pairs(prefix: str | None, threads: int) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for n in range(threads if prefix else 0):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(f"{prefix}.{n + 1}").read_text().splitlines():
                access, _, refresh = line.partition(" ")
                if refresh:
                    pairs.append((access, refresh))
    return pairs


def _pgbench_value(out: str, prefix: str) -> float:
    for line in out.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :].split()[0])
    return 0.0


def _percentile(values: list[int], pct: float) -> float:
    if not values:
        return 0.0
    return float(values[min(len(values) - 1, max(0, math.ceil(pct / 100 * len(values)) - 1))])


HEADER = (
    f"{'scenario':<44}{'conns':>6}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'x floor':>9}"
    f"{'RSS MiB':>9}{'cpu ms/req':>11}  cpu% srv/pg/load/other"
)


def format_row(result: Result) -> str:
    """One table line."""
    ratio = f"{result.ratio:.2f}" if result.ratio is not None else "-"
    rss = f"{result.peak_rss_mib:.0f}" if result.peak_rss_mib else "-"
    cpu_ms = f"{result.cpu_ms_per_request:.2f}" if result.cpu_ms_per_request is not None else "-"
    cpu = result.cpu_percent
    split = "/".join(f"{cpu.get(k, 0):.0f}" for k in ("server", "postgres", "load_tool", "other")) if cpu else "-"
    line = (
        f"{result.scenario:<44}{result.connections:>6}{result.rps:>10.0f}{result.p50_ms:>9.2f}{result.p99_ms:>9.2f}"
        f"{result.errors:>8}{ratio:>9}{rss:>9}{cpu_ms:>11}  {split}"
    )
    return line + (f"  [{'; '.join(result.notes)}]" if result.notes else "")


def print_table(title: str, results: list[Result]) -> None:
    """The summary table."""
    say(f"\n{title}\n{HEADER}\n{'-' * len(HEADER)}")
    for result in results:
        say(format_row(result))


# ------------------------------------------------------------------------------------------------ runs


def standard_run(bench: Bench) -> None:
    """Floors, then every scenario at every connection count."""
    config = bench.config
    levels, top, wanted = config.connections, max(config.connections), set(config.scenarios)
    for connections in levels:
        bench.pgbench("floor: issue (BEGIN+4 INSERT+COMMIT)", "issue", connections, "floor_issue.sql")
    bench.pgbench("floor: issue as 1 statement", "issue1", top, "floor_issue_single.sql", record_floor=False)
    for connections in levels:
        bench.pgbench("floor: introspection read", "read", connections, "floor_read.sql")
    http = Load("floor: HTTP (GET /healthz, no SQL)", "/healthz", "", method="GET", expect='"ok"', floor=None)
    for connections in levels:
        bench.wrk(connections, http)
    access_pool = [access for access, _ in bench.mint(INTROSPECTION_POOL, top, 100)]  # also warms every worker
    issued = run_client_credentials(bench)
    if "refresh_token" in wanted:
        run_refresh(bench, issued)
    if "revoke" in wanted:
        run_revoke(bench, issued)
    if wanted & {"multi_user_exchange", "fork_shared"}:
        shared = run_multi_user(bench)
        if "fork_shared" in wanted:
            run_fork(bench, shared)
    if "introspect" in wanted:
        run_introspect(bench, access_pool)


def run_client_credentials(bench: Bench) -> dict[int, float]:
    """client_credentials at every level; returns the rates, which size the once-only pools."""
    load = Load(
        "client_credentials",
        "/oauth/token",
        f"grant_type=client_credentials&{bench.world.lender.form}",
        expect='"refresh_token"',
    )
    return {c: max(bench.wrk(c, load)[0].rps, 1.0) for c in bench.config.connections}


def _once_pools(bench: Bench, issued: dict[int, float], entries: list[str]) -> dict[int, list[str]]:
    """Split ``entries`` into one pool per level, each sized from that level's issuance rate."""
    pools, start = {}, 0
    for connections in bench.config.connections:
        size = _pool_size(bench, issued, connections)
        pools[connections] = entries[start : start + size]
        start += size
    return pools


def _pool_size(bench: Bench, issued: dict[int, float], connections: int) -> int:
    return math.ceil(issued[connections] * bench.config.seconds * POOL_MARGIN) + 100


CALIBRATION_TOKENS = 400  # tokens spent measuring a once-only scenario's rate before its pools are minted


def _calibrated(bench: Bench, issued: dict[int, float], load: Load, connections: int) -> dict[int, float]:
    """The rates that size a once-only scenario's pools.

    Its own rate, measured on a small unrecorded pool at the top level, where that is below
    client_credentials' (rotation and revocation are slower than issuance).
    """
    rate = max(bench.wrk(connections, load)[0].rps, 1.0)
    return {c: min(issued[c], rate) for c in bench.config.connections}


def run_refresh(bench: Bench, issued: dict[int, float]) -> None:
    """Rotation of second-generation refresh tokens, each presented once."""
    top = max(bench.config.connections)
    body = f"grant_type=refresh_token&{bench.world.lender.form}&refresh_token={{token}}"
    probe = [refresh for _, refresh in bench.mint(CALIBRATION_TOKENS, top, issued[top])]
    rates = _calibrated(
        bench, issued, Load("calibrate rotation", "/oauth/token", body, probe, once=True, record=False, seconds=5), top
    )
    total = sum(_pool_size(bench, rates, c) for c in bench.config.connections)
    minted = bench.mint(total, top, issued[top])
    second = bench.rotate([refresh for _, refresh in minted], top, rates[top])
    for connections, pool in _once_pools(bench, rates, [refresh for _, refresh in second]).items():
        load = Load("refresh_token (rotation)", "/oauth/token", body, pool, once=True, expect='"refresh_token"')
        bench.wrk(connections, load)


def run_revoke(bench: Bench, issued: dict[int, float]) -> None:
    """Revocation of refresh tokens (grant and lineage), each presented once."""
    top = max(bench.config.connections)
    body = f"{bench.world.lender.form}&token={{token}}"
    probe = [refresh for _, refresh in bench.mint(CALIBRATION_TOKENS, top, issued[top])]
    rates = _calibrated(
        bench, issued, Load("calibrate revoke", "/oauth/revoke", body, probe, once=True, record=False, seconds=5), top
    )
    total = sum(_pool_size(bench, rates, c) for c in bench.config.connections)
    minted = bench.mint(total, top, issued[top])
    for connections, pool in _once_pools(bench, rates, [refresh for _, refresh in minted]).items():
        load = Load("revoke (refresh token)", "/oauth/revoke", body, pool, once=True, expect='"request_id"')
        bench.wrk(connections, load)


def run_multi_user(bench: Bench) -> list[str]:
    """The lender shares a user with both partner audiences; returns the shared refresh tokens."""
    world = bench.world
    audience = "&".join(urlencode({"audience": urn}) for urn in world.urns)
    body = f"{_form(grant_type=TOKEN_EXCHANGE, subject_token_type=MULTI_USER)}&{world.lender.form}&{audience}"
    load = Load(
        "credit:multi-user exchange",
        "/oauth/token",
        body + "&subject_token={token}",
        world.user_tokens,
        expect='"refresh_token"',
        capture=True,
    )
    shared: list[str] = []
    for connections in bench.config.connections:
        shared += [refresh for _, refresh in bench.wrk(connections, load)[1]]
    return shared


def run_fork(bench: Bench, shared: list[str]) -> None:
    """Partner A presents shared tokens (round-robin) and forks its own lineage from each."""
    body = f"grant_type=refresh_token&{bench.world.partner_a.form}&refresh_token={{token}}"
    load = Load("partner fork of a shared token", "/oauth/token", body, shared, expect='"refresh_token"')
    for connections in bench.config.connections:
        bench.wrk(connections, load)


def run_introspect(bench: Bench, access_pool: list[str]) -> None:
    """The lender introspects its own access tokens (round-robin over a pool)."""
    body = f"{bench.world.lender.form}&token={{token}}"
    load = Load(
        "introspect (access token)", "/oauth/introspect", body, access_pool, expect='"active":true', floor="read"
    )
    for connections in bench.config.connections:
        bench.wrk(connections, load)


def seed_history(bench: Bench, size: int) -> float:
    """Seed ``size`` existing grants and seal their audit events, as a server in steady state has them.

    Unsealed, the seeded events (one per grant) were a backlog that the serving processes' sealer
    worked through during the measured runs: 200,000 rows of ``UPDATE`` that kept PostgreSQL at a full
    core and halved every figure. Returns the seconds taken.
    """
    started = time.monotonic()
    seed.seed_tokens(bench.database, bench.world, size)
    bench.server.cli("audit", "seal")
    seed.settle(bench.database)
    return time.monotonic() - started


def growth_run(bench: Bench, sizes: tuple[int, ...]) -> dict[str, Any]:
    """Issuance and introspection, and their floors, at each seeded size; returns largest vs smallest."""
    lender = bench.world.lender
    connections = max(bench.config.connections)
    for size in sizes:
        took = seed_history(bench, size)
        say(f"seeded {size:,} grants ({took:.0f}s): {seed.counts(bench.database)}")
        label = f"{size:,} existing"
        bench.pgbench(f"floor: issue @ {label}", f"issue@{size}", connections, "floor_issue.sql")
        bench.pgbench(f"floor: introspection read @ {label}", f"read@{size}", connections, "floor_read.sql")
        pool = [access for access, _ in bench.mint(INTROSPECTION_POOL, connections, 100)]
        cc_body = f"grant_type=client_credentials&{lender.form}"
        bench.wrk(
            connections,
            Load(
                f"client_credentials @ {label}",
                "/oauth/token",
                cc_body,
                expect='"refresh_token"',
                floor=f"issue@{size}",
            ),
        )
        body = f"{lender.form}&token={{token}}"
        load = Load(
            f"introspect @ {label}", "/oauth/introspect", body, pool, expect='"active":true', floor=f"read@{size}"
        )
        bench.wrk(connections, load)
    return growth_summary(bench.results, sizes)


def growth_summary(results: list[Result], sizes: tuple[int, ...]) -> dict[str, Any]:
    """Each growth figure at the largest size relative to the smallest: req/s and CPU per request."""
    by_name = {r.scenario: r for r in results}
    small, large = f"{min(sizes):,} existing", f"{max(sizes):,} existing"
    summary: dict[str, Any] = {}
    for name in ("client_credentials", "introspect", "floor: issue", "floor: introspection read"):
        before, after = by_name[f"{name} @ {small}"], by_name[f"{name} @ {large}"]
        rps = round(after.rps / before.rps, 3) if before.rps else None
        cpu = None
        if after.cpu_ms_per_request and before.cpu_ms_per_request:
            cpu = round(after.cpu_ms_per_request / before.cpu_ms_per_request, 3)
        summary[name] = {"rps_ratio": rps, "cpu_ms_ratio": cpu}
        say(f"{name}: {large} vs {small}: req/s x{rps}, cpu/req x{cpu}")
    return summary


def revoke_trees(bench: Bench, *, width: int, fanout: int, trees: int) -> dict[str, Any]:
    """Build ``trees`` lineage trees of ``width * (1 + fanout)`` descendants; time revoking each root."""
    world, database = bench.world, bench.database
    owner = world.tree_owner
    timings: list[float] = []
    descendants = 0
    with httpx.Client(base_url=bench.server.url, timeout=60) as http:
        for n in range(trees):
            issued = http.post(
                "/oauth/token", data={"grant_type": "client_credentials", **_credentials(owner)}
            ).raise_for_status()
            root = database.scalar(
                "SELECT id::text FROM grants WHERE tenant_id = $1::uuid AND kind = 'client_credentials' "
                "AND revoked_at IS NULL ORDER BY created_at DESC LIMIT 1",
                owner.tenant_id,
            )
            descendants = seed.build_tree(
                database, world, root, tag=f"tree-{n}-{secrets.token_hex(4)}", width=width, per_child=fanout
            )
            database.execute("VACUUM (ANALYZE) grants")
            http.get("/healthz")  # the connection is open before the clock starts
            started = time.perf_counter()
            response = http.post("/oauth/revoke", data={"token": issued.json()["refresh_token"], **_credentials(owner)})
            elapsed = time.perf_counter() - started
            response.raise_for_status()
            revoked = database.scalar(
                "SELECT count(*) FROM grants WHERE (id = $1::uuid OR path @> ARRAY[$1::uuid]) "
                "AND revoked_at IS NOT NULL",
                root,
            )
            if revoked != descendants + 1:
                raise BenchError(f"lineage revoke left grants alive: {revoked} of {descendants + 1} revoked")
            timings.append(elapsed)
            say(f"revoked a lineage of {descendants:,} descendants in {elapsed * 1000:.0f} ms")
    return {
        "descendants": descendants,
        "revoke_ms": [round(t * 1000, 1) for t in timings],
        "median_ms": round(statistics.median(timings) * 1000, 1),
    }


def serve_only(bench: Bench) -> None:
    """Seed, mint a pool of access tokens, print how to drive the server, and wait for Ctrl-C."""
    seed_history(bench, bench.config.tokens)
    lender, pool = bench.world.lender, bench.workdir / "access"
    pool.with_suffix(".1").write_text("\n".join(a for a, _ in bench.mint(INTROSPECTION_POOL, 8, 100)) + "\n")
    script, url = BENCH / "load.lua", bench.server.url
    say(
        f"\nbroker {url}, workers {bench.server.worker_pids()}, database {bench.database.url}\n"
        f"lender: {lender.form}\npartner A: {bench.world.partner_a.form}\naudiences: {' '.join(bench.world.urns)}\n"
        f"a user token of the lender: {bench.world.user_tokens[0]}\n\n"
        f"BENCH_BODY='grant_type=client_credentials&{lender.form}' wrk -c 32 -d 20s -s {script} {url}\n"
        f"BENCH_PATH=/oauth/introspect BENCH_BODY='{lender.form}&token={{token}}' BENCH_POOL={pool} "
        f"wrk -c 32 -d 20s -s {script} {url}\n\nCtrl-C stops the server and drops the database."
    )
    signal.pause()  # until a signal: main() then stops the server and drops the database


def _credentials(client: seed.Client) -> dict[str, str]:
    return {"client_id": client.client_id, "client_secret": client.secret}


# ------------------------------------------------------------------------------------------------ main


def _git_commit() -> str:
    git = shutil.which("git")
    if os.environ.get("BENCH_COMMIT") or git is None:
        return os.environ.get("BENCH_COMMIT", "unknown")
    result = subprocess.run(  # noqa: S603 - fixed command
        [git, "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() or "unknown"


def _new_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii")


def _raise_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit status."""
    config, mode = parse_config(argv)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # each unwinds the clean-up below
        signal.signal(signum, _raise_on_signal)
    for name in ("wrk", "pgbench"):
        tool(name)
    started = datetime.now(UTC)
    report: dict[str, Any] = {
        "kind": mode,
        "started_at": started.isoformat(),
        "commit": _git_commit(),
        "machine": {"cpus": os.cpu_count(), "loadavg_before": os.getloadavg()},
        "config": asdict(config),
    }
    with contextlib.ExitStack() as stack:
        database = create_database()
        stack.callback(database.drop)
        report["postgres"] = {
            "where": database.where,
            "version": database.scalar("SHOW server_version"),
            "synchronous_commit": database.scalar("SHOW synchronous_commit"),
            "shared_buffers": database.scalar("SHOW shared_buffers"),
        }
        say(f"database {database.name} on {database.where} (PostgreSQL {report['postgres']['version']})")
        env = {
            "BROKER_ENV": "production",
            "BROKER_DATABASE_URL": database.url,
            "BROKER_KEYS": f"bench-1:{_new_key()}",
            "BROKER_HASH_KEY": _new_key(),
            "BROKER_LOG_LEVEL": "WARNING",
        }
        server = Broker(env, config.workers, config.servers)
        server.cli("migrate")
        stack.callback(server.stop)
        stack.push(server.show_log_on_failure)
        server.start()
        say(
            f"broker on {server.url}: {config.servers} x broker serve (granian, {config.workers} workers each), "
            "production mode"
        )
        world = seed.build_world(server, database, config.users)
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="broker-bench-")))
        bench = Bench(config, database, server, world, workdir)
        if mode == "serve-only":
            serve_only(bench)
            return 0
        say(HEADER)
        if mode == "growth":
            sizes = os.environ.get("BENCH_GROWTH_SIZES")  # e.g. 1000,5000 for a quick check of the harness
            report["growth"] = growth_run(bench, tuple(int(n) for n in sizes.split(",")) if sizes else GROWTH_SIZES)
            report["lineage"] = revoke_trees(bench, width=100, fanout=99, trees=3)
        else:
            took = seed_history(bench, config.tokens)
            report["seeded"] = {"grants": config.tokens, "seconds": round(took, 1), **seed.counts(database)}
            say(f"seeded in {took:.0f}s: {report['seeded']}")
            standard_run(bench)
        report["results"] = [asdict(r) for r in bench.results]
        report["machine"]["loadavg_after"] = os.getloadavg()
        print_table(f"broker benchmark {started:%Y-%m-%d %H:%M} UTC, {report['commit']}", bench.results)
        if "lineage" in report:
            lineage = report["lineage"]
            say(f"\nlineage revoke: {lineage['descendants']:,} descendants, median {lineage['median_ms']} ms")
    out = ROOT / "bench-results" / f"{started:%Y%m%dT%H%M%SZ}{'-growth' if mode == 'growth' else ''}.json"
    dump_json(out, report)
    say(f"\nresults: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
