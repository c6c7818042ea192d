"""`citystream serve` as a user runs it: a process on a free port over the module's sink."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from citystream.pipeline import settings_env
from tests.api.conftest import ApiStack
from tests.conftest import free_port

CITYSTREAM = str(Path(sys.executable).with_name("citystream"))


def test_citystream_serve_answers_what_the_app_answers(api_stack: ApiStack, tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [CITYSTREAM, "serve", "--port", str(port), "--no-audit"],
        env=settings_env(api_stack.settings),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.2)
        params = {"from": "2014-08-02", "to": "2014-08-03", "resolution": "1h"}
        path = "/v1/kpis/air.aqi/series"
        served = httpx.get(f"{url}{path}", params=params, timeout=30)
        assert served.status_code == 200
        assert served.json() == api_stack.client.get(path, params=params).json()
        assert httpx.get(f"{url}/openapi.json", timeout=30).json()["openapi"].startswith("3.1")
    finally:
        process.terminate()
        process.wait(30)
        log.close()
