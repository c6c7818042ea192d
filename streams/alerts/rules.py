"""Alert rules: when an alert is raised and when it is cleared. Pure logic, no Kafka.

Two engines, both stateful per (type, entity) so that every alert is raised once and
cleared once:

- :class:`KpiAlerts` watches KPI windows. Each entity is judged at its *frontier*, the
  newest window seen for it. An alert is raised when the frontier window and the
  ``consecutive - 1`` windows right before it (no gap) meet the rule, and cleared when the
  frontier window no longer does. Windows of one entity may arrive out of order: an
  older window only matters when it is the frontier or one the frontier needs. A window
  replaces the one already held only when it is more complete, ordered like the KPI
  table's version (samples, then revision), so a redelivery or a stale revision changes
  nothing and a revision can never raise twice.
- :class:`SlaAlerts` watches service request events. A request is past its SLA when
  the stream time of its partition (the largest event time seen there) passes
  ``opened_at + sla_minutes`` while it is not closed; its close clears the alert.

Both can be seeded with the latest alert per key from ``city.alerts.v1`` (``restore``),
which is how a restarted processor knows what is already raised.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

RAISED, CLEARED = "raised", "cleared"
SERVICE_SLA = "service_sla"
HISTORY_WINDOWS = 8  # windows kept per entity behind its frontier
KPI_VALUES_KEPT = 4  # newest windows of a run named in a raise's kpi_values
REQUEST_STATUSES = ("opened", "assigned", "closed")

DistrictOf = Callable[[str, str], str | None]  # (scope, entity_id) -> district


class InvalidEvent(ValueError):
    """An input record the rules cannot judge; the processor dead-letters it."""


def iso(ms: int) -> str:
    """Event time as ISO-8601 UTC with a Z, as alert texts and kpi_values keys show it."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def to_ms(value: Any) -> int:
    """Avro timestamp-millis decode to datetimes; rules work in epoch milliseconds."""
    if isinstance(value, datetime):
        return round(value.timestamp() * 1000)
    return int(value)


@dataclass(frozen=True, slots=True)
class KpiWindow:
    kpi: str
    scope: str
    entity_id: str
    window_start: int
    window_end: int
    value: float
    samples: int
    revision: int

    @property
    def size(self) -> int:
        return self.window_end - self.window_start

    @property
    def version(self) -> tuple[int, int]:
        """Same order as the KPI table's version: the more complete row wins."""
        return (self.samples, self.revision)


@dataclass(frozen=True, slots=True)
class Alert:
    """One transition; ``record()`` is its ``org.citystream.alert.Alert`` value."""

    alert_id: str
    type: str
    state: str
    scope: str
    entity_id: str
    district: str | None
    since: int
    at: int
    message: str
    kpi_values: dict[str, float]
    window_start: int | None = None

    @property
    def key(self) -> str:
        return f"{self.type}|{self.entity_id}"

    def record(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "type": self.type,
            "state": self.state,
            "scope": self.scope,
            "entity_id": self.entity_id,
            "district": self.district,
            "since": self.since,
            "at": self.at,
            "message": self.message,
            "kpi_values": self.kpi_values,
            "window_start": self.window_start,
        }

    @classmethod
    def from_record(cls, r: Mapping[str, Any]) -> Alert:
        start = r.get("window_start")
        return cls(
            r["alert_id"], r["type"], r["state"], r["scope"], r["entity_id"], r.get("district"),
            to_ms(r["since"]), to_ms(r["at"]), r["message"], dict(r["kpi_values"]),
            None if start is None else to_ms(start),
        )  # fmt: skip


def district_of(scope: str, entity_id: str, segment_districts: Mapping[str, str]) -> str | None:
    """A district itself; a segment's or a sensor's from the road segments; else unknown.

    Sensor ids are ``<kind>:<segment id>`` (``traffic:158895``, ``air:158895``).
    """
    if scope == "district":
        return entity_id
    if scope == "segment":
        return segment_districts.get(entity_id)
    if scope == "sensor":
        return segment_districts.get(entity_id.rsplit(":", 1)[-1])
    return None


# --- KPI rules ----------------------------------------------------------------------------


