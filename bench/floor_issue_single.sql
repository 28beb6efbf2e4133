-- The same rows as floor_issue.sql written by ONE statement (one round trip, autocommit): what the
-- issuance floor becomes when the application sends a single statement per token.
\set g random(1, 9000000000000000000)
WITH grant_row AS (
    INSERT INTO grants (id, tenant_id, kind, requester_tenant_id, holder_tenant_id, parent_id, path, user_pk, scopes,
                        audience, resource, subject_token_type, access_token_ttl, refresh_token_ttl, request_id,
                        created_at)
    VALUES (md5('fg' || :g::text)::uuid, :tenant::uuid, 'client_credentials', :tenant::uuid, :tenant::uuid, NULL, '{}', NULL,
            :scopes::text[], :client::text, NULL, NULL, 900, 2592000, md5('fq' || :g::text),
            now())
    RETURNING id
), refresh_row AS (
    INSERT INTO refresh_tokens (id, tenant_id, grant_id, digest, token_enc, parent_id, created_at, expires_at)
    SELECT md5('fr' || :g::text)::uuid, :tenant::uuid, id, sha256(('fr' || :g::text)::bytea),
           'v1.bench-1.' || md5(:g::text) || '.' || encode(sha256(('fe' || :g::text)::bytea), 'hex'), NULL,
           now(), now() + interval '30 days'
    FROM grant_row
), access_row AS (
    INSERT INTO access_tokens (digest, tenant_id, grant_id, scopes, created_at, expires_at)
    SELECT sha256(('fa' || :g::text)::bytea), :tenant::uuid, id, :scopes::text[], now(),
           now() + interval '15 minutes'
    FROM grant_row
)
INSERT INTO audit_events (tenant_id, request_id, actor, action, outcome, grant_id, user_id, detail)
SELECT :tenant::uuid, md5('fq' || :g::text), :client::text, 'token.issued', 'success', id, NULL,
       :detail::jsonb
FROM grant_row;
