"""Timing: an unknown client id and a known one with a wrong secret take the same time within noise.

Measured on the service function (``clients.authenticate``, with the cache allowed: a known id is then
also looked up in the cache before the database), not over HTTP, with the two kinds of
attempt interleaved in adjacent pairs so that load on the shared machine hits both alike; the statistic
is the median of the per-pair differences, which neither drift nor outliers move much. Without the
failure floor a known id is measurably slower (it reads and maps a row): about 5 to 15 % here.
"""

from __future__ import annotations

import secrets
import statistics
import time

from broker import errors
from broker.http.auth import Credentials
from broker.tenants import clients

PAIRS = 300
WARMUP = 20
TOLERANCE = 0.015  # of the typical failure time: 0.3 ms with the floor, 0.05 ms without it


async def _failure_time(runtime, client_id: str) -> float:
    credentials = Credentials(client_id, secrets.token_hex(16))
    started = time.perf_counter()
    try:
        await clients.authenticate(runtime, credentials, cached=True)
    except errors.InvalidClient:
        return time.perf_counter() - started
    msg = "a wrong secret authenticated"
    raise AssertionError(msg)


async def test_unknown_and_known_client_ids_fail_in_the_same_time(runtime, make_tenant):
    known = (await make_tenant("timing")).client_id
    for _ in range(WARMUP):
        await _failure_time(runtime, known)
        await _failure_time(runtime, secrets.token_hex(12))
    differences, typical = [], []
    for index in range(PAIRS):
        unknown = secrets.token_hex(12)  # a fresh id each time, as an enumerating attacker sends
        if index % 2:
            a, b = await _failure_time(runtime, known), await _failure_time(runtime, unknown)
        else:
            b, a = await _failure_time(runtime, unknown), await _failure_time(runtime, known)
        differences.append(a - b)
        typical.append((a + b) / 2)
    median_difference, median_time = statistics.median(differences), statistics.median(typical)
    assert abs(median_difference) <= TOLERANCE * median_time, (
        f"known id {median_difference * 1e6:+.0f} us against unknown, typical failure {median_time * 1e3:.2f} ms"
    )
    assert median_time >= clients.FAILURE_FLOOR_SECONDS


async def test_success_is_not_slowed_by_the_failure_floor(runtime, make_tenant):
    client = await make_tenant("timing ok")
    durations = []
    for _ in range(20):
        started = time.perf_counter()
        await clients.authenticate(runtime, Credentials(client.client_id, client.secret))
        durations.append(time.perf_counter() - started)
    assert statistics.median(durations) < clients.FAILURE_FLOOR_SECONDS
