"""The read API's audit recorder: every data access appended to the audit log.

Structurally an ``api.context.AuditRecorder`` (``record(access) -> None``, raising when the
write fails so the request fails); the API layer sits above this one, so the access is
typed here by the fields it reads. A role change is audited: when a key's role differs
from the last role the log recorded for it (read once from the log, then followed in
memory), a ``role_change`` record with ``{"from": old, "to": new}`` is appended.

An access whose reads went through the sink's query endpoint is already in the log: the
endpoint appended one record per statement with the request's caller context
(``audited_leaves``); the recorder then appends nothing more for it, so a request is
recorded once. Otherwise (no SQL, or a ClickHouse server) it appends the access itself.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime
from typing import Any, Protocol

from core.audit_append import AuditAppender, AuditEntry, action_of
from core.settings import Settings
from trust.audit.log import read_log


class Access(Protocol):
    """The fields of ``api.context.AccessRecord`` the recorder reads."""

    @property
    def key_id(self) -> str | None: ...
    @property
    def role(self) -> str: ...
    @property
    def endpoint(self) -> str: ...
    @property
    def parameters(self) -> dict[str, Any]: ...
    @property
    def sql(self) -> str | None: ...
    @property
    def rows(self) -> int: ...
    @property
    def at(self) -> datetime: ...
    @property
    def audited_leaves(self) -> tuple[int, ...]: ...


def last_roles(settings: Settings) -> dict[str, str]:
    """key id -> the role of its latest record in the log."""
    roles: dict[str, str] = {}
    for entry in read_log(settings):
        record = entry.record
        if record is None or not record.get("key_id"):
            continue
        if record["action"] == "role_change":
            roles[record["key_id"]] = str(json.loads(record["parameters"]).get("to"))
        else:
            roles[record["key_id"]] = str(record["role"])
    return roles


class LogRecorder:
    """Appends each access (and any role change before it) to the audit topic."""

    def __init__(self, settings: Settings, appender: AuditAppender | None = None) -> None:
        self.settings = settings
        self.appender = appender or AuditAppender(settings)
        self._roles: dict[str, str] | None = None
        self._lock = threading.Lock()

    def record(self, access: Access) -> None:
        at_ms = int(access.at.timestamp() * 1000)
        if access.key_id:
            self._note_role(access.key_id, access.role, at_ms)
        if access.audited_leaves:  # the query endpoint recorded it, with this caller
            return
        self.appender.append(
            AuditEntry(
                role=access.role,
                action=action_of(access.endpoint, access.parameters),
                endpoint=access.endpoint,
                parameters=access.parameters,
                key_id=access.key_id,
                sql=access.sql,
                rows=access.rows,
                at_ms=at_ms,
            )
        )

    def _note_role(self, key_id: str, role: str, at_ms: int) -> None:
        with self._lock:
            if self._roles is None:
                self._roles = last_roles(self.settings)
            before = self._roles.get(key_id)
            if before is not None and before != role:
                self.appender.append(
                    AuditEntry(
                        role=role,
                        action="role_change",
                        endpoint="api key role",
                        parameters={"from": before, "to": role},
                        key_id=key_id,
                        at_ms=at_ms,
                    )
                )
            self._roles[key_id] = role

    def close(self) -> None:
        self.appender.close()
