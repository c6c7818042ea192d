"""API keys and roles: which key stands for which caller.

Keys come from the ``api_keys`` secret setting (or ``api_keys_file``), JSON of the shape
``{"key id": {"key": "<secret>", "role": "analyst"}}``. The key id, never the key, is what
reaches the audit log and the logs; the keys are compared in constant time
(:meth:`api.context.ApiContext.caller_for`). No key means the ``public`` role.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from api.context import Caller, Role
from core.settings import Settings


class ApiKeyError(ValueError):
    """The configured API keys are malformed (the message never shows a key)."""


def load_api_keys(settings: Settings) -> dict[str, Caller]:
    """key -> caller from the settings; empty when none are configured (everyone public)."""
    if settings.api_keys is not None:
        text = settings.api_keys.get_secret_value()
    elif settings.api_keys_file is not None:
        text = Path(settings.api_keys_file).read_text(encoding="utf-8")
    else:
        return {}
    try:
        raw = json.loads(text)
    except ValueError:
        raise ApiKeyError("API keys are not JSON (content not shown)") from None
    return parse_api_keys(raw)


def parse_api_keys(raw: Any) -> dict[str, Caller]:
    """Check the shape ``{"id": {"key": "...", "role": "..."}}``; key -> caller."""
    if not isinstance(raw, dict):
        raise ApiKeyError('API keys must be a JSON object {"key id": {"key": ..., "role": ...}}')
    roles = ", ".join(Role)
    keys: dict[str, Caller] = {}
    for key_id, entry in raw.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("key"), str) or not entry["key"]:
            raise ApiKeyError(f"API key {key_id!r}: needs a non-empty 'key'")
        try:
            role = Role(entry.get("role", Role.public))
        except ValueError:
            raise ApiKeyError(f"API key {key_id!r}: role must be one of {roles}") from None
        if entry["key"] in keys:
            raise ApiKeyError(f"API key {key_id!r}: the same key is given twice")
        keys[entry["key"]] = Caller(str(key_id), role)
    return keys
