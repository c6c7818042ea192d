"""Governance changes to the audit log (#17): `citystream init` aligning a topic's configs
with its data contract, `citystream migrate` altering a ClickHouse table's TTL.

The library functions (``families.registry.setup_topics``, the ClickHouse ``migrate``) make
the change and return it, reading no settings; these entry-point helpers append one
``governance`` record per changed topic or table, as the local operator, through
``core.audit_append.record_command``. Nothing changed: nothing is recorded. The change is
made before its record (the alteration is what is recorded, with the value it now has); a
record the log cannot take raises ``AuditWriteError`` and the command fails.
"""

from __future__ import annotations

from collections.abc import Mapping

from core.audit_append import record_command
from core.settings import Settings

INIT = "citystream init"
MIGRATE = "citystream migrate"


def record_topic_changes(settings: Settings, altered: Mapping[str, Mapping[str, str]]) -> int:
    """One record per topic whose configs were altered (``{topic: {config: value}}``, as
    ``core.kafka.align_retention`` returns them); returns how many were recorded."""
    for topic, configs in sorted(altered.items()):
        parameters = {"topic": topic, "set": dict(configs), "from": "data contract"}
        record_command(settings, "governance", INIT, parameters)
    return len(altered)


def record_ttl_changes(settings: Settings, changed: Mapping[str, str | None]) -> int:
    """One record per ClickHouse table whose TTL was altered (``{database.table: TTL or
    None}``, None: kept forever now); returns how many were recorded."""
    for table, ttl in sorted(changed.items()):
        parameters = {"table": table, "ttl": ttl, "from": "data contract and settings"}
        record_command(settings, "governance", MIGRATE, parameters)
    return len(changed)
