"""Scopes (RFC 6749 §3.3): parsing and the narrowing rule.

A request may only narrow: the granted scope is always a subset of what the subject (tenant, grant or
policy) allows, and an omitted scope means the default the caller names.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from broker import errors

if TYPE_CHECKING:
    from collections.abc import Iterable

BUILTIN_SCOPES: tuple[str, ...] = ("user:read", "user:write", "exchange", "mcp:dashboard")
DEFAULT_SCOPES: tuple[str, ...] = ("user:read", "user:write", "exchange")
EXCHANGE = "exchange"
MAX_SCOPES = 32

# scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5B\x5D-\x7E]{1,64}$")


def is_valid_scope_token(token: str) -> bool:
    """Whether ``token`` is a syntactically valid scope token."""
    return bool(_SCOPE_TOKEN.match(token))


def parse(scope: str | None) -> tuple[str, ...] | None:
    """Split a space-delimited scope string into sorted unique tokens; None when omitted.

    Raises:
        InvalidScope: a token is malformed, or there are too many.
    """
    if scope is None:
        return None
    tokens = [t for t in scope.split(" ") if t]
    if not tokens:
        return None
    if len(tokens) > MAX_SCOPES:
        raise errors.InvalidScope("too many scopes requested")
    for token in tokens:
        if not is_valid_scope_token(token):
            raise errors.InvalidScope("malformed scope")
    return tuple(sorted(set(tokens)))


def narrow(requested: tuple[str, ...] | None, allowed: Iterable[str], default: Iterable[str]) -> tuple[str, ...]:
    """The scope to grant: ``requested`` if it is within ``allowed``, else ``default`` ∩ ``allowed``.

    Raises:
        InvalidScope: ``requested`` names a scope outside ``allowed``, or nothing would be granted.
    """
    allowed_set = set(allowed)
    if requested is None:
        granted = tuple(sorted(set(default) & allowed_set))
    else:
        extra = set(requested) - allowed_set
        if extra:
            raise errors.InvalidScope("requested scope exceeds what may be granted")
        granted = tuple(sorted(requested))
    if not granted:
        raise errors.InvalidScope("no scope could be granted")
    return granted


def render(scopes: Iterable[str]) -> str:
    """Space-delimited scope string."""
    return " ".join(scopes)
