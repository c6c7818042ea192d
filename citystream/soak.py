"""`citystream soak` (`make soak`, not in CI): a long, fast, faulty run ending in `verify`.

A source publishes for N minutes at a high rate while a fault is injected every M seconds,
in turn: processor SIGKILL, sink SIGKILL, broker restart, a worker joining or leaving.
Then the pipeline settles and the KPIs are recomputed from the raw topic
(`verify topics`), so any source that writes `city.traffic.v1` can be soaked: the source
is a :class:`SoakSource` (today: the Aarhus recording looped with shifted timestamps).
Beside it the seeded city simulator feeds energy, waste and service requests at
``sim_rate`` events/s, with duplicates and late events; their KPIs are recomputed from
what reached their topics (oracles/simulated.py) and compared as well.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from citystream.pipeline import Pipeline, PipelineError, wait_settled
from citystream.verify import verify_topics
from connectors.publishing import EventPublisher, Reading, Rejected
from connectors.sources.aarhus import iter_readings, read_segments
from core.settings import Settings
from families.registry import ensure_topics, register_schemas

DAY_MS = 86_400_000


class SoakSource(Protocol):
    """What the soak needs from a source: reference data, then an endless event stream."""

    name: str

    def segments(self) -> tuple[list[dict[str, Any]], list[Rejected]]: ...

    def events(self) -> Iterator[Reading | Rejected]: ...


@dataclasses.dataclass
class AarhusLoop:
    """The recording again and again, each pass shifted by whole days past the previous."""

    traffic: Path
    metadata: Path
    name: str = "aarhus-loop"

    def segments(self) -> tuple[list[dict[str, Any]], list[Rejected]]:
        return read_segments(self.metadata)

    def events(self) -> Iterator[Reading | Rejected]:
        shift, first, last = 0, None, 0
        for lap in range(1_000_000):
            for item in iter_readings(self.traffic):
                if isinstance(item, Rejected):
                    yield item
                    continue
                first = item.event_time_ms if first is None else first
                last = max(last, item.event_time_ms)
                yield dataclasses.replace(
                    item, event_time_ms=item.event_time_ms + shift, origin=f"lap{lap}:{item.origin}"
                )
            span_days = max(1, -(-(last - (first or 0) + 1) // DAY_MS))
            shift += span_days * DAY_MS


@dataclasses.dataclass
class Publishing:
    """The source's publisher thread and its counts."""

    published: int = 0
    dead_lettered: int = 0
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    error: BaseException | None = None
    seconds: float = 0.0


def publish(settings: Settings, source: SoakSource, rate: float, state: Publishing) -> None:
    try:
        events = EventPublisher(settings, f"soak-{source.name}")
        events.setup()
        segments, bad = source.segments()
        for segment in segments:
            events.road_segment(segment)
        for rejected in bad:
            events.reject(rejected)
        events.flush()
        started = time.monotonic()
        for item in source.events():
            if state.stop.is_set():
                break
            if isinstance(item, Rejected):
                events.reject(item)
                state.dead_lettered += 1
                continue
            events.reading(item)
            state.published += 1
            if state.published % 1000 == 0:
                ahead = state.published / rate - (time.monotonic() - started)
                if ahead > 0:
                    events.send_batches()
                    time.sleep(ahead)
        events.flush(timeout=300)
        state.seconds = time.monotonic() - started
    except BaseException as exc:  # reported by the main thread
        state.error = exc


def fault_injectors(
    pipeline: Pipeline, stack_cfg: Any, rng: random.Random
) -> dict[str, Callable[[], None]]:
    from infra.stack import stop_service, up

    def restart(name: str) -> None:
        pipeline.kill(name)
        pipeline.start(name)

    def broker_restart() -> None:
        stop_service(stack_cfg, "kafka", progress=lambda _: None)
        try:
            time.sleep(rng.uniform(2.0, 6.0))
        finally:
            up(stack_cfg, progress=lambda _: None)

    def rebalance() -> None:
        if "processor2" in pipeline.services:
            pipeline.services.pop("processor2").stop()
        else:
            pipeline.start("processor2")

    return {
        "processor SIGKILL": lambda: restart("processor"),
        "sink SIGKILL": lambda: restart("sink"),
        "broker restart": broker_restart,
        "worker joins/leaves": rebalance,
    }


