"""A city pack's file sources (``[[sources]]`` of city.toml) and reference data into Kafka.

A declarative source names its file, its id column, the columns that fill the canonical
event, and its time format and zone; no Python is written for it. For the service domain a
row is one whole request (311-style): it becomes an ``opened`` event at its open time and,
when it has a close time, a ``closed`` event then, both on ``city.service_requests.v1``:

- Times are local wall times of the source's zone (default: the city's). An ambiguous
  autumn time is its first occurrence (fold=0); a time in the spring gap does not exist
  and is dead-lettered as ``invalid_timestamp``, as is an unparseable one.
- An event is dead-lettered when a field it needs is bad: a bad open time, an empty id
  or category or a bad coordinate loses both events (``invalid_row`` / ``invalid_timestamp``);
  a bad close or due time loses the closed event only; a close before the open is
  ``invalid_event`` (the opened event still counts).
- The district is the pack's polygon holding the row's (latitude, longitude), ``unknown``
  outside every polygon, at an unlocated point or without coordinates; or, with
  attribute districts, the mapped ``district`` column.
- The SLA: the mapped ``sla_due_at`` column (e.g. Boston's TARGET_DT) is carried as the
  event's ``sla_due_at``; without it the processor falls back to the category's SLA.
- Minimised at the source: an event carries the request id, status, category, district,
  coarse cell and times only. Addresses, free text, photo URLs and coordinates never enter
  Kafka, not even in a dead letter (which carries the mapped non-location columns only).
- Privacy at the edge (with the source's :class:`~core.privacy.edge.Edge`, docs/rights.md):
  the identifiers the source declares (Boston: the case id) become keyed pseudonyms, in
  events and dead letters alike; the raw case id travels only encrypted with the case's own
  key (``subject``, for access requests; erasure destroys the key); the coordinates become
  a geohash-6 ``cell``; an opted-out case is dropped before it is published or
  dead-lettered and counted as ``opted_out``.

The file is read whole and its events are published in event-time order (a request's
close, often days after its open, would otherwise be late for the processors).
Sources needing real logic name a ``kind`` registered in :data:`KINDS` instead.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo

from connectors.publishing import SERVICE, EventPublisher, Rejected
from connectors.sources.aarhus import (
    READING_COLUMNS,
    AarhusReplaySource,
    CsvReplay,
    RowError,
    StreamReplay,
    open_text,
)
from connectors.sources.aarhus_air import AIR_COLUMNS, AarhusAirReplay
from connectors.sources.aarhus_parking import PARKING_COLUMNS, AarhusParkingReplay
from connectors.sources.base import Report
from core.city import REFERENCE_KEYS, REFERENCE_TOPICS, CityPack, SourceSpec, read_reference
from core.privacy.edge import Edge
from core.privacy.minimise import coarse_cell
from core.settings import Settings

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# --- local times ---------------------------------------------------------------------


class LocalTimes:
    """Local wall-time text of one format and zone to UTC epoch ms (cached: times repeat)."""

    def __init__(self, time_format: str, zone: ZoneInfo) -> None:
        self.format = time_format
        self.zone = zone
        self.to_ms = lru_cache(maxsize=65536)(self._to_ms)

    def _to_ms(self, text: str, column: str) -> int:
        naive = self._parse(text.strip(), column)
        if naive.tzinfo is not None:  # an ISO time with its own offset is exact
            return (naive - EPOCH) // timedelta(milliseconds=1)
        local = naive.replace(tzinfo=self.zone)  # fold=0: the first of an ambiguous pair
        utc = local.astimezone(UTC)
        if utc.astimezone(self.zone).replace(tzinfo=None) != naive:
            raise RowError(
                "invalid_timestamp",
                f"{column} {text!r} does not exist in {self.zone.key} (DST gap)",
            )
        return (utc - EPOCH) // timedelta(milliseconds=1)

    def _parse(self, text: str, column: str) -> datetime:
        try:
            if self.format == "iso":
                return datetime.fromisoformat(text)
            return datetime.strptime(text, self.format)
        except ValueError as exc:
            raise RowError("invalid_timestamp", f"unparseable {column} {text!r}") from exc


# --- service rows --------------------------------------------------------------------


@dataclass(frozen=True)
class _Request:
    request_id: str  # the pseudonym when the source declares it an identifier
    category: str
    district: str
    opened_ms: int
    cell: str | None = None
    subject: str | None = None  # the raw id, encrypted with the case's own key


@dataclass(frozen=True)
class OptedOut:
    """An event of an opted-out case: dropped, counted, kept nowhere."""

    status: str


class ServiceRows:
    """Rows of a declarative service source → lifecycle events, or dead letters."""

    def __init__(
        self,
        pack: CityPack,
        source: SourceSpec,
        header: list[str],
        file: str,
        edge: Edge | None = None,
    ) -> None:
        self.pack = pack
        self.source = source
        self.edge = edge  # None: no pseudonyms, cells or opt-outs (parsing rules only)
        self.pseudonymised = edge is not None and "request_id" in source.identifiers
        self.file = file
        self.component = f"{pack.id}-{source.name}"
        self.width = len(header)
        mapped = {"request_id": source.id_column or "", **source.columns}
        missing = [c for c in mapped.values() if c not in header]
        if missing:
            raise ValueError(f"{file}: header lacks columns {missing}")
        self.index = {name: header.index(column) for name, column in mapped.items()}
        self.times = LocalTimes(source.time_format, pack.source_zone(source))
        self.polygons = pack.spec.districts.polygons

    def parse(self, row: list[str], line: int) -> list[dict[str, Any] | Rejected | OptedOut]:
        """The row's events (opened, then closed if it has a close time) or their rejections."""
        origin = f"{self.file}:{line}"
        closes = self._text(row, "closed_at") != "" if len(row) == self.width else False
        if self._opted_out(row):
            return [OptedOut(s) for s in (("opened", "closed") if closes else ("opened",))]
        try:
            if len(row) != self.width:
                raise RowError("invalid_row", f"expected {self.width} fields, got {len(row)}")
            request = self._request(row)
        except RowError as exc:
            wanted = ("opened", "closed") if closes else ("opened",)
            return [self._reject(exc, origin, row, status) for status in wanted]
        due_ms: int | None = None
        due_error: RowError | None = None
        try:
            due_ms = self._optional_time(row, "sla_due_at")
        except RowError as exc:
            due_error = exc
        opened = self._event(
            request, "opened", request.opened_ms, due_ms if due_error is None else None, origin
        )
        out: list[dict[str, Any] | Rejected | OptedOut] = [opened]
        if closes:
            out.append(self._closed(row, request, due_ms, due_error, origin))
        return out

    def _closed(
        self,
        row: list[str],
        request: _Request,
        due_ms: int | None,
        due_error: RowError | None,
        origin: str,
    ) -> dict[str, Any] | Rejected:
        try:
            if due_error is not None:
                raise due_error
            closed_ms = self._time(row, "closed_at")
            if closed_ms < request.opened_ms:
                raise RowError(
                    "invalid_event",
                    f"{self._column('closed_at')} is before {self._column('opened_at')}",
                )
        except RowError as exc:
            return self._reject(exc, origin, row, "closed")
        return self._event(request, "closed", closed_ms, due_ms, origin)

    def _request(self, row: list[str]) -> _Request:
        request_id = self._text(row, "request_id")
        if not request_id:
            raise RowError("invalid_row", f"{self.source.id_column} is empty")
        category = self._text(row, "category")
        if not category:
            raise RowError("invalid_row", f"{self._column('category')} is empty")
        opened_ms = self._time(row, "opened_at")
        district = self._district(row)
        if self.edge is None:
            return _Request(request_id, category, district, opened_ms)
        cell = self._cell(row)
        if not self.pseudonymised:
            return _Request(request_id, category, district, opened_ms, cell)
        pseudonym = self._pseudonym(request_id)
        subject = self.edge.subject_keys.encrypt(pseudonym, request_id)
        return _Request(pseudonym, category, district, opened_ms, cell, subject)

    def _pseudonym(self, raw_id: str) -> str:
        assert self.edge is not None
        return self.edge.pseudonym("request_id", raw_id)

    def _opted_out(self, row: list[str]) -> bool:
        """Whether the row's case opted out (checked before anything else is read)."""
        if not self.pseudonymised or len(row) != self.width:
            return False
        raw_id = self._text(row, "request_id")
        if not raw_id:
            return False
        assert self.edge is not None
        return self.edge.opted_out("request_id", raw_id)

    def _cell(self, row: list[str]) -> str | None:
        """The geohash-6 cell of the row's point (validated by ``_district`` already)."""
        if "latitude" not in self.index or "longitude" not in self.index:
            return None
        lat = self._coordinate(row, "latitude", 90.0)
        lon = self._coordinate(row, "longitude", 180.0)
        return coarse_cell(lat, lon, self.pack.spec.districts.unlocated)

    def _district(self, row: list[str]) -> str:
        if self.polygons and "latitude" in self.index and "longitude" in self.index:
            lat = self._coordinate(row, "latitude", 90.0)
            lon = self._coordinate(row, "longitude", 180.0)
            return self.pack.district_at(lat, lon)
        if "district" in self.index:
            return self._text(row, "district") or "unknown"
        return "unknown"

    def _coordinate(self, row: list[str], name: str, limit: float) -> float | None:
        """An optional coordinate; a bad one is refused without repeating its value."""
        text = self._text(row, name)
        if not text:
            return None
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and -limit <= value <= limit):
            raise RowError("invalid_row", f"{self._column(name)} is not a valid {name}")
        return value

    def _time(self, row: list[str], name: str) -> int:
        text = self._text(row, name)
        if not text:
            raise RowError("invalid_timestamp", f"{self._column(name)} is empty")
        return self.times.to_ms(text, self._column(name))

    def _optional_time(self, row: list[str], name: str) -> int | None:
        if name not in self.index or not self._text(row, name):
            return None
        return self._time(row, name)

    def _text(self, row: list[str], name: str) -> str:
        i = self.index.get(name)
        return row[i].strip() if i is not None and i < len(row) else ""

    def _column(self, name: str) -> str:
        if name == "request_id":
            return self.source.id_column or name
        return self.source.columns.get(name, name)

    def _event(
        self, request: _Request, status: str, time_ms: int, due_ms: int | None, origin: str
    ) -> dict[str, Any]:
        privacy = {} if self.edge is None else {"cell": request.cell, "subject": request.subject}
        return {
            **privacy,
            "event_id": f"{request.request_id}:{status}",
            "request_id": request.request_id,
            "status": status,
            "category": request.category,
            "district": request.district,
            "event_time": time_ms,
            "event_time_ms": time_ms,
            "opened_at": request.opened_ms,
            "opened_at_ms": request.opened_ms,
            "sla_due_at": due_ms,
            "sla_due_ms": due_ms,
            "source": self.component,
            "origin": origin,
        }

    def _reject(self, exc: RowError, origin: str, row: list[str], status: str) -> Rejected:
        """A dead letter carrying the mapped columns other than the location, nothing more."""
        kept = [
            f"{self._column(name)}={self._dead_letter_value(name, row[i])}"
            for name, i in self.index.items()
            if name not in ("latitude", "longitude") and i < len(row)
        ]
        return Rejected(exc.reason, f"{status} event: {exc}", origin, ",".join(kept))

    def _dead_letter_value(self, name: str, value: str) -> str:
        """A declared identifier as its pseudonym (the raw case id is no dead letter's)."""
        if name == "request_id" and self.pseudonymised and value.strip():
            return self._pseudonym(value.strip())
        return value


