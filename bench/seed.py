"""The benchmark's world: tenants, users and policies through broker's APIs, existing tokens through SQL.

Tenants, audiences, members, policies and users are created through broker's own admin and user APIs;
existing tokens are then inserted in bulk through SQL so that every index has a realistic size.

Bulk rows are well-formed but not usable as tokens: digests are SHA-256 of a known string (so pgbench
can look them up), ciphertexts are envelope-shaped filler. Tokens the load runs use are always minted
through the API.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from bench.infra import Broker, Database

SEED_BATCH = 100_000
FILLER_TENANTS = 14


@dataclass(frozen=True)
class Client:
    """A tenant's credentials."""

    client_id: str
    secret: str
    tenant_id: str

    @property
    def form(self) -> str:
        """``client_id`` and ``client_secret`` as form parameters (client_secret_post)."""
        return f"client_id={self.client_id}&client_secret={self.secret}"


@dataclass
class World:
    """Who the load runs act as."""

    lender: Client
    partner_a: Client
    partner_b: Client
    tree_owner: Client
    fillers: list[Client]
    urns: tuple[str, str]
    user_tokens: list[str] = field(default_factory=list)
    user_pks: list[str] = field(default_factory=list)
    seeded: int = 0


class Admin:
    """A tiny client of broker's admin API (setup only: a few dozen sequential calls)."""

    def __init__(self, server: Broker, key: str) -> None:
        self.http = httpx.Client(base_url=server.url, timeout=30, headers={"Authorization": f"Bearer {key}"})

    def call(self, method: str, path: str, body: object = None) -> dict[str, object]:
        """One admin call; fails loudly on anything but 2xx."""
        response = self.http.request(method, f"/admin/v1{path}", json=body)
        if response.status_code >= 300:  # noqa: PLR2004
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text}")
        return dict(response.json())

    def tenant(self, database: Database, name: str, kind: str = "customer") -> Client:
        """Create a tenant; return its credentials and primary key."""
        created = self.call("POST", "/tenants", {"name": name, "kind": kind})
        client_id, secret = str(created["client_id"]), str(created["secret"])
        tenant_id = database.scalar("SELECT id::text FROM tenants WHERE client_id = $1", client_id)
        return Client(client_id, secret, tenant_id)


def build_world(server: Broker, database: Database, users: int) -> World:
    """Tenants, two partner audiences with one member each, the lender's policies and ``users`` users."""
    key = json.loads(server.cli("admin", "create-key", "--name", "bench", "--json"))["key"]
    admin = Admin(server, key)
    suffix = secrets.token_hex(3)
    lender = admin.tenant(database, f"bench lender {suffix}")
    partner_a = admin.tenant(database, f"bench partner a {suffix}", "partner")
    partner_b = admin.tenant(database, f"bench partner b {suffix}", "partner")
    tree_owner = admin.tenant(database, f"bench lineage owner {suffix}")
    fillers = [admin.tenant(database, f"bench filler {n} {suffix}") for n in range(FILLER_TENANTS)]
    urns = (f"urn:bench:cra-partner:a-{suffix}", f"urn:bench:cra-partner:b-{suffix}")
    for urn, partner in zip(urns, (partner_a, partner_b), strict=True):
        admin.call("POST", "/audiences", {"urn": urn, "display_name": urn})
        admin.call("PUT", f"/audiences/{urn}/members/{partner.client_id}")
        admin.call("PUT", f"/tenants/{lender.client_id}/policies", {"target": urn})
    world = World(lender, partner_a, partner_b, tree_owner, fillers, urns)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for n in range(users):
            body = {"client_id": lender.client_id, "secret": lender.secret, "client_user_id": f"bench-user-{n}"}
            response = http.post("/user/create", json=body)
            response.raise_for_status()
            world.user_tokens.append(response.json()["user_token"])
    world.user_pks = [
        row[0] for row in database.fetch("SELECT id::text FROM users WHERE tenant_id = $1::uuid", lender.tenant_id)
    ]
    return world


