"""The key ring: one active AES-256 key for sealing, older keys for opening, and the hash key.

Keys come from configuration (``BROKER_KEYS`` / ``BROKER_HASH_KEY`` or a ``BROKER_KEY_FILE``), never
from the database. ``BROKER_KEYS`` is ``kid:base64key[,kid:base64key...]``; the first entry is active.
A key file is JSON: ``{"active": kid, "keys": {kid: base64key}, "hash_key": base64key}``.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from broker.crypto.datakeys import DataKeyCache

if TYPE_CHECKING:
    from pathlib import Path

    from broker.settings import Settings

KEY_BYTES = 32
_KID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


class KeyRingError(Exception):
    """The configured keys are missing or malformed."""


def _decode_key(kid: str, text: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(text.strip() + "=" * (-len(text.strip()) % 4))
    except (binascii.Error, ValueError) as exc:
        raise KeyRingError(f"key {kid!r} is not base64") from exc
    if len(raw) != KEY_BYTES:
        raise KeyRingError(f"key {kid!r} must be {KEY_BYTES} bytes, got {len(raw)}")
    return raw


@dataclass(frozen=True, repr=False)
class KeyRing:
    """Encryption keys by id plus the HMAC key used for lookups. ``repr`` never shows key material.

    ``data_keys`` caches the tenant data keys this ring unwrapped (see :mod:`broker.crypto.datakeys`);
    each process builds its own ring, so each replica has its own cache.
    """

    active_kid: str
    keys: dict[str, bytes] = field(default_factory=dict)
    hash_key: bytes = b""
    data_keys: DataKeyCache = field(default_factory=DataKeyCache, compare=False)

    def __post_init__(self) -> None:
        if self.active_kid not in self.keys:
            raise KeyRingError(f"active key {self.active_kid!r} is not in the ring")
        for kid in self.keys:
            if not _KID.match(kid):
                raise KeyRingError(f"key id {kid!r} must match {_KID.pattern}")
        if len(self.hash_key) < KEY_BYTES:
            raise KeyRingError(f"the hash key must be at least {KEY_BYTES} bytes")

    def __repr__(self) -> str:
        return f"KeyRing(active={self.active_kid!r}, kids={sorted(self.keys)!r}, keys=***)"

    @property
    def active(self) -> tuple[str, bytes]:
        """The ``(kid, key)`` pair new ciphertexts are sealed with."""
        return self.active_kid, self.keys[self.active_kid]

    def get(self, kid: str) -> bytes | None:
        """The key for ``kid``, if the ring still holds it."""
        return self.keys.get(kid)

    @classmethod
    def parse(cls, keys: str, hash_key: str) -> KeyRing:
        """Build a ring from the ``BROKER_KEYS`` and ``BROKER_HASH_KEY`` formats."""
        parsed: dict[str, bytes] = {}
        order: list[str] = []
        for raw_entry in keys.split(","):
            entry = raw_entry.strip()
            if not entry:
                continue
            kid, sep, material = entry.partition(":")
            if not sep:
                raise KeyRingError("each key must be written kid:base64key")
            if kid in parsed:
                raise KeyRingError(f"key id {kid!r} appears twice")
            parsed[kid] = _decode_key(kid, material)
            order.append(kid)
        if not order:
            raise KeyRingError("no encryption key given")
        return cls(active_kid=order[0], keys=parsed, hash_key=_decode_key("hash_key", hash_key))

    @classmethod
    def load_file(cls, path: Path) -> KeyRing:
        """Read a JSON key file."""
        try:
            data = json.loads(path.read_text())
            keys = {kid: _decode_key(kid, text) for kid, text in data["keys"].items()}
            return cls(active_kid=data["active"], keys=keys, hash_key=_decode_key("hash_key", data["hash_key"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise KeyRingError(f"cannot read key file {path}: {exc.__class__.__name__}") from exc

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        """The ring the settings name: explicit variables win over the key file."""
        if settings.keys is not None:
            hash_key = settings.hash_key
            if hash_key is None:
                raise KeyRingError("BROKER_HASH_KEY is required with BROKER_KEYS")
            ring = cls.parse(settings.keys.get_secret_value(), hash_key.get_secret_value())
        elif settings.key_file is not None:
            ring = cls.load_file(settings.key_file)
        else:
            raise KeyRingError("no key ring configured: set BROKER_KEYS and BROKER_HASH_KEY, or BROKER_KEY_FILE")
        ring.data_keys.ttl = settings.data_key_cache_seconds
        return ring


def generate_key() -> str:
    """A new random 256-bit key, base64url-encoded."""
    return base64.urlsafe_b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")


def ensure_dev_key_file(path: Path) -> bool:
    """Create a development key file at ``path`` (mode 0600) unless one exists. Returns True if created."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"active": "dev-1", "keys": {"dev-1": generate_key()}, "hash_key": generate_key()}, indent=2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(body + "\n")
    return True


