"""Keyed pseudonyms for identifiers that single out a person or a person's device.

A pseudonym is ``<key id>:<hex>``: the first 128 bits of HMAC-SHA256 over the field name
and the value, keyed with a secret that never leaves the process (not logged, never in
Kafka or ClickHouse), as the EDPB guidelines 01/2025 on pseudonymisation describe: the
additional information (the key) is kept apart from the pseudonymised data.

- Same key, same pseudonym: a 311 case opened and closed days apart gets one pseudonym,
  so the processor's dedup and its open/close join work as on the raw id, and every KPI
  stays exact.
- The field name is part of the message, so the same text in two fields (a case id and a
  reporter id) gives two unrelated pseudonyms.
- Rotation: the secret setting holds several keys, ``id=secret`` separated by commas;
  the first pseudonymises, the others only recognise earlier pseudonyms (opt-outs,
  access requests). A rotated key gives a new pseudonym; the key id says which key made
  one.

Without the setting a random key is generated once per data directory
(``<data_dir>/privacy/pseudonym.key``, mode 0600): fine for a laptop, never for a
deployment, whose chart sets the secret.
"""

from __future__ import annotations

import hmac
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,16}$")
MIN_SECRET_CHARS = 16
DIGEST_BYTES = 16  # 128 bits: collisions are out of reach for any city's identifiers
DEV_KEY_FILE = Path("privacy") / "pseudonym.key"


@dataclass(frozen=True, slots=True)
class PseudonymKey:
    """One HMAC key and the id carried in its pseudonyms (``repr`` never shows the secret)."""

    key_id: str
    secret: bytes

    def __repr__(self) -> str:
        return f"PseudonymKey({self.key_id!r}, <secret>)"


def parse_keys(text: str) -> tuple[PseudonymKey, ...]:
    """``"k2=secret,k1=older"`` → keys, the active one first; ValueError without values."""
    keys: list[PseudonymKey] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key_id, sep, secret = part.partition("=")
        if not sep or not KEY_ID.match(key_id.strip()):
            raise ValueError("pseudonym keys are 'id=secret' pairs; an id is [A-Za-z0-9_-]{1,16}")
        if len(secret.strip()) < MIN_SECRET_CHARS:
            raise ValueError(f"pseudonym key {key_id.strip()!r}: under {MIN_SECRET_CHARS} chars")
        keys.append(PseudonymKey(key_id.strip(), secret.strip().encode()))
    if not keys:
        raise ValueError("no pseudonym key given")
    ids = [k.key_id for k in keys]
    if len(set(ids)) != len(ids):
        raise ValueError(f"pseudonym key ids repeat: {ids}")
    return tuple(keys)


def dev_keys(data_dir: Path) -> tuple[PseudonymKey, ...]:
    """The data directory's own random key, created (mode 0600) the first time."""
    path = data_dir / DEV_KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            return parse_keys(path.read_text())
        with os.fdopen(fd, "w") as handle:
            handle.write(f"dev={secrets.token_hex(32)}\n")
            handle.flush()
            os.fsync(handle.fileno())
    return parse_keys(path.read_text())


class Pseudonymiser:
    """Pseudonyms under the active key (cached: a case's events repeat its id)."""

    def __init__(self, keys: Iterable[PseudonymKey]) -> None:
        self.keys = tuple(keys)
        if not self.keys:
            raise ValueError("no pseudonym key given")
        self.active = self.keys[0]
        self._by_id = {k.key_id: k for k in self.keys}
        self._cache: dict[tuple[str, str], str] = {}

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._by_id)

    def pseudonym(self, field: str, value: str) -> str:
        """``value`` of ``field`` under the active key."""
        cached = self._cache.get((field, value))
        if cached is None:
            if len(self._cache) >= 1 << 17:
                self._cache.clear()
            cached = self._cache[(field, value)] = _digest(self.active, field, value)
        return cached

    def under(self, key_id: str, field: str, value: str) -> str:
        """``value`` under the key ``key_id`` (KeyError: no such key configured)."""
        return _digest(self._by_id[key_id], field, value)

    def every(self, field: str, value: str) -> tuple[str, ...]:
        """``value``'s pseudonym under every configured key, the active one first."""
        return tuple(_digest(k, field, value) for k in self.keys)


def key_id_of(pseudonym: str) -> str:
    """The id of the key that made ``pseudonym``."""
    return pseudonym.partition(":")[0]


def _digest(key: PseudonymKey, field: str, value: str) -> str:
    mac = hmac.digest(key.secret, f"{field}\x00{value}".encode(), "sha256")  # one-shot, in C
    return f"{key.key_id}:{mac[:DIGEST_BYTES].hex()}"
