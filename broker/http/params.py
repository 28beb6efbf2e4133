"""Request body parsing for the OAuth endpoints (JSON or form) and the Plaid endpoints (JSON).

Hostile input is refused here, before any service runs: non-object JSON, duplicated keys, repeated
parameters (RFC 6749 §3.1: "MUST NOT be included more than once"), wrong value types, NUL bytes,
over-long values and too many parameters all become ``invalid_request`` / ``INVALID_BODY``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from broker import errors

if TYPE_CHECKING:
    from collections.abc import Callable

    from litestar import Request

MAX_PARAMS = 64
MAX_VALUE_CHARS = 8192
MAX_LIST_ITEMS = 10_000
MAX_JSON_DEPTH = 32
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"


KNOWN_PARAMS = frozenset(
    {
        "grant_type", "client_id", "secret", "client_secret", "scope", "refresh_token", "subject_token",
        "subject_token_type", "requested_token_type", "actor_token", "actor_token_type", "audience", "resource",
        "token", "token_type_hint", "name",
    }
)  # fmt: skip


def _named(name: str) -> str:
    """How an error names a parameter: only known names are echoed (a caller may send a token as a name)."""
    return f"parameter {name!r}" if name in KNOWN_PARAMS else "a parameter"


def _media_type(request: Request[Any, Any, Any]) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise errors.InvalidRequest(f"{_named(key)} is repeated")
        result[key] = value
    return result


def _depth(value: Any, level: int = 0) -> int:  # noqa: ANN401
    if level > MAX_JSON_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


def decode_json_object(raw: bytes, error: Callable[[str], errors.BrokerError]) -> dict[str, Any]:
    """Decode ``raw`` as a JSON object with unique keys and bounded nesting, else raise ``error(msg)``."""
    try:
        text = raw.decode("utf-8")
        value = json.loads(text, object_pairs_hook=_reject_duplicates)
    except errors.InvalidRequest as exc:
        raise error(exc.description) from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise error("body is not valid JSON") from None
    if not isinstance(value, dict):
        raise error("body must be a JSON object")
    if _depth(value) > MAX_JSON_DEPTH:
        raise error("body is nested too deeply")
    if len(value) > MAX_PARAMS:
        raise error("too many fields")
    return value


def _check_text(name: str, value: str) -> str:
    if "\x00" in value:
        raise errors.InvalidRequest(f"{_named(name)} contains a NUL byte")
    if len(value) > MAX_VALUE_CHARS:
        raise errors.InvalidRequest(f"{_named(name)} is too long")
    return value


def _form_params(raw: bytes) -> dict[str, list[str]]:
    try:
        pairs = parse_qsl(
            raw.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=bool(raw),
            errors="strict",
            max_num_fields=MAX_LIST_ITEMS + MAX_PARAMS,
        )
    except (UnicodeDecodeError, ValueError):
        raise errors.InvalidRequest("body is not valid form encoding") from None
    params: dict[str, list[str]] = {}
    for name, value in pairs:
        params.setdefault(name, []).append(value)
    return params


def _json_params(raw: bytes, multi: frozenset[str]) -> dict[str, list[str]]:
    body = decode_json_object(raw, errors.InvalidRequest) if raw.strip() else {}
    params: dict[str, list[str]] = {}
    for name, value in body.items():
        if value is None:
            continue
        if isinstance(value, str):
            params[name] = [value]
        elif isinstance(value, list) and name in multi and all(isinstance(v, str) for v in value):
            params[name] = list(value)
        else:
            raise errors.InvalidRequest(f"{_named(name)} must be a string")
    return params


async def oauth_params(request: Request[Any, Any, Any], multi: frozenset[str] = frozenset()) -> dict[str, list[str]]:
    """Parse an OAuth endpoint's body into ``{name: [values]}``.

    Empty values count as omitted (RFC 6749 §3.1). Only names in ``multi`` may carry several values (a
    repeated form field, or a JSON array of strings).
    """
    media_type = _media_type(request)
    if media_type not in {FORM, JSON}:
        raise errors.InvalidRequest(f"content type must be {FORM} or {JSON}", status=415)
    raw = await request.body()
    params = _form_params(raw) if media_type == FORM else _json_params(raw, multi)
    if len(params) > MAX_PARAMS:
        raise errors.InvalidRequest("too many parameters")
    cleaned: dict[str, list[str]] = {}
    for name, values in params.items():
        _check_text("name", name)
        kept = [_check_text(name, v) for v in values if v != ""]
        if not kept:
            continue
        if len(kept) > 1 and name not in multi:
            raise errors.InvalidRequest(f"{_named(name)} is repeated")
        cleaned[name] = kept
    return cleaned


def single(params: dict[str, list[str]], name: str) -> str | None:
    """The one value of ``name``, or None when omitted."""
    values = params.get(name)
    return values[0] if values else None


def required(params: dict[str, list[str]], name: str) -> str:
    """The one value of ``name``; ``invalid_request`` when it is missing."""
    value = single(params, name)
    if value is None:
        raise errors.InvalidRequest(f"missing required parameter {name!r}")
    return value


async def plaid_json(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """Parse a Plaid endpoint's JSON body (Plaid: anything else is ``INVALID_BODY``)."""
    media_type = _media_type(request)
    if media_type not in {JSON, ""}:
        raise errors.InvalidBody("body must be JSON (Content-Type: application/json)")
    raw = await request.body()
    if not raw.strip():
        raise errors.InvalidBody("body must be a JSON object")
    return decode_json_object(raw, errors.InvalidBody)