# Blocks of ten grants share a tenant; in each block: 7 client_credentials grants (two of them user
# grants when the tenant is the lender), an exchange child of its predecessor held by partner A, a
# revoked grant every 50th. Every grant has a refresh and an access token; one in four also has the
# rotated refresh token that preceded it. One audit event per grant.
_STAGE = """
CREATE TEMP TABLE seed AS
SELECT i,
       md5('seed-g-' || i)::uuid AS grant_id,
       ($3::uuid[])[1 + (i / 10) % cardinality($3::uuid[])] AS tenant_id,
       ($4::text[])[1 + (i / 10) % cardinality($4::text[])] AS client_id,
       CASE WHEN i % 10 = 5 THEN 'exchange'
            WHEN i % 10 IN (1, 2) AND (i / 10) % cardinality($3::uuid[]) = 0 THEN 'user'
            ELSE 'client_credentials' END AS kind,
       now() - (i % 2592000) * interval '1 second' AS created_at
FROM generate_series($1::bigint, $2::bigint) AS i
"""
_GRANTS = """
INSERT INTO grants (id, tenant_id, kind, requester_tenant_id, holder_tenant_id, parent_id, path, user_pk, scopes,
                    audience, access_token_ttl, refresh_token_ttl, request_id, created_at, revoked_at, revoked_reason)
SELECT grant_id, tenant_id, kind, tenant_id,
       CASE WHEN kind = 'exchange' THEN $1::uuid ELSE tenant_id END,
       CASE WHEN kind = 'exchange' THEN md5('seed-g-' || (i - 1))::uuid END,
       CASE WHEN kind = 'exchange' THEN ARRAY[md5('seed-g-' || (i - 1))::uuid] ELSE '{}'::uuid[] END,
       CASE WHEN kind = 'user' THEN ($2::uuid[])[1 + i % cardinality($2::uuid[])] END,
       ARRAY['exchange', 'user:read', 'user:write'], client_id, 900, 2592000, 'seed-' || i, created_at,
       CASE WHEN i % 50 = 7 THEN created_at + interval '1 hour' END,
       CASE WHEN i % 50 = 7 THEN 'token.revoked' END
FROM seed ORDER BY i
"""
_PREDECESSORS = """
INSERT INTO refresh_tokens (id, tenant_id, grant_id, digest, token_enc, created_at, expires_at, rotated_at,
                            successor_id)
SELECT md5('seed-rp-' || i)::uuid, tenant_id, grant_id, sha256(('seed-rp-' || i)::bytea),
       'v1.bench-1.' || md5('seed-rp-' || i) || '.' || encode(sha256(('seed-re-' || i)::bytea), 'base64'),
       created_at, created_at + interval '30 days',
       created_at + interval '1 day', md5('seed-r-' || i)::uuid
FROM seed WHERE i % 4 = 0
"""
_REFRESH = """
INSERT INTO refresh_tokens (id, tenant_id, grant_id, digest, token_enc, parent_id, created_at, expires_at)
SELECT md5('seed-r-' || i)::uuid, tenant_id, grant_id, sha256(('seed-r-' || i)::bytea),
       'v1.bench-1.' || md5('seed-r-' || i) || '.' || encode(sha256(('seed-e-' || i)::bytea), 'base64'),
       CASE WHEN i % 4 = 0 THEN md5('seed-rp-' || i)::uuid END,
       created_at, created_at + interval '30 days'
FROM seed
"""
_ACCESS = """
INSERT INTO access_tokens (digest, tenant_id, grant_id, scopes, created_at, expires_at)
SELECT sha256(('seed-a-' || i)::bytea), tenant_id, grant_id, ARRAY['exchange', 'user:read', 'user:write'],
       created_at, created_at + interval '15 minutes'
FROM seed
"""
_AUDIT = """
INSERT INTO audit_events (tenant_id, occurred_at, request_id, actor, action, outcome, grant_id, detail)
SELECT tenant_id, created_at, 'seed-' || i, client_id, 'token.issued', 'success', grant_id,
       jsonb_build_object('grant_type', kind, 'scope', ARRAY['exchange', 'user:read', 'user:write'])
FROM seed
"""


def seed_statements(world: World, first: int, last: int) -> list[tuple[str, tuple[object, ...]]]:
    """The statements (one connection, in order) that add seeded grants ``first`` to ``last``."""
    customers = [world.lender, *world.fillers]
    tenant_ids = [c.tenant_id for c in customers]
    client_ids = [c.client_id for c in customers]
    return [
        (_STAGE, (first, last, tenant_ids, client_ids)),
        (_GRANTS, (world.partner_a.tenant_id, world.user_pks)),
        (_PREDECESSORS, ()),
        (_REFRESH, ()),
        (_ACCESS, ()),
        (_AUDIT, ()),
        ("DROP TABLE seed", ()),
    ]


