"""Brute force: failed client and admin authentication is throttled per client id and source address.

The rule (broker.http.ratelimit, docs/security.md): only failures count; a pair (client id, address), an
address, and a client id under a distributed attack each have a sliding-window limit; the real client,
whose requests succeed, is never locked out by other addresses' failures; success costs no store round trip.
"""

from __future__ import annotations

import secrets
import uuid

import httpx
import pytest
import redis
from litestar.testing import AsyncTestClient

from broker import errors
from broker.app import create_app
from broker.http import ratelimit
from broker.http.ratelimit import AuthThrottle, Limits, LocalCounters, RedisCounters, Window
from tests.conftest import serve

LIMITS = Limits(window=60, per_pair=5, per_address=20, per_client=8)
REDIS_URL = "redis://127.0.0.1:6379/0"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Spy(LocalCounters):
    """Shared counters that record how often the store is asked."""

    def __init__(self, width: int) -> None:
        super().__init__(width)
        self.reads = 0
        self.adds = 0

    async def read(self, keys, now):
        self.reads += 1
        return await super().read(keys, now)

    async def add(self, keys, now):
        self.adds += 1
        await super().add(keys, now)


def throttle(shared=None) -> tuple[AuthThrottle, Clock]:
    clock = Clock()
    return AuthThrottle(LIMITS, shared, clock=clock), clock


async def fail(limiter: AuthThrottle, client_id: str, address: str, times: int = 1) -> None:
    for _ in range(times):
        await limiter.check(client_id, address)
        await limiter.failed(client_id, address)


async def test_a_pair_is_refused_after_its_limit_and_let_in_again_when_retry_after_has_passed():
    limiter, clock = throttle()
    await fail(limiter, "victim", "10.0.0.1", LIMITS.per_pair)
    with pytest.raises(errors.RateLimited) as refused:
        await limiter.check("victim", "10.0.0.1")
    retry_after = refused.value.retry_after
    assert 1 <= retry_after <= 2 * LIMITS.window
    clock.now += retry_after - 2
    with pytest.raises(errors.RateLimited):
        await limiter.check("victim", "10.0.0.1")
    clock.now += 2
    await limiter.check("victim", "10.0.0.1")  # the window slid: not locked out for long


async def test_other_addresses_and_the_real_client_are_not_locked_out():
    limiter, _ = throttle()
    await fail(limiter, "victim", "10.0.0.1", LIMITS.per_pair)
    with pytest.raises(errors.RateLimited):
        await limiter.check("victim", "10.0.0.1")
    await limiter.check("victim", "10.0.0.2")  # the real client, elsewhere
    await limiter.check("someone-else", "10.0.0.1")  # the address is not yet over its own limit


async def test_one_address_spraying_client_ids_is_refused_for_every_client_id():
    limiter, _ = throttle()
    for n in range(LIMITS.per_address):
        await fail(limiter, f"guess-{n}", "10.0.0.9")
    with pytest.raises(errors.RateLimited):
        await limiter.check("a-real-client", "10.0.0.9")
    await limiter.check("a-real-client", "10.0.0.10")


async def test_a_distributed_attack_on_one_client_id_gives_each_address_one_guess_and_spares_the_real_client():
    limiter, _ = throttle()
    for n in range(LIMITS.per_client):
        await fail(limiter, "victim", f"10.1.0.{n}")
    await limiter.check("victim", "10.9.9.9")  # the real client has not failed: never refused
    await fail(limiter, "victim", "10.1.1.1")  # a new attacking address gets its one guess
    with pytest.raises(errors.RateLimited):
        await limiter.check("victim", "10.1.1.1")
    with pytest.raises(errors.RateLimited):
        await limiter.check("victim", "10.1.0.0")


async def test_the_success_path_never_asks_the_store():
    spy = Spy(LIMITS.window)
    limiter, _ = throttle(spy)
    for _ in range(50):
        await limiter.check("good-client", "10.0.0.1")
    assert spy.reads == 0
    assert spy.adds == 0
    await fail(limiter, "victim", "10.0.0.2")
    await limiter.check("good-client", "10.0.0.1")  # unrelated keys still cost nothing
    assert spy.reads == 0
    await limiter.check("victim", "10.0.0.2")  # a key that failed here is checked against the store
    assert spy.reads == 1