def _spec_entries(spec: str) -> list[tuple[str, str]]:
    entries = []
    for raw_entry in spec.split(","):
        entry = raw_entry.strip()
        if entry:
            kid, _, material = entry.partition(":")
            entries.append((kid, material))
    return entries


def _check_kid(kid: str) -> None:
    if not _KID.match(kid):
        raise KeyRingError(f"key id {kid!r} must match {_KID.pattern}")


def change_spec(
    spec: str, *, add: tuple[str, str] | None = None, activate: str | None = None, remove: str | None = None
) -> str:
    """A ``BROKER_KEYS`` value with a key added (``(kid, base64key)``), made active, or removed.

    The first entry is the active key. The result is parsed before it is returned, so it is valid.
    """
    entries = _spec_entries(spec)
    kids = [kid for kid, _ in entries]
    if add is not None:
        _check_kid(add[0])
        if add[0] in kids:
            raise KeyRingError(f"key id {add[0]!r} is already in the ring")
        entries.append(add)
    if remove is not None:
        if remove not in kids:
            raise KeyRingError(f"key id {remove!r} is not in the ring")
        if remove == (activate or kids[0]):
            raise KeyRingError(f"key id {remove!r} is the active key")
        entries = [entry for entry in entries if entry[0] != remove]
    if activate is not None:
        chosen = [entry for entry in entries if entry[0] == activate]
        if not chosen:
            raise KeyRingError(f"key id {activate!r} is not in the ring")
        entries = chosen + [entry for entry in entries if entry[0] != activate]
    if not entries:
        raise KeyRingError("the ring would be empty")
    result = ",".join(f"{kid}:{material}" for kid, material in entries)
    KeyRing.parse(result, generate_key())
    return result


def change_file(
    path: Path, *, add: tuple[str, str] | None = None, activate: str | None = None, remove: str | None = None
) -> KeyRing:
    """Rewrite a JSON key file with a key added, made active, or removed (atomically, mode 0600)."""
    current = KeyRing.load_file(path)
    data = json.loads(path.read_text())
    keys: dict[str, str] = dict(data["keys"])
    if add is not None:
        _check_kid(add[0])
        if add[0] in keys:
            raise KeyRingError(f"key id {add[0]!r} is already in the ring")
        keys[add[0]] = add[1]
    if remove is not None:
        if remove not in keys:
            raise KeyRingError(f"key id {remove!r} is not in the ring")
        if remove == (activate or current.active_kid):
            raise KeyRingError(f"key id {remove!r} is the active key")
        del keys[remove]
    if activate is not None and activate not in keys:
        raise KeyRingError(f"key id {activate!r} is not in the ring")
    body = {"active": activate or current.active_kid, "keys": keys, "hash_key": data["hash_key"]}
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(body, indent=2) + "\n")
    ring = KeyRing.load_file(temporary)
    temporary.replace(path)
    return ring