def start_simulator(s: Settings, seed: int, rate: float) -> tuple[Any, threading.Thread]:
    """The city simulator as a load generator: a year of simulated time, capped at ``rate``."""
    from connectors.sources.simulator import CitySimulatorSource, SimulationConfig

    config = SimulationConfig(seed=seed, start_ms=1_406_851_200_000, hours=24 * 365,
                              meters=500, bins=200, requests_per_hour=120,
                              duplicate_fraction=0.01, late_fraction=0.01)  # fmt: skip
    simulator = CitySimulatorSource(s, config, max_rate=rate)
    simulator.setup()
    thread = threading.Thread(target=simulator.run, daemon=True)
    thread.start()
    return simulator, thread


def verify_simulated(s: Settings) -> Any:
    """The simulated domains' KPIs recomputed from their topics, compared with ClickHouse."""
    from citystream.verify import published_events, stored_kpis
    from connectors.sources.simulator import load_reference
    from oracles.compare import compare
    from oracles.simulated import drop_late, recompute

    reference = load_reference()
    events = drop_late(published_events(s, timeout_s=300), s.partitions)
    expected = recompute(events, reference.emission_factors(), reference.sla_minutes())
    stored = {}
    for domain in ("energy.", "waste.", "service."):
        stored.update(stored_kpis(s, domain))
    return compare(expected, stored)


def run_soak(
    settings: Settings,
    source: SoakSource,
    minutes: float,
    fault_every: float,
    rate: float,
    seed: int,
    stack_cfg: Any,
    sim_rate: float = 2000.0,
) -> int:
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    s = settings.model_copy(
        update={"topic_prefix": f"soak{stamp}.", "data_dir": settings.data_dir / f"soak-{stamp}"}
    )
    rng = random.Random(seed)
    ensure_topics(s)
    register_schemas(s)
    pipeline = Pipeline(s)
    state = Publishing()
    injected: Counter[str] = Counter()
    began = time.monotonic()
    try:
        pipeline.start()
        faults = fault_injectors(pipeline, stack_cfg, rng)
        order = list(faults)
        rng.shuffle(order)
        thread = threading.Thread(target=publish, args=(s, source, rate, state), daemon=True)
        thread.start()
        simulator = start_simulator(s, seed, sim_rate) if sim_rate > 0 else None
        print(f"soak: {source.name} at {rate:,.0f} readings/s for {minutes} min, "
              f"a fault every {fault_every}s (topics {s.topic_prefix}*)")  # fmt: skip
        end = began + minutes * 60
        next_fault = began + fault_every
        while time.monotonic() < end and state.error is None:
            time.sleep(min(1.0, max(0.0, next_fault - time.monotonic())))
            if time.monotonic() >= next_fault:
                kind = order[sum(injected.values()) % len(order)]
                faults[kind]()
                injected[kind] += 1
                elapsed = time.monotonic() - began
                print(f"  {elapsed:6.0f}s  {kind:<20} readings published {state.published:,}")
                next_fault = time.monotonic() + fault_every
            for name in pipeline.restart_exited():  # e.g. a flush timed out in an outage
                injected[f"{name} crashed, restarted"] += 1
        state.stop.set()
        thread.join(600)
        if simulator is not None:
            simulator[0].stop()
            simulator[1].join(600)
        if state.error is not None:
            raise state.error
        print("soak: input stopped; waiting for the pipeline to settle ...")
        settle_by = time.monotonic() + 900
        while True:
            try:
                wait_settled(pipeline, timeout=max(30.0, settle_by - time.monotonic()))
                break
            except PipelineError:
                restarted = pipeline.restart_exited()
                if not restarted or time.monotonic() > settle_by:
                    raise
                for name in restarted:
                    injected[f"{name} crashed, restarted"] += 1
    finally:
        pipeline.stop()
    data, result = verify_topics(s)
    simulated = verify_simulated(s) if sim_rate > 0 else None
    seconds = time.monotonic() - began
    print(f"soak summary ({seconds:.0f}s):")
    print(f"  readings published {state.published:,} "
          f"({state.published / max(state.seconds, 1):,.0f}/s while publishing), "
          f"dead-lettered by the source {state.dead_lettered:,}")  # fmt: skip
    print(f"  read back from {s.topic('city.traffic.v1')}: {len(data.readings):,}")
    for kind in [*faults, *sorted(set(injected) - set(faults))]:
        print(f"  {kind:<20} {injected[kind]}")
    print("  verify topics: " + result.summary().replace("\n", "\n  "))
    if simulated is not None:
        print("  simulated domains: " + simulated.summary().replace("\n", "\n  "))
    ok = result.ok and len(data.readings) == state.published
    ok = ok and (simulated is None or simulated.ok)
    print("soak: OK" if ok else "soak: FAILED")
    return 0 if ok else 1
