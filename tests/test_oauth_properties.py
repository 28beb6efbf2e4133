"""Property-based tests for audience parsing and scope narrowing (pure functions, no database)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker import errors, scopes
from broker.oauth.audience import MAX_AUDIENCES, parse_audiences

entry = st.text(alphabet=st.characters(exclude_characters=",", exclude_categories=["Cs"]), min_size=0, max_size=12)
values = st.lists(st.lists(entry, max_size=8).map(",".join), min_size=1, max_size=6)


def _expected(raw: list[str]) -> list[str]:
    seen: list[str] = []
    for value in raw:
        for part in value.split(","):
            stripped = part.strip()
            if stripped and stripped not in seen:
                seen.append(stripped)
    return seen


@given(values)
def test_audience_parsing_flattens_trims_and_deduplicates_in_order(raw):
    expected = _expected(raw)
    if not expected or len(expected) > MAX_AUDIENCES:
        with pytest.raises(errors.InvalidRequest):
            parse_audiences(raw)
        return
    parsed = parse_audiences(raw)
    assert parsed == expected
    assert all(p == p.strip() and p and "," not in p for p in parsed)
    assert len(set(parsed)) == len(parsed)


@given(values)
def test_comma_list_and_repeated_parameters_are_equivalent(raw):
    joined = [",".join(raw)]
    try:
        repeated = parse_audiences(raw)
    except errors.InvalidRequest:
        with pytest.raises(errors.InvalidRequest):
            parse_audiences(joined)
        return
    assert parse_audiences(joined) == repeated


scope_token = st.sampled_from(["user:read", "user:write", "exchange", "mcp:dashboard", "custom:x", "a"])
scope_sets = st.sets(scope_token, max_size=6)


@given(requested=st.none() | scope_sets, allowed=scope_sets, default=scope_sets)
def test_scope_narrowing_never_exceeds_what_is_allowed(requested, allowed, default):
    request = tuple(sorted(requested)) if requested else None
    try:
        granted = scopes.narrow(request, allowed, default)
    except errors.InvalidScope:
        if request is None:
            assert not (default & allowed)
        else:
            assert not set(request) <= allowed or not request
        return
    assert granted
    assert set(granted) <= allowed
    if request is not None:
        assert set(granted) == set(request)
    else:
        assert set(granted) == default & allowed


@given(st.lists(scope_token, min_size=1, max_size=8))
def test_scope_parse_is_order_and_duplicate_insensitive(tokens_):
    forward = scopes.parse(" ".join(tokens_))
    backward = scopes.parse("  ".join(reversed(tokens_)))
    assert forward == backward == tuple(sorted(set(tokens_)))
