"""The hot pool reaches the database the engine reaches: the URL is read by the engine's own dialect.

It used to build its arguments from the URL's user, password, database, host and port only, so a port
or ``ssl`` given as a query parameter (``?host=/run/postgresql&port=5433``, ``?ssl=require``) reached
the ORM's connections but not the hot ones: those went to port 5432, or without TLS.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url

from broker.db.engine import create_engine
from broker.db.hotpath import HotPool, connect_kwargs
from broker.settings import Settings


def _args(url: str) -> dict[str, Any]:
    kwargs = connect_kwargs(Settings(database_url=url))
    kwargs.pop("server_settings")
    return kwargs


def test_a_socket_directory_and_port_given_as_query_parameters() -> None:
    args = _args("postgresql://broker@/broker?host=/run/postgresql&port=5433")
    assert args["host"] == "/run/postgresql"
    assert args["port"] == 5433
    assert args["database"] == "broker"
    assert args["user"] == "broker"


def test_tls_required_in_the_url_is_kept() -> None:
    args = _args("postgresql://broker:pw@db.example:6543/broker?ssl=require")
    assert (args["host"], args["port"], args["password"], args["ssl"]) == ("db.example", 6543, "pw", "require")


def test_several_hosts() -> None:
    args = _args("postgresql://broker@/broker?host=a.example:5432&host=b.example:5433")
    assert args["host"] == ["a.example", "b.example"]
    assert args["port"] == [5432, 5433]


def test_no_argument_of_sqlalchemys_own_reaches_asyncpg() -> None:
    args = _args("postgresql://broker@db.example/broker?prepared_statement_cache_size=0")
    assert "prepared_statement_cache_size" not in args


async def test_both_pools_reach_the_same_server_through_query_parameters(settings: Settings) -> None:
    """The test database's URL rewritten with host and port in the query string: both pools follow it."""
    url = make_url(settings.async_database_url)
    if url.host is None or url.port is None:
        pytest.skip("the test database URL names no host and port to move into the query")
    moved = URL.create(
        url.drivername,
        username=url.username,
        password=url.password,
        database=url.database,
        query={"host": url.host, "port": str(url.port)},
    )
    assert moved.port is None
    rewritten = moved.render_as_string(hide_password=False)
    own = settings.model_copy(update={"database_url": rewritten})
    hot = HotPool(own)
    engine = create_engine(own)
    try:
        hot_port = await hot.fetchval("SELECT current_setting('port')::int")
        async with engine.connect() as connection:
            engine_port = (await connection.execute(text("SELECT current_setting('port')::int"))).scalar()
    finally:
        await hot.close()
        await engine.dispose()
    assert hot_port == engine_port == url.port
