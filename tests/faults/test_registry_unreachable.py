"""The schema registry is unreachable when a processor starts.

It must say what it waits for and keep trying (no silent crash loop), start normally as
soon as the registry answers, and give up with a clear message and exit code 69 when
the configured wait is over.
"""

from __future__ import annotations

import socket
import socketserver
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from citystream.pipeline import http_get, launch
from core.settings import Settings
from tests.conftest import free_port

pytestmark = pytest.mark.integration


class _Forward(socketserver.BaseRequestHandler):
    """Pipes one connection to the real registry: the registry 'comes back' on our port."""

    target: tuple[str, int]

    def handle(self) -> None:
        upstream = socket.create_connection(self.target)

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                dst.close()

        threading.Thread(target=pump, args=(upstream, self.request), daemon=True).start()
        pump(self.request, upstream)


def _process(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    return launch(settings, log, "process")


def test_processor_waits_for_the_registry_then_starts(settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    real = urlsplit(settings.schema_registry_url)
    s = settings.model_copy(
        update={
            "schema_registry_url": f"http://127.0.0.1:{port}{real.path}",
            "startup_timeout_s": 90,
        }
    )
    from families.registry import ensure_topics

    ensure_topics(s)
    log = tmp_path / "processor.log"
    process = _process(s, log)
    server = None
    try:
        deadline = time.monotonic() + 30
        while "waiting for the schema registry" not in log.read_text(errors="replace"):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "no message about the unreachable registry"
            time.sleep(0.2)
        assert process.poll() is None  # still trying, not crashed
        _Forward.target = (real.hostname or "127.0.0.1", real.port or 80)
        server = socketserver.ThreadingTCPServer(("127.0.0.1", port), _Forward)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        deadline = time.monotonic() + 90
        while True:  # the processor comes up once the registry answers
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                http_get(f"http://127.0.0.1:{s.processor_web_port}/citystream/stats/")
                break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.3)
    finally:
        process.terminate()
        process.wait(30)
        if server is not None:
            server.shutdown()
            server.server_close()


def test_processor_gives_up_with_a_clear_message(settings: Settings, tmp_path: Path) -> None:
    s = settings.model_copy(
        update={
            "schema_registry_url": f"http://127.0.0.1:{free_port()}/apis/ccompat/v7",
            "startup_timeout_s": 3,
        }
    )
    log = tmp_path / "processor.log"
    process = _process(s, log)
    assert process.wait(60) == 69
    text = log.read_text()
    assert "schema registry" in text and "not reachable" in text and "gave up" in text
    assert "Traceback" not in text
