"""Helpers for fault tests: a throw-away migrated database, a server that can be SIGKILLed, a private
PostgreSQL that can be stopped and started (never the machine's shared one), and a round-robin balancer.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx

from broker.db import migrate
from tests import dbsetup


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def fresh_database(server_url: str) -> AsyncIterator[str]:
    """A new database on ``server_url``'s server, built by the real migrations; dropped afterwards."""
    url = await asyncio.to_thread(dbsetup.create_database, server_url, "broker_fault")
    try:
        await asyncio.to_thread(migrate.upgrade, url)
        yield url
    finally:
        await asyncio.to_thread(dbsetup.drop_database, url)


def report(line: str) -> None:
    """Print a figure of a fault run (seen with ``pytest -s``, as ``make chaos`` runs)."""
    sys.stdout.write(f"\n{line}\n")
    sys.stdout.flush()


@dataclass
class Server:
    """``broker serve`` in its own process group, so SIGKILL reaches every worker."""

    env: dict[str, str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> float:
        """Start and wait until ``/healthz`` answers; return how long that took (seconds)."""
        started = time.monotonic()
        env = {**os.environ, "BROKER_PORT": str(self.port), "BROKER_WORKERS": "2", **self.env}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "broker", "serve", "--no-migrate"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        while time.monotonic() - started < timeout:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return time.monotonic() - started
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.kill()
        msg = "broker serve did not start"
        raise RuntimeError(msg)

    def kill(self) -> None:
        """SIGKILL the whole process group (the server and its workers), as a crash would."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        """Stop gracefully (SIGTERM to the group), else kill."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
        self.process = None


@contextlib.contextmanager
def running(env: dict[str, str]) -> Iterator[Server]:
    server = Server(env)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _pgserver() -> Any:
    with warnings.catch_warnings():  # it warns at import about XDG_RUNTIME_DIR
        warnings.simplefilter("ignore")
        import pgserver._commands  # noqa: PLC0415 - pgserver ships the PostgreSQL binaries
        import pgserver.utils  # noqa: PLC0415

    return pgserver


def _bin_dir() -> Path:
    return Path(_pgserver()._commands.POSTGRES_BIN_PATH)


class PrivatePostgres:
    """A PostgreSQL cluster of this test's own (pgserver's binaries, a temp directory, a free port).

    Runs as the unprivileged ``pgserver`` user when the tests run as root (PostgreSQL refuses root).
    """

    def __init__(self, options: str = "") -> None:
        self.options = options
        self.root = Path(tempfile.mkdtemp(prefix="broker-pg-"))
        self.pgdata = self.root / "data"
        self.port = free_port()
        self.user: str | None = None
        if os.geteuid() == 0:
            utils = _pgserver().utils
            entry = utils.ensure_user_exists("pgserver")
            assert entry is not None
            bin_dir = _bin_dir()
            utils.ensure_prefix_permissions(bin_dir)
            utils.ensure_folder_permissions(bin_dir, 0o055)
            utils.ensure_folder_permissions(bin_dir.parent / "lib", 0o044)
            self.root.chmod(0o755)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
            self.user = "pgserver"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str, timeout: float = 60) -> None:
        subprocess.run(
            [str(_bin_dir() / tool), *args],
            user=self.user,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
            check=True,
            cwd=self.root,
        )

    def init(self) -> None:
        self._run("initdb", "-D", str(self.pgdata), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        options += f" {self.options}" if self.options else ""
        self._run(
            "pg_ctl", "-D", str(self.pgdata), "-w", "-t", "60", "-l", str(self.root / "log"), "-o", options, "start"
        )

    def stop(self, mode: str = "immediate") -> None:
        self._run("pg_ctl", "-D", str(self.pgdata), "-w", "-t", "60", "-m", mode, "stop")

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    cluster = PrivatePostgres()
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


class Balancer:
    """A TCP round-robin balancer on 127.0.0.1 (one backend per connection), in its own thread."""

    def __init__(self, backends: list[int]) -> None:
        self.backends = backends
        self.port = free_port()
        self.connections: dict[int, int] = dict.fromkeys(backends, 0)
        self._next = itertools.cycle(backends)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._server: Any = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(ConnectionError, OSError):
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        port = next(self._next)
        self.connections[port] += 1
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
            self._ready.set()

        self._loop.run_until_complete(main())
        self._loop.run_forever()

    def __enter__(self) -> Self:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        async def _close() -> None:
            # Close every connection and let its pipes finish, so no socket or task outlives the loop
            # (a leak would surface later as a ResourceWarning in whichever test runs the GC).
            self._server.close()
            for writer in self._writers:
                writer.close()
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(_close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