def iter_service_events(
    pack: CityPack,
    source: SourceSpec,
    path: Path,
    raw: IO[bytes] | None = None,
    edge: Edge | None = None,
) -> Iterator[dict[str, Any] | Rejected | OptedOut]:
    """Every rejection and opt-out (in file order), then every event in event-time order.

    Ties keep file order, and an opened event comes before its own close at the same time.
    """
    events: list[tuple[int, int, dict[str, Any]]] = []
    with open_text(path, raw) as handle:
        rows = csv.reader(handle)
        header = next(rows, None)
        if header is None:
            return
        parser = ServiceRows(pack, source, header, path.name, edge)
        for line, row in enumerate(rows, start=2):
            for item in parser.parse(row, line):
                if isinstance(item, Rejected | OptedOut):
                    yield item
                else:
                    events.append((item["event_time_ms"], len(events), item))
    events.sort(key=lambda e: (e[0], e[1]))
    for _, _, event in events:
        yield event


class ServiceFileReplay(StreamReplay):
    """Replays a declarative service source of a city pack."""

    streams = (SERVICE,)

    def __init__(
        self,
        settings: Settings,
        pack: CityPack,
        source: SourceSpec,
        file: Path | None = None,
        speed: float | None = None,
    ) -> None:
        super().__init__(settings, file or pack.path(source.file), speed)
        self.pack = pack
        self.source = source
        self.component = f"{pack.id}-{source.name}"

    def setup(self) -> None:
        if self.pack.spec.districts.polygons:
            _ = self.pack.layer  # a broken district layer fails here, before any publishing
        super().setup()
        self.edge = Edge.from_settings(self.settings)  # keys, and the opt-outs as of now

    def _iter_events(self, raw: IO[bytes]) -> Iterator[dict[str, Any] | Rejected]:
        items = iter_service_events(self.pack, self.source, self.events_file, raw, self.edge)
        return items  # type: ignore[return-value]  # OptedOut too: _handle counts them

    def _handle(self, item: Any, report: Report, pacer: Any) -> None:
        if isinstance(item, OptedOut):  # dropped before publishing: kept nowhere
            report.rows_read += 1
            report.opted_out += 1
            return
        super()._handle(item, report, pacer)

    def _publish_events(self, report: Report, progress: Any, started: float) -> None:
        try:
            super()._publish_events(report, progress, started)
        finally:
            self.edge.subject_keys.flush()  # the keys are durable before their ciphertexts


