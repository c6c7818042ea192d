"""`citystream stack status`: a table for people, JSON for scripts, exit 3 unless ready."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from citystream.cli import main


def _status(capsys: pytest.CaptureFixture[str], tmp_path: Path, *flags: str) -> tuple[int, str]:
    code = main(["stack", "status", "--data-dir", str(tmp_path), *flags])
    return code, capsys.readouterr().out


def test_status_of_a_stopped_stack_is_a_table_and_exit_3(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out = _status(capsys, tmp_path)
    lines = out.splitlines()
    assert code == 3
    assert lines[0].split() == ["service", "state", "pid", "endpoint", "log"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert {"kafka", "registry"} <= rows.keys()
    assert rows["kafka"][1:3] == ["stopped", "-"]
    assert "ServiceStatus(" not in out


def test_status_as_json_for_scripts(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out = _status(capsys, tmp_path, "--format", "json")
    states = json.loads(out)
    assert code == 3
    assert states["kafka"]["running"] is False and states["kafka"]["pid"] is None
    assert states["registry"]["log"].startswith(str(tmp_path.resolve()))
