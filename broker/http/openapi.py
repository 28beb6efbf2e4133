"""The parts of the OpenAPI document Litestar cannot infer: request bodies, credentials, error responses.

The OAuth, user and admin routes parse their raw bodies themselves (``broker.http.params``,
``broker.http.admin``) so that every malformed input gets the right wire error; Litestar therefore sees
no request body. This module adds, to the generated document and without changing how anything parses:

* request bodies: ``/oauth/*`` as form *and* JSON (RFC 6749 §4.1.3 form encoding; broker also accepts
  JSON), ``/user/*`` from the Structs in ``broker.users.schemas``, admin writes from their Structs;
* the documented query parameters of the admin list endpoints;
* the credentials: ``PLAID-CLIENT-ID``/``PLAID-SECRET`` headers or HTTP Basic on ``/oauth`` and ``/user``,
  a bearer admin key on ``/admin/v1``;
* every error status each family can answer, with its body (``broker.http.errors`` renders them):
  RFC 6749 errors on ``/oauth``, Plaid's error object on ``/user``, ``{error: {code, message}}`` on admin.

The document is served at ``/schema/openapi.json``; ``tests/test_fuzz.py`` fuzzes broker against it.
"""

from __future__ import annotations

import copy
import importlib
from typing import Any

import msgspec
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
_REF = "#/components/schemas/{name}"
_TEXT = {"type": "string", "maxLength": 8192}
_CREDENTIAL = {"type": "string", "maxLength": 256}

_OAUTH_ERROR = {
    "type": "object",
    "description": "RFC 6749 §5.2 error",
    "required": ["error", "request_id"],
    "properties": {
        "error": {"type": "string"},
        "error_description": {"type": "string"},
        "request_id": {"type": "string"},
    },
}
_PLAID_ERROR = {
    "type": "object",
    "description": "Plaid's general error object",
    "required": ["error_type", "error_code", "error_message", "display_message", "request_id"],
    "properties": {
        "error_type": {"type": "string"},
        "error_code": {"type": "string"},
        "error_code_reason": {"type": ["string", "null"]},
        "error_message": {"type": "string"},
        "display_message": {"type": ["string", "null"]},
        "request_id": {"type": "string"},
        "causes": {"type": "array"},
        "status": {"type": ["integer", "null"]},
        "documentation_url": {"type": ["string", "null"]},
        "suggested_action": {"type": ["string", "null"]},
    },
}
_ADMIN_ERROR = {
    "type": "object",
    "description": "Admin API error",
    "required": ["error", "request_id"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        },
        "request_id": {"type": "string"},
    },
}

_ERRORS: dict[str, tuple[str, dict[str, str]]] = {
    "oauth": (
        "OAuthError",
        {
            "400": "invalid_request, invalid_grant, invalid_scope, invalid_target, unsupported_grant_type, ...",
            "401": "invalid_client: client authentication failed",
            "405": "method not allowed",
            "413": "request body too large",
            "415": "content type is neither form nor JSON",
            "429": "slow_down: too many failed authentication attempts (see Retry-After)",
            "503": "temporarily_unavailable: the database is unavailable (see Retry-After)",
        },
    ),
    "plaid": (
        "PlaidError",
        {
            "400": "INVALID_REQUEST, INVALID_INPUT (INVALID_API_KEYS) or USER_ERROR",
            "405": "method not allowed",
            "413": "request body too large",
            "429": "RATE_LIMIT_EXCEEDED: too many failed authentication attempts (see Retry-After)",
            "503": "API_ERROR: the database is unavailable (see Retry-After)",
        },
    ),
    "admin": (
        "AdminError",
        {
            "400": "malformed request",
            "401": "missing or invalid admin API key",
            "403": "the admin API key is read-only",
            "404": "no such object",
            "405": "method not allowed",
            "409": "conflicts with existing state",
            "413": "request body too large",
            "415": "body is not JSON",
            "422": "validation_failed: the body or a parameter is invalid",
            "429": "rate_limited: too many failed admin key attempts (see Retry-After)",
            "503": "the database is unavailable (see Retry-After)",
        },
    ),
}

