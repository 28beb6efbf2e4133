"""What a benchmark run stands on: a throw-away database, broker under granian, the load tools, a sampler.

Everything started here is started in its own session (process group) and stopped by that id, so a run
cleans up after itself even when it fails half-way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx
from sqlalchemy.engine import make_url

from broker.audit import sealer

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A step of the benchmark failed; the message says which."""


# --------------------------------------------------------------------------------------------- database


def _connect_kwargs(url: str) -> dict[str, Any]:
    parsed = make_url(url)
    kwargs: dict[str, Any] = {
        "user": parsed.username,
        "password": parsed.password,
        "database": parsed.database,
        "host": parsed.query.get("host", parsed.host),
        "port": parsed.port,
    }
    return {key: value for key, value in kwargs.items() if value not in (None, "")}


def _with_database(url: str, database: str) -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)


async def _run_sql(url: str, statements: list[tuple[str, tuple[Any, ...]]], fetch: bool) -> list[Any]:
    connection = await asyncpg.connect(**_connect_kwargs(url), timeout=10)
    try:
        results: list[Any] = []
        for statement, args in statements:
            if fetch:
                results.append(await connection.fetch(statement, *args))
            else:
                await connection.execute(statement, *args)
        return results
    finally:
        await connection.close()


def _answers(url: str) -> bool:
    try:
        asyncio.run(_run_sql(url, [("SELECT 1", ())], fetch=True))
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    return True


