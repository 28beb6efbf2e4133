from __future__ import annotations

import msgspec


class TokenResponse(msgspec.Struct, omit_defaults=True):
    access_token: str
    refresh_token: str
    token_type: str
    expires_in: int
    scope: str
    request_id: str
    issued_token_type: str | None = None


class IntrospectionResponse(msgspec.Struct, omit_defaults=True):
    active: bool
    request_id: str
    scope: str | None = None
    client_id: str | None = None
    sub: str | None = None
    aud: str | None = None
    iss: str | None = None
    exp: int | None = None
    iat: int | None = None
    token_type: str | None = None
    user_id: str | None = None


class RevokeResponse(msgspec.Struct):
    request_id: str


class ServerMetadata(msgspec.Struct):
    issuer: str
    token_endpoint: str
    introspection_endpoint: str
    revocation_endpoint: str
    grant_types_supported: list[str]
    token_endpoint_auth_methods_supported: list[str]
    introspection_endpoint_auth_methods_supported: list[str]
    revocation_endpoint_auth_methods_supported: list[str]
    response_types_supported: list[str]
    scopes_supported: list[str]
    subject_token_types_supported: list[str]
    service_documentation: str
