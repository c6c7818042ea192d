"""City simulator: seeded energy meters, waste bins and service requests into Kafka.

It is the source of the energy, waste and service domains until real feeds exist, and
the load generator. Everything it emits follows from :class:`SimulationConfig` alone: one
``random.Random`` per domain, seeded from the seed, and no wall clock in any value, so the
same seed and settings give a byte-identical event sequence. ``oracles/simulated.py``
regenerates that sequence to recompute the KPIs independently of the processors.

Shapes (local time, Europe/Copenhagen):

- **energy**: each meter is read every interval; ``kwh`` is the consumption since its
  previous reading, following a daily curve (night low, morning and evening peaks; a
  later, flatter morning at weekends), scaled per district and per meter.
- **waste**: a bin's fill level rises with the day's activity and drops to a few percent
  when its district's collection round passes (two weekdays per district, from 06:00).
- **service requests**: opened at a daytime-peaked Poisson rate, district by population;
  each goes opened → assigned → closed after a category-dependent delay. About one in
  five closes after its category's SLA; requests not closed by the end stay open.

Injected faults (all off by default): a fraction of events sent twice (same event_id), a
fraction held back by ``late_delay_minutes`` of event time (late for the processors), and
a fraction followed by a malformed copy, which the source validates and dead-letters with
reason ``invalid_event``, as it would any bad input. The good events are always sent.
"""

from __future__ import annotations

import bisect
import csv
import heapq
import itertools
import json
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from connectors.publishing import ENERGY, SERVICE, WASTE, EventPublisher, Rejected
from connectors.sources.base import Progress, Report
from connectors.sources.pacing import Pacer, RateCap
from core.settings import Settings

COMPONENT = "city-simulator"
REFERENCE_DIR = Path(__file__).resolve().parents[2] / "data" / "reference"
DISTRICTS_TOPIC = "city.districts.v1"
CATEGORIES_TOPIC = "city.service_categories.v1"
LOCAL_TZ = ZoneInfo("Europe/Copenhagen")
STATUSES = ("opened", "assigned", "closed")
HOUR_MS = 3_600_000
MINUTE_MS = 60_000

# Relative load per local hour 0..23, interpolated between hours.
ENERGY_WEEKDAY = (
    0.45,
    0.40,
    0.38,
    0.37,
    0.38,
    0.45,
    0.70,
    1.05,
    1.10,
    0.95,
    0.90,
    0.90,
    0.92,
    0.90,
    0.88,
    0.95,
    1.15,
    1.45,
    1.60,
    1.50,
    1.30,
    1.05,
    0.80,
    0.58,
)
ENERGY_WEEKEND = (
    0.50,
    0.45,
    0.40,
    0.38,
    0.37,
    0.38,
    0.45,
    0.60,
    0.80,
    1.00,
    1.10,
    1.10,
    1.08,
    1.00,
    0.95,
    0.98,
    1.10,
    1.35,
    1.50,
    1.45,
    1.30,
    1.10,
    0.85,
    0.62,
)
WASTE_ACTIVITY = (
    0.15,
    0.10,
    0.10,
    0.10,
    0.10,
    0.20,
    0.50,
    0.90,
    1.10,
    1.20,
    1.30,
    1.40,
    1.50,
    1.40,
    1.30,
    1.30,
    1.40,
    1.50,
    1.40,
    1.20,
    1.00,
    0.70,
    0.40,
    0.25,
)
REQUEST_RATE = (0.20, 0.10, 0.10, 0.10, 0.10, 0.20, 0.50, 1.00, 1.60, 1.90, 2.00, 1.90,
                1.70, 1.80, 1.80, 1.70, 1.50, 1.20, 1.00, 0.90, 0.70, 0.50, 0.40, 0.30)  # fmt: skip
# Share of requests per category; categories not listed get 0.1.
CATEGORY_WEIGHTS = {
    "noise": 0.25,
    "waste_overflow": 0.25,
    "streetlight": 0.2,
    "pothole": 0.2,
    "graffiti": 0.1,
}
COLLECTION_HOUR = 6  # local time the collection round starts on a district's days
MEAN_KW_PER_METER = 0.6  # a household's mean draw