def seed_tokens(database: Database, world: World, upto: int) -> float:
    """Add seeded grants (each with its tokens and audit event) until there are ``upto``; return seconds."""
    started = time.monotonic()
    while world.seeded < upto:
        last = min(upto, world.seeded + SEED_BATCH)
        database.script(seed_statements(world, world.seeded + 1, last))
        world.seeded = last
    settle(database)
    return time.monotonic() - started


def settle(database: Database) -> None:
    """Vacuum and analyze the token tables and checkpoint, so no bulk-load debt lands inside a load run."""
    for table in ("grants", "grant_parties", "refresh_tokens", "access_tokens", "audit_events"):
        database.execute(f"VACUUM (ANALYZE) {table}")
    database.execute("CHECKPOINT")


def counts(database: Database) -> dict[str, int]:
    """Row counts of the token tables."""
    tables = ("grants", "refresh_tokens", "access_tokens", "audit_events")
    return {table: int(database.scalar(f"SELECT count(*) FROM {table}")) for table in tables}  # noqa: S608


# A lineage tree under a root grant: ``width`` children, each with ``per_child`` children of its own
# (exchange grants held by partner A), every one with a refresh and an access token.
_TREE = """
CREATE TEMP TABLE tree AS
SELECT md5($2::text || '-' || c)::uuid AS id, $1::uuid AS parent_id, ARRAY[$1::uuid] AS path, c AS n
FROM generate_series(1, $3::int) AS c
UNION ALL
SELECT md5($2::text || '-' || c || '-' || k)::uuid, md5($2::text || '-' || c)::uuid,
       ARRAY[$1::uuid, md5($2::text || '-' || c)::uuid], $3::int + (c - 1) * $4::int + k
FROM generate_series(1, $3::int) AS c, generate_series(1, $4::int) AS k
"""
_TREE_GRANTS = """
INSERT INTO grants (id, tenant_id, kind, requester_tenant_id, holder_tenant_id, parent_id, path, scopes, audience,
                    access_token_ttl, refresh_token_ttl, request_id)
SELECT id, $1::uuid, 'exchange', $1::uuid, $2::uuid, parent_id, path, ARRAY['user:read'], $3, 900, 2592000, 'tree'
FROM tree ORDER BY n
"""
_TREE_TOKENS = (
    """
INSERT INTO refresh_tokens (id, tenant_id, grant_id, digest, token_enc, expires_at)
SELECT md5('tree-r-' || id::text)::uuid, $1::uuid, id, sha256(('tree-r-' || id::text)::bytea),
       'v1.bench-1.' || md5('tree-r-' || id::text) || '.' || encode(sha256(('tree-e-' || id::text)::bytea), 'base64'),
       now() + interval '30 days'
FROM tree
""",
    """
INSERT INTO access_tokens (digest, tenant_id, grant_id, scopes, expires_at)
SELECT sha256(('tree-a-' || id::text)::bytea), $1::uuid, id, ARRAY['user:read'], now() + interval '15 minutes'
FROM tree
""",
)


def tree_statements(
    world: World, root_grant_id: str, *, tag: str, width: int, per_child: int
) -> list[tuple[str, tuple[object, ...]]]:
    """The statements that insert ``width * (1 + per_child)`` descendants under ``root_grant_id``."""
    owner, holder = world.tree_owner, world.partner_a
    return [
        (_TREE, (root_grant_id, tag, width, per_child)),
        (_TREE_GRANTS, (owner.tenant_id, holder.tenant_id, holder.client_id)),
        (_TREE_TOKENS[0], (owner.tenant_id,)),
        (_TREE_TOKENS[1], (owner.tenant_id,)),
        ("DROP TABLE tree", ()),
    ]


def build_tree(database: Database, world: World, root_grant_id: str, *, tag: str, width: int, per_child: int) -> int:
    """Insert ``width * (1 + per_child)`` descendants under ``root_grant_id``; return how many."""
    database.script(tree_statements(world, root_grant_id, tag=tag, width=width, per_child=per_child))
    return width * (1 + per_child)
