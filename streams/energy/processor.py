"""Energy processor: city.energy.batches.v1 → kWh and CO2e per meter, district, city.

Grid emission factors per district come from city.districts.v1.
Dataflow: streams/engine/agents.py; time rules: streams/engine/windows.py.
"""

from __future__ import annotations

from typing import Any

from streams.energy.domain import Energy
from streams.engine.processor import Input, ProcessorSpec


def emission_factor(record: dict[str, Any]) -> float | None:
    """None for a district without a known factor (a city pack's polygon): no CO2e there."""
    factor = record["grid_emission_kg_per_kwh"]
    return None if factor is None else float(factor)


SPEC = ProcessorSpec(
    name="energy",
    inputs=(Input(Energy(), "city.energy.batches.v1"),),
    partials_topic="city.energy.partials.v1",
    reference_topic="city.districts.v1",
    to_reference=emission_factor,
)
