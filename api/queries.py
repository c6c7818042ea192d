"""The API's way to ClickHouse: :class:`SinkReader`, a :class:`api.context.KpiReader` over the
sink's backend seam (``connectors.sinks.clickhouse.backend``).

With embedded chDB the sink owns the directory, so reads go to its query endpoint as JSON
(``{"sql", "parameters", "database", "time_limit_s"}``); with a ClickHouse server each read
opens a read-only session. Either way ClickHouse binds the ``{name:Type}`` placeholders
from ``parameters`` and stops the query at the time limit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from api.problems import bad_parameter
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


# --- parameters shared by the routes -------------------------------------------------------

RESOLUTIONS = ("15m", "1h", "1d")
AGGREGATES = {"avg": "avg", "sum": "sum", "min": "min", "max": "max"}


def parse_instant(text: str, parameter: str) -> datetime:
    """An ISO 8601 date or datetime as aware UTC (naive means UTC), or a 400 naming it."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise bad_parameter(
            parameter, f"{parameter} must be an ISO 8601 date or datetime, got {text!r}"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def clickhouse_time(value: datetime) -> str:
    """A UTC instant as a ``DateTime64(3, 'UTC')`` parameter value."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def bucket_sql(resolution: str) -> tuple[str, str]:
    """(start, end) expressions of a point's bucket; ``1d`` is the city's local day."""
    if resolution == "15m":
        return "window_start", "window_start + INTERVAL 15 MINUTE"
    if resolution == "1h":
        return "toStartOfHour(window_start)", "toStartOfHour(window_start) + INTERVAL 1 HOUR"
    day = "toStartOfDay(window_start, {zone:String})"
    return day, f"addDays({day}, 1)"


@dataclass(frozen=True)
class Suppression:
    """Small-cell suppression: values from fewer than ``k`` contributions (``samples``)
    are shown to the public as suppressed; analysts and above see them in full."""

    default_k: int
    per_kpi: dict[str, int]

    def k(self, kpi: str) -> int:
        return self.per_kpi.get(kpi, self.default_k)

    @classmethod
    def from_settings(cls, settings: Settings) -> Suppression:
        per_kpi: dict[str, int] = {}
        if settings.api_suppression_k_per_kpi:
            try:
                raw = json.loads(settings.api_suppression_k_per_kpi)
            except ValueError:
                raise ValueError('api_suppression_k_per_kpi must be JSON {"kpi": k}') from None
            if not isinstance(raw, dict) or not all(
                isinstance(v, int) and v >= 1 for v in raw.values()
            ):
                raise ValueError('api_suppression_k_per_kpi must be JSON {"kpi": k >= 1}')
            per_kpi = {str(k): int(v) for k, v in raw.items()}
        return cls(settings.api_suppression_k, per_kpi)


def shown(value: float | None, samples: int, k: int, full: bool) -> tuple[float | None, bool]:
    """(value as shown, suppressed?): below ``k`` contributions only ``full`` roles see it."""
    if not full and samples < k:
        return None, True
    return value, False
