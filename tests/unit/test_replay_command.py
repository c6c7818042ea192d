"""`citystream replay aarhus`: which files it reads, and its answer to missing ones."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from citystream.cli import main
from citystream.replay import AarhusFiles, summary
from connectors.sources.base import Report


def test_the_shipped_files_all_exist() -> None:
    files = AarhusFiles.shipped()
    assert files.missing() == []
    assert files.air.name == "pollution_2014-08-02.csv.gz"
    assert files.traffic.name == "traffic_2014-08-02.csv.gz"  # the same day


def test_full_reads_the_aarhus_dir_and_keeps_the_shipped_reference_files(tmp_path: Path) -> None:
    files = AarhusFiles.full(tmp_path)
    assert files.traffic == tmp_path / "traffic_2014-08-01_07.csv.gz"
    assert files.air == tmp_path / "pollution_2014-08-01_07.csv.gz"
    assert files.parking == tmp_path / "parking.csv.gz"
    assert files.metadata == AarhusFiles.shipped().metadata
    assert [m.split(":")[0] for m in files.missing()] == ["traffic", "air", "parking"]


def test_overrides_replace_only_the_given_files(tmp_path: Path) -> None:
    files = AarhusFiles.shipped().with_overrides(air=tmp_path / "a.csv", parking=None)
    assert files.air == tmp_path / "a.csv"
    assert files.parking == AarhusFiles.shipped().parking


def test_a_missing_input_file_is_named_before_connecting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # an unreachable broker proves nothing connects: the files are checked first
    argv = ["replay", "aarhus", "--bootstrap-servers", "127.0.0.1:1"]
    assert main([*argv, "--air", str(tmp_path / "nope.csv")]) == 2
    err = capsys.readouterr().err
    assert "input files not found" in err and f"air: {tmp_path / 'nope.csv'}" in err


def test_full_without_the_recordings_says_where_it_looked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CITYSTREAM_AARHUS_DIR", str(tmp_path))
    assert main(["replay", "aarhus", "--full", "--bootstrap-servers", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert f"CITYSTREAM_AARHUS_DIR={tmp_path}" in err
    assert "pollution_2014-08-01_07.csv.gz" in err


def test_summary_reconciles_each_file() -> None:
    ok = Report(rows_read=10, published=7, dead_lettered=Counter(invalid_row=3))
    text = summary({"parking": ok})
    assert "rows read 10 = published 7 + dead-lettered 3 (invalid_row 3)  [OK]" in text
    bad = Report(rows_read=10, published=7, dead_lettered=Counter(invalid_row=2))
    assert "[MISMATCH]" in summary({"air": bad})
    segments = Report(rows_read=2, published=2, dead_lettered=Counter(invalid_segment=1))
    assert "[OK]" in summary({"traffic": segments})  # a bad metadata row is not an event row