async def test_the_store_sees_failures_counted_by_other_replicas():
    shared = LocalCounters(LIMITS.window)
    clock = Clock()
    replica_a = AuthThrottle(LIMITS, shared, clock=clock)
    replica_b = AuthThrottle(LIMITS, shared, clock=clock)
    await fail(replica_a, "victim", "10.0.0.1", LIMITS.per_pair)
    await replica_b.check("victim", "10.0.0.1")  # B has seen no failure yet: one unchecked attempt
    await replica_b.failed("victim", "10.0.0.1")
    with pytest.raises(errors.RateLimited):
        await replica_b.check("victim", "10.0.0.1")


async def test_an_unreachable_redis_falls_back_to_counting_in_process():
    limiter, _ = throttle(RedisCounters("redis://127.0.0.1:1/0", LIMITS.window))
    try:
        await fail(limiter, "victim", "10.0.0.1", LIMITS.per_pair)
        with pytest.raises(errors.RateLimited):
            await limiter.check("victim", "10.0.0.1")
    finally:
        await limiter.close()


async def test_local_counters_are_bounded():
    counters = LocalCounters(60, max_keys=100)
    await counters.add([f"k{n}" for n in range(1000)], 0.0)
    assert len(counters._counts) == 100


@pytest.mark.parametrize(
    ("window", "limit", "expected"),
    [
        (Window(previous=0, current=5, elapsed=0.5), 5, 42.0),  # rest of this window, then 1/5 of the next
        (Window(previous=10, current=0, elapsed=0.25), 5, 21.0),  # previous weight 10*(1-f) <= 4 at f=0.6
        (Window(previous=10, current=0, elapsed=0.6), 5, 0.0),
        (Window(previous=3, current=0, elapsed=0.001), 3, 19.94),  # no boundary leak
    ],
)
def test_retry_after_is_when_the_rounded_sliding_estimate_drops_below_the_limit(window, limit, expected):
    assert window.reaches(limit) is (expected > 0)
    assert window.seconds_until_allowed(limit, 60) == pytest.approx(expected, abs=0.01)


# --- over HTTP -------------------------------------------------------------------------------------------


@pytest.fixture
async def strict_client(settings):
    strict = settings.model_copy(
        update={"auth_failures_per_client_address": 3, "auth_failures_per_address": 50, "auth_failures_per_client": 50}
    )
    async with AsyncTestClient(app=create_app(strict), base_url="http://broker.test") as client:
        yield client


def _wrong(creds) -> dict[str, str]:
    return {"PLAID-CLIENT-ID": creds.client_id, "PLAID-SECRET": secrets.token_hex(16)}


async def test_oauth_endpoints_answer_429_slow_down_with_retry_after(strict_client, make_tenant):
    lender = await make_tenant()
    for _ in range(3):
        response = await strict_client.post(
            "/oauth/token", json={"grant_type": "client_credentials"}, headers=_wrong(lender)
        )
        assert response.status_code == 401
    for path, body in (("/oauth/token", {"grant_type": "client_credentials"}), ("/oauth/introspect", {"token": "x"})):
        response = await strict_client.post(path, json=body, headers=_wrong(lender))
        assert response.status_code == 429, response.text
        assert int(response.headers["retry-after"]) >= 1
        payload = response.json()
        assert payload["error"] == "slow_down"
        assert payload["request_id"] == response.headers["x-request-id"]
        assert response.headers["cache-control"] == "no-store"
    # the right secret from the hammering address is refused too: it never reaches the secret check
    same_address = await strict_client.post(
        "/oauth/token", json={"grant_type": "client_credentials"}, headers=lender.headers
    )
    assert same_address.status_code == 429


