from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from broker.settings import Settings, describe_validation_error, to_asyncpg_url


def _clean_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env.update(overrides)
    return env


def test_production_requires_database_and_keys(monkeypatch):
    for key in list(os.environ):
        if key.startswith("BROKER_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("BROKER_ENV", "production")
    with pytest.raises(ValidationError) as failure:
        Settings()
    assert describe_validation_error(failure.value) == "BROKER_DATABASE_URL is required in production"


@pytest.mark.parametrize(
    ("variable", "value"),
    [("BROKER_PORT", "99999"), ("BROKER_DATABASE_URL", "mysql://x"), ("BROKER_ACCESS_TOKEN_TTL", "abc")],
)
def test_bad_values_name_the_variable(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as failure:
        Settings()
    assert describe_validation_error(failure.value).startswith(variable)


def test_cli_stops_with_one_clear_line_per_bad_variable():
    result = subprocess.run(
        [sys.executable, "-m", "broker", "migrate"],
        env=_clean_env(BROKER_ENV="production", BROKER_PORT="0"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "BROKER_PORT" in result.stderr
    assert "Traceback" not in result.stderr


def test_asyncpg_url_normalisation():
    assert to_asyncpg_url("postgresql://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert to_asyncpg_url("postgres://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert to_asyncpg_url("postgresql+asyncpg://u@h/db") == "postgresql+asyncpg://u@h/db"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"BROKER_KEYS": "k1:abc", "BROKER_HASH_KEY": "abc"}, "key ring: key 'k1' must be 32 bytes"),
        (
            {"BROKER_DATABASE_URL": "postgresql://x@127.0.0.1:1/x"},
            "cannot migrate the database (ConnectionRefusedError",
        ),
        ({"BROKER_MIGRATIONS_DIR": "/nonexistent"}, "no migrations at /nonexistent"),
    ],
)
def test_cli_start_up_failures_are_one_line(overrides, expected):
    key = "A" * 43 + "="
    defaults = {
        "BROKER_ENV": "production",
        "BROKER_DATABASE_URL": os.environ["BROKER_DATABASE_URL"],
        "BROKER_KEYS": f"k1:{key}",
        "BROKER_HASH_KEY": key,
    }
    env = _clean_env(**{**defaults, **overrides})
    result = subprocess.run(
        [sys.executable, "-m", "broker", "migrate"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
