"""An ASGI app under a real uvicorn on a free port, in a thread, for one ``with`` block.

The API tests, the two-cities tests and the browser tests all need a real server (SSE and
a browser need one), started and stopped the same way.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from tests.conftest import free_port


@contextmanager
def served(app: Any, name: str, *, lifespan: bool = True) -> Iterator[str]:
    """``app`` served until the block ends; yields its base URL.

    ``lifespan=False`` when a TestClient already ran the app's start-up (the live feed).
    """
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="on" if lifespan else "off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "uvicorn exited at start"
        assert time.monotonic() < deadline, "uvicorn did not start within 30 s"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