@dataclass(frozen=True)
class KpiRule:
    """Raise after ``consecutive`` windows in a row are above (or at most) ``threshold``."""

    type: str
    kpi: str
    scopes: tuple[str, ...]
    threshold: float
    above: bool  # True: value > threshold meets the rule; False: value <= threshold
    consecutive: int
    what: str  # e.g. "Congestion"
    measure: str  # e.g. "congestion index"

    def met(self, value: float) -> bool:
        return value > self.threshold if self.above else value <= self.threshold

    @property
    def condition(self) -> str:
        return f"{'>' if self.above else '≤'} {self.threshold:g}"

    @property
    def opposite(self) -> str:
        return f"{'≤' if self.above else '>'} {self.threshold:g}"


def default_rules(aqi_threshold: float) -> tuple[KpiRule, ...]:
    """The rule table of docs/alerts.md; only the AQI threshold is a setting."""
    return (
        KpiRule("congestion", "traffic.congestion_index", ("segment",), 0.5, True, 2,
                "Congestion", "congestion index"),
        KpiRule("air_quality", "air.aqi", ("segment", "district"), aqi_threshold, True, 1,
                "Poor air quality", "AQI"),
        KpiRule("parking_full", "parking.occupancy_pct", ("car_park",), 95.0, True, 1,
                "Car park full", "occupancy %"),
        KpiRule("sensor_silent", "devices.uptime_pct", ("sensor",), 0.0, False, 1,
                "Sensor silent", "uptime %"),
    )  # fmt: skip


@dataclass(slots=True)
class _Entity:
    windows: dict[int, KpiWindow] = field(default_factory=dict)  # by window_start
    frontier: int | None = None  # window_start of the newest window judged
    active: Alert | None = None  # the raise, while the alert is up


@dataclass
class KpiCounters:
    windows: int = 0
    ignored_versions: int = 0  # redeliveries and stale revisions
    stale: int = 0  # older than the history kept behind the frontier


class KpiAlerts:
    def __init__(self, rules: tuple[KpiRule, ...], district_of: DistrictOf | None = None) -> None:
        self.by_kpi: dict[str, list[KpiRule]] = {}
        for rule in rules:
            self.by_kpi.setdefault(rule.kpi, []).append(rule)
        self.rules = {rule.type: rule for rule in rules}
        self.district_of = district_of or (lambda scope, entity: None)
        self.entities: dict[tuple[str, str, str], _Entity] = {}  # (type, scope, entity_id)
        self.counters = KpiCounters()

    def add(self, window: KpiWindow) -> list[Alert]:
        """Feed one KPI window; returns the transitions it causes (usually none)."""
        if not math.isfinite(window.value):
            raise InvalidEvent(f"{window.kpi} value {window.value} is not a finite number")
        out = []
        for rule in self.by_kpi.get(window.kpi, ()):
            if window.scope in rule.scopes:
                self.counters.windows += 1
                entity = self.entities.setdefault(
                    (rule.type, window.scope, window.entity_id), _Entity()
                )
                if self._store(rule, entity, window):
                    transition = self._judge(rule, entity)
                    if transition is not None:
                        out.append(transition)
        return out

    def restore(self, alert: Alert) -> None:
        """Seed an entity with its latest published transition (after a restart)."""
        entity = self.entities.setdefault((alert.type, alert.scope, alert.entity_id), _Entity())
        entity.active = alert if alert.state == RAISED else None
        if alert.window_start is not None:
            entity.frontier = max(entity.frontier or alert.window_start, alert.window_start)

    def active(self) -> list[Alert]:
        return [e.active for e in self.entities.values() if e.active is not None]

    def _store(self, rule: KpiRule, entity: _Entity, window: KpiWindow) -> bool:
        """Keep the window if it is new or more complete; True if the judgement may change."""
        start, size = window.window_start, window.size
        if entity.frontier is not None and start < entity.frontier - HISTORY_WINDOWS * size:
            self.counters.stale += 1
            return False
        held = entity.windows.get(start)
        if held is not None and window.version <= held.version:
            self.counters.ignored_versions += 1
            return False
        entity.windows[start] = window
        if entity.frontier is None or start > entity.frontier:
            entity.frontier = start
            horizon = start - HISTORY_WINDOWS * size
            for old in [s for s in entity.windows if s < horizon]:
                del entity.windows[old]
            return True
        # An older window matters only if the frontier's judgement looks at it.
        return start >= entity.frontier - (rule.consecutive - 1) * size

    def _judge(self, rule: KpiRule, entity: _Entity) -> Alert | None:
        assert entity.frontier is not None
        latest = entity.windows.get(entity.frontier)
        if latest is None:  # frontier restored from an alert, its window not re-read
            return None
        if entity.active is None:
            run = _run(rule, entity.windows, latest)
            if len(run) >= rule.consecutive:
                entity.active = self._raise(rule, run)
                return entity.active
            return None
        if not rule.met(latest.value):
            cleared = self._clear(rule, entity.active, latest)
            entity.active = None
            return cleared
        return None

    def _raise(self, rule: KpiRule, run: list[KpiWindow]) -> Alert:
        first, last = run[0], run[-1]
        district = self.district_of(last.scope, last.entity_id)
        in_a_row = f" in {len(run)} consecutive windows" if rule.consecutive > 1 else ""
        message = (
            f"{rule.what} on {_where(last.scope, last.entity_id, district)}: {rule.measure} "
            f"{rule.condition}{in_a_row} since {iso(first.window_start)} "
            f"(latest {last.value:g} in the window {iso(last.window_start)}–{iso(last.window_end)})"
        )
        return Alert(
            alert_id=f"{rule.type}|{last.entity_id}|{first.window_start}",
            type=rule.type,
            state=RAISED,
            scope=last.scope,
            entity_id=last.entity_id,
            district=district,
            since=first.window_start,
            at=last.window_end,
            message=message,
            kpi_values={_value_key(w): w.value for w in run[-KPI_VALUES_KEPT:]},
            window_start=last.window_start,
        )

    def _clear(self, rule: KpiRule, raised: Alert, latest: KpiWindow) -> Alert:
        message = (
            f"{rule.what} on {_where(raised.scope, raised.entity_id, raised.district)} is over: "
            f"{rule.measure} {latest.value:g} ({rule.opposite}) in the window "
            f"{iso(latest.window_start)}–{iso(latest.window_end)}; it lasted since "
            f"{iso(raised.since)}"
        )
        return replace(
            raised,
            state=CLEARED,
            at=latest.window_end,
            message=message,
            kpi_values={_value_key(latest): latest.value},
            window_start=latest.window_start,
        )


