"""Request and response shapes of ``/user/*`` (Plaid API ``2020-09-14``), and strict body parsing.

Requests arrive as the dict :func:`broker.http.params.plaid_json` decoded. :func:`parse` checks it
against a Struct: unknown fields are accepted and ignored (SDKs add fields over time), a top-level
``null`` counts as omitted, known fields must have the right type (``INVALID_FIELD``), a missing
required field is ``MISSING_FIELDS``, and a NUL character anywhere (key or value) is ``INVALID_FIELD``.

The identity Structs mirror plaid-python's ``ClientUserIdentity``: what ``/user/get`` echoes back must
parse in the SDK, whose models are strict, so a stored identity has to be of the SDK's shape.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, TypeVar

import msgspec

from broker import errors

ClientUserId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
UserRef = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
Credential = Annotated[str, msgspec.Meta(max_length=256)]


# --- identity objects ----------------------------------------------------------------------------


class IdentityName(msgspec.Struct):
    given_name: str
    family_name: str


class IdentityContact(msgspec.Struct):
    data: str
    primary: bool


class IdentityAddress(msgspec.Struct):
    country: str
    primary: bool
    street_1: str | None = None
    street_2: str | None = None
    city: str | None = None
    region: str | None = None
    postal_code: str | None = None


class IdentityIdNumber(msgspec.Struct):
    value: str
    type: str


class ClientUserIdentity(msgspec.Struct):
    """Only checked, never stored as is: the body's own object (unknown keys included) is stored."""

    name: IdentityName | msgspec.UnsetType = msgspec.UNSET
    date_of_birth: dt.date | msgspec.UnsetType | None = msgspec.UNSET
    emails: list[IdentityContact] | msgspec.UnsetType = msgspec.UNSET
    phone_numbers: list[IdentityContact] | msgspec.UnsetType = msgspec.UNSET
    addresses: list[IdentityAddress] | msgspec.UnsetType = msgspec.UNSET
    id_numbers: list[IdentityIdNumber] | msgspec.UnsetType = msgspec.UNSET


# --- requests ------------------------------------------------------------------------------------


class _Authenticated(msgspec.Struct, kw_only=True):
    client_id: Credential | None = None
    secret: Credential | None = None
    client_secret: Credential | None = None


class UserCreateRequest(_Authenticated, kw_only=True):
    client_user_id: ClientUserId
    identity: dict[str, Any] | None = None
    consumer_report_user_identity: dict[str, Any] | None = None
    end_customer: Annotated[str, msgspec.Meta(max_length=128)] | None = None
    with_upgraded_user: bool | None = None


class UserGetRequest(_Authenticated, kw_only=True):
    user_id: UserRef | None = None
    user_token: UserRef | None = None


class UserUpdateRequest(_Authenticated, kw_only=True):
    user_id: UserRef | None = None
    user_token: UserRef | None = None
    identity: dict[str, Any] | None = None
    consumer_report_user_identity: dict[str, Any] | None = None


class UserRemoveRequest(_Authenticated, kw_only=True):
    user_id: UserRef | None = None
    user_token: UserRef | None = None


# --- responses -----------------------------------------------------------------------------------


class UserCreateResponse(msgspec.Struct):
    user_id: str
    user_token: str
    request_id: str


class UserGetResponse(msgspec.Struct, omit_defaults=True):
    request_id: str
    user_id: str
    client_user_id: str | None
    created_at: dt.datetime
    updated_at: dt.datetime | None = None
    identity: dict[str, Any] | None = None
    consumer_report_user_identity: dict[str, Any] | None = None


class UserUpdateResponse(msgspec.Struct):
    request_id: str


class UserRemoveResponse(msgspec.Struct):
    request_id: str


# --- parsing -------------------------------------------------------------------------------------

T = TypeVar("T")

_MISSING = "Object missing required field"


def _reject_nul(value: object, where: str) -> None:
    if isinstance(value, str):
        if "\x00" in value:
            raise errors.InvalidField(f"{where} contains a NUL character")
    elif isinstance(value, dict):
        for key, item in value.items():
            name = f"{where}.{key[:64]}" if where else key[:64]
            if "\x00" in key:
                raise errors.InvalidField("a field name contains a NUL character")
            _reject_nul(item, name)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _reject_nul(item, f"{where}[{index}]")


def _raise_for(exc: msgspec.ValidationError) -> errors.PlaidError:
    message = str(exc)
    if message.startswith(_MISSING) and " - at " not in message:
        name = message.removeprefix(_MISSING).strip().strip("`")
        return errors.MissingFields(f"the following required fields are missing: {name}")
    return errors.InvalidField(message.replace("`$.", "`"))


def parse(body: dict[str, Any], kind: type[T]) -> T:
    """Check a decoded body against ``kind``, raising the Plaid error a bad field deserves."""
    _reject_nul(body, "")
    present = {key: value for key, value in body.items() if value is not None}
    try:
        parsed = msgspec.convert(present, kind, strict=True)
    except msgspec.ValidationError as exc:
        raise _raise_for(exc) from None
    identity = getattr(parsed, "identity", None)
    if identity is not None:
        check_identity(identity)
    return parsed


def check_identity(identity: dict[str, Any]) -> None:
    """Raise ``INVALID_FIELD`` unless ``identity`` has plaid-python's ``ClientUserIdentity`` shape."""
    try:
        msgspec.convert(identity, ClientUserIdentity, strict=True)
    except msgspec.ValidationError as exc:
        raise errors.InvalidField(f"identity: {exc}".replace("`$.", "`identity.")) from None
