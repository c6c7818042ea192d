"""`citystream replay aarhus`: traffic, air quality and parking, replayed together.

The three recordings are separate files with separate sources. As fast as possible they
run one after the other; at ``speed``× real time they run side by side, each paced from
its own first reading, so the streams interleave as they would live.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from citystream.pipeline import Pipeline, PipelineError
from citystream.progress import replay_progress
from connectors.sources.aarhus import AarhusReplaySource, CsvReplay
from connectors.sources.aarhus_air import AarhusAirReplay
from connectors.sources.aarhus_parking import AarhusParkingReplay
from connectors.sources.base import Report
from core.settings import Settings

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "data" / "aarhus"


@dataclass(frozen=True)
class AarhusFiles:
    """The inputs of one Aarhus replay; ``full`` and ``shipped`` are the two usual sets."""

    traffic: Path
    metadata: Path
    air: Path
    parking: Path
    car_parks: Path

    @classmethod
    def shipped(cls) -> AarhusFiles:
        """One day (2014-08-02) of traffic and air, all parking: in the repository."""
        return cls(
            traffic=SHIPPED_DIR / "traffic_2014-08-02.csv.gz",
            metadata=SHIPPED_DIR / "traffic_metadata.csv",
            air=SHIPPED_DIR / "pollution_2014-08-02.csv.gz",
            parking=SHIPPED_DIR / "parking.csv.gz",
            car_parks=SHIPPED_DIR / "car_parks.csv",
        )

    @classmethod
    def full(cls, aarhus_dir: Path) -> AarhusFiles:
        """The whole recorded week of traffic and air, from ``CITYSTREAM_AARHUS_DIR``."""
        shipped = cls.shipped()
        return cls(
            traffic=aarhus_dir / "traffic_2014-08-01_07.csv.gz",
            metadata=shipped.metadata,
            air=aarhus_dir / "pollution_2014-08-01_07.csv.gz",
            parking=aarhus_dir / "parking.csv.gz",
            car_parks=shipped.car_parks,
        )

    def with_overrides(self, **paths: Path | None) -> AarhusFiles:
        current = {f.name: getattr(self, f.name) for f in fields(self)}
        current.update({k: v for k, v in paths.items() if v is not None})
        return AarhusFiles(**current)

    def missing(self) -> list[str]:
        """'name: path' of every input that is not a file."""
        return [
            f"{f.name}: {getattr(self, f.name)}"
            for f in fields(self)
            if not getattr(self, f.name).is_file()
        ]


def aarhus_sources(
    settings: Settings, files: AarhusFiles, speed: float | None = None
) -> dict[str, CsvReplay[Any]]:
    """One source per domain; call ``setup`` on each before ``run_replays``."""
    return {
        "traffic": AarhusReplaySource(settings, files.traffic, files.metadata, speed),
        "air": AarhusAirReplay(settings, files.air, files.metadata, speed),
        "parking": AarhusParkingReplay(settings, files.parking, files.car_parks, speed),
    }


def run_replays(
    sources: dict[str, CsvReplay[Any]], paced: bool, announce: Callable[[str], None] = print
) -> dict[str, Report]:
    """Every source to the end; a failure in any of them is raised once all have stopped."""
    if not paced:
        reports = {}
        for name, source in sources.items():
            announce(f"replaying {name}: {source.events_file.name}")
            reports[name] = source.run(replay_progress(f"{name:8}"))
        return reports
    return _run_side_by_side(sources, announce)


def _run_side_by_side(
    sources: dict[str, CsvReplay[Any]], announce: Callable[[str], None]
) -> dict[str, Report]:
    reports: dict[str, Report] = {}
    errors: list[BaseException] = []

    def run(name: str, source: CsvReplay[Any]) -> None:
        try:
            reports[name] = source.run(replay_progress(f"{name:8}", redraw=False))
        except BaseException as exc:  # re-raised below, in the caller's thread
            errors.append(exc)
            for other in sources.values():
                other.stop()

    threads = [
        threading.Thread(target=run, args=(name, source), name=f"replay-{name}")
        for name, source in sources.items()
    ]
    announce("replaying " + ", ".join(f"{n}: {s.events_file.name}" for n, s in sources.items()))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return reports


def reconciles(report: Report) -> bool:
    """Every row read was published, dead-lettered or dropped as opted out: nothing lost."""
    return report.rows_read == report.published + dead_lettered_rows(report) + report.opted_out


def summary(reports: dict[str, Report]) -> str:
    """Per domain: rows read = published + dead-lettered (with the reasons).

    A file with no rows (a header only) reconciles too: nothing was read, nothing lost.
    It is said, since it is more often a wrong path than an intended empty day.
    """
    lines = []
    for name, r in reports.items():
        dead = sum(r.dead_lettered.values())
        reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(r.dead_lettered.items()))
        ok = "OK" if reconciles(r) else "MISMATCH"
        empty = "  (no rows: the file holds no readings)" if not r.rows_read else ""
        lines.append(
            f"{name:8} rows read {r.rows_read:,} = published {r.published:,}"
            f" + dead-lettered {dead:,}{f' ({reasons})' if reasons else ''}  [{ok}]{empty}"
        )
    return "\n".join(lines)


def dead_lettered_rows(report: Report) -> int:
    """Dead letters of event rows: without those of reference rows (segments, car parks)."""
    reference = ("invalid_segment", "invalid_car_park")
    return sum(v for k, v in report.dead_lettered.items() if k not in reference)


def wait_processed(
    pipeline: Pipeline, published: dict[str, int], timeout: float = 600.0
) -> dict[str, dict[str, Any]]:
    """Until each domain's processor has accepted, de-duplicated or refused as late every
    reading published to it; then until the sink has committed every KPI."""
    deadline = time.monotonic() + timeout
    for domain, count in published.items():
        while True:
            stats = pipeline.processor_stats(domain=domain)
            if stats["accepted"] + stats["duplicates"] + stats["late"] >= count:
                break
            if time.monotonic() > deadline:
                raise PipelineError(f"{domain}: processor saw {stats} of {count} readings")
            pipeline.check_alive()
            time.sleep(0.3)
    pipeline.wait_caught_up(0, max(1.0, deadline - time.monotonic()))
    return {domain: pipeline.processor_stats(domain=domain) for domain in published}
