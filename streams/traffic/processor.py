"""Traffic processor: city.traffic.batches.v1 → segment, district and city KPIs (1 h trends too).

Dataflow: streams/engine/agents.py; rules on time: streams/engine/windows.py; formulas:
streams/traffic/domain.py, as the KPI catalogue (core/kpis.py) states them.
"""

from __future__ import annotations

from streams.engine.processor import Input, ProcessorSpec
from streams.traffic.domain import Traffic, segment_info

SPEC = ProcessorSpec(
    name="traffic",
    inputs=(Input(Traffic(), "city.traffic.batches.v1"),),
    partials_topic="city.traffic.partials.v2",
    reference_topic="city.road_segments.v1",
    to_reference=segment_info,
)
