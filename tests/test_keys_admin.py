"""``GET /admin/v1/keys``, ``broker keys status|rotate|retire`` against the configuration, ring edits."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from broker.cli.main import cli
from broker.crypto.keyring import KeyRing, KeyRingError, change_file, change_spec, ensure_dev_key_file, generate_key
from tests.admin_helpers import assert_error, bearer, issue_key
from tests.oauth_helpers import token_ok


@pytest.fixture(scope="module")
async def headers(runtime):
    _, key = await issue_key(runtime, "read")
    return bearer(key)


def _invoke(*args: str, env: dict[str, Any] | None = None) -> Any:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


async def test_key_status_over_the_admin_api(client, make_tenant, headers, runtime):
    lender = await make_tenant("status lender")
    await token_ok(client, lender, grant_type="client_credentials")
    response = await client.get("/admin/v1/keys", headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["active"] == runtime.ring.active_kid == "test-2"
    assert body["ring"] == ["test-2", "test-1"]
    assert body["data_keys"]["test-2"] >= 1
    assert set(body["columns"]) == {
        "refresh_tokens.token_enc",
        "refresh_tokens.retry_pair_enc",
        "users.user_token_enc",
        "users.identity_enc",
        "webhook_endpoints.secrets",
        "webhook_deliveries.token_enc",
        "tenant_upstreams.secret_enc",
        "upstream_grants.token_enc",
        "upstream_calls.payload_enc",
    }
    assert body["columns"]["refresh_tokens.token_enc"]["via_data_keys"]["test-2"] >= 1
    assert body["rows_by_key"]["test-2"] >= 1
    for kid, expected in (("test-2", (True, False)), ("test-1", (False, True)), ("gone", (False, True))):
        use = (await client.get(f"/admin/v1/keys/{kid}", headers=headers)).json()
        assert (use["active"], use["retirable"]) == expected, use
    assert (await client.get("/admin/v1/keys/test-2", headers=headers)).json()["data_keys"] >= 1
    assert_error(await client.get("/admin/v1/keys"), 401, "unauthorized")


async def test_keys_status_and_retire_on_the_cli(client, make_tenant):
    lender = await make_tenant("cli status")
    await token_ok(client, lender, grant_type="client_credentials")
    status = await asyncio.to_thread(_invoke, "keys", "status", "--json")
    assert status.exit_code == 0, status.output
    body = json.loads(status.output)
    assert body["active"] == "test-2"
    assert body["pending"] >= 0
    text = await asyncio.to_thread(_invoke, "keys", "status")
    assert "active key: test-2" in text.output
    assert "refresh_tokens.token_enc" in text.output
    refused = await asyncio.to_thread(_invoke, "keys", "retire", "test-2")
    assert refused.exit_code == 1
    assert "is the active key" in refused.output
    unused = await asyncio.to_thread(_invoke, "keys", "retire", "test-1", "--check-only")
    assert unused.exit_code == 0, unused.output


def test_rotate_stage_activate_and_retire_in_a_key_file(tmp_path: Path):
    path = tmp_path / "keyring.json"
    ensure_dev_key_file(path)
    env = {"BROKER_KEYS": None, "BROKER_HASH_KEY": None, "BROKER_KEY_FILE": str(path)}
    staged = _invoke("keys", "rotate", "--kid", "k2", "--stage", env=env)
    assert staged.exit_code == 0, staged.output
    ring = KeyRing.load_file(path)
    assert (ring.active_kid, sorted(ring.keys)) == ("dev-1", ["dev-1", "k2"])
    assert path.stat().st_mode & 0o777 == 0o600
    activated = _invoke("keys", "rotate", "--activate", "k2", env=env)
    assert activated.exit_code == 0, activated.output
    assert KeyRing.load_file(path).active_kid == "k2"
    fresh = _invoke("keys", "rotate", env=env)  # a generated id, active at once
    assert fresh.exit_code == 0, fresh.output
    newest = KeyRing.load_file(path)
    assert re.fullmatch(r"k\d{14}", newest.active_kid)
    assert len(newest.keys) == 3
    assert _invoke("keys", "rotate", "--activate", "nope", env=env).exit_code == 1
    assert _invoke("keys", "rotate", "--kid", "k2", env=env).exit_code == 1  # ids are unique


def test_rotate_prints_the_new_environment_value():
    spec = f"a:{generate_key()}"
    result = _invoke("keys", "rotate", "--kid", "b", env={"BROKER_KEYS": spec, "BROKER_KEY_FILE": None})
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("BROKER_KEYS="))
    value = line.removeprefix("BROKER_KEYS=")
    ring = KeyRing.parse(value, generate_key())
    assert (ring.active_kid, list(ring.keys)) == ("b", ["b", "a"])
    assert value.endswith(spec)


def test_ring_edits_validate_what_they_write():
    a, b = generate_key(), generate_key()
    spec = f"a:{a}"
    assert change_spec(spec, add=("b", b)) == f"a:{a},b:{b}"
    assert change_spec(f"a:{a},b:{b}", activate="b") == f"b:{b},a:{a}"
    assert change_spec(f"b:{b},a:{a}", remove="a") == f"b:{b}"
    for kwargs, message in (
        ({"add": ("a", b)}, "already in the ring"),
        ({"add": ("bad id!", b)}, "must match"),
        ({"add": ("c", "AAAA")}, "32 bytes"),
        ({"activate": "z"}, "not in the ring"),
        ({"remove": "a"}, "is the active key"),
        ({"remove": "z"}, "not in the ring"),
    ):
        with pytest.raises(KeyRingError, match=message):
            change_spec(spec, **kwargs)


def test_key_file_edits_refuse_to_drop_the_active_key(tmp_path: Path):
    path = tmp_path / "ring.json"
    ensure_dev_key_file(path)
    with pytest.raises(KeyRingError, match="is the active key"):
        change_file(path, remove="dev-1")
    change_file(path, add=("k2", generate_key()), activate="k2")
    ring = change_file(path, remove="dev-1")
    assert list(ring.keys) == ["k2"]
    assert KeyRing.load_file(path).active_kid == "k2"