# --- the registry --------------------------------------------------------------------

ReplayFactory = Callable[
    [Settings, CityPack, SourceSpec, Path | None, float | None], CsvReplay[Any]
]


@dataclass(frozen=True)
class Parser:
    """How a source is replayed, which file columns it reads besides those mapped, and
    which reference kinds its replay publishes itself (the Aarhus replays publish the road
    segments or car parks before their readings, as ``citystream replay aarhus`` does)."""

    replay: ReplayFactory
    columns: tuple[str, ...] = ()
    publishes: tuple[str, ...] = ()


def _reference_file(pack: CityPack, kind: str) -> Path:
    if kind not in pack.spec.reference:
        raise ValueError(f"{pack.id}: this source needs [reference.{kind}] in city.toml")
    return pack.path(pack.spec.reference[kind].file)


def _aarhus_traffic(s: Settings, p: CityPack, src: SourceSpec, f: Path | None,
                    speed: float | None) -> CsvReplay[Any]:  # fmt: skip
    return AarhusReplaySource(s, f or p.path(src.file), _reference_file(p, "road_segments"), speed)


def _aarhus_air(s: Settings, p: CityPack, src: SourceSpec, f: Path | None,
                speed: float | None) -> CsvReplay[Any]:  # fmt: skip
    return AarhusAirReplay(s, f or p.path(src.file), _reference_file(p, "road_segments"), speed)


