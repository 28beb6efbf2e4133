-- The floor of one issuance, as pgbench runs it: the rows broker writes for a client_credentials token
-- (a grant, a refresh token, an access token, an audit event) in one transaction, one statement each.
-- Variables (pgbench -D): tenant (uuid), client (client_id), scopes (a text[] literal), detail (the audit
-- JSON). Values with colons come in as variables: pgbench would read ':read' in a literal as one.
-- Run with -M prepared.
\set g random(1, 9000000000000000000)
BEGIN;
INSERT INTO grants (id, tenant_id, kind, requester_tenant_id, holder_tenant_id, parent_id, path, user_pk, scopes,
                    audience, resource, subject_token_type, access_token_ttl, refresh_token_ttl, request_id, created_at)
VALUES (md5('fg' || :g::text)::uuid, :tenant::uuid, 'client_credentials', :tenant::uuid, :tenant::uuid, NULL, '{}', NULL,
        :scopes::text[], :client::text, NULL, NULL, 900, 2592000, md5('fq' || :g::text), now());
INSERT INTO refresh_tokens (id, tenant_id, grant_id, digest, token_enc, parent_id, created_at, expires_at)
VALUES (md5('fr' || :g::text)::uuid, :tenant::uuid, md5('fg' || :g::text)::uuid, sha256(('fr' || :g::text)::bytea),
        'v1.bench-1.' || md5(:g::text) || '.' || encode(sha256(('fe' || :g::text)::bytea), 'hex'), NULL,
        now(), now() + interval '30 days');
INSERT INTO access_tokens (digest, tenant_id, grant_id, scopes, created_at, expires_at)
VALUES (sha256(('fa' || :g::text)::bytea), :tenant::uuid, md5('fg' || :g::text)::uuid,
        :scopes::text[], now(), now() + interval '15 minutes');
INSERT INTO audit_events (tenant_id, request_id, actor, action, outcome, grant_id, user_id, detail)
VALUES (:tenant::uuid, md5('fq' || :g::text), :client::text, 'token.issued', 'success', md5('fg' || :g::text)::uuid, NULL,
        :detail::jsonb);
END;
