"""`citystream replay aarhus` with files that hold only their header: not an error."""

from __future__ import annotations

from pathlib import Path

import pytest

from citystream.cli import main
from core.kafka import end_offsets
from core.settings import Settings

HEADERS = {
    "traffic": "status,avgMeasuredTime,avgSpeed,extID,medianMeasuredTime,TIMESTAMP,"
    "vehicleCount,_id,REPORT_ID",
    "air": "ozone,particullate_matter,carbon_monoxide,sulfure_dioxide,nitrogen_dioxide,"
    "longitude,latitude,timestamp,REPORT_ID",
    "parking": "vehiclecount,updatetime,_id,totalspaces,garagecode,streamtime",
}

pytestmark = pytest.mark.integration


def test_header_only_files_replay_to_nothing_and_exit_0(
    settings: Settings,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CITYSTREAM_SOURCE_METRICS_PORT", "0")  # no /metrics in the test process
    files = []
    for name, header in HEADERS.items():
        path = tmp_path / f"{name}.csv"
        path.write_text(header + "\n")
        files += [f"--{name}", str(path)]
    argv = [
        "replay", "aarhus", *files,
        "--bootstrap-servers", settings.kafka_bootstrap_servers,
        "--registry-url", settings.schema_registry_url,
        "--topic-prefix", settings.topic_prefix,
    ]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    for name in HEADERS:
        line = next(line for line in out.splitlines() if line.startswith(name))
        assert "rows read 0 = published 0 + dead-lettered 0  [OK]" in line
        assert "no rows" in line
    assert sum(end_offsets(settings, settings.topic("city.traffic.v1")).values()) == 0