_TOKEN_REQUEST = {
    "type": "object",
    "required": ["grant_type"],
    "properties": {
        "grant_type": {"type": "string", "enum": ["client_credentials", "refresh_token", TOKEN_EXCHANGE]},
        "client_id": _CREDENTIAL,
        "secret": _CREDENTIAL,
        "client_secret": _CREDENTIAL,
        "scope": _TEXT,
        "refresh_token": _TEXT,
        "subject_token": _TEXT,
        "subject_token_type": _TEXT,
        "requested_token_type": _TEXT,
        "resource": _TEXT,
        "actor_token": _TEXT,
        "actor_token_type": _TEXT,
        "audience": {"anyOf": [_TEXT, {"type": "array", "items": _TEXT, "maxItems": 64}]},
    },
}
_TOKEN_PARAM_REQUEST = {
    "type": "object",
    "required": ["token"],
    "properties": {
        "token": _TEXT,
        "token_type_hint": _TEXT,
        "client_id": _CREDENTIAL,
        "secret": _CREDENTIAL,
        "client_secret": _CREDENTIAL,
    },
}
_OAUTH_BODIES = {
    "/oauth/token": ("OAuthTokenRequest", _TOKEN_REQUEST),
    "/oauth/introspect": ("OAuthTokenParamRequest", _TOKEN_PARAM_REQUEST),
    "/oauth/revoke": ("OAuthTokenParamRequest", _TOKEN_PARAM_REQUEST),
}
_USER_BODIES = {
    "/user/create": "broker.users.schemas:UserCreateRequest",
    "/user/get": "broker.users.schemas:UserGetRequest",
    "/user/update": "broker.users.schemas:UserUpdateRequest",
    "/user/remove": "broker.users.schemas:UserRemoveRequest",
}
_ADMIN = "/admin/v1"
# (method, path) -> (Struct, whether an empty body is accepted)
_ADMIN_BODIES: dict[tuple[str, str], tuple[str, bool]] = {
    ("post", f"{_ADMIN}/tenants"): ("broker.tenants.schemas:TenantCreate", False),
    ("patch", f"{_ADMIN}/tenants/{{client_id}}"): ("broker.tenants.schemas:TenantUpdate", False),
    ("post", f"{_ADMIN}/tenants/{{client_id}}/secrets"): ("broker.tenants.schemas:SecretRotate", True),
    ("post", f"{_ADMIN}/audiences"): ("broker.audiences.schemas:AudienceCreate", False),
    ("patch", f"{_ADMIN}/audiences/{{urn}}"): ("broker.audiences.schemas:AudienceUpdate", False),
    ("put", f"{_ADMIN}/tenants/{{client_id}}/policies"): ("broker.audiences.schemas:PolicyIn", False),
    ("post", f"{_ADMIN}/admin-keys"): ("broker.admin_keys.schemas:AdminKeyCreate", False),
    ("post", f"{_ADMIN}/tenants/{{client_id}}/shred"): ("broker.keys.schemas:ShredRequest", False),
    ("post", f"{_ADMIN}/webhook-endpoints"): ("broker.webhooks.schemas:EndpointCreate", False),
    ("patch", f"{_ADMIN}/webhook-endpoints/{{endpoint_id}}"): ("broker.webhooks.schemas:EndpointUpdate", False),
    ("post", f"{_ADMIN}/webhook-endpoints/{{endpoint_id}}/rotate-secret"): (
        "broker.webhooks.schemas:SecretRotation",
        True,
    ),
    ("post", f"{_ADMIN}/webhook-deliveries/redeliver-dead"): ("broker.webhooks.schemas:RedeliverDead", True),
    ("put", f"{_ADMIN}/tenants/{{client_id}}/upstream"): ("broker.gateway.schemas:UpstreamSet", False),
}
_LIMIT = {"name": "limit", "schema": {"type": "integer", "minimum": 1, "maximum": 200}}
_AFTER = {"name": "after", "schema": {"type": "string"}}
_ADMIN_QUERIES: dict[str, list[dict[str, Any]]] = {
    f"{_ADMIN}/tenants": [_LIMIT, _AFTER, {"name": "kind", "schema": {"type": "string"}}],
    f"{_ADMIN}/tenants/{{client_id}}/grants": [_LIMIT, _AFTER, {"name": "live", "schema": {"type": "boolean"}}],
    f"{_ADMIN}/users/{{user_id}}/ledger": [_LIMIT, {"name": "after", "schema": {"type": "integer"}}],
    f"{_ADMIN}/webhook-endpoints": [
        {"name": "client_id", "schema": {"type": "string"}},
        {"name": "audience", "schema": {"type": "string"}},
    ],
    f"{_ADMIN}/webhook-deliveries": [
        _LIMIT,
        _AFTER,
        *({"name": name, "schema": {"type": "string"}} for name in ("status", "endpoint_id", "event_type", "event_id")),
    ],
}
_SECURITY_SCHEMES = {
    "plaidClientId": {"type": "apiKey", "in": "header", "name": "PLAID-CLIENT-ID"},
    "plaidSecret": {"type": "apiKey", "in": "header", "name": "PLAID-SECRET"},
    "clientBasic": {"type": "http", "scheme": "basic", "description": "RFC 6749 §2.3.1 client_secret_basic"},
    "adminKey": {"type": "http", "scheme": "bearer", "description": "an admin API key (bka-...)"},
}
_CLIENT_SECURITY: list[dict[str, list[str]]] = [{"plaidClientId": [], "plaidSecret": []}, {"clientBasic": []}, {}]
_STRUCT_PREFIX = "Body"


def _struct(path: str) -> type[msgspec.Struct] | None:
    module, _, name = path.partition(":")
    try:
        value = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):  # pragma: no cover - a renamed schema is caught by the fuzz test
        return None
    return value if isinstance(value, type) and issubclass(value, msgspec.Struct) else None


