"""The embedded PostgreSQL used when no database URL is configured (development and tests).

It lives under ``<data_dir>/pg``, survives restarts (the next start finds its data again) and is stopped
when the last process using it exits (``pgserver``'s reference counting).
"""

from __future__ import annotations

import re
import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

DATABASE = "broker"
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def start(data_dir: Path, database: str = DATABASE) -> tuple[Any, str]:
    """Start (or attach to) the embedded server and ensure ``database`` exists.

    Returns:
        The server handle (keep it referenced while the database is in use) and a postgresql:// URL.
    """
    if not _NAME.match(database):
        msg = f"invalid database name {database!r}"
        raise ValueError(msg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver  # noqa: PLC0415 - heavy import, only needed in development

        pgdata = (data_dir / "pg").resolve()
        pgdata.mkdir(parents=True, exist_ok=True)
        server = pgserver.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")  # noqa: S608 - name checked  # noqa: S608 - name checked above
    if "(1 row)" not in exists:
        server.psql(f"CREATE DATABASE {database};")
    return server, server.get_uri(database)
