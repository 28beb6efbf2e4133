"""Parsing the ``audience`` parameter of a token exchange (BRIEF §3, contract A11)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker import errors

if TYPE_CHECKING:
    from collections.abc import Iterable

MAX_AUDIENCES = 10


def parse_audiences(values: Iterable[str]) -> list[str]:
    """Flatten repeated and comma-separated audiences: trimmed, de-duplicated, in first-seen order.

    Stops as soon as an eleventh distinct entry appears, so a 10,000-entry list costs no more than
    an eleven-entry one.

    Raises:
        InvalidRequest: no audience, or more than :data:`MAX_AUDIENCES` distinct entries.
    """
    entries: list[str] = []
    seen: set[str] = set()
    for value in values:
        for part in value.split(","):
            entry = part.strip()
            if not entry or entry in seen:
                continue
            if len(entries) == MAX_AUDIENCES:
                raise errors.InvalidRequest(f"at most {MAX_AUDIENCES} audiences may be requested")
            seen.add(entry)
            entries.append(entry)
    if not entries:
        raise errors.InvalidRequest("missing required parameter 'audience'")
    return entries
