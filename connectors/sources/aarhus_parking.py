"""Aarhus parking replay: recorded car park occupancy into Kafka.

Data: Open Data Aarhus / CityPulse project, as published in the CityBench benchmark. The
car park reference file (``car_parks.csv``) is authored reference data, not a recording.

Car parks go first to the compacted ``city.car_parks.v1`` and are flushed before any
reading, so the parking processor can take a car park's district from them. Each valid
row then becomes one ``ParkingReading`` on ``city.parking.v1`` (for subscribers) and one
entry of a column-wise ``ParkingReadingBatch`` on ``city.parking.batches.v1`` (the parking
processor's input). Rows that cannot be used, including a count above the car park's
spaces, go to ``city.dlq.v1`` with reason, file:line and the raw row.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from connectors.publishing import PARKING, Rejected
from connectors.sources.aarhus import (
    RowError,
    RowParser,
    StreamReplay,
    bounded_number,
    iter_rows,
    local_to_utc_ms,
    read_reference,
    whole_count,
)
from connectors.sources.base import Report
from core.settings import Settings

COMPONENT = "aarhus-parking-replay"
CAR_PARKS_TOPIC = "city.car_parks.v1"
PARKING_COLUMNS = ("vehiclecount", "updatetime", "totalspaces", "garagecode")


class ParkingParser(RowParser[dict[str, Any]]):
    """Parking rows to ``ParkingReading`` records.

    A record also carries ``event_time_ms`` (its batch column) and ``origin``; fastavro
    writes only the schema's fields to ``city.parking.v1``.
    """

    columns = PARKING_COLUMNS

    def _parse(self, row: list[str], origin: str) -> dict[str, Any]:
        ix = self.index
        car_park_id = row[ix["garagecode"]].strip()
        if not car_park_id:
            raise RowError("invalid_row", "garagecode is empty")
        event_ms = local_to_utc_ms(row[ix["updatetime"]], "updatetime")
        vehicles = whole_count(row[ix["vehiclecount"]], "vehiclecount")
        spaces = whole_count(row[ix["totalspaces"]], "totalspaces")
        check_occupancy(vehicles, spaces)
        return {
            "car_park_id": car_park_id,
            "event_time": event_ms,
            "event_time_ms": event_ms,
            "vehicle_count": vehicles,
            "total_spaces": spaces,
            "source": COMPONENT,
            "origin": origin,
        }


def check_occupancy(vehicles: int, spaces: int) -> None:
    """A car park has spaces, and cannot hold more vehicles than it has spaces."""
    if spaces <= 0:
        raise RowError("invalid_row", f"totalspaces must be > 0, got {spaces}")
    if vehicles > spaces:
        raise RowError("invalid_row", f"vehiclecount {vehicles} exceeds totalspaces {spaces}")
    if spaces > 2**31 - 1:
        raise RowError("invalid_row", f"totalspaces {spaces} does not fit a 32-bit int")


def iter_parking(path: Path, raw: IO[bytes] | None = None) -> Iterator[dict[str, Any] | Rejected]:
    return iter_rows(path, ParkingParser, raw)


def parse_car_park(row: dict[str, str]) -> dict[str, Any]:
    """One car_parks.csv row as a CarPark record; district = its postal code."""
    try:
        car_park_id = (row["garagecode"] or "").strip()
        district = (row["postal_code"] or "").strip()
        if not car_park_id or not district:
            raise RowError("invalid_car_park", "empty garagecode or postal_code")
        spaces = whole_count(row["totalspaces"] or "", "totalspaces")
        if spaces <= 0:
            raise RowError("invalid_car_park", f"totalspaces must be > 0, got {spaces}")
        return {
            "car_park_id": car_park_id,
            "name": (row.get("name") or "").strip(),
            "district": district,
            "address": (row.get("address") or "").strip(),
            "latitude": bounded_number(row["latitude"] or "", "latitude", -90.0, 90.0),
            "longitude": bounded_number(row["longitude"] or "", "longitude", -180.0, 180.0),
            "total_spaces": spaces,
        }
    except KeyError as exc:
        raise RowError("invalid_car_park", f"car park row lacks column {exc}") from exc
    except RowError as exc:
        raise RowError("invalid_car_park", str(exc)) from exc


def read_car_parks(path: Path) -> tuple[list[dict[str, Any]], list[Rejected]]:
    return read_reference(path, parse_car_park)


class AarhusParkingReplay(StreamReplay):
    """Replays one parking file (+ car parks) as fast as possible or at ``speed``× real time."""

    component = COMPONENT
    streams = (PARKING,)
    reference_topics = (CAR_PARKS_TOPIC,)

    def __init__(
        self, settings: Settings, parking: Path, car_parks: Path, speed: float | None = None
    ) -> None:
        super().__init__(settings, parking, speed)
        self.car_parks = car_parks

    def inputs(self) -> tuple[Path, ...]:
        return (self.events_file, self.car_parks)

    def _publish_reference(self, report: Report) -> None:
        car_parks, rejected = read_car_parks(self.car_parks)
        for car_park in car_parks:
            self.events.reference(CAR_PARKS_TOPIC, car_park["car_park_id"], car_park)
        for bad in rejected:
            self._reject(bad, report)
        report.reference["car_parks"] = len(car_parks)

    def _iter_events(self, raw: IO[bytes]) -> Iterator[dict[str, Any] | Rejected]:
        return iter_parking(self.events_file, raw)
