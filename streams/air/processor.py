"""Air processor: city.air.batches.v1 → pollutant means and AQI per segment, district, city.

Districts come from the road-segment reference data (same REPORT_IDs as traffic).
Dataflow: streams/engine/agents.py; time rules: streams/engine/windows.py.
"""

from __future__ import annotations

from streams.air.domain import Air
from streams.engine.processor import Input, ProcessorSpec
from streams.traffic.domain import segment_info

SPEC = ProcessorSpec(
    name="air",
    inputs=(Input(Air(), "city.air.batches.v1"),),
    partials_topic="city.air.partials.v1",
    reference_topic="city.road_segments.v1",
    to_reference=segment_info,
)
