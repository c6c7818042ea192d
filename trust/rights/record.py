"""Every rights request is recorded, without the identifier it names (its pseudonyms only).

The one place a request reaches the audit log: until the tamper-evident log of
``trust/audit`` exists here, requests are appended (fsync'd) to
``<data_dir>/privacy/rights-requests.jsonl``; this function is the only call to change.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.settings import Settings

LOG = Path("privacy") / "rights-requests.jsonl"


def record_request(
    settings: Settings, kind: str, pseudonyms: Sequence[str], outcome: dict[str, Any]
) -> dict[str, Any]:
    """Appends the request (``opt-out``, ``access`` or ``erase``) and returns the entry."""
    entry = {
        "at_ms": int(time.time() * 1000),
        "request": kind,
        "subject": list(pseudonyms),
        "outcome": outcome,
    }
    path = settings.data_dir / LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, (json.dumps(entry, separators=(",", ":")) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return entry
