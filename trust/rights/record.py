"""Every rights request is recorded in the tamper-evident audit log, without the
identifier it names: the request's kind, the case's pseudonyms and what it did.

The record is appended to ``city.audit.v1`` (``core.audit_append.record_command``: action
``rights``, endpoint ``citystream rights <kind>``, the local operator as caller) and is
durable when this returns; :class:`~core.audit_append.AuditWriteError` otherwise, and the
command fails. Opt-outs and erasures are recorded before they act, so a request the log
could not take changes nothing; an access export is recorded before it is shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from core.audit_append import record_command
from core.settings import Settings

ACTION = "rights"


def record_request(
    settings: Settings, kind: str, pseudonyms: Sequence[str], outcome: dict[str, Any]
) -> int:
    """Appends the request (``opt-out``, ``access`` or ``erase``); returns its leaf index."""
    parameters = {"request": kind, "subject": list(pseudonyms), **outcome}
    rows = int(outcome.get("events", 0))
    return record_command(settings, ACTION, f"citystream rights {kind}", parameters, rows=rows)
