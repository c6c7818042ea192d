"""What a KPI definition says: its name, unit, formula in words, window and scopes.

Each KPI family declares its KPIs with the family (``families/<name>/__init__.py``); the
registry (``families/registry.py`` KPIS) gathers them into the catalogue that
``citystream catalog`` renders into the docs and whose scopes the sink accepts. A unit
test checks that every name a processor emits is defined there, so the published
catalogue cannot drift from what is computed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kpi:
    name: str
    unit: str
    formula: str
    window: str  # "tumbling 15 min", "hopping 1 h every 15 min", "tumbling 1 h"
    scopes: tuple[str, ...]
    source_topic: str
    processor: str  # the processor computing it: `citystream process <processor>`

    @property
    def domain(self) -> str:
        return self.name.split(".", 1)[0]


TUMBLING = "tumbling 15 min"
HOPPING = "hopping 1 h every 15 min"
HOURLY = "tumbling 1 h"
SEGMENT_SCOPES = ("segment", "district", "city")
TREND_SCOPES = ("district", "city")  # per segment: sum the four tumbling rows in a query
