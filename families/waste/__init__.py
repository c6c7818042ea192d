"""Waste: bins over 80 % full per district and city (the smallest family: copy it)."""

from __future__ import annotations

from core.family import Events, Family
from core.kpis import TUMBLING, Kpi
from families.waste.domain import OVER_80, Waste
from oracles.simulated import waste_kpis

KPIS = (
    Kpi(OVER_80, "bins", "bins whose last fill level in the window is above 80 %",
        TUMBLING, ("district", "city"), "city.waste.v1", "waste"),
)  # fmt: skip

FAMILY = Family(
    name="waste",
    kpis=KPIS,
    domain=Waste(),
    events=Events(
        schema="waste_fill.avsc",
        batch_schema="waste_fill_batch.avsc",
        key="bin_id",
        columns=("bin_id", "district", "event_time_ms", "fill_pct"),
        doc="Every waste bin fill report, one per message",
        batch_doc="Processor input: the same fill reports, many per message, column-wise",
    ),
    oracle=waste_kpis,
)
