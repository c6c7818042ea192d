"""Parking processor: city.parking.batches.v1 → occupancy per car park, district, city.

Districts come from the car-park reference data (city.car_parks.v1).
Dataflow: streams/engine/agents.py; time rules: streams/engine/windows.py.
"""

from __future__ import annotations

from typing import Any

from streams.engine.processor import Input, ProcessorSpec
from streams.parking.domain import Parking


def car_park_district(record: dict[str, Any]) -> str:
    return str(record["district"])


SPEC = ProcessorSpec(
    name="parking",
    inputs=(Input(Parking(), "city.parking.batches.v1"),),
    partials_topic="city.parking.partials.v1",
    reference_topic="city.car_parks.v1",
    to_reference=car_park_district,
)
