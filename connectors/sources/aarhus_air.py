"""Aarhus air-quality replay: recorded CityPulse pollution readings into Kafka.

Data: Open Data Aarhus / CityPulse project, as published in the CityBench benchmark (the
CityPulse authors generated this stream to complement the traffic data).

Each valid row becomes one ``AirReading`` on ``city.air.v1`` (for subscribers) and one
entry of a column-wise ``AirReadingBatch`` on ``city.air.batches.v1`` (the air processor's
input). A sensor is the road segment it sits on (``REPORT_ID``), so the processor takes its
district from ``city.road_segments.v1``: the replay publishes the segments there first
(the topic is compacted, so sharing it with the traffic replay is harmless) and flushes
them before any reading. Rows that cannot be used go to ``city.dlq.v1`` with reason,
file:line and the raw row.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from connectors.publishing import AIR, Rejected
from connectors.sources.aarhus import (
    RowError,
    RowParser,
    StreamReplay,
    bounded_number,
    iter_rows,
    local_to_utc_ms,
)
from connectors.sources.base import Report
from core.settings import Settings

COMPONENT = "aarhus-air-replay"
# air-quality index scale: 0 (clean) .. 500 (hazardous); the recording spans 15..215
INDEX_MIN, INDEX_MAX = 0.0, 500.0
# source column -> canonical field (the source spells "particullate" with two l's)
POLLUTANT_COLUMNS = {
    "ozone": "ozone",
    "particullate_matter": "particulate_matter",
    "carbon_monoxide": "carbon_monoxide",
    "sulfure_dioxide": "sulfure_dioxide",
    "nitrogen_dioxide": "nitrogen_dioxide",
}
AIR_COLUMNS = (*POLLUTANT_COLUMNS, "longitude", "latitude", "timestamp", "REPORT_ID")


def _coordinate(text: str, column: str, limit: float) -> float | None:
    """An optional coordinate: empty means not reported; anything else must be valid."""
    return None if text.strip() == "" else bounded_number(text, column, -limit, limit)


class AirParser(RowParser[dict[str, Any]]):
    """Pollution rows to ``AirReading`` records.

    A record also carries ``event_time_ms`` (its batch column) and ``origin``; fastavro
    writes only the schema's fields to ``city.air.v1``.
    """

    columns = AIR_COLUMNS

    def _parse(self, row: list[str], origin: str) -> dict[str, Any]:
        ix = self.index
        sensor_id = row[ix["REPORT_ID"]].strip()
        if not sensor_id:
            raise RowError("invalid_row", "REPORT_ID is empty")
        event_ms = local_to_utc_ms(row[ix["timestamp"]], "timestamp")
        record: dict[str, Any] = {
            "sensor_id": sensor_id,
            "event_time": event_ms,
            "event_time_ms": event_ms,
            "latitude": _coordinate(row[ix["latitude"]], "latitude", 90.0),
            "longitude": _coordinate(row[ix["longitude"]], "longitude", 180.0),
            "source": COMPONENT,
            "origin": origin,
        }
        for column, name in POLLUTANT_COLUMNS.items():
            record[name] = bounded_number(row[ix[column]], column, INDEX_MIN, INDEX_MAX)
        return record


def iter_air(path: Path, raw: IO[bytes] | None = None) -> Iterator[dict[str, Any] | Rejected]:
    return iter_rows(path, AirParser, raw)


class AarhusAirReplay(StreamReplay):
    """Replays one pollution file (+ segments) as fast as possible or at ``speed``× real time."""

    component = COMPONENT
    streams = (AIR,)

    def __init__(
        self, settings: Settings, air: Path, metadata: Path, speed: float | None = None
    ) -> None:
        super().__init__(settings, air, speed)
        self.metadata = metadata

    def inputs(self) -> tuple[Path, ...]:
        return (self.events_file, self.metadata)

    def _publish_reference(self, report: Report) -> None:
        report.reference["road_segments"] = self._publish_segments(self.metadata, report)

    def _iter_events(self, raw: IO[bytes]) -> Iterator[dict[str, Any] | Rejected]:
        return iter_air(self.events_file, raw)
