"""The ``broker`` CLI, run as a subprocess against the test database (as an operator would run it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from click.testing import CliRunner

from broker import errors
from broker.audiences import service as audiences
from broker.cli.main import cli
from broker.http.auth import Credentials
from broker.tenants import clients
from broker.tenants import service as tenants
from tests.admin_helpers import bearer

CRA_URNS = [
    "urn:plaid:params:cra-partner:experian",
    "urn:plaid:params:cra-partner:fannie-mae",
    "urn:plaid:params:cra-partner:freddie-mac",
]


def broker(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "broker", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def broker_in_process(*args: str) -> Any:
    """Run a command in this process (fast; for output and error paths). Call only from sync tests."""
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def broker_json(*args: str, env: dict[str, str] | None = None) -> Any:
    return json.loads(broker(*args, "--json", env=env).stdout)


async def _authenticates(runtime, client_id: str, secret: str) -> bool:
    try:
        tenant = await clients.authenticate(runtime, Credentials(client_id, secret))
    except errors.InvalidClient:
        return False
    return tenant.client_id == client_id


async def test_tenants_create_json(runtime):
    created = broker_json("tenants", "create", "--name", "CLI Lender")
    assert set(created) == {"client_id", "secret", "name", "kind", "allowed_scopes", "default_scopes"}
    assert created["name"] == "CLI Lender"
    assert created["kind"] == "customer"
    assert len(created["client_id"]) == 24
    assert await _authenticates(runtime, created["client_id"], created["secret"])
    assert not await _authenticates(runtime, created["client_id"], "0" * 32)


async def test_tenants_create_partner_with_scopes(runtime):
    created = broker_json(
        "tenants", "create", "--name", "CLI CRA", "--kind", "partner", "--scopes", "user:read, exchange"
    )
    assert created["kind"] == "partner"
    assert created["allowed_scopes"] == ["exchange", "user:read"]
    assert created["default_scopes"] == ["exchange", "user:read"]
    async with runtime.sessions() as session:
        tenant = await tenants.get_tenant(session, created["client_id"])
    assert tenant.kind == "partner"


def test_tenants_create_text_prints_credentials_once():
    result = broker_in_process("tenants", "create", "--name", "CLI Text")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("client_id: ")
    assert lines[1].startswith("secret:    ")
    assert len(lines[1].split()[1]) == 32


def test_tenants_list_json_shows_every_tenant_without_secrets():
    created = broker_json("tenants", "create", "--name", "Listed")
    listed = broker_json("tenants", "list")
    (row,) = [t for t in listed if t["client_id"] == created["client_id"]]
    assert row == {"client_id": created["client_id"], "name": "Listed", "kind": "customer", "status": "active"}
    assert created["secret"] not in json.dumps(listed)
    ids = [t["client_id"] for t in listed]
    assert ids == sorted(ids)
    text = broker_in_process("tenants", "list").stdout
    assert created["client_id"] in text
    assert created["secret"] not in text


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["tenants", "create", "--name", "   "], 1, "name must be 1 to 200 characters"),
        (["tenants", "create", "--name", "x", "--kind", "bank"], 2, "Invalid value for '--kind'"),
        (["tenants", "create", "--name", "x", "--scopes", "user:read \x7f"], 1, "allowed_scopes"),
        (["tenants", "create"], 2, "Missing option '--name'"),
        (["admin", "create-key", "--name", "x", "--scope", "root"], 2, "Invalid value for '--scope'"),
        (["admin", "create-key", "--name", "bad\tname"], 1, "name must be"),
    ],
)
def test_bad_input_exits_with_a_message(args, code, message):
    result = broker_in_process(*args)
    assert result.exit_code == code, result.output
    assert message in result.stderr


async def test_admin_create_key_prints_a_working_key(client):
    name = f"cli-ops-{os.urandom(3).hex()}"
    created = broker_json("admin", "create-key", "--name", name, "--scope", "read")
    assert created["key"].startswith("bka-")
    assert (created["name"], created["scope"]) == (name, "read")
    assert (await client.get("/admin/v1/tenants", headers=bearer(created["key"]))).status_code == 200
    response = await client.post("/admin/v1/tenants", json={"name": "x"}, headers=bearer(created["key"]))
    assert response.status_code == 403
    duplicate = broker("admin", "create-key", "--name", name, check=False)
    assert duplicate.returncode == 1
    assert "already exists" in duplicate.stderr
    text = broker("admin", "create-key", "--name", name + "-w").stdout
    assert text.splitlines()[-1].startswith("bka-")


async def test_demo_json_seeds_a_usable_world_and_is_rerunnable(runtime):
    first = broker_json("demo")
    assert first["base_url"] == "http://127.0.0.1:8000"
    lender, other = first["lender"], first["second_client"]
    assert [p["urn"] for p in first["partners"]] == CRA_URNS
    for party in [lender, other, *first["partners"]]:
        assert await _authenticates(runtime, party["client_id"], party["secret"])
    async with runtime.sessions() as session, session.begin():
        lender_tenant = await tenants.get_tenant(session, lender["client_id"])
        resolved = await audiences.resolve_targets(session, lender_tenant.id, [*CRA_URNS, other["client_id"]])
        partner_ids = {
            p["client_id"]: (await tenants.get_tenant(session, p["client_id"])).id for p in first["partners"]
        }
        for partner in first["partners"]:
            view = await audiences.get_audience(session, partner["urn"])
            assert partner["client_id"] in view.members
            assert (await tenants.get_tenant(session, partner["client_id"])).kind == "partner"
    by_entry = {r.entry: r for r in resolved}
    for partner in first["partners"]:
        assert partner_ids[partner["client_id"]] in by_entry[partner["urn"]].partner_tenant_ids
    other_id = await _tenant_id(runtime, other["client_id"])
    assert by_entry[other["client_id"]].partner_tenant_ids == (other_id,)
    for key in ("create_user", "exchange"):
        assert lender["client_id"] in first["curl"][key]
        assert lender["secret"] in first["curl"][key]
    assert "http://127.0.0.1:8000/user/create" in first["curl"]["create_user"]
    assert "subject_token_type=urn:plaid:params:credit:multi-user" in first["curl"]["exchange"]
    assert "audience=" + ",".join([*CRA_URNS, other["client_id"]]) in first["curl"]["exchange"]

    # a second run makes a new world and unmaps the first run's partners from the CRA audiences
    second = broker_json("demo")
    assert second["lender"]["client_id"] != first["lender"]["client_id"]
    async with runtime.sessions() as session:
        for old, new in zip(first["partners"], second["partners"], strict=True):
            members = (await audiences.get_audience(session, new["urn"])).members
            assert new["client_id"] in members
            assert old["client_id"] not in members


async def _tenant_id(runtime, client_id: str) -> Any:
    async with runtime.sessions() as session:
        return (await tenants.get_tenant(session, client_id)).id


def test_demo_text_names_every_credential():
    result = broker_in_process("demo")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert text.count("client_id: ") == 5
    assert text.count("secret:    ") == 5
    assert "curl -sS -X POST http://127.0.0.1:8000/user/create" in text
    assert "curl -sS -X POST http://127.0.0.1:8000/oauth/token" in text


def test_demo_curl_lines_work_against_a_live_server(live_server):
    seeded = broker_json("demo", env={"BROKER_ISSUER": live_server.url})
    script = seeded["curl"]["create_user"] + "\n" + seeded["curl"]["exchange"] + "\n"
    result = subprocess.run(["/bin/bash", "-e", "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    user_line, token_line = result.stdout.strip().splitlines()
    assert user_line.startswith("user_id: usr_")
    token = json.loads(token_line)
    assert token["access_token"].startswith("pda-")
    assert token["refresh_token"].startswith("pdr-")
    assert token["token_type"] == "Bearer"
    assert token["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"


def test_migrate_behind_pgbouncer_needs_a_direct_url():
    refused = broker("migrate", env={"BROKER_DATABASE_POOLER": "pgbouncer"}, check=False)
    assert refused.returncode == 1
    assert "BROKER_DATABASE_MIGRATE_URL" in refused.stderr
    assert "Traceback" not in refused.stderr
    direct = os.environ["BROKER_DATABASE_URL"]
    unreachable = "postgresql://postgres@127.0.0.1:1/nowhere"  # the pooled URL is not used to migrate
    done = broker(
        "migrate",
        env={
            "BROKER_DATABASE_POOLER": "pgbouncer",
            "BROKER_DATABASE_URL": unreachable,
            "BROKER_DATABASE_MIGRATE_URL": direct,
        },
    )
    assert "database at revision" in done.stdout
