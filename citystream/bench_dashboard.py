"""The dashboard's first render, measured in the browser (a stage of ``citystream bench``).

The page marks ``citystream-rendered`` when every panel has drawn and measures
``citystream-first-render`` from the navigation's start to that mark (``api/static/app.js``);
this opens the page in Debian's headless chromium several times, each with a fresh
profile (nothing cached), and reports the measure's p50 and max. It also prints when each
API request of the slowest load started and ended (the browser's resource timing): reads
that queue behind each other show as a staircase of end times, a chain of requests as
starts that wait for an earlier end. The browser is launched
here the way the browser tests launch it (tests/browser/chrome.py uses :func:`chromium`).
Selenium is a development dependency: it is imported only when this stage runs.
"""

from __future__ import annotations

import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core.settings import Settings

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Headless, no sandbox, no GPU (so no WebGL: the page draws with SVG and canvas), and no
# background traffic of the browser's own, so every request it logs is the page's.
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-default-apps",
)
DESKTOP = (1280, 1500)
LOADS = 5


def missing_browser() -> str | None:
    """Why the browser cannot run here (and what to install), or None."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        return (
            f"{', '.join(missing)} missing: install Debian's chromium and chromium-driver "
            "(`make chromium`, or apt-get install chromium chromium-driver)"
        )
    return None


@contextmanager
def chromium(profile: Path, size: tuple[int, int] = DESKTOP) -> Iterator[Any]:
    """A headless chromium (selenium WebDriver) with a fresh profile in ``profile``, its
    console and network (CDP performance) logs on; quit on exit."""
    problem = missing_browser()
    if problem:
        raise RuntimeError(problem)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={size[0]},{size[1]}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_ready(driver: Any, timeout: float = 60.0) -> None:
    """Until the page says every panel has drawn (``body[data-ready]``); loud on failure."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = driver.execute_script("return document.body.dataset.ready")
        if state == "true":
            return
        if state == "error":
            error = driver.execute_script("return document.getElementById('error').textContent")
            raise RuntimeError(f"the dashboard failed to start: {error}")
        time.sleep(0.05)
    raise RuntimeError(f"the dashboard did not finish drawing within {timeout}s")


def first_render_ms(driver: Any, url: str) -> float:
    """One load of ``url``: the page's own first-render measure, in milliseconds."""
    driver.get(url)
    wait_ready(driver)
    value = driver.execute_script(
        "const m = performance.getEntriesByName('citystream-first-render');"
        "return m.length ? m[0].duration : null;"
    )
    if value is None:
        raise RuntimeError("the page recorded no citystream-first-render measure")
    return float(value)


# Each API request of the page: its path and query, start and end in ms from navigation.
_API_TIMINGS = """return performance.getEntriesByType('resource')
    .map((e) => [new URL(e.name), e.startTime, e.responseEnd])
    .filter(([u]) => u.pathname.startsWith('/v1/'))
    .map(([u, start, end]) => [u.pathname + u.search, start, end]);"""


def api_timings(driver: Any) -> list[tuple[str, float, float]]:
    """The loaded page's API requests: (path, start ms, end ms), from navigation start."""
    return [(str(p), float(s), float(e)) for p, s, e in driver.execute_script(_API_TIMINGS)]


def measure_first_render(url: str, loads: int = LOADS) -> dict[str, float]:
    """p50 and max of ``loads`` first renders, each in a fresh browser profile; prints the
    slowest load's API requests."""
    times = []
    slowest: list[tuple[str, float, float]] = []
    for _ in range(loads):
        with (
            tempfile.TemporaryDirectory(prefix="citystream-bench-") as profile,
            chromium(Path(profile)) as driver,
        ):
            times.append(first_render_ms(driver, url))
            if times[-1] == max(times):
                slowest = api_timings(driver)
    print(f"    slowest load ({max(times):,.0f} ms): {len(slowest)} API requests")
    for path, start, end in sorted(slowest, key=lambda t: t[1]):
        print(f"      {start:7,.0f} -> {end:7,.0f} ms  {path}")
    return {
        "p50_ms": statistics.median(times),
        "max_ms": max(times),
        "loads": float(loads),
        "api_requests": float(len(slowest)),
    }


def run_dashboard_bench(settings: Settings, loads: int = LOADS) -> dict[str, float]:
    """The shipped Aarhus day through the real processors and sink into ``settings``'
    (fresh) namespace, the API over that sink, and the page's first render measured."""
    from citystream.demo import replay_day
    from citystream.pipeline import Pipeline
    from citystream.replay import AarhusFiles, wait_processed
    from families.registry import ensure_topics, register_schemas

    ensure_topics(settings)
    register_schemas(settings)
    pipeline = Pipeline(settings, processors=("traffic", "air", "parking", "devices"))
    try:
        pipeline.start("processor", "alerts", "sink")
        reports = replay_day(settings, AarhusFiles.shipped())
        published = {name: report.published for name, report in reports.items()}
        published["devices"] = published["traffic"] + published["air"]
        wait_processed(pipeline, published)
        with api_server(settings) as url:
            print(f"    dashboard at {url}, {loads} loads in a fresh headless chromium each")
            return measure_first_render(url, loads)
    finally:
        pipeline.stop()


@contextmanager
def api_server(settings: Settings) -> Iterator[str]:
    """The read API and dashboard over ``settings``' sink, on a free loopback port."""
    import uvicorn

    from api.app import create_app
    from api.config import build_context

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    app = create_app(build_context(settings))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="bench-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the read API did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
