"""Several replicas: two ``broker serve`` processes (two workers each) on one database keep every
concurrency guarantee. The race tests of ``test_oauth_concurrency`` run again through a round-robin
balancer that sends each connection to the other replica.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests import test_oauth_concurrency as races
from tests.fault_helpers import Balancer, running


@dataclass(frozen=True)
class Balanced:
    url: str
    balancer: Balancer


@pytest.fixture(scope="module")
def replicas() -> Iterator[Balanced]:
    with running({}) as first, running({}) as second, Balancer([first.port, second.port]) as balancer:
        yield Balanced(balancer.url, balancer)


def _both_served(replicas: Balanced) -> None:
    assert all(count > 0 for count in replicas.balancer.connections.values()), replicas.balancer.connections


async def test_concurrent_refreshes_across_replicas_yield_exactly_one_pair(replicas, make_tenant, sessions, runtime):
    await races.test_concurrent_refreshes_of_one_token_yield_exactly_one_pair(replicas, make_tenant, sessions, runtime)
    _both_served(replicas)


async def test_concurrent_exchanges_across_replicas_all_succeed(replicas, client, make_tenant, sessions):
    await races.test_concurrent_exchanges_of_one_user_all_succeed_independently(replicas, client, make_tenant, sessions)
    _both_served(replicas)


async def test_revoke_racing_refreshes_across_replicas_leaves_no_live_descendant(
    replicas, client, make_tenant, sessions
):
    await races.test_revoke_racing_refreshes_and_exchanges_leaves_no_live_descendant(
        replicas, client, make_tenant, sessions
    )
    _both_served(replicas)
