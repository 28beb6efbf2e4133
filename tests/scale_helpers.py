"""Servers for the scale-out tests (``make test-scale``): a primary with a streaming replica, and PgBouncer.

Both are private to the test run (temporary directories, free ports); the machine's shared PostgreSQL
is only ever a client's target, never reconfigured.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from tests.fault_helpers import PrivatePostgres, free_port

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
REPLICATION = "-c wal_level=replica -c max_wal_senders=5 -c hot_standby=on -c wal_keep_size=64MB"


class Standby(PrivatePostgres):
    """A hot standby of ``primary``, cloned by ``pg_basebackup -R`` (streaming replication)."""

    def __init__(self, primary: PrivatePostgres) -> None:
        super().__init__("-c hot_standby=on")
        self.primary = primary

    def init(self) -> None:
        self._run(
            "pg_basebackup",
            "-D",
            str(self.pgdata),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.primary.port),
            "-U",
            "postgres",
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
        )


@contextlib.contextmanager
def replicated_postgres() -> Iterator[tuple[PrivatePostgres, Standby]]:
    """A primary (``wal_level=replica``) and a hot standby streaming from it, both started."""
    primary = PrivatePostgres(REPLICATION)
    standby: Standby | None = None
    try:
        primary.init()
        primary.start()
        standby = Standby(primary)
        standby.init()
        standby.start()
        yield primary, standby
    finally:
        if standby is not None:
            standby.destroy()
        primary.destroy()


async def wait_replayed(primary_url: str, standby_url: str, within: float = 30) -> None:
    """Wait until the standby has replayed everything the primary had written when this was called."""
    primary = await asyncpg.connect(primary_url)
    try:
        target = await primary.fetchval("SELECT pg_current_wal_lsn()")
    finally:
        await primary.close()
    standby = await asyncpg.connect(standby_url)
    try:
        deadline = time.monotonic() + within
        while not await standby.fetchval("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", target):
            if time.monotonic() > deadline:
                msg = "the standby did not catch up"
                raise TimeoutError(msg)
            await asyncio.sleep(0.05)
    finally:
        await standby.close()


class PgBouncer:
    """PgBouncer (the Debian package) in transaction mode in front of the server of ``server_url``."""

    def __init__(self, server_url: str, *, pool_size: int = 20) -> None:
        url = make_url(server_url)
        self.root = Path(tempfile.mkdtemp(prefix="broker-pgbouncer-"))
        self.port = free_port()
        self.server_host = url.query.get("host", url.host) or "127.0.0.1"
        self.server_port = url.port or 5432
        self.pool_size = pool_size
        self.process: subprocess.Popen[bytes] | None = None
        self.user: str | None = None
        if os.geteuid() == 0:  # PgBouncer refuses to run as root
            # Behind a unix socket (the embedded server), only the socket directory's owner may connect.
            socket_dir = Path(str(self.server_host))
            owner = socket_dir.stat().st_uid if socket_dir.is_absolute() and socket_dir.exists() else None
            self.user = pwd.getpwuid(owner).pw_name if owner not in (None, 0) else "postgres"

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def admin_url(self) -> str:
        return self.url("pgbouncer")

    def start(self, timeout: float = 20) -> None:
        if not Path(PGBOUNCER).exists():
            msg = "pgbouncer is not installed: run tests/install-scale-tools.sh (make test-scale does)"
            raise RuntimeError(msg)
        config = self.root / "pgbouncer.ini"
        config.write_text(
            "[databases]\n"
            f"* = host={self.server_host} port={self.server_port}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.root / 'users.txt'}\n"
            "admin_users = postgres\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {self.pool_size}\nmax_client_conn = 1000\n"
            "server_reset_query =\n"
            "ignore_startup_parameters = extra_float_digits\n"
            f"logfile = {self.root / 'pgbouncer.log'}\n"
        )
        (self.root / "users.txt").write_text('"postgres" ""\n')
        if self.user is not None:
            self.root.chmod(0o777)
            for path in self.root.iterdir():
                path.chmod(0o666)
        self.process = subprocess.Popen(
            [PGBOUNCER, str(config)],
            user=self.user,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            with contextlib.suppress(OSError), socket_to(self.port):
                return
            time.sleep(0.05)
        log = (self.root / "pgbouncer.log").read_text() if (self.root / "pgbouncer.log").exists() else ""
        self.stop()
        msg = f"pgbouncer did not start: {log[-2000:]}"
        raise RuntimeError(msg)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
            self.process = None
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def socket_to(port: int) -> Iterator[None]:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        yield


@contextlib.contextmanager
def pgbouncer(server_url: str, *, pool_size: int = 20) -> Iterator[PgBouncer]:
    bouncer = PgBouncer(server_url, pool_size=pool_size)
    bouncer.start()
    try:
        yield bouncer
    finally:
        bouncer.stop()
