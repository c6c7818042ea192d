"""A realistic variant of an Aarhus traffic file: what a city's feed looks like.

A clean week is sorted, complete and fully described by its reference data; a real feed is
not. The bench measures the processor on both (the dirty rate should stay within 10 % of
the clean one) and the fault tests mix unknown sensors into their input. The variant is
made from the clean file with a fixed seed, so every run measures the same input:

- a share of readings re-keyed to segment ids that have no reference record ("9" before a
  real 6-digit id: a mistyped id, or a sensor installed before its record); the same real
  segment always maps to the same unknown id, so a re-keyed reading is never a duplicate
  by accident;
- arrival disorder: each reading arrives up to ``disorder_s`` after its place in event-time
  order (within the grace period: still counted);
- duplicates: a share of readings sent twice, each copy with its own disorder;
- hours-late readings: a few arrive hours after their time (past the grace: dead-lettered
  as ``late``).
"""

from __future__ import annotations

import csv
import gzip
import io
import random
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from connectors.sources.aarhus import open_text


@dataclass(frozen=True)
class Dirt:
    """How dirty: the shares are of the input rows."""

    unknown_share: float = 0.002
    disorder_s: float = 600.0
    duplicate_share: float = 0.01
    hours_late_share: float = 0.0002
    hours_late: float = 3.0
    seed: int = 20140801

    def describe(self) -> str:
        parts = [
            (self.unknown_share, f"{100 * self.unknown_share:g} % unknown sensors"),
            (self.disorder_s, f"disorder up to {self.disorder_s / 60:g} min"),
            (self.duplicate_share, f"{100 * self.duplicate_share:g} % duplicates"),
            (self.hours_late_share,
             f"{100 * self.hours_late_share:g} % readings {self.hours_late:g} h late"),
        ]  # fmt: skip
        return ", ".join(text for amount, text in parts if amount) or "clean"


UNKNOWN_ONLY = Dirt(disorder_s=0.0, duplicate_share=0.0, hours_late_share=0.0)


@dataclass
class DirtyReport:
    rows_in: int = 0
    rows_out: int = 0
    unknown: int = 0  # readings re-keyed to an unknown segment
    unknown_segments: int = 0  # distinct unknown segment ids
    duplicates: int = 0
    hours_late: int = 0


def unknown_id(segment_id: str) -> str:
    """The unknown segment a real one's re-keyed readings get (no real id starts with 9)."""
    return f"9{segment_id}"


def make_dirty(
    source: Path, target: Path, dirt: Dirt = Dirt(), limit: int | None = None
) -> DirtyReport:
    """Write the dirty variant of ``source`` (its first ``limit`` rows) to ``target``."""
    rng = random.Random(dirt.seed)
    report = DirtyReport()
    out: list[tuple[float, int, list[str]]] = []  # (arrival, input order, row)
    unknown: set[str] = set()
    with open_text(source) as handle:
        reader = csv.reader(handle)
        header = next(reader)
        ts_col, id_col = header.index("TIMESTAMP"), header.index("REPORT_ID")
        last = 0.0
        for n, row in enumerate(reader):
            if limit is not None and n >= limit:
                break
            report.rows_in += 1
            event_s = _seconds(row[ts_col]) if len(row) > ts_col else None
            last = last if event_s is None else event_s  # a bad row keeps its place
            if len(row) > id_col and rng.random() < dirt.unknown_share:
                row[id_col] = unknown_id(row[id_col])
                unknown.add(row[id_col])
                report.unknown += 1
            if rng.random() < dirt.hours_late_share:
                report.hours_late += 1
                out.append((last + 3600 * dirt.hours_late, n, row))
                continue
            out.append((last + rng.uniform(0, dirt.disorder_s), n, row))
            if rng.random() < dirt.duplicate_share:
                report.duplicates += 1
                out.append((last + rng.uniform(0, dirt.disorder_s), n, list(row)))
    out.sort(key=lambda item: (item[0], item[1]))
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(row for _, _, row in out)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(gzip.compress(text.getvalue().encode(), compresslevel=1, mtime=0))
    report.rows_out, report.unknown_segments = len(out), len(unknown)
    return report


def _seconds(text: str) -> float | None:
    """Local wall-clock seconds, for ordering only (None if not a timestamp)."""
    try:
        return datetime.fromisoformat(text.strip()).replace(tzinfo=None).timestamp()
    except ValueError:
        return None


def head_rows(source: Path, target: Path, rows: int) -> Path:
    """The header and first ``rows`` rows of ``source``, as they are (a bench on a slice)."""
    with open_text(source) as handle:
        lines = [line for _, line in zip(range(rows + 1), handle, strict=False)]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(gzip.compress("".join(lines).encode(), compresslevel=1, mtime=0))
    return target
