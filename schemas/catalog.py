"""The topic catalogue: every topic citystream owns, its schema, key and retention."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

AVRO_DIR = Path(__file__).parent / "avro"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    schema_file: str
    key: str
    doc: str
    compacted: bool = False
    internal: bool = False
    single_partition: bool = False
    retention_ms: int | None = None

    @property
    def subject(self) -> str:
        """Subjects follow the TopicNameStrategy: ``<topic>-value``."""
        return f"{self.name}-value"


TOPICS: dict[str, TopicSpec] = {
    spec.name: spec
    for spec in (
        TopicSpec(
            "city.road_segments.v1",
            "road_segment.avsc",
            key="segment_id",
            doc="Road segment reference data, latest value per segment",
            compacted=True,
        ),
        TopicSpec(
            "city.traffic.v1",
            "traffic_reading.avsc",
            key="segment_id",
            doc="Every traffic reading as observed, one per message",
        ),
        TopicSpec(
            "city.traffic.batches.v1",
            "traffic_reading_batch.avsc",
            key="partition number",
            doc="Processor input: the same readings, many per message, column-wise",
            internal=True,
        ),
        TopicSpec(
            "city.traffic.partials.v2",
            "window_partial.avsc",
            key="source partition",
            doc="Per-partition district/city sums from the traffic processor's first stage",
            internal=True,
            single_partition=True,
        ),
        TopicSpec(
            "city.air.partials.v1",
            "window_partial.avsc",
            key="source partition",
            doc="Per-partition group sums from the air processor's first stage",
            internal=True,
            single_partition=True,
        ),
        TopicSpec(
            "city.parking.partials.v1",
            "window_partial.avsc",
            key="source partition",
            doc="Per-partition group sums from the parking processor's first stage",
            internal=True,
            single_partition=True,
        ),
        TopicSpec(
            "city.energy.partials.v1",
            "window_partial.avsc",
            key="source partition",
            doc="Per-partition group sums from the energy processor's first stage",
            internal=True,
            single_partition=True,
        ),
        TopicSpec(
            "city.waste.partials.v1",
            "window_partial.avsc",
            key="source partition",
            doc="Per-partition group sums from the waste processor's first stage",
            internal=True,
            single_partition=True,
        ),
        TopicSpec(
            "city.service.partials.v1",
            "window_partial.avsc",
            key="source partition",
            doc="Per-partition group sums from the service processor's first stage",
            internal=True,
            single_partition=True,
        ),
        TopicSpec(
            "city.devices.partials.v1",
            "window_partial.avsc",
            key="source partition",
            doc="Per-partition group sums from the devices processor's first stage",
            internal=True,
            single_partition=True,
        ),
        TopicSpec(
            "city.kpi.v1",
            "kpi_record.avsc",
            key="kpi|scope|entity_id|window_start",
            doc="KPI values per window; a higher revision replaces a lower one",
        ),
        TopicSpec(
            "city.kpi.batches.v1",
            "kpi_batch.avsc",
            key="producing stage and partition",
            doc="Sink input: the same KPI records, many per message, column-wise",
            internal=True,
        ),
        # --- air quality and parking (Aarhus replay)
        TopicSpec(
            "city.air.v1",
            "air_reading.avsc",
            key="sensor_id",
            doc="Every air-quality reading as observed, one per message",
        ),
        TopicSpec(
            "city.air.batches.v1",
            "air_reading_batch.avsc",
            key="partition number",
            doc="Air processor input: the same readings, many per message, column-wise",
            internal=True,
        ),
        TopicSpec(
            "city.car_parks.v1",
            "car_park.avsc",
            key="car_park_id",
            doc="Car park reference data, latest value per car park",
            compacted=True,
        ),
        TopicSpec(
            "city.parking.v1",
            "parking_reading.avsc",
            key="car_park_id",
            doc="Every car park occupancy reading as observed, one per message",
        ),
        TopicSpec(
            "city.parking.batches.v1",
            "parking_reading_batch.avsc",
            key="partition number",
            doc="Parking processor input: the same readings, many per message, column-wise",
            internal=True,
        ),
        # --- city domains from the simulator (connectors/sources/simulator.py) and ingest
        TopicSpec(
            "city.districts.v1",
            "district.avsc",
            key="district",
            doc="District reference data (name, grid emission factor), latest per district",
            compacted=True,
        ),
        TopicSpec(
            "city.energy.v1",
            "energy_reading.avsc",
            key="meter_id",
            doc="Every energy meter reading, one per message",
        ),
        TopicSpec(
            "city.energy.batches.v1",
            "energy_reading_batch.avsc",
            key="partition number",
            doc="Processor input: the same energy readings, many per message, column-wise",
            internal=True,
        ),
        TopicSpec(
            "city.waste.v1",
            "waste_fill.avsc",
            key="bin_id",
            doc="Every waste bin fill report, one per message",
        ),
        TopicSpec(
            "city.waste.batches.v1",
            "waste_fill_batch.avsc",
            key="partition number",
            doc="Processor input: the same fill reports, many per message, column-wise",
            internal=True,
        ),
        TopicSpec(
            "city.service_requests.batches.v1",
            "service_request_batch.avsc",
            key="partition number",
            doc="Processor input: the same status changes, many per message, column-wise",
            internal=True,
        ),
        TopicSpec(
            "city.service_requests.v1",
            "service_request_event.avsc",
            key="request_id",
            doc="Service request lifecycle events (opened, assigned, closed), one per message",
        ),
        TopicSpec(
            "city.service_categories.v1",
            "service_category.avsc",
            key="category",
            doc="Service request categories with their SLA, latest value per category",
            compacted=True,
        ),
        TopicSpec(
            "city.alerts.v1",
            "alert.avsc",
            key="type|entity_id",
            doc="Alerts for downstream services: one message per raise or clear; compacted, "
            "so the latest transition per type and entity is the current alert state",
            compacted=True,
        ),
        TopicSpec(
            "city.dlq.v1",
            "dead_letter.avsc",
            key="reason",
            doc="Dead letters: rejected input with reason, origin and raw payload",
        ),
    )
}


@cache
def load_schema(schema_file: str) -> dict[str, Any]:
    """The schema as JSON; parsed once per process."""
    result: dict[str, Any] = json.loads((AVRO_DIR / schema_file).read_text())
    return result
