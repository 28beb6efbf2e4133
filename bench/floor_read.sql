-- The floor of one introspection: the query broker sends to describe an access token (the token, its
-- grant, ancestor liveness, the caller's party row, requester, holder and user), for a random one of the
-- seeded tokens. Variables (pgbench -D): tenant (the caller's uuid), seeded (how many seeded tokens).
\set i random(1, :seeded)
SELECT access_tokens.expires_at, access_tokens.revoked_at, access_tokens.scopes, access_tokens.created_at, grants.*,
       EXISTS (SELECT 1 FROM grants AS ancestor
               WHERE ancestor.id = any(grants.path) AND ancestor.revoked_at IS NOT NULL) AS ancestor_revoked,
       EXISTS (SELECT 1 FROM grant_parties
               WHERE grant_parties.grant_id = grants.id AND grant_parties.tenant_id = :tenant
                 AND grant_parties.withdrawn_at IS NULL) AS caller_is_party,
       requester.client_id, holder.client_id, users.user_id
FROM access_tokens
JOIN grants ON grants.id = access_tokens.grant_id
JOIN tenants AS requester ON requester.id = grants.requester_tenant_id
LEFT OUTER JOIN tenants AS holder ON holder.id = grants.holder_tenant_id
LEFT OUTER JOIN users ON users.id = grants.user_pk
WHERE access_tokens.digest = sha256(('seed-a-' || :i::text)::bytea);
