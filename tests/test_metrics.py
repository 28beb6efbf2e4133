"""``/metrics``: names, labels and values after a full scenario; nothing secret in any label; one
exposition for all the workers of a server; the optional bearer token.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections import defaultdict
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient
from pydantic import SecretStr

from broker.app import create_app
from broker.observability import metrics
from tests.admin_helpers import bearer, issue_key
from tests.conftest import serve
from tests.oauth_helpers import EXCHANGE, MULTI, USER, build_world, introspect, post_token, revoke, token_ok

LINE = re.compile(r'^([a-z_]+)(?:\{((?:[a-z_]+="(?:[^"\\]|\\.)*",?)*)\})? (\S+)$')
LABEL = re.compile(r'([a-z_]+)="((?:[^"\\]|\\.)*)"')
LABEL_NAMES = {"method", "route", "status", "grant_type", "subject_token_type", "reason", "kind", "outcome"}
LABEL_NAMES |= {"source", "pool", "state", "le"}
Series = dict[str, dict[tuple[tuple[str, str], ...], float]]


def parse(text: str) -> tuple[Series, dict[str, str]]:
    """Every sample of an exposition by metric name and label set, and each family's declared type."""
    series: Series = defaultdict(dict)
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
            continue
        if line.startswith("#") or not line:
            continue
        match = LINE.match(line)
        assert match, f"not an exposition line: {line!r}"
        name, labels, value = match.groups()
        series[name][tuple(sorted(LABEL.findall(labels or "")))] = float(value)
    return series, types


def value(series: Series, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for key, v in series.get(name, {}).items() if wanted <= set(key))


async def scrape(client: Any, **kwargs: Any) -> Series:
    response = await client.get("/metrics", **kwargs)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)[0]


async def test_a_full_scenario_is_counted_under_route_templates_and_bounded_labels(
    client, make_tenant, sessions, runtime
):
    world = await build_world(client, sessions, make_tenant)
    _, admin_key = await issue_key(runtime, "read")
    before = await scrape(client)

    seen = {world.lender.secret, world.partner_a.secret, world.lender.client_id, world.partner_a.client_id}
    seen |= {world.user["user_id"], world.user["user_token"], admin_key, str(world.lender.tenant_id)}
    own = await token_ok(client, world.lender, grant_type="client_credentials")
    exchanged = await token_ok(
        client,
        world.lender,
        grant_type=EXCHANGE,
        subject_token=world.user["user_token"],
        subject_token_type=USER,
        audience=world.lender.client_id,
    )
    shared = await token_ok(
        client,
        world.lender,
        grant_type=EXCHANGE,
        subject_token=world.user["user_id"],
        subject_token_type=MULTI,
        audience=f"{world.urn_a},{world.urn_b}",
    )
    forked = await token_ok(client, world.partner_a, grant_type="refresh_token", refresh_token=shared["refresh_token"])
    rotated = await token_ok(client, world.partner_a, grant_type="refresh_token", refresh_token=forked["refresh_token"])
    await token_ok(client, world.partner_a, grant_type="refresh_token", refresh_token=rotated["refresh_token"])
    replay = await post_token(
        client, world.partner_a, grant_type="refresh_token", refresh_token=forked["refresh_token"]
    )
    assert replay.status_code == 400
    assert (await introspect(client, world.lender, own["access_token"]))["active"] is True
    bad = await client.post(
        "/oauth/token",
        json={"grant_type": "client_credentials"},
        headers={"PLAID-CLIENT-ID": world.lender.client_id, "PLAID-SECRET": "0" * 32},
    )
    assert bad.status_code == 401
    assert (await client.get("/admin/v1/tenants", headers=bearer("bka-not-a-key-0123456789"))).status_code == 401
    tenant = await client.get(f"/admin/v1/tenants/{world.lender.client_id}", headers=bearer(admin_key))
    assert tenant.status_code == 200, tenant.text
    await revoke(client, world.lender, shared["refresh_token"])
    for body in (own, exchanged, shared, forked, rotated):
        seen |= {body["access_token"], body["refresh_token"], body["request_id"]}

    response = await client.get("/metrics")
    after, types = parse(response.text)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # requests, by method, route template and status; latency histograms alongside
    assert delta("broker_http_requests_total", method="POST", route="/oauth/token", status="200") == 6
    assert delta("broker_http_requests_total", method="POST", route="/oauth/token", status="400") == 1
    assert delta("broker_http_requests_total", method="POST", route="/oauth/token", status="401") == 1
    assert delta("broker_http_requests_total", route="/admin/v1/tenants/{client_id}", status="200") == 1
    assert delta("broker_http_request_duration_seconds_count", route="/oauth/introspect", status="200") == 1
    assert types["broker_http_request_duration_seconds"] == "histogram"
    # tokens by grant type, exchanges by subject type
    assert delta("broker_tokens_issued_total", grant_type="client_credentials") == 1
    assert delta("broker_tokens_issued_total", grant_type="token_exchange") == 2
    assert delta("broker_tokens_issued_total", grant_type="refresh_token") == 3
    assert delta("broker_token_exchanges_total", subject_token_type="tokens:user") == 1
    assert delta("broker_token_exchanges_total", subject_token_type="credit:multi-user") == 1
    # the replay revoked partner a's lineage; the lender's revocation cascaded through the shared grant
    assert delta("broker_refresh_replays_detected_total") == 1
    assert delta("broker_revocations_total", reason="refresh_token.replayed") == 1
    assert delta("broker_revocations_total", reason="token.revoked") == 1
    assert delta("broker_revocation_cascade_grants_count", reason="token.revoked") == 1
    assert delta("broker_revocation_cascade_grants_sum", reason="token.revoked") == 1  # the shared grant
    assert delta("broker_auth_failures_total", kind="client") == 1
    assert delta("broker_auth_failures_total", kind="admin") == 1
    # pools and outbox, read at scrape time
    assert value(after, "broker_db_pool_connections", pool="hot", state="max") > 0
    assert value(after, "broker_db_pool_connections", pool="orm", state="max") > 0
    assert ("status", "pending") in {pair for key in after["broker_webhook_outbox_depth"] for pair in key}
    assert "broker_webhook_outbox_oldest_pending_seconds" in after
    assert types["broker_webhook_deliveries_total"] == "counter"

    # labels: known names, bounded values, route templates; no token, secret, id or request id anywhere
    text = response.text
    for name, samples in after.items():
        for key in samples:
            assert {label for label, _ in key} <= LABEL_NAMES, (name, key)
            route = dict(key).get("route")
            assert route is None or route == "unmatched" or route.startswith("/"), route
    for secret in seen:
        assert secret not in text, "a token, secret or id reached /metrics"
    assert not re.search(r"pda-|pdr-|user-[a-z]+-|usr_|bka-", text)