def _struct_schemas(structs: list[type[msgspec.Struct]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    refs, components = msgspec.json.schema_components(
        structs, ref_template=_REF.replace("{name}", _STRUCT_PREFIX + "{name}")
    )
    return list(refs), {_STRUCT_PREFIX + name: value for name, value in components.items()}


def _family(path: str) -> str | None:
    if path.startswith("/oauth/"):
        return "oauth"
    if path.startswith("/user/"):
        return "plaid"
    if path.startswith(_ADMIN):
        return "admin"
    return None


def _errors(operation: dict[str, Any], family: str) -> None:
    name, statuses = _ERRORS[family]
    responses = operation.setdefault("responses", {})
    for status, description in statuses.items():
        response: dict[str, Any] = {
            "description": description,
            "content": {"application/json": {"schema": {"$ref": _REF.format(name=name)}}},
        }
        if status in {"429", "503"}:
            response["headers"] = {"Retry-After": {"schema": {"type": "string"}, "required": True}}
        responses[status] = response


def augment(document: dict[str, Any]) -> dict[str, Any]:
    """A copy of the generated OpenAPI ``document`` with bodies, credentials and errors documented."""
    doc = copy.deepcopy(document)
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.update(OAuthError=_OAUTH_ERROR, PlaidError=_PLAID_ERROR, AdminError=_ADMIN_ERROR)
    schemas.update(OAuthTokenRequest=_TOKEN_REQUEST, OAuthTokenParamRequest=_TOKEN_PARAM_REQUEST)
    components.setdefault("securitySchemes", {}).update(_SECURITY_SCHEMES)

    body_structs = {key: _struct(target) for key, target in _USER_BODIES.items()}
    admin_structs = {key: (_struct(target), empty_ok) for key, (target, empty_ok) in _ADMIN_BODIES.items()}
    found = [s for s in body_structs.values() if s] + [s for s, _ in admin_structs.values() if s]
    refs, generated = _struct_schemas(found)
    schemas.update(generated)
    ref_of = dict(zip(found, refs, strict=True))

    for path, item in doc.get("paths", {}).items():
        family = _family(path)
        if family is None:
            continue
        for method, operation in item.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            _errors(operation, family)
            if family == "oauth":
                name, _ = _OAUTH_BODIES[path]
                ref = {"$ref": _REF.format(name=name)}
                operation["requestBody"] = {
                    "required": True,
                    "content": {
                        "application/x-www-form-urlencoded": {"schema": ref},
                        "application/json": {"schema": ref},
                    },
                }
                operation["security"] = _CLIENT_SECURITY
            elif family == "plaid":
                struct = body_structs.get(path)
                if struct is not None:
                    operation["requestBody"] = {
                        "required": True,
                        "content": {"application/json": {"schema": ref_of[struct]}},
                    }
                operation["security"] = _CLIENT_SECURITY
            else:
                operation["security"] = [{"adminKey": []}]
                struct, empty_ok = admin_structs.get((method, path), (None, False))
                if struct is not None:
                    operation["requestBody"] = {
                        "required": not empty_ok,
                        "content": {"application/json": {"schema": ref_of[struct]}},
                    }
                if method == "get" and path in _ADMIN_QUERIES:
                    known = {p["name"] for p in operation.get("parameters", [])}
                    operation.setdefault("parameters", []).extend(
                        {"in": "query", "required": False, **p} for p in _ADMIN_QUERIES[path] if p["name"] not in known
                    )
    return doc


class _Augmenting:
    """Mix-in for render plugins: render the augmented document (computed once per generated document)."""

    _cache: tuple[int, dict[str, Any]] | None = None

    def augmented(self, openapi_schema: dict[str, Any]) -> dict[str, Any]:
        """The augmented document for ``openapi_schema``."""
        if self._cache is None or self._cache[0] != id(openapi_schema):
            self._cache = (id(openapi_schema), augment(openapi_schema))
        return self._cache[1]


class JsonPlugin(_Augmenting, JsonRenderPlugin):
    """``/schema/openapi.json`` with what :func:`augment` adds."""

    def render(self, request: Any, openapi_schema: dict[str, Any]) -> bytes:  # noqa: ANN401 - Litestar's Request
        """Render the augmented document."""
        return super().render(request, self.augmented(openapi_schema))


class SwaggerPlugin(_Augmenting, SwaggerRenderPlugin):
    """The Swagger UI at ``/schema``, over the augmented document."""

    def render(self, request: Any, openapi_schema: dict[str, Any]) -> bytes:  # noqa: ANN401 - Litestar's Request
        """Render the augmented document."""
        return super().render(request, self.augmented(openapi_schema))


def render_plugins() -> list[Any]:
    """The render plugins ``create_app`` installs: Swagger UI (the default, at ``/schema``) and JSON."""
    return [SwaggerPlugin(), JsonPlugin()]
