"""Aarhus replay source: recorded CityPulse traffic counts into Kafka.

Data: Open Data Aarhus / CityPulse project, as published in the CityBench benchmark.

Each valid row becomes one ``TrafficReading`` on ``city.traffic.v1`` (for subscribers) and
one entry of a column-wise ``TrafficReadingBatch`` on ``city.traffic.batches.v1`` (the
processor's input, decoded in bulk). Road segments go first to the compacted
``city.road_segments.v1``, and are flushed before any reading so the processor can enrich.
Rows that cannot be used go to ``city.dlq.v1`` with reason, file:line and the raw row.

The pieces every Aarhus file replay shares (local time, row parsing with dead letters,
reference files, pacing, progress) live here too: ``aarhus_air`` and ``aarhus_parking``
build on :class:`RowParser` and :class:`CsvReplay`.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import IO, Any, Generic, TypeVar
from zoneinfo import ZoneInfo

from connectors.publishing import EventPublisher, EventStream, Reading, Rejected
from connectors.sources.base import Progress, Report
from connectors.sources.pacing import Pacer
from core.settings import Settings

COMPONENT = "aarhus-replay"
AARHUS_TZ = ZoneInfo("Europe/Copenhagen")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
T = TypeVar("T")
READING_COLUMNS = (
    "status",
    "avgMeasuredTime",
    "avgSpeed",
    "medianMeasuredTime",
    "TIMESTAMP",
    "vehicleCount",
    "REPORT_ID",
)


class RowError(ValueError):
    """A row that cannot become a reading; ``reason`` is the dead-letter code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


# --- parsing (pure) ------------------------------------------------------------------


@lru_cache(maxsize=65536)
def local_to_utc_ms(text: str, column: str = "TIMESTAMP") -> int:
    """Aarhus local wall time (no offset) to UTC epoch ms, exact to the millisecond.

    An ambiguous time in the autumn fold is read as the first (summer-time) occurrence; a
    time that does not exist (the spring gap) is rejected rather than guessed.
    """
    try:
        naive = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise RowError("invalid_timestamp", f"unparseable {column} {text!r}") from exc
    if naive.tzinfo is not None:
        return (naive - EPOCH) // timedelta(milliseconds=1)
    utc = naive.replace(tzinfo=AARHUS_TZ).astimezone(UTC)
    if utc.astimezone(AARHUS_TZ).replace(tzinfo=None) != naive:
        raise RowError("invalid_timestamp", f"{column} {text!r} does not exist in Aarhus (DST gap)")
    return (utc - EPOCH) // timedelta(milliseconds=1)


def whole_count(text: str, column: str) -> int:
    """A count column: a whole number >= 0 ("5" and "5.0" alike)."""
    try:
        value = int(text)
    except ValueError:
        value = _whole_number(text, column)
    if value < 0:
        raise RowError("invalid_row", f"{column} is negative: {text!r}")
    return value


def _whole_number(text: str, column: str) -> int:
    try:
        number = float(text)
    except ValueError as exc:
        raise RowError("invalid_row", f"{column} is not a number: {text!r}") from exc
    if not math.isfinite(number) or number != int(number):
        raise RowError("invalid_row", f"{column} is not a whole number: {text!r}")
    return int(number)


