"""How a contract period aggregates a KPI's windows: one rule per KPI, stated exactly.

The KPI table holds one row per window (15 minutes for service requests, an hour for
device uptime) with ``value`` and ``samples``. A contract is judged over a month or a
week, so each KPI a contract may use states how its windows combine, from the rows alone:

- ``service.requests_opened``, rule ``sum``: Σ value over the period's windows.
- ``service.sla_met_pct``, rule ``pooled ratio``: Σ met / Σ judged × 100 over the windows,
  where a window's judged closes are its ``samples`` and its met closes are
  round(value × samples / 100), exact because a window's value is met / judged × 100 of
  whole numbers (the rounding only removes the float error of that division). Never the
  mean of the windows' percentages, which would weigh a quiet window like a busy one.
- ``service.response_minutes_p50`` / ``_p90``, rule ``worst window``: the largest window
  value. A period's percentile cannot be recovered from its windows' percentiles, so the
  contract promises that no window of the period was worse.
- ``devices.uptime_pct``, rule ``pooled readings``: Σ readings received / Σ readings
  expected × 100 over the sensor-hours of the period, from the sensor rows (``samples`` =
  readings received, 12 expected per sensor and hour). For scope ``city`` every sensor row
  of the city; for ``sensor`` that sensor's. Scope ``district`` is refused: the sensor
  rows do not say their district, and the district rows' samples (readings) do not say
  how many sensors were expected.

A period with no window for a target has no value: the target is missed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

# kpi, scope, entity_id, window_start (epoch ms), value, samples
Row = tuple[str, str, str, int, float, int]
UPTIME_EXPECTED_PER_HOUR = 12  # one reading per 5 minutes (the device-uptime contract)

SERVICE_INPUTS = ("city.service_requests.batches.v1", "city.service_categories.v1")
DEVICES_INPUTS = ("city.traffic.batches.v1", "city.air.batches.v1", "city.road_segments.v1")


@dataclass(frozen=True)
class Rule:
    """One KPI's period aggregation: which rows it reads and how it combines them."""

    kpi: str
    name: str
    text: str
    family: str  # which oracle recomputes its rows: "service" or "devices"
    inputs: tuple[str, ...]  # the catalogue topics its rows are computed from
    scopes: tuple[str, ...]  # target scopes a contract may use
    aggregate: Callable[[Sequence[Row]], float | None]
    row_scope: str | None = None  # rows of this scope (all its entities), else the target's

    def selects(self, scope: str, entity: str) -> tuple[str, str | None]:
        """(row scope, row entity or None for every entity) of a target's rows."""
        if self.row_scope is not None and scope != self.row_scope:
            return self.row_scope, None
        return scope, entity


def total(rows: Sequence[Row]) -> float | None:
    return sum(r[4] for r in rows) if rows else None


def pooled_ratio(rows: Sequence[Row]) -> float | None:
    judged = sum(r[5] for r in rows)
    if not judged:
        return None
    met = sum(round(r[4] * r[5] / 100.0) for r in rows)
    return met * 100.0 / judged


def worst_window(rows: Sequence[Row]) -> float | None:
    return max(r[4] for r in rows) if rows else None


def pooled_readings(rows: Sequence[Row]) -> float | None:
    if not rows:
        return None
    return sum(r[5] for r in rows) * 100.0 / (UPTIME_EXPECTED_PER_HOUR * len(rows))


SERVICE_SCOPES = ("category", "district", "city")
RULES: dict[str, Rule] = {
    r.kpi: r
    for r in (
        Rule("service.requests_opened", "sum", "Σ value over the period's windows",
             "service", SERVICE_INPUTS, SERVICE_SCOPES, total),
        Rule("service.sla_met_pct", "pooled ratio",
             "Σ met / Σ judged × 100 over the period's windows (met = round(value × samples"
             " / 100), judged = samples); never the mean of the windows' percentages",
             "service", SERVICE_INPUTS, SERVICE_SCOPES, pooled_ratio),
        Rule("service.response_minutes_p50", "worst window",
             "the largest window value of the period (no window was worse)",
             "service", SERVICE_INPUTS, SERVICE_SCOPES, worst_window),
        Rule("service.response_minutes_p90", "worst window",
             "the largest window value of the period (no window was worse)",
             "service", SERVICE_INPUTS, SERVICE_SCOPES, worst_window),
        Rule("devices.uptime_pct", "pooled readings",
             "Σ readings received / Σ readings expected (12 per sensor-hour) × 100 over the "
             "period's sensor rows (scope city: every sensor; scope sensor: that sensor)",
             "devices", DEVICES_INPUTS, ("sensor", "city"), pooled_readings, row_scope="sensor"),
    )
}  # fmt: skip


def rule_for(kpi: str, scope: str) -> Rule:
    """The rule of ``kpi`` for a target of ``scope``; ValueError when there is none."""
    rule = RULES.get(kpi)
    if rule is None:
        raise ValueError(f"{kpi!r} has no period rule; contracts may use {', '.join(RULES)}")
    if scope not in rule.scopes:
        raise ValueError(
            f"{kpi} in a contract takes scope {' or '.join(rule.scopes)}, not {scope!r}"
        )
    return rule
