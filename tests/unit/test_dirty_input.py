"""The bench's dirty variant of a traffic file: the dirt asked for, and the same every run."""

from __future__ import annotations

import csv
import gzip
from collections import Counter
from datetime import datetime
from pathlib import Path

from citystream.dirty_input import UNKNOWN_ONLY, Dirt, head_rows, make_dirty, unknown_id
from tests.oracle import METADATA

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests/fixtures/traffic_2014-08-02_0600-0900.csv.gz"


def rows(path: Path) -> list[list[str]]:
    with gzip.open(path, "rt", newline="") as handle:
        return list(csv.reader(handle))


def test_dirty_variant_has_the_dirt_asked_for_and_is_the_same_every_run(tmp_path: Path) -> None:
    dirt = Dirt(hours_late_share=0.001)
    report = make_dirty(FIXTURE, tmp_path / "a.csv.gz", dirt)
    again = make_dirty(FIXTURE, tmp_path / "b.csv.gz", dirt)
    assert (tmp_path / "a.csv.gz").read_bytes() == (tmp_path / "b.csv.gz").read_bytes()
    assert report == again

    clean, dirty = rows(FIXTURE), rows(tmp_path / "a.csv.gz")
    assert dirty[0] == clean[0]
    assert report.rows_in == len(clean) - 1
    assert report.rows_out == len(dirty) - 1 == report.rows_in + report.duplicates
    assert 0.5 * 0.01 * report.rows_in < report.duplicates < 2 * 0.01 * report.rows_in
    assert 0 < report.unknown < 3 * 0.002 * report.rows_in
    assert report.hours_late > 0

    known = {r["REPORT_ID"] for r in csv.DictReader(METADATA.open(encoding="utf-8"))}
    ids = Counter(row[8] for row in dirty[1:])
    unknown = {i for i in ids if i not in known}
    assert len(unknown) == report.unknown_segments
    assert unknown <= {unknown_id(i) for i in known}
    assert sum(ids[i] for i in unknown) >= report.unknown  # some were duplicated too

    # arrival order: at most the disorder behind the newest event time, but hours-late rows
    # (those of the fixture's last hours arrive at its end, less behind)
    times = [datetime.fromisoformat(row[5]).timestamp() for row in dirty[1:]]
    newest, behind = 0.0, []
    for t in times:
        behind.append(newest - t)
        newest = max(newest, t)
    assert 0 < sum(1 for b in behind if b > dirt.disorder_s) <= report.hours_late
    assert max(behind) > 3600


def test_unknown_only_keeps_the_order_and_rekeys_a_fifth_of_a_percent(tmp_path: Path) -> None:
    report = make_dirty(FIXTURE, tmp_path / "u.csv.gz", UNKNOWN_ONLY)
    clean, dirty = rows(FIXTURE), rows(tmp_path / "u.csv.gz")
    assert len(dirty) == len(clean) and report.duplicates == report.hours_late == 0
    changed = [(c, d) for c, d in zip(clean, dirty, strict=True) if c != d]
    assert len(changed) == report.unknown > 0
    assert all(d[8] == unknown_id(c[8]) and d[:8] == c[:8] for c, d in changed)


def test_head_rows_is_the_header_and_the_first_rows(tmp_path: Path) -> None:
    head = rows(head_rows(FIXTURE, tmp_path / "head.csv.gz", 100))
    assert head == rows(FIXTURE)[:101]
