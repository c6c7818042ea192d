"""Device-health processor: traffic and air readings → uptime per sensor, district, city.

Two inputs (city.traffic.batches.v1, city.air.batches.v1) in hourly windows, merged in one
stage for district and city; known sensors come from city.road_segments.v1.
Dataflow: streams/engine/agents.py; time rules: streams/engine/windows.py.
"""

from __future__ import annotations

from streams.devices.domain import Uptime
from streams.engine.processor import Input, ProcessorSpec
from streams.traffic.domain import segment_info

SPEC = ProcessorSpec(
    name="devices",
    inputs=(
        Input(Uptime("traffic", "segment_id"), "city.traffic.batches.v1"),
        Input(Uptime("air", "sensor_id"), "city.air.batches.v1"),
    ),
    partials_topic="city.devices.partials.v1",
    reference_topic="city.road_segments.v1",
    to_reference=segment_info,
    dead_letters_input=False,
)
