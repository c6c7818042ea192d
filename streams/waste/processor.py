"""Waste processor: city.waste.batches.v1 → bins over 80 % full per district and city.

Dataflow: streams/engine/agents.py; time rules: streams/engine/windows.py.
"""

from __future__ import annotations

from streams.engine.processor import Input, ProcessorSpec
from streams.waste.domain import Waste

SPEC = ProcessorSpec(
    name="waste",
    inputs=(Input(Waste(), "city.waste.batches.v1"),),
    partials_topic="city.waste.partials.v1",
)