def test_histograms_are_cumulative_with_inf_equal_to_count(client):
    registry = metrics.Registry()
    latency = registry.histogram("t_seconds", "test", ("route",))
    for sample in (0.0005, 0.003, 0.003, 0.2, 30.0):
        latency.observe(sample, "/x")
    series, types = parse(registry.render())
    assert types == {"t_seconds": "histogram"}
    buckets = {dict(k)["le"]: v for k, v in series["t_seconds_bucket"].items()}
    assert buckets["0.001"] == 1
    assert buckets["0.005"] == 3
    assert buckets["0.25"] == 4
    assert buckets["10"] == 4
    assert buckets["+Inf"] == 5 == series["t_seconds_count"][(("route", "/x"),)]
    assert math.isclose(series["t_seconds_sum"][(("route", "/x"),)], 30.2065)
    ordered = [buckets[k] for k in sorted(buckets, key=lambda b: math.inf if b == "+Inf" else float(b))]
    assert ordered == sorted(ordered)


def test_workers_sum_through_their_snapshots(tmp_path):
    mine, other = metrics.Registry(), metrics.Registry()
    for registry in (mine, other):
        registry.directory = tmp_path
    mine_count = mine.counter("c_total", "c", ("kind",))
    other_count = other.counter("c_total", "c", ("kind",))
    mine_hist = mine.histogram("h_seconds", "h")
    other_hist = other.histogram("h_seconds", "h")
    mine_count.inc("a", amount=2)
    other_count.inc("a", amount=3)
    other_count.inc("b")
    mine_hist.observe(0.002)
    other_hist.observe(0.002)
    other_hist.observe(3.0)
    (tmp_path / "999999991.json").write_text(  # another worker's snapshot, as other.write_snapshot() would
        __import__("json").dumps({name: m.snapshot() for name, m in other.metrics.items()})
    )
    series, _ = parse(mine.render())
    assert series["c_total"] == {(("kind", "a"),): 5.0, (("kind", "b"),): 1.0}
    assert series["h_seconds_count"] == {(): 3.0}
    assert series["h_seconds_bucket"][(("le", "0.0025"),)] == 2
    mine_count.inc("a")  # the live value of this process is read at every scrape
    assert parse(mine.render())[0]["c_total"][(("kind", "a"),)] == 6.0


@pytest.mark.timeout(90)
async def test_every_scrape_of_a_multi_worker_server_shows_the_whole_server(make_tenant):
    lender = await make_tenant("metrics lender")
    with serve({"BROKER_WORKERS": "2"}) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            for _ in range(3):  # a fresh connection each time: granian spreads them over the workers
                async with httpx.AsyncClient(base_url=server.url, timeout=30) as fresh:
                    for _ in range(5):
                        response = await fresh.post(
                            "/oauth/token", json={"grant_type": "client_credentials"}, headers=lender.headers
                        )
                        assert response.status_code == 200
            await asyncio.sleep(metrics.FLUSH_SECONDS * 2.5)
            counts = set()
            for _ in range(8):
                async with httpx.AsyncClient(base_url=server.url, timeout=30) as fresh:
                    text = (await fresh.get("/metrics")).text
                counts.add(value(parse(text)[0], "broker_tokens_issued_total", grant_type="client_credentials"))
            assert counts == {15.0}, counts
            assert (await http.get("/healthz")).status_code == 200


async def test_metrics_may_require_a_bearer_token(settings):
    app = create_app(settings.model_copy(update={"metrics_token": SecretStr("scrape-me-0123456789")}))
    async with AsyncTestClient(app=app, base_url="http://broker.test") as guarded:
        assert (await guarded.get("/metrics")).status_code == 401
        assert (await guarded.get("/metrics", headers={"Authorization": "Bearer wrong"})).status_code == 401
        await scrape(guarded, headers={"Authorization": "Bearer scrape-me-0123456789"})
    app = create_app(settings.model_copy(update={"metrics_enabled": False}))
    async with AsyncTestClient(app=app, base_url="http://broker.test") as disabled:
        assert (await disabled.get("/metrics")).status_code == 404