async def test_user_endpoints_answer_plaid_rate_limit_exceeded(strict_client, make_tenant):
    lender = await make_tenant()
    for _ in range(3):
        response = await strict_client.post("/user/create", json={"client_user_id": "u"}, headers=_wrong(lender))
        assert response.status_code == 400
        assert response.json()["error_code"] == "INVALID_API_KEYS"
    response = await strict_client.post("/user/create", json={"client_user_id": "u"}, headers=_wrong(lender))
    assert response.status_code == 429, response.text
    assert response.headers["retry-after"]
    payload = response.json()
    assert payload["error_type"] == "RATE_LIMIT_EXCEEDED"
    assert payload["error_code"] == "RATE_LIMIT"
    assert payload["display_message"] is None
    assert payload["request_id"] == response.headers["x-request-id"]


async def test_admin_routes_throttle_bad_keys(strict_client):
    for _ in range(3):
        response = await strict_client.get("/admin/v1/tenants", headers={"Authorization": "Bearer bka-" + "x" * 30})
        assert response.status_code == 401
    response = await strict_client.get("/admin/v1/tenants", headers={"Authorization": "Bearer bka-" + "y" * 30})
    assert response.status_code == 429
    assert response.headers["retry-after"]
    assert response.json()["error"]["code"] == "rate_limited"
    # requests without a key are not guesses and still get their 401
    assert (await strict_client.get("/admin/v1/tenants")).status_code == 401


async def test_a_successful_authentication_is_not_counted(strict_client, make_tenant):
    lender = await make_tenant()
    for _ in range(10):
        response = await strict_client.post(
            "/oauth/token", json={"grant_type": "client_credentials"}, headers=lender.headers
        )
        assert response.status_code == 200


# --- live servers: real source addresses, and replicas sharing Redis ----------------------------------------


def _random_loopback() -> str:
    return f"127.{secrets.randbelow(200) + 20}.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}"


def _from(address: str, url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, transport=httpx.AsyncHTTPTransport(local_address=address), timeout=10)


STRICT_ENV = {
    "BROKER_AUTH_FAILURES_PER_CLIENT_ADDRESS": "3",
    "BROKER_AUTH_FAILURES_PER_ADDRESS": "50",
    "BROKER_AUTH_FAILURES_PER_CLIENT": "50",
}


async def _token(http: httpx.AsyncClient, headers: dict[str, str]) -> httpx.Response:
    return await http.post("/oauth/token", json={"grant_type": "client_credentials"}, headers=headers)


async def test_the_real_client_on_its_own_address_is_not_locked_out_by_an_attacker(make_tenant):
    lender = await make_tenant()
    attacker, real = _random_loopback(), _random_loopback()
    with serve({**STRICT_ENV, "BROKER_WORKERS": "1"}) as server:
        async with _from(attacker, server.url) as bad, _from(real, server.url) as good:
            statuses = [(await _token(bad, _wrong(lender))).status_code for _ in range(5)]
            assert statuses == [401, 401, 401, 429, 429]
            assert (await _token(good, lender.headers)).status_code == 200


def _redis_available() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


@pytest.mark.skipif(not _redis_available(), reason="no Redis at 127.0.0.1:6379")
async def test_two_replicas_share_the_counters_through_redis(make_tenant):
    lender = await make_tenant()
    attacker = _random_loopback()
    env = {**STRICT_ENV, "BROKER_REDIS_URL": REDIS_URL}
    with serve(env) as first, serve(env) as second:
        async with _from(attacker, first.url) as one, _from(attacker, second.url) as two:
            # a kept-alive connection stays on one worker of each replica; without shared counters the
            # two workers would allow 3 failures each
            statuses = [(await _token(http, _wrong(lender))).status_code for http in (one, two) * 4]
            assert statuses == [401, 401, 401] + [429] * 5
            assert (await _token(one, lender.headers)).status_code == 429
            assert (await _token(two, lender.headers)).status_code == 429


def test_throttle_keys_never_hold_the_raw_client_id():
    client_id = "client-" + uuid.uuid4().hex
    assert all(client_id not in key for key in ratelimit.AuthThrottle.keys(client_id, "10.0.0.1"))