def _aarhus_parking(s: Settings, p: CityPack, src: SourceSpec, f: Path | None,
                    speed: float | None) -> CsvReplay[Any]:  # fmt: skip
    return AarhusParkingReplay(s, f or p.path(src.file), _reference_file(p, "car_parks"), speed)


# Declarative parsers, per domain: a source without ``kind`` uses its domain's.
DECLARATIVE: dict[str, Parser] = {"service": Parser(ServiceFileReplay)}
# Parsers with real logic, by ``kind``: the CityPulse files of Aarhus (CityBench layout).
KINDS: dict[str, Parser] = {
    "aarhus_traffic": Parser(_aarhus_traffic, READING_COLUMNS, ("road_segments",)),
    "aarhus_air": Parser(_aarhus_air, AIR_COLUMNS, ("road_segments",)),
    "aarhus_parking": Parser(_aarhus_parking, PARKING_COLUMNS, ("car_parks",)),
}


def parser_for(source: SourceSpec) -> Parser:
    """The source's registered parser; ValueError naming what exists when there is none."""
    if source.kind is not None:
        if source.kind not in KINDS:
            raise ValueError(f"unknown kind {source.kind!r}; registered: {sorted(KINDS)}")
        return KINDS[source.kind]
    if source.domain not in DECLARATIVE:
        raise ValueError(
            f"no declarative parser for domain {source.domain!r} (declarative: "
            f"{sorted(DECLARATIVE)}); name a kind: {sorted(KINDS)}"
        )
    return DECLARATIVE[source.domain]


def city_replay(
    settings: Settings,
    pack: CityPack,
    source: SourceSpec,
    file: Path | None = None,
    speed: float | None = None,
) -> CsvReplay[Any]:
    """The replay of one source (``file`` replaces the one city.toml names); call setup()."""
    return parser_for(source).replay(settings, pack, source, file, speed)


# --- reference data ------------------------------------------------------------------


@dataclass
class LoadReport:
    published: dict[str, int]  # per reference kind


def publish_reference(settings: Settings, pack: CityPack, skip: Collection[str] = ()) -> LoadReport:
    """Every reference record of the pack to its compacted topic, durable on return.

    Only reference topics are written; kinds in ``skip`` are left out (a replay whose
    sources publish them). A pack whose reference data has problems raises ValueError
    listing them and publishes nothing (``citystream city validate`` says more).
    """
    reference = read_reference(pack)
    if reference.problems:
        raise ValueError("\n".join(map(str, reference.problems)))
    records = {k: v for k, v in reference.records.items() if k not in skip}
    if not records:
        return LoadReport({})
    topics = tuple(REFERENCE_TOPICS[k] for k in records)
    publisher = EventPublisher(settings, f"{pack.id}-reference", reference_topics=topics)
    publisher.setup()
    published: dict[str, int] = {}
    for kind, rows in records.items():
        for record in rows:
            publisher.reference(REFERENCE_TOPICS[kind], str(record[REFERENCE_KEYS[kind]]), record)
        published[kind] = len(rows)
    publisher.flush()
    return LoadReport(published)


def describe(report: Report) -> str:
    """One line for a lifecycle source: events described = published + dead-lettered
    (+ opted out, when any were)."""
    dead = sum(report.dead_lettered.values())
    reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(report.dead_lettered.items()))
    opted = f" + opted out {report.opted_out:,}" if report.opted_out else ""
    return (
        f"events {report.rows_read:,} = published {report.published:,} + dead-lettered "
        f"{dead:,}{f' ({reasons})' if reasons else ''}{opted}"
    )
