"""Outbound safety: URLs and addresses refused in production, at registration and again at delivery."""

from __future__ import annotations

import httpcore
import pytest

from broker import errors
from broker.webhooks import safety
from broker.webhooks import service as webhooks
from tests.webhook_helpers import (
    Receiver,
    delete_endpoints,
    deliveries,
    fast_config,
    make_endpoint,
    wait_until,
    worker_running,
)


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("8.8.8.8", True),
        ("2001:4860:4860::8888", True),
        ("127.0.0.1", False),
        ("127.8.9.10", False),
        ("::1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("fe80::1", False),
        ("fe80::1%eth0", False),
        ("fc00::1", False),
        ("100.64.0.1", False),  # shared address space
        ("0.0.0.0", False),  # noqa: S104
        ("::", False),
        ("224.0.0.1", False),  # multicast
        ("255.255.255.255", False),
        ("192.0.2.1", False),  # documentation
        ("::ffff:127.0.0.1", False),  # IPv4-mapped loopback
        ("::ffff:8.8.8.8", True),
        ("not an address", False),
    ],
)
def test_address_allowed(address, allowed):
    assert safety.address_allowed(address) is allowed


@pytest.mark.parametrize(
    ("url", "allow_http", "fragment"),
    [
        ("https://partner.example/hooks", False, None),
        ("http://partner.example/hooks", True, None),
        ("http://partner.example/hooks", False, "must be https://"),
        ("ftp://partner.example/", True, "http:// or https://"),
        ("file:///etc/passwd", True, "http:// or https://"),
        ("javascript:alert(1)", True, "http:// or https://"),
        ("https://", True, "must name a host"),
        ("https://user@partner.example/", True, "user info"),
        ("https://partner.example/#x", True, "fragment"),
        ("https://partner.example:0x50/", True, "malformed"),
        ("https://partner.example/\r\nX-Injected: 1", True, "whitespace or control"),
    ],
)
def test_check_url(url, allow_http, fragment):
    if fragment is None:
        safety.check_url(url, allow_http=allow_http)
    else:
        with pytest.raises(safety.UnsafeTarget, match=fragment):
            safety.check_url(url, allow_http=allow_http)


@pytest.fixture
def production(settings):
    return settings.model_copy(update={"env": "production", "webhook_allow_private": None, "webhook_allow_http": None})


def test_production_refuses_private_targets_and_http_by_default(settings, production):
    assert settings.webhooks_may_target_private
    assert settings.webhooks_may_use_http
    assert not production.webhooks_may_target_private
    assert not production.webhooks_may_use_http
    allowed = production.model_copy(update={"webhook_allow_private": True, "webhook_allow_http": True})
    assert allowed.webhooks_may_target_private
    assert allowed.webhooks_may_use_http


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hooks",
        "https://localhost/hooks",  # a name that resolves to loopback
        "https://10.0.0.1/hooks",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::1]/hooks",
        "https://[::ffff:127.0.0.1]/hooks",
        "https://0.0.0.0/hooks",
        "https://2130706433/hooks",  # 127.0.0.1 as a decimal integer
        "http://127.0.0.1/hooks",
    ],
)
async def test_registration_refuses_ssrf_targets_in_production(runtime, production, make_tenant, url):
    partner = await make_tenant("partner", kind="partner")
    async with runtime.sessions() as session, session.begin():
        with pytest.raises(errors.ValidationFailed, match="url: "):
            await webhooks.create_endpoint(
                session,
                runtime.ring,
                production,
                webhooks.EndpointSpec(url=url),
                client_id=partner.client_id,
                audience=None,
                actor="test",
                request_id=None,
            )


async def test_the_operator_may_allow_private_targets_in_production(runtime, production, make_tenant):
    partner = await make_tenant("partner", kind="partner")
    allowed = production.model_copy(update={"webhook_allow_private": True, "webhook_allow_http": True})
    async with runtime.sessions() as session, session.begin():
        view, _ = await webhooks.create_endpoint(
            session,
            runtime.ring,
            allowed,
            webhooks.EndpointSpec(url="http://127.0.0.1:9/hooks"),
            client_id=partner.client_id,
            audience=None,
            actor="test",
            request_id=None,
        )
    await delete_endpoints(runtime, [view.endpoint.id])


async def test_delivery_rechecks_every_address_when_it_connects(runtime, make_tenant):
    """Registered while private targets were allowed; a production worker still refuses to connect.

    ``localhost`` stands for a name whose DNS answer changed to a private address after registration
    (DNS rebinding): the worker resolves at connect time and refuses, and the receiver hears nothing.
    """
    receiver = Receiver().start()
    partner = await make_tenant("partner", kind="partner")
    port = receiver.url.split(":")[2].split("/")[0]
    by_ip, _ = await make_endpoint(runtime, receiver.url, client_id=partner.client_id)
    by_name, _ = await make_endpoint(runtime, f"http://localhost:{port}/hooks", client_id=partner.client_id)
    try:
        for endpoint_id in (by_ip, by_name):
            async with runtime.sessions() as session, session.begin():
                await webhooks.send_test(session, str(endpoint_id), actor="test", request_id=None)
        production = fast_config(allow_private=False, max_attempts=1)
        async with worker_running(runtime, production):
            rows = await wait_until(lambda: _dead(runtime, [by_ip, by_name]))
        assert receiver.events() == []
        for row in rows:
            assert row.last_status_code is None
            assert "refused" in (row.last_error or "")
            assert "non-public address" in (row.last_error or "")
        # the same endpoints work when private targets are allowed (the swap of the transport is the guard)
        async with runtime.sessions() as session, session.begin():
            await webhooks.redeliver_dead(session, endpoint_id=str(by_ip), actor="test", request_id=None)
        async with worker_running(runtime, fast_config(allow_private=True)):
            await wait_until(receiver.events)
    finally:
        receiver.close()
        await delete_endpoints(runtime, [by_ip, by_name])


async def _dead(runtime, endpoint_ids):
    rows = [row for endpoint_id in endpoint_ids for row in await deliveries(runtime, endpoint_id)]
    return rows if len(rows) == len(endpoint_ids) and all(r.status == "dead" for r in rows) else None


class _Recorder(httpcore.AsyncNetworkBackend):
    def __init__(self):
        self.connected: list[str] = []

    async def connect_tcp(self, host, *_args, **_kwargs):
        self.connected.append(host)
        raise httpcore.ConnectError("recorded")


async def test_the_guarded_backend_connects_only_to_checked_addresses(monkeypatch):
    inner = _Recorder()
    backend = safety.GuardedBackend(inner)

    async def public(host, port):
        return ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"]

    monkeypatch.setattr(safety, "resolve", public)
    with pytest.raises(httpcore.ConnectError, match="recorded"):
        await backend.connect_tcp("partner.example", 443)
    assert inner.connected == ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"]  # the checked IPs, no name

    async def mixed(host, port):
        return ["93.184.216.34", "10.0.0.7"]  # one private answer is enough to refuse

    monkeypatch.setattr(safety, "resolve", mixed)
    inner.connected.clear()
    with pytest.raises(httpcore.ConnectError, match="non-public address"):
        await backend.connect_tcp("partner.example", 443)
    assert inner.connected == []
    with pytest.raises(httpcore.ConnectError, match="unix sockets"):
        await backend.connect_unix_socket("/var/run/docker.sock")