def _speed(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise RowError("invalid_row", f"avgSpeed is not a number: {text!r}") from exc
    if not math.isfinite(value) or value < 0:
        raise RowError("invalid_row", f"avgSpeed must be finite and >= 0: {text!r}")
    return value


def bounded_number(text: str, column: str, low: float, high: float) -> float:
    """A measured value: finite and within [low, high], else the row is refused."""
    try:
        value = float(text)
    except ValueError as exc:
        raise RowError("invalid_row", f"{column} is not a number: {text!r}") from exc
    if not (math.isfinite(value) and low <= value <= high):
        raise RowError("invalid_row", f"{column} must be within {low:g}..{high:g}: {text!r}")
    return value


def _optional_seconds(text: str, column: str) -> int | None:
    return None if text.strip() == "" else whole_count(text, column)


class RowParser(Generic[T]):
    """CSV rows to events, column order taken from the header; bad rows become Rejected.

    Subclasses name their ``columns`` and implement ``_parse``, raising RowError.
    """

    columns: tuple[str, ...] = ()

    def __init__(self, header: list[str], source_name: str) -> None:
        missing = [c for c in self.columns if c not in header]
        if missing:
            raise ValueError(f"{source_name}: header lacks columns {missing}")
        self.index = {c: header.index(c) for c in self.columns}
        self.width = len(header)
        self.source_name = source_name

    def parse(self, row: list[str], line: int) -> T | Rejected:
        origin = f"{self.source_name}:{line}"
        try:
            if len(row) != self.width:
                raise RowError("invalid_row", f"expected {self.width} fields, got {len(row)}")
            return self._parse(row, origin)
        except RowError as exc:
            return Rejected(exc.reason, str(exc), origin, ",".join(row))

    def _parse(self, row: list[str], origin: str) -> T:
        raise NotImplementedError


class ReadingParser(RowParser[Reading]):
    """Traffic rows to canonical readings."""

    columns = READING_COLUMNS

    def _parse(self, row: list[str], origin: str) -> Reading:
        ix = self.index
        segment_id = row[ix["REPORT_ID"]].strip()
        if not segment_id:
            raise RowError("invalid_row", "REPORT_ID is empty")
        return Reading(
            segment_id=segment_id,
            event_time_ms=local_to_utc_ms(row[ix["TIMESTAMP"]]),
            vehicle_count=whole_count(row[ix["vehicleCount"]], "vehicleCount"),
            avg_speed_kmh=_speed(row[ix["avgSpeed"]]),
            avg_measured_time_s=_optional_seconds(row[ix["avgMeasuredTime"]], "avgMeasuredTime"),
            median_measured_time_s=_optional_seconds(
                row[ix["medianMeasuredTime"]], "medianMeasuredTime"
            ),
            status=row[ix["status"]].strip() or "OK",
            origin=origin,
        )


def open_text(path: Path, raw: IO[bytes] | None = None) -> IO[str]:
    """Plain or gzipped CSV, decoded as UTF-8 (``raw``: an already opened file)."""
    binary: IO[bytes] = raw if raw is not None else path.open("rb")
    if path.suffix == ".gz":
        binary = gzip.GzipFile(fileobj=binary, mode="rb")  # type: ignore[assignment]
    return io.TextIOWrapper(binary, encoding="utf-8", newline="")


def iter_rows(
    path: Path, parser: Callable[[list[str], str], RowParser[T]], raw: IO[bytes] | None = None
) -> Iterator[T | Rejected]:
    """Every data row of a CSV file, parsed; line numbers count the header as line 1."""
    with open_text(path, raw) as handle:
        rows = csv.reader(handle)
        header = next(rows, None)
        if header is None:
            return
        row_parser = parser(header, path.name)
        for line, row in enumerate(rows, start=2):
            yield row_parser.parse(row, line)


def iter_readings(path: Path, raw: IO[bytes] | None = None) -> Iterator[Reading | Rejected]:
    return iter_rows(path, ReadingParser, raw)


def parse_segment(row: dict[str, str]) -> dict[str, Any]:
    """One metadata row as a RoadSegment record; district = the first point's postal code."""
    try:
        length = row.get("DISTANCE_IN_METERS", "").strip()
        return {
            "segment_id": row["REPORT_ID"].strip(),
            "name": row.get("REPORT_NAME", "").strip(),
            "district": row["POINT_1_POSTAL_CODE"].strip() or "unknown",
            "free_flow_speed_kmh": float(row["NDT_IN_KMH"]),
            "length_m": float(length) if length else None,
            "road_type": row.get("ROAD_TYPE", "").strip(),
            "start_lat": float(row["POINT_1_LAT"]),
            "start_lon": float(row["POINT_1_LNG"]),
            "end_lat": float(row["POINT_2_LAT"]),
            "end_lon": float(row["POINT_2_LNG"]),
        }
    except (KeyError, ValueError, TypeError) as exc:
        raise RowError("invalid_segment", f"bad metadata row: {exc!r}") from exc


def _checked_segment(row: dict[str, str]) -> dict[str, Any]:
    segment = parse_segment(row)
    if not segment["segment_id"] or not math.isfinite(segment["free_flow_speed_kmh"]):
        raise RowError("invalid_segment", "empty REPORT_ID or non-finite NDT_IN_KMH")
    return segment


def read_reference(
    path: Path, parse: Callable[[dict[str, str]], dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[Rejected]]:
    """A reference CSV: records, and the rows ``parse`` refused (RowError) as dead letters."""
    records: list[dict[str, Any]] = []
    rejected: list[Rejected] = []
    with open_text(path) as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            try:
                records.append(parse(row))
            except RowError as exc:
                raw = ",".join(v or "" for v in row.values() if isinstance(v, str))
                rejected.append(Rejected(exc.reason, str(exc), f"{path.name}:{line}", raw))
    return records, rejected


def read_segments(path: Path) -> tuple[list[dict[str, Any]], list[Rejected]]:
    return read_reference(path, _checked_segment)


# --- publishing ----------------------------------------------------------------------


class CsvReplay(Generic[T]):
    """What every Aarhus file replay shares: input checks, dead letters, pacing, progress.

    A subclass names its inputs, publishes its reference data first (durable before the
    first event, so processors can enrich) and says how one parsed event is published.
    """

    component = COMPONENT
    streams: tuple[EventStream, ...] = ()
    reference_topics: tuple[str, ...] = ()

    def __init__(self, settings: Settings, events_file: Path, speed: float | None) -> None:
        self.settings = settings
        self.events_file = events_file
        self.speed = speed
        self._stopped = False

    def inputs(self) -> tuple[Path, ...]:
        return (self.events_file,)

    def setup(self) -> None:
        """Connect to the registry and Kafka; fails early with a clear message."""
        for path in self.inputs():
            if not path.is_file():
                raise FileNotFoundError(f"input file not found: {path}")
        self.events = EventPublisher(
            self.settings, self.component, self.streams, self.reference_topics
        )
        self.events.setup()

    def stop(self) -> None:
        self._stopped = True

    def run(self, progress: Progress | None = None) -> Report:
        report = Report()
        started = time.monotonic()
        self._publish_reference(report)
        self.events.flush()  # reference data is durable before the first event
        self._publish_events(report, progress, started)
        self.events.flush()
        report.batches = self.events.batches_sent
        report.seconds = time.monotonic() - started
        if progress:
            progress(report, True)
        return report

    def _publish_reference(self, report: Report) -> None:
        """Publish the reference data (none by default)."""

    def _iter_events(self, raw: IO[bytes]) -> Iterator[T | Rejected]:
        raise NotImplementedError

    def _event_time_ms(self, event: T) -> int:
        raise NotImplementedError

    def _publish(self, event: T) -> None:
        raise NotImplementedError

    def _publish_segments(self, metadata: Path, report: Report) -> int:
        """Road segments to their compacted topic; bad metadata rows are dead-lettered."""
        segments, rejected = read_segments(metadata)
        for segment in segments:
            self.events.road_segment(segment)
        for bad in rejected:
            self._reject(bad, report)
        return len(segments)

    def _reject(self, rejected: Rejected, report: Report) -> None:
        self.events.reject(rejected)
        report.dead_lettered[rejected.reason] += 1

    def _publish_events(self, report: Report, progress: Progress | None, started: float) -> None:
        pacer = Pacer(self.speed) if self.speed else None
        next_progress = started
        size = max(1, self.events_file.stat().st_size)
        with self.events_file.open("rb") as raw:
            for item in self._iter_events(raw):
                if self._stopped:
                    break
                self._handle(item, report, pacer)
                if progress and report.rows_read % 4096 == 0 and time.monotonic() >= next_progress:
                    report.seconds = time.monotonic() - started
                    report.fraction_done = raw.tell() / size
                    progress(report, False)
                    next_progress = time.monotonic() + 0.5
        report.fraction_done = 1.0

    def _handle(self, item: T | Rejected, report: Report, pacer: Pacer | None) -> None:
        report.rows_read += 1
        if isinstance(item, Rejected):
            self._reject(item, report)
            return
        if pacer:
            event_ms = self._event_time_ms(item)
            if pacer.wait_needed(event_ms):
                self.events.send_batches()
                pacer.sleep(event_ms)
        self._publish(item)
        report.published += 1


class StreamReplay(CsvReplay[dict[str, Any]]):
    """A replay of records for one domain :class:`EventStream` (``streams[0]``).

    The parser's records carry ``event_time_ms`` and ``origin`` besides the schema fields.
    """

    def _event_time_ms(self, event: dict[str, Any]) -> int:
        return int(event["event_time_ms"])

    def _publish(self, event: dict[str, Any]) -> None:
        self.events.event(self.streams[0].topic, event, event["origin"])


class AarhusReplaySource(CsvReplay[Reading]):
    """Replays one traffic file (+ metadata) as fast as possible or at ``speed``× real time."""

    def __init__(
        self, settings: Settings, traffic: Path, metadata: Path, speed: float | None = None
    ) -> None:
        super().__init__(settings, traffic, speed)
        self.traffic = traffic
        self.metadata = metadata

    def inputs(self) -> tuple[Path, ...]:
        return (self.traffic, self.metadata)

    def _publish_reference(self, report: Report) -> None:
        report.reference["road_segments"] = self._publish_segments(self.metadata, report)

    def _iter_events(self, raw: IO[bytes]) -> Iterator[Reading | Rejected]:
        return iter_readings(self.traffic, raw)

    def _event_time_ms(self, event: Reading) -> int:
        return event.event_time_ms

    def _publish(self, event: Reading) -> None:
        self.events.reading(event)
