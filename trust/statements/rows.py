"""The KPI rows a statement uses, read from the KPI table, and their Merkle root.

A target uses the rows of its KPI and of the scope and entity its period rule names
(:mod:`trust.statements.rules`) whose window starts in the period, as the table holds them
after replacement (``FINAL``: a revised window counts once, in its last revision). The
rows are sorted by (kpi, scope, entity_id, window_start) and each is one Merkle leaf,
its canonical encoding being the UTF-8 of the JSON array
``[kpi, scope, entity_id, window_start_ms, value, samples]`` written without spaces,
numbers in their shortest round-trip form (``87.5``, ``12``). The root is RFC 9162's
Merkle Tree Hash (``trust.merkle``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from clickhouse_connect.driver.binding import format_str

from connectors.sinks.clickhouse.backend import backend_for
from core.settings import Settings
from trust.merkle import merkle_root
from trust.statements.rules import Row


def read_rows(
    settings: Settings, kpi: str, scope: str, entity: str | None, start_ms: int, end_ms: int
) -> list[Row]:
    """The rows of (kpi, scope, entity or every entity) with window_start in [start, end)."""
    where = f"kpi = {format_str(kpi)} AND scope = {format_str(scope)}"
    if entity is not None:
        where += f" AND entity_id = {format_str(entity)}"
    result = backend_for(settings).read(
        "SELECT kpi, scope, entity_id, toUnixTimestamp64Milli(window_start), value, samples "
        f"FROM kpi FINAL WHERE {where} "
        f"AND window_start >= fromUnixTimestamp64Milli(toInt64({int(start_ms)})) "
        f"AND window_start < fromUnixTimestamp64Milli(toInt64({int(end_ms)})) "
        "ORDER BY kpi, scope, entity_id, window_start"
    )
    return sorted(
        (str(r[0]), str(r[1]), str(r[2]), int(r[3]), float(r[4]), int(r[5])) for r in result.rows
    )


def leaf(row: Row) -> bytes:
    return json.dumps(list(row), separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def rows_root(rows: Sequence[Row]) -> str:
    """Hex Merkle Tree Hash of the sorted rows (of the empty list: SHA-256 of nothing)."""
    return merkle_root([leaf(r) for r in sorted(rows)]).hex()
