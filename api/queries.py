"""The API's way to ClickHouse: :class:`SinkReader`, a :class:`api.context.KpiReader` over the
sink's backend seam (``connectors.sinks.clickhouse.backend``).

With embedded chDB the sink owns the directory, so reads go to its query endpoint as JSON
(``{"sql", "parameters", "database", "time_limit_s"}``); with a ClickHouse server each read
opens a read-only session. Either way ClickHouse binds the ``{name:Type}`` placeholders
from ``parameters`` and stops the query at the time limit.
"""

from __future__ import annotations

from typing import Any

from connectors.sinks.clickhouse.backend import Backend, backend_for
from connectors.sinks.clickhouse.endpoint import QueryResult
from core.settings import Settings


class SinkReader:
    """Read-only, parameterised, time-limited reads through the sink's backend."""

    def __init__(self, settings: Settings, time_limit_s: float) -> None:
        self._backend: Backend = backend_for(settings)
        self.time_limit_s = time_limit_s

    def read(self, sql: str, parameters: dict[str, Any], *, database: str) -> QueryResult:
        return self._backend.read(
            sql, parameters, database=database, time_limit_s=self.time_limit_s
        )
