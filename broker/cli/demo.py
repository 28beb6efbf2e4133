"""``broker demo``: seed a world a newcomer can try every flow in, and print how to call it.

The world: a lender (customer), a second client (customer), and one partner client for each of the three
CRA audiences (mapped as its member), with policies letting the lender target the three CRA URNs and the
second client. Every run creates new tenants (names carry a random suffix), so it can be re-run; the
partners of earlier demo runs are unmapped from the CRA audiences, so each URN stands for this run's
partner alone (other members an operator mapped are left alone).
"""

from __future__ import annotations

import json
import re
import secrets
import shlex
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from broker import errors
from broker.audiences import policies
from broker.audiences import service as audiences
from broker.tenants import service as tenants

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from broker.crypto.keyring import KeyRing

ACTOR = "cli:demo"
CRA_PARTNERS = (
    ("urn:plaid:params:cra-partner:experian", "Experian"),
    ("urn:plaid:params:cra-partner:fannie-mae", "Fannie Mae"),
    ("urn:plaid:params:cra-partner:freddie-mac", "Freddie Mac"),
)
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
MULTI_USER = "urn:plaid:params:credit:multi-user"


@dataclass(frozen=True)
class DemoClient:
    """Credentials of one seeded client (shown once)."""

    name: str
    client_id: str
    secret: str
    urn: str | None = None


@dataclass(frozen=True)
class Demo:
    """Everything ``broker demo`` seeded, plus ready-to-paste calls."""

    base_url: str
    lender: DemoClient
    second_client: DemoClient
    partners: tuple[DemoClient, ...]
    create_user: str
    exchange: str


async def _client(session: AsyncSession, ring: KeyRing, name: str, kind: str, urn: str | None = None) -> DemoClient:
    tenant, secret = await tenants.create_tenant(
        session, ring, tenants.TenantSpec(name=name, kind=kind), actor=ACTOR, request_id=None
    )
    return DemoClient(name=tenant.name, client_id=tenant.client_id, secret=secret, urn=urn)


async def _ensure_audience(session: AsyncSession, urn: str, display_name: str) -> None:
    try:
        await audiences.get_audience(session, urn)
    except errors.NotFound:
        await audiences.create_audience(session, urn, display_name, actor=ACTOR, request_id=None)


DEMO_PARTNER = re.compile(r"\(demo [0-9a-f]+\)$")


async def _unmap_earlier_demo_partners(session: AsyncSession, urn: str) -> None:
    view = await audiences.get_audience(session, urn)
    for client_id in view.members:
        tenant = await tenants.get_tenant(session, client_id)
        if DEMO_PARTNER.search(tenant.name):
            await audiences.remove_member(session, urn, client_id, actor=ACTOR, request_id=None)


async def seed(session: AsyncSession, ring: KeyRing, base_url: str, suffix: str | None = None) -> Demo:
    """Create the demo tenants, memberships and policies in one transaction on ``session``."""
    suffix = suffix or secrets.token_hex(3)
    async with session.begin():
        lender = await _client(session, ring, f"Demo Lender {suffix}", "customer")
        second = await _client(session, ring, f"Demo Second Client {suffix}", "customer")
        partners = []
        for urn, display_name in CRA_PARTNERS:
            await _ensure_audience(session, urn, display_name)
            await _unmap_earlier_demo_partners(session, urn)
            partner = await _client(session, ring, f"{display_name} (demo {suffix})", "partner", urn)
            await audiences.add_member(session, urn, partner.client_id, actor=ACTOR, request_id=None)
            partners.append(partner)
        targets = [urn for urn, _ in CRA_PARTNERS] + [second.client_id]
        for target in targets:
            await policies.upsert_policy(
                session, lender.client_id, policies.PolicySpec(target=target), actor=ACTOR, request_id=None
            )
    return Demo(
        base_url=base_url,
        lender=lender,
        second_client=second,
        partners=tuple(partners),
        create_user=_create_user_call(base_url, lender, suffix),
        exchange=_exchange_call(base_url, lender, targets),
    )


def _auth_headers(client: DemoClient) -> str:
    return (
        f"-H {shlex.quote('PLAID-CLIENT-ID: ' + client.client_id)} -H {shlex.quote('PLAID-SECRET: ' + client.secret)}"
    )


def _create_user_call(base_url: str, lender: DemoClient, suffix: str) -> str:
    body = json.dumps({"client_user_id": f"demo-user-{suffix}"})
    extract = 'import json,sys; print(json.load(sys.stdin)["user_id"])'
    return (
        f"USER_ID=$(curl -sS -X POST {shlex.quote(base_url + '/user/create')} "
        f"-H 'Content-Type: application/json' {_auth_headers(lender)} -d {shlex.quote(body)} "
        f'| python3 -c {shlex.quote(extract)}) && echo "user_id: $USER_ID"'
    )


def _exchange_call(base_url: str, lender: DemoClient, targets: list[str]) -> str:
    return (
        f"curl -sS -X POST {shlex.quote(base_url + '/oauth/token')} {_auth_headers(lender)} "
        f"-d grant_type={TOKEN_EXCHANGE} -d subject_token_type={MULTI_USER} "
        f'-d "subject_token=$USER_ID" -d {shlex.quote("audience=" + ",".join(targets))}'
    )


def as_json(demo: Demo) -> str:
    """The demo as one JSON object."""
    data = asdict(demo)
    for key in ("lender", "second_client"):
        data[key].pop("urn")
    data["partners"] = list(data["partners"])
    data["curl"] = {"create_user": data.pop("create_user"), "exchange": data.pop("exchange")}
    return json.dumps(data, indent=2)


def as_text(demo: Demo) -> str:
    """The demo for a human: credentials (shown once) and the two calls to paste."""
    lines = [f"broker demo seeded at {demo.base_url} (secrets are shown once; copy them now)", ""]
    for label, client in (("lender", demo.lender), ("second client", demo.second_client)):
        lines += [f"{label}: {client.name}", f"  client_id: {client.client_id}", f"  secret:    {client.secret}"]
    for partner in demo.partners:
        lines += [
            f"partner for {partner.urn}: {partner.name}",
            f"  client_id: {partner.client_id}",
            f"  secret:    {partner.secret}",
        ]
    lines += [
        "",
        "the lender may exchange toward the three CRA URNs and the second client.",
        "",
        "# 1. create a user (keeps its user_id in $USER_ID)",
        demo.create_user,
        "",
        "# 2. share it with every partner at once (credit:multi-user token exchange)",
        demo.exchange,
    ]
    return "\n".join(lines)