@dataclass
class Database:
    """A dedicated database on the local server (or the embedded one), dropped by :meth:`drop`."""

    url: str
    name: str
    where: str
    handle: Any = None

    def execute(self, statement: str, *args: object) -> None:
        """Run one statement (autocommit)."""
        asyncio.run(_run_sql(self.url, [(statement, args)], fetch=False))

    def fetch(self, statement: str, *args: object) -> list[Any]:
        """Rows of one query."""
        return list(asyncio.run(_run_sql(self.url, [(statement, args)], fetch=True))[0])

    def script(self, statements: list[tuple[str, tuple[object, ...]]]) -> None:
        """Run statements in order on one connection (so they can share a temporary table)."""
        asyncio.run(_run_sql(self.url, statements, fetch=False))

    def scalar(self, statement: str, *args: object) -> Any:  # noqa: ANN401 - whatever the query returns
        """The first column of the first row."""
        rows = self.fetch(statement, *args)
        return rows[0][0] if rows else None

    def drop(self) -> None:
        """Drop the database (closing whatever is still connected)."""
        admin = _with_database(self.url, "postgres")
        asyncio.run(_run_sql(admin, [(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)', ())], fetch=False))


def create_database() -> Database:
    """A fresh database: on the server of ``BENCH_DATABASE_URL``, else 127.0.0.1:5432 if it answers, else embedded."""
    name = f"broker_bench_{secrets.token_hex(4)}"
    server = os.environ.get("BENCH_DATABASE_URL", LOCAL_SERVER)
    if _answers(server):
        asyncio.run(_run_sql(server, [(f'CREATE DATABASE "{name}"', ())], fetch=False))
        host = make_url(server)
        return Database(_with_database(server, name), name, f"server at {host.host}:{host.port or 5432}")
    from broker.db import embedded  # noqa: PLC0415 - only when no server answers

    handle, url = embedded.start(ROOT / ".broker" / "bench", database=name)
    return Database(url, name, "embedded (pgserver)", handle)


# ---------------------------------------------------------------------------------------------- processes


def tool(name: str) -> str:
    """The full path of a command-line tool, or a clear error naming the target that installs it."""
    path = shutil.which(name)
    if path is None:
        raise BenchError(f"{name} not found: run `make bench`, which installs it")
    return path


def stop_group(process: subprocess.Popen[Any], grace: float = 10) -> None:
    """Stop a process we started in its own session: SIGTERM to its group, then SIGKILL."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=grace)


def run_tool(
    command: list[str],
    *,
    timeout: float,
    env: dict[str, str] | None = None,
    done: list[Path] | None = None,
) -> str:
    """Run a load tool in its own session, bounded by ``timeout``; return its standard output.

    When every file in ``done`` exists, the tool is sent SIGINT: wrk then stops, reports and exits.
    """
    process = subprocess.Popen(  # noqa: S603 - our own fixed command lines
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    interrupted = False
    try:
        while True:
            try:
                out, err = process.communicate(timeout=0.05)
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    raise
                if done and not interrupted and all(path.exists() for path in done):
                    process.send_signal(signal.SIGINT)
                    interrupted = True
    except BaseException:
        stop_group(process, grace=2)
        raise
    if process.returncode != 0:
        raise BenchError(f"{Path(command[0]).name} exited {process.returncode}: {err.strip()[-2000:]}")
    return out


def free_port() -> int:
    """A TCP port free on 127.0.0.1."""
    import socket  # noqa: PLC0415

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def broker_command(*args: str) -> list[str]:
    """The ``broker`` CLI of the running interpreter (the project's virtualenv)."""
    return [sys.executable, "-m", "broker", *args]


@dataclass
class Broker:
    """``broker serve`` (granian) in production mode, in its own session.

    With ``servers`` > 1, that many separate ``broker serve`` processes (each with ``workers`` workers)
    listen on the same port: granian binds with ``SO_REUSEPORT``, so the kernel spreads connections
    over them, as a load balancer would over replicas.
    """

    env: dict[str, str]
    workers: int
    servers: int = 1
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    others: list[subprocess.Popen[bytes]] = field(default_factory=list)
    log: Path = field(default_factory=lambda: Path(tempfile.mkstemp(prefix="broker-bench-", suffix=".log")[1]))

    @property
    def url(self) -> str:
        """Base URL."""
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str) -> str:
        """Run a ``broker`` CLI command with the server's environment; return its output."""
        result = subprocess.run(  # noqa: S603 - our own fixed command line
            broker_command(*args), env={**os.environ, **self.env}, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise BenchError(f"broker {' '.join(args)} failed: {result.stderr.strip()[-2000:]}")
        return result.stdout

    def start(self) -> None:
        """Start serving and wait until ``/healthz`` answers."""
        env = {**os.environ, **self.env, "BROKER_PORT": str(self.port), "BROKER_ISSUER": self.url}
        with self.log.open("ab") as log:
            started = [
                subprocess.Popen(  # noqa: S603 - our own fixed command line
                    broker_command("serve", "--no-migrate", "--workers", str(self.workers)),
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                for _ in range(self.servers)
            ]
        self.process, self.others = started[0], started[1:]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if any(process.poll() is not None for process in started):
                raise BenchError(f"broker exited at start-up:\n{self.log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                healthy = httpx.get(f"{self.url}/healthz", timeout=1).status_code == HTTPStatus.OK
                if healthy and len(self.worker_pids()) == self.workers * self.servers:
                    return
            time.sleep(0.2)
        raise BenchError(f"broker did not become healthy:\n{self.log.read_text()[-3000:]}")

    @property
    def sessions(self) -> set[int]:
        """The session ids of the serving processes (each started its own session)."""
        return {process.pid for process in (self.process, *self.others) if process is not None}

    def worker_pids(self) -> list[int]:
        """The granian worker processes: children of the main processes, but not the audit sealer."""
        pids: list[int] = []
        for main in sorted(self.sessions):
            children = Path(f"/proc/{main}/task/{main}/children")
            with contextlib.suppress(OSError):
                pids += [int(pid) for pid in children.read_text().split() if not _is_sealer(int(pid))]
        return pids

    def show_log_on_failure(self, exc_type: type[BaseException] | None, *_: object) -> None:
        """An exit callback: after a failure, print the end of the server's log (it is deleted on stop)."""
        if exc_type is not None and self.log.exists():
            sys.stderr.write(f"--- end of the broker log ---\n{self.log.read_text()[-4000:]}\n")

    def stop(self) -> None:
        """Stop the server and its workers."""
        for process in (self.process, *self.others):
            if process is not None:
                stop_group(process)
        with contextlib.suppress(OSError):
            self.log.unlink()


# ------------------------------------------------------------------------------------------------ sampler


def _cpu_total_busy() -> int:
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return user + nice + system + irq + softirq + steal


def _proc_stat(pid: int) -> tuple[int, int, int] | None:
    """``(parent pid, session id, utime + stime)`` of a process, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = text[text.rindex(")") + 2 :].split()
    return int(rest[1]), int(rest[3]), int(rest[11]) + int(rest[12])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


_PG_AUX = re.compile(r"^postgres: .*(walwriter|checkpointer|background writer|wal writer)")


def _vm_hwm_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_peak_rss(pids: list[int]) -> None:
    """Reset the peak resident set size (VmHWM) of ``pids`` (Linux ``clear_refs`` 5)."""
    for pid in pids:
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/clear_refs").write_text("5")


@dataclass
class Usage:
    """CPU use during one load run, in percent of one core, and the peak RSS of each worker."""

    server: float
    postgres: float
    load_tool: float
    other: float
    peak_rss_mib: list[float]


class Sampler:
    """Attribute the machine's CPU time during a run: broker, PostgreSQL (our database), load tool, other.

    "Other" is everything else on the machine (other engineers' test runs on shared cores): the noise
    indicator printed beside every figure.
    """

    INTERVAL = 0.25

    def __init__(self, server: Broker, database: str) -> None:
        self.server = server
        self.database = database
        self._stop = threading.Event()
        self._first: dict[int, int] = {}
        self._last: dict[int, tuple[str, int]] = {}
        self._postgres: dict[int, bool] = {}
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _classify(self, pid: int, ppid: int, sid: int) -> str | None:
        if sid in self.server.sessions:
            return "server"
        if ppid == os.getpid():  # wrk or pgbench: the only children while a run is measured
            return "load_tool"
        if pid not in self._postgres:
            command = _cmdline(pid)
            self._postgres[pid] = command.startswith("postgres") and bool(
                self.database in command or _PG_AUX.match(command)
            )
        return "postgres" if self._postgres[pid] else None

    def _scan(self, *, first: bool) -> None:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            stat = _proc_stat(pid)
            if stat is None:
                continue
            ppid, sid, ticks = stat
            if first:
                self._first[pid] = ticks
            kind = self._classify(pid, ppid, sid)
            if kind is not None:
                self._last[pid] = (kind, ticks)

    def _loop(self) -> None:
        while not self._stop.wait(self.INTERVAL):
            self._scan(first=False)

    @contextlib.contextmanager
    def measure(self) -> Iterator[list[Usage]]:
        """Sample while the block runs; the yielded list holds one :class:`Usage` afterwards."""
        out: list[Usage] = []
        reset_peak_rss(self.server.worker_pids())
        self._scan(first=True)
        busy, started = _cpu_total_busy(), time.monotonic()
        self._thread.start()
        try:
            yield out
        finally:
            self._stop.set()
            self._thread.join()
            self._scan(first=False)
            elapsed_ticks = (time.monotonic() - started) * CLOCK_TICKS
            spent = {"server": 0, "postgres": 0, "load_tool": 0}
            for pid, (kind, ticks) in self._last.items():
                spent[kind] += ticks - self._first.get(pid, 0)
            total = _cpu_total_busy() - busy

            def pct(ticks: float) -> float:
                return round(100 * ticks / elapsed_ticks, 1) if elapsed_ticks else 0.0

            rss = [round(_vm_hwm_kib(pid) / 1024, 1) for pid in self.server.worker_pids()]
            out.append(
                Usage(
                    server=pct(spent["server"]),
                    postgres=pct(spent["postgres"]),
                    load_tool=pct(spent["load_tool"]),
                    other=pct(max(0, total - sum(spent.values()))),
                    peak_rss_mib=rss,
                )
            )


def dump_json(path: Path, data: object) -> None:
    """Write ``data`` as indented JSON, creating the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def _is_sealer(pid: int) -> bool:
    """Whether ``pid`` is ``broker serve``'s audit sealer (``broker.audit.sealer``), by its kernel name."""
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/comm").read_text().strip() == sealer.PROCESS_NAME
    return False
