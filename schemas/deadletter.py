"""Dead-letter records: what was rejected, why, where it came from, and the raw bytes."""

from __future__ import annotations

import time
from typing import Any


def dead_letter(
    reason: str, detail: str, component: str, origin: str, payload: bytes
) -> dict[str, Any]:
    return {
        "reason": reason,
        "detail": detail,
        "component": component,
        "origin": origin,
        "payload": payload,
        "occurred_at": int(time.time() * 1000),
    }
