"""``broker tenants set-upstream|show-upstream|remove-upstream``, run as an operator would (a subprocess)."""

from __future__ import annotations

import json
import secrets

from broker.gateway import upstreams
from tests.test_cli import broker


async def test_set_show_and_remove_an_upstream_from_the_command_line(runtime, make_tenant):
    tenant = await make_tenant("cli gateway")
    secret = f"cli-upstream-secret-{secrets.token_hex(8)}"
    env = {"BROKER_UPSTREAM_SECRET": secret}
    result = broker(
        "tenants",
        "set-upstream",
        tenant.client_id,
        "--base-url",
        "https://sandbox.plaid.com/",
        "--upstream-client-id",
        "plaid-client",
        "--mode",
        "transparent",
        "--json",
        env=env,
    )
    shown = json.loads(result.stdout)
    assert (shown["base_url"], shown["client_id"], shown["mode"]) == (
        "https://sandbox.plaid.com",
        "plaid-client",
        "transparent",
    )
    assert secret not in result.stdout + result.stderr
    async with runtime.sessions() as session, session.begin():
        opened = await upstreams.open_upstream(session, runtime.ring, tenant.tenant_id)
    assert opened is not None
    assert opened.secret == secret

    text = broker("tenants", "show-upstream", tenant.client_id).stdout
    assert "plaid-client" in text
    assert secret not in text
    refused = broker(
        "tenants",
        "set-upstream",
        tenant.client_id,
        "--base-url",
        "ftp://sandbox.plaid.com",
        "--upstream-client-id",
        "x",
        env=env,
        check=False,
    )
    assert refused.returncode == 1
    assert "base_url" in refused.stderr

    assert "issuer mode" in broker("tenants", "remove-upstream", tenant.client_id).stdout
    missing = broker("tenants", "show-upstream", tenant.client_id, check=False)
    assert missing.returncode == 1
    assert "no upstream" in missing.stderr
