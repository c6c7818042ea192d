"""docs/audit.md's walk-through, run as written: the citystream commands it shows, and its
independent check_audit.py (Python and `cryptography` only) on the API's real answers."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.app import create_app
from api.config import build_context
from citystream.cli import main
from core.settings import Settings
from trust.audit.recorder import LogRecorder

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "audit.md"
MARKER = "<!-- check_audit.py: tests/integration/test_audit_docs.py runs this block -->"


def check_script() -> str:
    text = DOC.read_text(encoding="utf-8")
    after = text.split(MARKER, 1)[1]
    found = re.match(r"\s*```python\n(.*?)```", after, re.S)
    assert found, "docs/audit.md lost its check_audit.py block"
    return found.group(1)


def test_the_walk_through_works_as_written(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = {"aud": {"key": "k-auditor", "role": "auditor"}}
    configured = settings.model_copy(update={"api_keys": SecretStr(json.dumps(keys))})
    recorder = LogRecorder(configured)
    client = TestClient(create_app(build_context(configured, audit=recorder)))
    auditor = {"Authorization": "Bearer k-auditor"}
    for _ in range(4):
        assert client.get("/v1/kpis", headers=auditor).status_code == 200
    flags = ["--topic-prefix", settings.topic_prefix, "--data-dir", str(settings.data_dir)]

    capsys.readouterr()
    assert main(["audit", "public-key", *flags]) == 0
    public_key = capsys.readouterr().out.strip()
    assert main(["audit", "checkpoint", *flags]) == 0
    assert capsys.readouterr().out.startswith("signed 1 checkpoint(s): tree size 4, root ")
    assert main(["audit", "verify", "--public-key", public_key, *flags]) == 0
    out = capsys.readouterr().out
    assert "4 records, 1 checkpoints signed by" in out and "4 records covered" in out
    assert "OK: every checkpoint verifies" in out

    (tmp_path / "check_audit.py").write_text(check_script())
    (tmp_path / "checkpoint.json").write_text(client.get("/v1/audit/checkpoint").text)
    proof = client.get("/v1/audit/proof?leaf=1", headers=auditor).json()
    (tmp_path / "proof.json").write_text(json.dumps(proof))
    recorder.close()

    def check(proof_file: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "check_audit.py", public_key, "checkpoint.json", proof_file],
            cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    good = check("proof.json")
    assert good.returncode == 0, good.stderr
    assert good.stdout.startswith("record 1 is in the log of 4 records signed at ")
    proof["record"]["rows"] += 1  # the record as someone would like it to have been
    (tmp_path / "forged.json").write_text(json.dumps(proof))
    forged = check("forged.json")
    assert forged.returncode != 0 and "NOT in the signed log" in forged.stderr