class SimulationConfigError(ValueError):
    """Settings that cannot describe a simulation; the message says which and why."""


@dataclass(frozen=True)
class SimulationConfig:
    seed: int
    start_ms: int
    hours: float
    meters: int = 500
    bins: int = 200
    requests_per_hour: float = 30.0
    interval_minutes: int = 15  # between two readings of a meter or a bin
    duplicate_fraction: float = 0.0
    late_fraction: float = 0.0
    malformed_fraction: float = 0.0
    late_delay_minutes: int = 60  # > window + grace, so late events are dead-lettered

    def __post_init__(self) -> None:
        problems = [p for p in self._problems() if p]
        if problems:
            raise SimulationConfigError("invalid simulation: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        fractions = (self.duplicate_fraction, self.late_fraction, self.malformed_fraction)
        return [
            "hours must be > 0" if not self.hours > 0 else "",
            "meters and bins must be >= 0" if min(self.meters, self.bins) < 0 else "",
            "requests_per_hour must be >= 0" if not self.requests_per_hour >= 0 else "",
            "nothing to simulate: no meters, no bins, no requests"
            if self.meters == self.bins == 0 and self.requests_per_hour == 0
            else "",
            "interval_minutes must be 1..1440" if not 1 <= self.interval_minutes <= 1440 else "",
            "fault fractions must be 0..1 and sum to at most 1"
            if not all(0 <= f <= 1 for f in fractions) or sum(fractions) > 1
            else "",
            "late_delay_minutes must be >= 1" if self.late_delay_minutes < 1 else "",
        ]

    @property
    def end_ms(self) -> int:
        return self.start_ms + round(self.hours * HOUR_MS)

    @property
    def interval_ms(self) -> int:
        return self.interval_minutes * MINUTE_MS


# --- reference data ------------------------------------------------------------------


@dataclass(frozen=True)
class District:
    district: str
    name: str
    grid_emission_kg_per_kwh: float
    population: int | None


@dataclass(frozen=True)
class Category:
    category: str
    name: str
    sla_minutes: int


@dataclass(frozen=True)
class Reference:
    districts: tuple[District, ...]
    categories: tuple[Category, ...]

    def emission_factors(self) -> dict[str, float]:
        return {d.district: d.grid_emission_kg_per_kwh for d in self.districts}

    def sla_minutes(self) -> dict[str, int]:
        return {c.category: c.sla_minutes for c in self.categories}


def _read_csv(path: Path, parse: Callable[[dict[str, str]], Any]) -> list[Any]:
    rows: list[Any] = []
    with path.open(encoding="utf-8", newline="") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            try:
                rows.append(parse(row))
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{line}: bad reference row {row}: {exc!r}") from exc
    if not rows:
        raise ValueError(f"{path}: no reference rows")
    return rows


def _district(row: dict[str, str]) -> District:
    factor = float(row["grid_emission_kg_per_kwh"])
    if not row["district"].strip() or not math.isfinite(factor) or factor < 0:
        raise ValueError("empty district or emission factor not finite and >= 0")
    population = row.get("population", "").strip()
    return District(row["district"].strip(), row["name"].strip(), factor,
                    int(population) if population else None)  # fmt: skip


def _category(row: dict[str, str]) -> Category:
    sla = int(row["sla_minutes"])
    if not row["category"].strip() or sla <= 0:
        raise ValueError("empty category or sla_minutes not > 0")
    return Category(row["category"].strip(), row["name"].strip(), sla)


def load_reference(directory: Path = REFERENCE_DIR) -> Reference:
    """The districts and service categories; a bad row is an error naming file and line."""
    return Reference(
        tuple(_read_csv(directory / "districts.csv", _district)),
        tuple(_read_csv(directory / "service_categories.csv", _category)),
    )


# --- generation (pure) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SimEvent:
    """One emitted event: its catalogue topic, the record, and the fault it stands for.

    ``fault`` is "" for a normal event, or "duplicate" (a second copy), "late" (emitted
    ``late_delay_minutes`` after its event time) or "malformed" (an invalid copy).
    """

    topic: str
    record: dict[str, Any]
    time_ms: int
    fault: str = ""
    origin: str = ""


def event_id(*parts: object) -> str:
    """Readable and unique: domain, entity, event time (and status), e.g.
    ``energy:meter-00042:1407110400000``."""
    return ":".join(map(str, parts))


def _domain_rng(config: SimulationConfig, domain: str) -> random.Random:
    """One generator per domain, so adding meters leaves the service requests unchanged."""
    return random.Random(f"citystream-sim/{config.seed}/{domain}")


def _local(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, LOCAL_TZ)


def _hourly(table: tuple[float, ...], local: datetime) -> float:
    """The table's value at this local time, linear between whole hours."""
    hour = local.hour + local.minute / 60
    low = int(hour)
    frac = hour - low
    return table[low] * (1 - frac) + table[(low + 1) % 24] * frac


def energy_factor(local: datetime) -> float:
    return _hourly(ENERGY_WEEKEND if local.weekday() >= 5 else ENERGY_WEEKDAY, local)


def _place(count: int, reference: Reference, rng: random.Random) -> list[str]:
    """Districts for ``count`` entities, weighted by population."""
    districts = [d.district for d in reference.districts]
    weights = [d.population or 10_000 for d in reference.districts]
    return rng.choices(districts, weights, k=count)


def _ticks(config: SimulationConfig) -> range:
    return range(config.start_ms, config.end_ms, config.interval_ms)


def _offsets(count: int, config: SimulationConfig, rng: random.Random) -> list[int]:
    """Each entity's fixed position within the interval, in whole seconds."""
    return [rng.randrange(0, config.interval_ms, 1000) for _ in range(count)]


def energy_events(config: SimulationConfig, reference: Reference) -> Iterator[SimEvent]:
    rng = _domain_rng(config, "energy")
    districts = _place(config.meters, reference, rng)
    scale = {d.district: rng.uniform(0.7, 1.4) for d in reference.districts}
    base_kw = [MEAN_KW_PER_METER * scale[d] * rng.lognormvariate(0, 0.4) for d in districts]
    offsets = _offsets(config.meters, config, rng)
    order = sorted(range(config.meters), key=lambda i: (offsets[i], i))
    hours = config.interval_ms / HOUR_MS
    for tick in _ticks(config):
        # consumption over the interval before the reading: the curve at its middle
        factor = energy_factor(_local(tick - config.interval_ms // 2))
        for i in order:
            t = tick + offsets[i]
            if t >= config.end_ms:
                break
            meter = f"meter-{i:05d}"
            kwh = round(base_kw[i] * factor * hours * rng.uniform(0.85, 1.15), 4)
            record = {"event_id": event_id("energy", meter, t), "meter_id": meter,
                      "district": districts[i], "event_time": t, "event_time_ms": t,
                      "kwh": kwh, "source": COMPONENT}  # fmt: skip
            yield SimEvent(ENERGY.topic, record, t)


def _collection_rounds(config: SimulationConfig, district_index: int) -> list[int]:
    """Start of each collection round (06:00 local) of one district, as epoch ms."""
    days = {district_index % 5, (district_index + 2) % 5}  # two weekdays, Mon = 0
    first = _local(config.start_ms).date() - timedelta(days=2)
    last = _local(config.end_ms).date() + timedelta(days=1)
    rounds = []
    day: date = first
    while day <= last:
        if day.weekday() in days:
            at = datetime(day.year, day.month, day.day, COLLECTION_HOUR, tzinfo=LOCAL_TZ)
            rounds.append(int(at.astimezone(UTC).timestamp() * 1000))
        day += timedelta(days=1)
    return rounds


@dataclass
class _Bin:
    bin_id: str
    district: str
    rate_pct_per_hour: float
    offset_ms: int  # position of the bin in the interval
    collect_delay_ms: int  # when the round reaches it after COLLECTION_HOUR
    fill: float
    last_ms: int | None = None


def waste_events(config: SimulationConfig, reference: Reference) -> Iterator[SimEvent]:
    rng = _domain_rng(config, "waste")
    districts = _place(config.bins, reference, rng)
    offsets = _offsets(config.bins, config, rng)
    bins = [
        _Bin(f"bin-{i:05d}", d, rng.uniform(0.4, 1.6), offsets[i],
             rng.randrange(0, 4 * HOUR_MS, MINUTE_MS), rng.uniform(5, 60))
        for i, d in enumerate(districts)
    ]  # fmt: skip
    index = {d.district: n for n, d in enumerate(reference.districts)}
    rounds = {d: _collection_rounds(config, n) for d, n in index.items()}
    order = sorted(bins, key=lambda b: (b.offset_ms, b.bin_id))
    for tick in _ticks(config):
        activity = _hourly(WASTE_ACTIVITY, _local(tick))
        for b in order:
            t = tick + b.offset_ms
            if t >= config.end_ms:
                break
            _advance(b, t, activity, rounds[b.district], config.interval_ms, rng)
            level = round(min(100.0, max(0.0, b.fill + rng.gauss(0, 0.5))), 1)
            record = {"event_id": event_id("waste", b.bin_id, t), "bin_id": b.bin_id,
                      "district": b.district, "event_time": t, "event_time_ms": t,
                      "fill_pct": level, "source": COMPONENT}  # fmt: skip
            yield SimEvent(WASTE.topic, record, t)


def _advance(
    b: _Bin, t: int, activity: float, rounds: list[int], interval_ms: int, rng: random.Random
) -> None:
    """The bin's fill at ``t``: emptied if its collection passed since the last reading."""
    since = b.last_ms if b.last_ms is not None else t - interval_ms
    b.last_ms = t
    # a round starting at r reaches the bin at r + collect_delay_ms
    i = bisect.bisect_right(rounds, t - b.collect_delay_ms) - 1
    collected = rounds[i] + b.collect_delay_ms if i >= 0 else None
    if collected is not None and since < collected <= t:
        b.fill = rng.uniform(0, 3)
        since = collected
    b.fill = min(100.0, b.fill + b.rate_pct_per_hour * activity * (t - since) / HOUR_MS)


def _arrivals(config: SimulationConfig, rng: random.Random) -> Iterator[int]:
    """Opening times of a Poisson process with the daytime rate, by thinning."""
    mean = sum(REQUEST_RATE) / 24
    peak = max(REQUEST_RATE) / mean
    per_ms = config.requests_per_hour * peak / HOUR_MS
    if per_ms <= 0:
        return
    t = float(config.start_ms)
    while True:
        t += rng.expovariate(per_ms)
        if t >= config.end_ms:
            return
        opened = int(t) // 1000 * 1000
        if rng.random() * peak < _hourly(REQUEST_RATE, _local(opened)) / mean:
            yield opened


def _lifecycle(
    request_id: str, category: Category, district: str, opened: int, rng: random.Random
) -> list[SimEvent]:
    """opened → assigned → closed, with delays that depend on the category's SLA (which
    judges them: simulated requests have no due time of their own)."""
    assign_min = max(1.0, rng.lognormvariate(math.log(min(20, category.sla_minutes / 6)), 0.8))
    close_min = category.sla_minutes * rng.lognormvariate(math.log(0.6), 0.55)
    assigned = opened + round(assign_min * 60) * 1000
    closed = max(assigned + MINUTE_MS, opened + round(close_min * 60) * 1000)
    events = []
    for status, t in zip(STATUSES, (opened, assigned, closed), strict=True):
        record = {"event_id": event_id("service", request_id, t, status),
                  "request_id": request_id, "status": status, "category": category.category,
                  "district": district, "event_time": t, "event_time_ms": t,
                  "opened_at": opened, "opened_at_ms": opened, "source": COMPONENT,
                  "sla_due_at": None}  # fmt: skip
        events.append(SimEvent(SERVICE.topic, record, t))
    return events


def service_events(config: SimulationConfig, reference: Reference) -> Iterator[SimEvent]:
    """Every status change before the end, in time order; later ones stay unsent (open)."""
    rng = _domain_rng(config, "service")
    categories = list(reference.categories)
    weights = [CATEGORY_WEIGHTS.get(c.category, 0.1) for c in categories]
    pending: list[tuple[int, int, SimEvent]] = []
    order = itertools.count()
    for n, opened in enumerate(_arrivals(config, rng)):
        while pending and pending[0][0] <= opened:
            yield heapq.heappop(pending)[2]
        category = rng.choices(categories, weights)[0]
        district = _place(1, reference, rng)[0]
        first, *later = _lifecycle(f"sr-{n:07d}", category, district, opened, rng)
        yield first
        for event in later:
            heapq.heappush(pending, (event.time_ms, next(order), event))
    while pending and pending[0][0] < config.end_ms:
        yield heapq.heappop(pending)[2]


def _malformed(event: SimEvent, rng: random.Random) -> SimEvent:
    """An invalid copy of ``event`` (with its own event id), one of a few typical defects."""
    record = dict(event.record)
    record["event_id"] = event_id("malformed", record["event_id"])
    defects: dict[str, list[tuple[str, Any]]] = {
        ENERGY.topic: [("kwh", -1.5), ("kwh", math.nan), ("meter_id", "")],
        WASTE.topic: [("fill_pct", 130.0), ("fill_pct", math.nan), ("bin_id", "")],
        SERVICE.topic: [("status", "reopened"), ("opened_at", record["event_time"] + HOUR_MS),
                        ("category", "")],
    }  # fmt: skip
    name, value = rng.choice(defects[event.topic])
    record[name] = value
    if name == "opened_at":
        record["opened_at_ms"] = value
    return replace(event, record=record, fault="malformed")


def simulate(config: SimulationConfig, reference: Reference) -> Iterator[SimEvent]:
    """The whole emitted sequence, faults included, each event with its origin.

    Without faults it is in event-time order; late events come ``late_delay_minutes``
    after their event time, duplicates and malformed copies right after their original.
    """
    merged = heapq.merge(
        energy_events(config, reference),
        waste_events(config, reference),
        service_events(config, reference),
        key=lambda e: e.time_ms,
    )
    rng = _domain_rng(config, "faults")
    dup = config.duplicate_fraction
    late = dup + config.late_fraction
    bad = late + config.malformed_fraction
    held: list[tuple[int, int, SimEvent]] = []
    holds = itertools.count()
    seq = 0
    prefix = f"simulator:{config.seed}:"

    def numbered(event: SimEvent) -> SimEvent:
        nonlocal seq
        seq += 1
        return SimEvent(event.topic, event.record, event.time_ms, event.fault, f"{prefix}{seq}")

    for event in merged:
        while held and held[0][0] <= event.time_ms:
            yield numbered(heapq.heappop(held)[2])
        draw = rng.random() if bad > 0 else 1.0
        if dup <= draw < late:
            release = event.time_ms + config.late_delay_minutes * MINUTE_MS
            heapq.heappush(held, (release, next(holds), replace(event, fault="late")))
            continue
        yield numbered(event)
        if draw < dup:
            yield numbered(replace(event, fault="duplicate"))
        elif late <= draw < bad:
            yield numbered(_malformed(event, rng))
    while held:
        yield numbered(heapq.heappop(held)[2])


# --- validation ----------------------------------------------------------------------


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def validate_event(topic: str, record: dict[str, Any]) -> str | None:
    """Why this record may not be published, or None. Structural checks only."""
    ids = {ENERGY.topic: "meter_id", WASTE.topic: "bin_id", SERVICE.topic: "request_id"}
    for name in ("event_id", ids[topic], "district"):
        if not record.get(name):
            return f"{name} is empty"
    if topic == ENERGY.topic and not (_finite(record["kwh"]) and record["kwh"] >= 0):
        return f"kwh must be finite and >= 0, got {record['kwh']!r}"
    if topic == WASTE.topic and not (
        _finite(record["fill_pct"]) and 0 <= record["fill_pct"] <= 100
    ):
        return f"fill_pct must be within 0..100, got {record['fill_pct']!r}"
    if topic == SERVICE.topic:
        return _service_problem(record)
    return None


def _service_problem(record: dict[str, Any]) -> str | None:
    if record["status"] not in STATUSES:
        return f"status must be one of {', '.join(STATUSES)}, got {record['status']!r}"
    if not record["category"]:
        return "category is empty"
    if record["opened_at"] > record["event_time"]:
        return "opened_at is after event_time"
    if record["status"] == "opened" and record["opened_at"] != record["event_time"]:
        return "an opened event's event_time must equal opened_at"
    return None


# --- publishing ----------------------------------------------------------------------


class CitySimulatorSource:
    """Publishes a simulation: reference data first, then the events.

    Pacing: ``speed`` keeps event time at N× real time; ``max_rate`` caps events per
    second (load generator); neither publishes as fast as possible.
    """

    def __init__(
        self,
        settings: Settings,
        config: SimulationConfig,
        speed: float | None = None,
        max_rate: float | None = None,
        reference_dir: Path = REFERENCE_DIR,
    ) -> None:
        if speed is not None and max_rate is not None:
            raise SimulationConfigError("give either speed or max_rate, not both")
        if (speed is not None and speed <= 0) or (max_rate is not None and max_rate <= 0):
            raise SimulationConfigError("speed and max_rate must be > 0")
        self.settings = settings
        self.config = config
        self.speed = speed
        self.max_rate = max_rate
        self.reference_dir = reference_dir
        self._stopped = False

    def setup(self) -> None:
        """Read the reference data and connect; fails early with a clear message."""
        self.reference = load_reference(self.reference_dir)
        self.events = EventPublisher(
            self.settings,
            COMPONENT,
            streams=(ENERGY, WASTE, SERVICE),
            reference_topics=(DISTRICTS_TOPIC, CATEGORIES_TOPIC),
        )
        self.events.setup()

    def stop(self) -> None:
        self._stopped = True

    def run(self, progress: Progress | None = None) -> Report:
        report = Report()
        started = time.monotonic()
        self._publish_reference(report)
        next_progress = started
        pace = self._pace()
        for event in simulate(self.config, self.reference):
            if self._stopped:
                break
            pace(event)
            self._publish(event, report)
            if progress and report.rows_read % 4096 == 0 and time.monotonic() >= next_progress:
                report.seconds = time.monotonic() - started
                report.fraction_done = self._fraction(event.time_ms)
                progress(report, False)
                next_progress = time.monotonic() + 0.5
        self.events.flush()
        report.batches = self.events.batches_sent
        report.seconds = time.monotonic() - started
        report.fraction_done = 1.0 if not self._stopped else report.fraction_done
        if progress:
            progress(report, True)
        return report

    def _fraction(self, time_ms: int) -> float:
        span = self.config.end_ms - self.config.start_ms
        return max(0.0, min(1.0, (time_ms - self.config.start_ms) / span))

    def _publish_reference(self, report: Report) -> None:
        for d in self.reference.districts:
            self.events.reference(DISTRICTS_TOPIC, d.district, asdict(d))
        for c in self.reference.categories:
            self.events.reference(CATEGORIES_TOPIC, c.category, asdict(c))
        self.events.flush()  # reference data is durable before the first event
        report.reference["districts"] = len(self.reference.districts)
        report.reference["service_categories"] = len(self.reference.categories)

    def _pace(self) -> Callable[[SimEvent], None]:
        if self.speed:
            pacer = Pacer(self.speed)

            def by_event_time(event: SimEvent) -> None:
                if pacer.wait_needed(event.time_ms):
                    self.events.send_batches()
                    pacer.sleep(event.time_ms)

            return by_event_time
        if self.max_rate:
            cap = RateCap(self.max_rate)

            def by_rate(event: SimEvent) -> None:
                if cap.wait_needed():
                    self.events.send_batches()
                    cap.sleep()

            return by_rate
        return lambda event: None

    def _publish(self, event: SimEvent, report: Report) -> None:
        report.rows_read += 1
        if event.fault:
            report.faults[event.fault] += 1
        problem = validate_event(event.topic, event.record)
        if problem is not None:
            raw = json.dumps(event.record, sort_keys=True)
            self.events.reject(Rejected("invalid_event", problem, event.origin, raw))
            report.dead_lettered["invalid_event"] += 1
            return
        self.events.event(event.topic, event.record, event.origin)
        report.published += 1
        report.per_topic[event.topic] += 1