class ReorderBuffer:
    """Holds KPI windows until the input's watermark passes them, then yields them in order.

    KPI batches carry no key, so one entity's windows land on different partitions and a
    consumer reading a backlog may see window 5 before window 4. Judging windows in
    ``window_start`` order once every partition has passed them makes the alerts the same
    as if the windows had come in order.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, int, int, KpiWindow]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, window: KpiWindow) -> None:
        self._seq += 1
        heapq.heappush(
            self._heap, (window.window_end, window.samples, window.revision, self._seq, window)
        )

    def pop_until(self, watermark: int) -> list[KpiWindow]:
        """Every held window ending at or before ``watermark``, oldest first."""
        out = []
        while self._heap and self._heap[0][0] <= watermark:
            out.append(heapq.heappop(self._heap)[-1])
        return out


def _run(rule: KpiRule, windows: dict[int, KpiWindow], latest: KpiWindow) -> list[KpiWindow]:
    """The windows meeting the rule that end at ``latest`` with no gap, oldest first."""
    run: list[KpiWindow] = []
    window: KpiWindow | None = latest
    while window is not None and rule.met(window.value):
        run.append(window)
        window = windows.get(window.window_start - window.size)
    run.reverse()
    return run


def _value_key(window: KpiWindow) -> str:
    return f"{window.kpi}@{iso(window.window_start)}"


def _where(scope: str, entity_id: str, district: str | None) -> str:
    place = f"{scope.replace('_', ' ')} {entity_id}"
    return place if district is None or scope == "district" else f"{place} (district {district})"


# --- service request SLA ------------------------------------------------------------------


@dataclass(slots=True)
class OpenRequest:
    request_id: str
    category: str
    district: str
    opened_at: int
    status: str
    partition: int
    offset: int  # of its latest event: the input a restart must re-read
    deadline: int | None = None  # opened_at + SLA once the category's SLA is known


@dataclass
class SlaCounters:
    events: int = 0
    unknown_category: int = 0  # requests waiting for their category's SLA


class SlaAlerts:
    """Open requests of the partitions this worker reads, and the SLA alerts on them."""

    def __init__(self) -> None:
        self.stream_time: dict[int, int] = {}
        self.open: dict[str, OpenRequest] = {}
        self.alerts: dict[str, Alert] = {}  # request_id -> latest transition
        self._deadlines: dict[int, list[tuple[int, str]]] = {}  # heap per partition
        self.waiting: set[str] = set()  # open requests whose category has no SLA yet
        self.counters = SlaCounters()

    def add(
        self, partition: int, offset: int, event: Mapping[str, Any], sla: Mapping[str, int]
    ) -> list[Alert]:
        """Apply one lifecycle event, then advance the partition's stream time."""
        status = event["status"]
        if status not in REQUEST_STATUSES:
            raise InvalidEvent(f"status {status!r} is not one of {', '.join(REQUEST_STATUSES)}")
        self.counters.events += 1
        at, rid = to_ms(event["event_time"]), event["request_id"]
        out: list[Alert] = []
        if status == "closed":
            self._forget(rid)
            raised = self.alerts.get(rid)
            if raised is not None and raised.state == RAISED:
                out.append(self._clear(raised, at))
        else:
            request = OpenRequest(
                rid, event["category"], event["district"], to_ms(event["opened_at"]),
                status, partition, offset,
            )  # fmt: skip
            self.open[rid] = request
            self._schedule(request, sla)
        self.stream_time[partition] = max(self.stream_time.get(partition, at), at)
        return out + self._due(partition)

    def recheck(self, sla: Mapping[str, int]) -> list[Alert]:
        """After the categories changed: schedule the waiting requests, raise what is due."""
        for rid in list(self.waiting):
            self._schedule(self.open[rid], sla)
        out: list[Alert] = []
        for partition in list(self._deadlines):
            out += self._due(partition)
        return out

    def restore(self, alert: Alert) -> None:
        """A request alerted before (raised or cleared) is never raised again."""
        self.alerts[alert.entity_id] = alert

    def pins(self, partition: int, offset: int, request_id: str) -> bool:
        """True while this input message is the latest event of a request still open."""
        request = self.open.get(request_id)
        return request is not None and request.partition == partition and request.offset == offset

    def _forget(self, rid: str) -> None:
        self.open.pop(rid, None)
        self.waiting.discard(rid)

    def _schedule(self, request: OpenRequest, sla: Mapping[str, int]) -> None:
        minutes = sla.get(request.category)
        if minutes is None:
            if request.request_id not in self.waiting:
                self.counters.unknown_category += 1
            self.waiting.add(request.request_id)
            return
        self.waiting.discard(request.request_id)
        request.deadline = request.opened_at + minutes * 60_000
        heap = self._deadlines.setdefault(request.partition, [])
        heapq.heappush(heap, (request.deadline, request.request_id))

    def _due(self, partition: int) -> list[Alert]:
        now = self.stream_time.get(partition)
        heap = self._deadlines.get(partition, [])
        out = []
        while heap and now is not None and heap[0][0] < now:
            deadline, rid = heapq.heappop(heap)
            request = self.open.get(rid)
            if request is None or request.deadline != deadline or rid in self.alerts:
                continue  # closed, rescheduled, or alerted before
            alert = self._raise(request, now)
            self.alerts[rid] = alert
            out.append(alert)
        return out

    def _raise(self, request: OpenRequest, now: int) -> Alert:
        assert request.deadline is not None
        sla = (request.deadline - request.opened_at) // 60_000
        open_minutes = (now - request.opened_at) / 60_000
        message = (
            f"Service request {request.request_id} ({request.category}, district "
            f"{request.district}) opened {iso(request.opened_at)} is past its {sla}-minute SLA "
            f"since {iso(request.deadline)}; still {request.status} at {iso(now)}"
        )
        return Alert(
            alert_id=f"{SERVICE_SLA}|{request.request_id}|{request.deadline}",
            type=SERVICE_SLA,
            state=RAISED,
            scope="request",
            entity_id=request.request_id,
            district=request.district,
            since=request.deadline,
            at=now,
            message=message,
            kpi_values={"service.sla_minutes": float(sla), "service.open_minutes": open_minutes},
        )

    def _clear(self, raised: Alert, closed_at: int) -> Alert:
        sla = raised.kpi_values.get("service.sla_minutes", 0.0)
        open_minutes = (closed_at - (raised.since - int(sla * 60_000))) / 60_000
        cleared = replace(
            raised,
            state=CLEARED,
            at=closed_at,
            message=(
                f"Service request {raised.entity_id} closed {iso(closed_at)}, "
                f"{open_minutes:g} minutes after opening (SLA {sla:g} minutes, "
                f"past it since {iso(raised.since)})"
            ),
            kpi_values={"service.sla_minutes": sla, "service.open_minutes": open_minutes},
        )
        self.alerts[raised.entity_id] = cleared
        return cleared
